//! Git's refname rules (`git check-ref-format --allow-onelevel`), plus what
//! makes a name dangerous on a command line: a leading `-`. A ref that fails
//! here is refused at intake, so it is never relayed to the replicas.
//!
//! Stands in for `pbft_node::ci::git::check_ref` until that lands; the
//! gateway switches to it then, so both ends apply one rule.

use pbft_node::wire::limits::REF_BYTES_MAX;

/// Why `name` is not a ref git would accept (or one safe to pass to it).
pub fn check_ref(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("the ref is empty");
    }
    if name.len() > REF_BYTES_MAX {
        return Err("the ref is too long");
    }
    if name.starts_with('-') {
        return Err("a ref may not start with '-'");
    }
    if name == "@" {
        return Err("'@' alone is not a ref");
    }
    if name.contains("..") {
        return Err("a ref may not contain '..'");
    }
    if name.contains("@{") {
        return Err("a ref may not contain '@{'");
    }
    if let Some(c) = name.chars().find(|c| c.is_ascii_control() || " ~^:?*[\\".contains(*c)) {
        return Err(if c.is_ascii_control() {
            "a ref may not contain control characters"
        } else {
            "a ref may not contain a space or any of ~ ^ : ? * [ \\"
        });
    }
    if name.ends_with('/') || name.ends_with('.') {
        return Err("a ref may not end with '/' or '.'");
    }
    for component in name.split('/') {
        if component.is_empty() {
            return Err("a ref may not start with '/' or contain '//'");
        }
        if component.starts_with('.') {
            return Err("no component of a ref may start with '.'");
        }
        if component.ends_with(".lock") {
            return Err("no component of a ref may end with '.lock'");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_and_tag_names_git_accepts_pass() {
        for name in [
            "master",
            "feature",
            "refs/heads/main",
            "refs/tags/v1.2.3",
            "release/2024-06",
            "fix_#42",
            "user@host",
            "a.b",
            "ünïcode",
            "x.lockx",
            "a-",
        ] {
            assert_eq!(check_ref(name), Ok(()), "{name:?}");
        }
    }

    #[test]
    fn names_git_refuses_or_that_look_like_options_fail() {
        let long = "a".repeat(REF_BYTES_MAX + 1);
        for name in [
            "",
            "-x",
            "--upload-pack=touch /tmp/pwned",
            "@",
            "a..b",
            "../etc/passwd",
            "a@{1}",
            "a b",
            "a\tb",
            "a\nb",
            "a\u{7f}b",
            "a~1",
            "a^",
            "a:b",
            "a?",
            "a*",
            "a[0]",
            "a\\b",
            "a/",
            "a.",
            "/a",
            "a//b",
            ".hidden",
            "refs/heads/.x",
            "refs/heads/x.lock",
            "x.lock/y",
            long.as_str(),
        ] {
            assert!(check_ref(name).is_err(), "{name:?} accepted");
        }
    }
}
