//! Refs, commit ids and repository URLs, as the replicas check them before
//! any git command runs (`ci::git::{check_ref, check_commit, check_url}`) and
//! as the gateway checks them at intake (`webhook::{check_ref, check_commit,
//! check_repo}`).
//!
//! Properties, besides never panicking:
//! - `check_ref` accepts exactly what git's refname rules (refs.c,
//!   `check_refname_component`, one-level names allowed), written out here
//!   independently, accept and ours add: never a leading `-`, `..`, a space,
//!   whitespace or a control character of any kind, at most `REF_BYTES_MAX`
//!   bytes, and `refs/…` with a namespace and a name;
//! - `check_commit` accepts exactly 40 or 64 lowercase hex digits; the
//!   gateway's accepts any case and hands over the lowercase form;
//! - `check_url` never accepts a leading `-`, whitespace, control characters,
//!   `ext::`/`fd::`, a scheme not allowed, a relative `file://` path, or a
//!   host or user that starts with `-`; what it accepts the gateway does too.

use std::path::PathBuf;

use pbft_node::ci::git::{check_commit, check_ref, check_url, GitConfig};
use pbft_node::wire::limits::{REF_BYTES_MAX, REPO_BYTES_MAX};

pub fn check(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    refname(&s);
    commit(&s);
    url(&s);
}

/// Git's own rules for a ref name, byte by byte as refs.c has them (with
/// `REFNAME_ALLOW_ONELEVEL`, no refspec patterns).
pub fn git_accepts(r: &[u8]) -> bool {
    if r.is_empty() || r == b"@" || r.ends_with(b".") {
        return false;
    }
    for component in r.split(|&b| b == b'/') {
        if component.is_empty() || component[0] == b'.' || component.ends_with(b".lock") {
            return false;
        }
        let mut last = 0u8;
        for &c in component {
            let refused = matches!(c, 0..=0x1f | 0x7f | b' ' | b':' | b'?' | b'[' | b'\\' | b'^' | b'~' | b'*')
                || (c == b'.' && last == b'.')
                || (c == b'{' && last == b'@');
            if refused {
                return false;
            }
            last = c;
        }
    }
    true
}

/// Ours on top of git's.
pub fn we_accept(r: &str) -> bool {
    git_accepts(r.as_bytes())
        && !r.starts_with('-')
        && r.len() <= REF_BYTES_MAX
        && !r.chars().any(|c| c.is_whitespace() || c.is_control())
        && !(r.starts_with("refs/") && r.split('/').count() < 3)
}

fn refname(r: &str) {
    let ours = check_ref(r);
    if ours.is_ok() {
        assert!(!r.starts_with('-'), "accepted a ref starting with '-': {r:?}");
        assert!(!r.contains(".."), "accepted a ref containing '..': {r:?}");
        assert!(!r.chars().any(|c| c.is_whitespace() || c.is_control()), "accepted {r:?}");
    }
    assert_eq!(ours.is_ok(), we_accept(r), "check_ref({r:?}) = {ours:?}");
    let gateway = pbft_gw::webhook::check_ref(r);
    assert_eq!(gateway.is_ok(), ours.is_ok(), "the gateway and the replicas disagree on ref {r:?}");
}

fn commit(c: &str) {
    let lower_hex = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let full = matches!(c.len(), 40 | 64);
    assert_eq!(check_commit(c).is_ok(), full && lower_hex(c), "check_commit({c:?})");
    match pbft_gw::webhook::check_commit(c) {
        Ok(id) => {
            assert!(full && c.bytes().all(|b| b.is_ascii_hexdigit()), "the gateway accepted commit {c:?}");
            assert_eq!(id, c.to_ascii_lowercase());
            assert!(check_commit(&id).is_ok(), "the gateway hands over commit {id:?}, which replicas refuse");
        }
        Err(_) => assert!(!(full && c.bytes().all(|b| b.is_ascii_hexdigit())), "the gateway refused commit {c:?}"),
    }
}

fn configs() -> [GitConfig; 3] {
    let cfg = |allow_file_urls, schemes: &[&str]| GitConfig {
        cache_dir: PathBuf::from("/nonexistent"),
        allow_file_urls,
        schemes: schemes.iter().map(|s| s.to_string()).collect(),
    };
    [cfg(false, &[]), cfg(true, &["ssh", "git+ssh", "http", "git"]), cfg(true, &["ext", "fd", "file", "ssh"])]
}

fn url(u: &str) {
    let gateway = pbft_gw::webhook::check_repo(u);
    for cfg in configs() {
        let Ok(()) = check_url(u, &cfg) else { continue };
        let bad = |why: &str| -> ! { panic!("check_url accepted {u:?} ({why}) under {cfg:?}") };
        if u.is_empty() || u.len() > REPO_BYTES_MAX {
            bad("length");
        }
        if u.starts_with('-') {
            bad("leading '-'");
        }
        if u.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bad("whitespace or a control character");
        }
        let Some((scheme, rest)) = u.split_once("://") else { bad("no scheme") };
        match scheme {
            "ext" | "fd" => bad("a scheme never allowed"),
            "file" if !cfg.allow_file_urls || !rest.starts_with('/') => bad("file"),
            "file" | "https" => {}
            s if cfg.schemes.iter().any(|a| a == s) => {}
            _ => bad("a scheme not allowed"),
        }
        if scheme != "file" {
            let authority = rest.split('/').next().unwrap_or_default();
            let host = authority.rsplit('@').next().unwrap_or_default();
            if host.is_empty() || authority.starts_with('-') || host.starts_with('-') {
                bad("host");
            }
        }
        assert!(gateway.is_ok(), "replicas accept {u:?}, the gateway refuses it: {gateway:?}");
    }
}
