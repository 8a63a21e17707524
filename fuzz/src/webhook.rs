//! The gateway's webhook intake (`pbft_gw::webhook::intake`): the proof of
//! concept's `{"branch": B}`, GitHub, Gitea/Forgejo and GitLab push events,
//! their headers, signatures and form bodies.
//!
//! An input is a delivery in a small text form, so that the providers'
//! fixtures are seeds and mutations stay readable:
//!
//! ```text
//! <flags byte>X-GitHub-Event: push
//! X-Hub-Signature-256: sha256=…
//!
//! {"ref": …}
//! ```
//!
//! Header lines up to the first empty line, then the body. The flags choose
//! the gateway's configuration and whether the harness signs the body with
//! the configured secret (so that mutated bodies get past authentication).
//!
//! Properties, besides never panicking:
//! - with a secret configured, a provider event is never answered (run or
//!   skipped) unless the delivery carries a valid signature or token, and
//!   `401` comes only from a provider event under a secret;
//! - what runs is what replicas accept: a ref `check_ref` accepts, a full
//!   lowercase commit id (always, for a provider event), a repository URL
//!   without a leading `-`, whitespace or control characters (for the proof
//!   of concept, the gateway's own), a bounded visible-ASCII delivery id, and
//!   a request within the wire bounds;
//! - a tag push is never run when tags are not.

use http::{HeaderMap, HeaderName, HeaderValue};
use pbft_gw::webhook::{intake, signature::hmac_sha256_hex, Encoding, Intake, IntakeConfig, IntakeError};
use pbft_node::wire::limits::{DELIVERY_BYTES_MAX, REQUEST_BYTES_MAX};
use pbft_node::wire::{encode, Operation, Request, WireMessage};

use crate::fixture::fixture;

pub const SECRET: &[u8] = b"fuzz-webhook-secret";
pub const OWN_REPO: &str = "https://git.example.org/team/app.git";

pub const SECRET_SET: u8 = 1;
pub const RUN_TAGS: u8 = 2;
pub const FORM: u8 = 4;
pub const HAS_REPO: u8 = 8;
pub const HARNESS_SIGNS: u8 = 16;

const EVENT_HEADERS: [&str; 4] = ["x-forgejo-event", "x-gitea-event", "x-gitlab-event", "x-github-event"];

/// A delivery in the target's input form.
pub fn encode_input(flags: u8, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut v = vec![flags];
    for (k, val) in headers {
        v.extend_from_slice(format!("{k}: {val}\n").as_bytes());
    }
    v.push(b'\n');
    v.extend_from_slice(body);
    v
}

/// The flags, header lines and body of an input.
fn parse_input(data: &[u8]) -> Option<(u8, HeaderMap, &[u8])> {
    let (&flags, mut rest) = data.split_first()?;
    let mut headers = HeaderMap::new();
    loop {
        let (line, after) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = after;
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let value = line[colon + 1..].strip_prefix(b" ").unwrap_or(&line[colon + 1..]);
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(value)) {
            headers.append(name, value);
        }
        if rest.is_empty() {
            break;
        }
    }
    Some((flags, headers, rest))
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    headers.insert(name, HeaderValue::from_str(value).expect("visible ASCII"));
}

/// Whether any of the authentication headers holds a valid proof of the
/// secret, checked here independently of the gateway's code.
fn holds_valid_proof(headers: &HeaderMap, body: &[u8]) -> bool {
    let want = hmac_sha256_hex(SECRET, body);
    let values = |name: &str| headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>();
    values("x-hub-signature-256")
        .iter()
        .any(|v| v.strip_prefix("sha256=").is_some_and(|h| h.trim().eq_ignore_ascii_case(&want)))
        || ["x-gitea-signature", "x-forgejo-signature"]
            .iter()
            .any(|n| values(n).iter().any(|v| v.trim().eq_ignore_ascii_case(&want)))
        || values("x-gitlab-token").iter().any(|v| v.as_bytes() == SECRET)
}

pub fn check(data: &[u8]) {
    let Some((flags, mut headers, body)) = parse_input(data) else { return };
    let cfg = IntakeConfig {
        repo: (flags & HAS_REPO != 0).then(|| OWN_REPO.to_string()),
        secret: (flags & SECRET_SET != 0).then(|| SECRET.to_vec()),
        run_tags: flags & RUN_TAGS != 0,
    };
    let encoding = if flags & FORM != 0 { Encoding::Form } else { Encoding::Json };
    let harness_signs = flags & HARNESS_SIGNS != 0;
    if harness_signs {
        let sig = hmac_sha256_hex(SECRET, body);
        set(&mut headers, "x-hub-signature-256", &format!("sha256={sig}"));
        set(&mut headers, "x-gitea-signature", &sig);
        set(&mut headers, "x-forgejo-signature", &sig);
        set(&mut headers, "x-gitlab-token", std::str::from_utf8(SECRET).expect("ASCII"));
    }
    let provider = EVENT_HEADERS.iter().any(|h| headers.contains_key(*h));
    let outcome = intake(&cfg, &headers, body, encoding);
    assert_eq!(intake(&cfg, &headers, body, encoding), outcome, "intake is not deterministic");
    if crate::verbose() {
        eprintln!("webhook: flags {flags:#04x}: {outcome:?}");
    }
    match outcome {
        Ok(answer) => {
            if provider && cfg.secret.is_some() {
                assert!(holds_valid_proof(&headers, body), "a provider event was answered without a valid signature");
            }
            if let Intake::Run(sub) = answer {
                submission(&cfg, provider, &sub);
            }
        }
        Err(e @ IntakeError::Unauthorized(_)) => {
            assert!(provider && cfg.secret.is_some(), "401 without a provider event under a secret: {e}");
            assert_eq!(e.status(), 401);
        }
        Err(e @ IntakeError::Invalid(_)) => assert_eq!(e.status(), 400),
    }
}

fn submission(cfg: &IntakeConfig, provider: bool, sub: &pbft_gw::webhook::Submission) {
    use pbft_node::ci::git;
    assert!(git::check_ref(&sub.git_ref).is_ok(), "runs a ref replicas refuse: {:?}", sub.git_ref);
    match &sub.commit {
        Some(c) => assert!(git::check_commit(c).is_ok(), "runs a commit id replicas refuse: {c:?}"),
        None => assert!(!provider, "a provider event runs unpinned"),
    }
    if provider {
        assert!(pbft_gw::webhook::check_repo(&sub.repo).is_ok(), "runs repository {:?}", sub.repo);
        assert!(cfg.run_tags || !sub.git_ref.starts_with("refs/tags/"), "runs a tag push while tags are not run");
    } else {
        assert_eq!(Some(&sub.repo), cfg.repo.as_ref(), "an unsigned call ran another repository");
        assert!(sub.delivery.is_none());
    }
    let repo_ok = !sub.repo.is_empty()
        && !sub.repo.starts_with('-')
        && !sub.repo.chars().any(|c| c.is_whitespace() || c.is_control());
    assert!(repo_ok, "runs repository {:?}", sub.repo);
    if let Some(d) = &sub.delivery {
        assert!(!d.is_empty() && d.len() <= DELIVERY_BYTES_MAX && d.bytes().all(|b| b.is_ascii_graphic()));
    }
    let fx = fixture();
    let request = Request {
        gateway: fx.gateway_id(),
        number: 1,
        delivery: sub.delivery.clone(),
        op: Operation::Run { repo: sub.repo.clone(), git_ref: sub.git_ref.clone(), commit: sub.commit.clone() },
    };
    assert_eq!(request.check(), Ok(()), "the gateway would submit a request over the wire bounds");
    assert!(encode(&request).len() <= REQUEST_BYTES_MAX, "the gateway would submit an oversized request");
}
