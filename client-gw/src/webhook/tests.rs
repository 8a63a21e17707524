//! Intake, table-tested with deliveries as the providers send them: the
//! fixtures under `tests/fixtures/` and the headers each host sets.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use super::signature::hmac_sha256_hex;
use super::*;

const SECRET: &str = "hunter2-but-longer";
const OWN_REPO: &str = "file:///srv/git/app";

const GITHUB_PUSH: &str = include_str!("../../tests/fixtures/github-push.json");
const GITHUB_PING: &str = include_str!("../../tests/fixtures/github-ping.json");
const GITHUB_DELETE: &str = include_str!("../../tests/fixtures/github-delete.json");
const GITHUB_TAG: &str = include_str!("../../tests/fixtures/github-tag-push.json");
const GITEA_PUSH: &str = include_str!("../../tests/fixtures/gitea-push.json");
const GITLAB_PUSH: &str = include_str!("../../tests/fixtures/gitlab-push.json");
const GITLAB_TAG: &str = include_str!("../../tests/fixtures/gitlab-tag-push.json");

const GH_DELIVERY: &str = "72d3162e-cc78-11e3-81ab-4c9367dc0958";
const GITEA_DELIVERY: &str = "f6266f16-1bf3-46a5-9ea4-602e06ead473";
const GITLAB_UUID: &str = "13792a34-cac6-4fda-95a8-c58e00a3954e";

fn cfg() -> IntakeConfig {
    IntakeConfig { repo: Some(OWN_REPO.into()), secret: Some(SECRET.as_bytes().to_vec()), run_tags: true }
}

fn unsigned_cfg() -> IntakeConfig {
    IntakeConfig { secret: None, ..cfg() }
}

fn no_tags_cfg() -> IntakeConfig {
    IntakeConfig { run_tags: false, ..cfg() }
}

fn headers(pairs: &[(&str, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    h
}

/// GitHub's headers for `event` with `body` signed under `secret`.
fn github(event: &str, body: &str, secret: &str) -> HeaderMap {
    headers(&[
        ("content-type", "application/json".into()),
        ("user-agent", "GitHub-Hookshot/044aadd".into()),
        ("x-github-event", event.into()),
        ("x-github-delivery", GH_DELIVERY.into()),
        ("x-github-hook-id", "292430182".into()),
        ("x-hub-signature", "sha1=7d38cdd689735b008b3c702edd92eea23791c5f6".into()),
        ("x-hub-signature-256", format!("sha256={}", hmac_sha256_hex(secret.as_bytes(), body.as_bytes()))),
    ])
}

/// Gitea's headers (it also sends GitHub's and Gogs's, for compatibility).
fn gitea(event: &str, body: &str, secret: &str) -> HeaderMap {
    let sig = hmac_sha256_hex(secret.as_bytes(), body.as_bytes());
    headers(&[
        ("content-type", "application/json".into()),
        ("x-gitea-delivery", GITEA_DELIVERY.into()),
        ("x-gitea-event", event.into()),
        ("x-gitea-event-type", event.into()),
        ("x-gitea-signature", sig.clone()),
        ("x-gogs-delivery", GITEA_DELIVERY.into()),
        ("x-gogs-event", event.into()),
        ("x-gogs-signature", sig.clone()),
        ("x-github-delivery", GITEA_DELIVERY.into()),
        ("x-github-event", event.into()),
        ("x-hub-signature-256", format!("sha256={sig}")),
    ])
}

fn forgejo(event: &str, body: &str, secret: &str) -> HeaderMap {
    let sig = hmac_sha256_hex(secret.as_bytes(), body.as_bytes());
    headers(&[
        ("content-type", "application/json".into()),
        ("x-forgejo-delivery", GITEA_DELIVERY.into()),
        ("x-forgejo-event", event.into()),
        ("x-forgejo-signature", sig.clone()),
        ("x-gitea-delivery", GITEA_DELIVERY.into()),
        ("x-gitea-event", event.into()),
        ("x-gitea-signature", sig),
    ])
}

fn gitlab(event: &str, token: &str) -> HeaderMap {
    headers(&[
        ("content-type", "application/json".into()),
        ("user-agent", "GitLab/17.0.0".into()),
        ("x-gitlab-event", event.into()),
        ("x-gitlab-event-uuid", GITLAB_UUID.into()),
        ("x-gitlab-instance", "https://gitlab.example.com".into()),
        ("x-gitlab-token", token.into()),
        ("x-gitlab-webhook-uuid", "a7b4d8b2-0d09-4d5b-a1f0-8a7e14ebc1c3".into()),
    ])
}

fn json() -> HeaderMap {
    headers(&[("content-type", "application/json".into())])
}

/// `fixture` with the JSON pointer `path` set to `value`.
fn edit(fixture: &str, path: &str, value: Value) -> String {
    let mut v: Value = serde_json::from_str(fixture).unwrap();
    *v.pointer_mut(path).unwrap_or_else(|| panic!("{path} in fixture")) = value;
    serde_json::to_string(&v).unwrap()
}

fn run(repo: &str, git_ref: &str, commit: Option<&str>, delivery: Option<&str>) -> Result<Intake, IntakeError> {
    Ok(Intake::Run(Submission {
        repo: repo.into(),
        git_ref: git_ref.into(),
        commit: commit.map(Into::into),
        delivery: delivery.map(Into::into),
        forge: None,
    }))
}

/// `got` without its forge (the cases compare what runs; forges have their own test).
fn unforged(got: &Result<Intake, IntakeError>) -> Result<Intake, IntakeError> {
    match got {
        Ok(Intake::Run(sub)) => Ok(Intake::Run(Submission { forge: None, ..sub.clone() })),
        other => other.clone(),
    }
}

#[derive(Debug)]
enum Want {
    Run(Result<Intake, IntakeError>),
    Skip,
    Status(u16),
}

struct Case {
    name: &'static str,
    cfg: IntakeConfig,
    headers: HeaderMap,
    body: String,
    encoding: Encoding,
    want: Want,
}

fn case(name: &'static str, cfg: IntakeConfig, headers: HeaderMap, body: impl Into<String>, want: Want) -> Case {
    Case { name, cfg, headers, body: body.into(), encoding: Encoding::Json, want }
}

const GH_REPO: &str = "https://github.com/Codertocat/Hello-World.git";
const GH_COMMIT: &str = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c";

fn github_cases() -> Vec<Case> {
    let push = GITHUB_PUSH.to_string();
    let skip_msg = edit(GITHUB_PUSH, "/head_commit/message", "Fix typo [skip ci]".into());
    let ci_skip_msg = edit(GITHUB_PUSH, "/head_commit/message", "Docs only\n\n[CI SKIP]".into());
    let hostile = |r: &str| edit(GITHUB_PUSH, "/ref", r.into());
    let short_commit = edit(&edit(GITHUB_PUSH, "/after", "0d1a26e".into()), "/head_commit", Value::Null);
    let no_repo = edit(GITHUB_PUSH, "/repository", serde_json::json!({"name": "Hello-World"}));
    let upper = edit(GITHUB_PUSH, "/head_commit/id", GH_COMMIT.to_uppercase().into());
    let mut bad_sig = github("push", &push, "not the secret");
    let tampered = push.replace("Update README.md", "Update README.md!");
    let mut long_delivery = github("push", &push, SECRET);
    long_delivery.insert("x-github-delivery", HeaderValue::from_str(&"d".repeat(129)).unwrap());
    let mut unsigned = github("push", &push, SECRET);
    unsigned.remove("x-hub-signature-256");
    let mut sha1_only = unsigned.clone();
    sha1_only.insert("x-hub-signature", HeaderValue::from_static("sha1=7d38cdd689735b008b3c702edd92eea23791c5f6"));
    bad_sig.remove("x-hub-signature");
    let delivered = Some(GH_DELIVERY);
    vec![
        case(
            "github push",
            cfg(),
            github("push", &push, SECRET),
            &push,
            Want::Run(run(GH_REPO, "refs/heads/main", Some(GH_COMMIT), delivered)),
        ),
        case(
            "github push, no secret configured, unsigned",
            unsigned_cfg(),
            unsigned.clone(),
            &push,
            Want::Run(run(GH_REPO, "refs/heads/main", Some(GH_COMMIT), delivered)),
        ),
        case("github push, unsigned", cfg(), unsigned, &push, Want::Status(401)),
        case("github push, sha1 signature only", cfg(), sha1_only, &push, Want::Status(401)),
        case("github push, signed with another secret", cfg(), bad_sig, &push, Want::Status(401)),
        case(
            "github push, body changed after signing",
            cfg(),
            github("push", &push, SECRET),
            tampered,
            Want::Status(401),
        ),
        case("github push, garbage signed", cfg(), github("push", "{not json", SECRET), "{not json", Want::Status(400)),
        case("github ping", cfg(), github("ping", GITHUB_PING, SECRET), GITHUB_PING, Want::Skip),
        case("github ping, unsigned", cfg(), github("ping", GITHUB_PING, "wrong"), GITHUB_PING, Want::Status(401)),
        case("github branch deleted", cfg(), github("push", GITHUB_DELETE, SECRET), GITHUB_DELETE, Want::Skip),
        case(
            "github tag push pins the commit, not the tag object",
            cfg(),
            github("push", GITHUB_TAG, SECRET),
            GITHUB_TAG,
            Want::Run(run(GH_REPO, "refs/tags/v1.0.0", Some(GH_COMMIT), delivered)),
        ),
        case(
            "github tag push, tags not run",
            no_tags_cfg(),
            github("push", GITHUB_TAG, SECRET),
            GITHUB_TAG,
            Want::Skip,
        ),
        case("github [skip ci]", cfg(), github("push", &skip_msg, SECRET), &skip_msg, Want::Skip),
        case("github [CI SKIP]", cfg(), github("push", &ci_skip_msg, SECRET), &ci_skip_msg, Want::Skip),
        case("github other event", cfg(), github("issues", "{}", SECRET), "{}", Want::Skip),
        case(
            "github uppercase commit id is lowercased",
            cfg(),
            github("push", &upper, SECRET),
            &upper,
            Want::Run(run(GH_REPO, "refs/heads/main", Some(GH_COMMIT), delivered)),
        ),
        case("github short commit id", cfg(), github("push", &short_commit, SECRET), &short_commit, Want::Status(400)),
        case("github without clone_url", cfg(), github("push", &no_repo, SECRET), &no_repo, Want::Status(400)),
        case("github delivery id too long", cfg(), long_delivery, &push, Want::Status(400)),
        case(
            "github ref with ..",
            cfg(),
            github("push", &hostile("refs/heads/a..b"), SECRET),
            hostile("refs/heads/a..b"),
            Want::Status(400),
        ),
        case(
            "github ref with a space",
            cfg(),
            github("push", &hostile("refs/heads/a b"), SECRET),
            hostile("refs/heads/a b"),
            Want::Status(400),
        ),
        case(
            "github ref ending .lock",
            cfg(),
            github("push", &hostile("refs/heads/x.lock"), SECRET),
            hostile("refs/heads/x.lock"),
            Want::Status(400),
        ),
        case(
            "github ref with @{",
            cfg(),
            github("push", &hostile("refs/heads/a@{1}"), SECRET),
            hostile("refs/heads/a@{1}"),
            Want::Status(400),
        ),
        case(
            "github ref as an option",
            cfg(),
            github("push", &hostile("--upload-pack=touch /tmp/x"), SECRET),
            hostile("--upload-pack=touch /tmp/x"),
            Want::Status(400),
        ),
    ]
}

const GITEA_REPO: &str = "http://localhost:3000/gitea/webhooks.git";
const GITEA_COMMIT: &str = "bffeb74224043ba2feb48d137756c8a9331c449a";

fn gitea_cases() -> Vec<Case> {
    let push = GITEA_PUSH.to_string();
    let delivered = Some(GITEA_DELIVERY);
    let want = || Want::Run(run(GITEA_REPO, "refs/heads/develop", Some(GITEA_COMMIT), delivered));
    let mut wrong = gitea("push", &push, SECRET);
    wrong.insert("x-gitea-signature", HeaderValue::from_str(&hmac_sha256_hex(b"other", push.as_bytes())).unwrap());
    let mut prefixed = gitea("push", &push, SECRET);
    let sig = hmac_sha256_hex(SECRET.as_bytes(), push.as_bytes());
    prefixed.insert("x-gitea-signature", HeaderValue::from_str(&format!("sha256={sig}")).unwrap());
    let mut unsigned = gitea("push", &push, SECRET);
    for h in ["x-gitea-signature", "x-gogs-signature", "x-hub-signature-256"] {
        unsigned.remove(h);
    }
    let deleted = edit(GITEA_PUSH, "/after", "0".repeat(40).into());
    let sha256_repo = edit(GITEA_PUSH, "/head_commit/id", "ab".repeat(32).into());
    vec![
        case("gitea push", cfg(), gitea("push", &push, SECRET), &push, want()),
        case("forgejo push", cfg(), forgejo("push", &push, SECRET), &push, want()),
        case("gitea push, wrong signature", cfg(), wrong, &push, Want::Status(401)),
        case("gitea signature is bare hex", cfg(), prefixed, &push, Want::Status(401)),
        case("gitea push, unsigned", cfg(), unsigned, &push, Want::Status(401)),
        case("gitea branch deleted", cfg(), gitea("push", &deleted, SECRET), &deleted, Want::Skip),
        case("gitea other event", cfg(), gitea("create", "{}", SECRET), "{}", Want::Skip),
        case(
            "gitea sha256 repository",
            cfg(),
            gitea("push", &sha256_repo, SECRET),
            &sha256_repo,
            Want::Run(run(GITEA_REPO, "refs/heads/develop", Some(&"ab".repeat(32)), delivered)),
        ),
    ]
}

const GITLAB_REPO: &str = "http://test.example.com/mike/diaspora.git";

fn gitlab_cases() -> Vec<Case> {
    let push = GITLAB_PUSH.to_string();
    let delivered = Some(GITLAB_UUID);
    let commit = "da1560886d4f094c3e6c9ef40349f7d38b5d27d7";
    let deleted = edit(&edit(GITLAB_PUSH, "/after", "0".repeat(40).into()), "/checkout_sha", Value::Null);
    let skip = edit(GITLAB_PUSH, "/commits/1/message", "fixed readme [ci skip]".into());
    let skip_older = edit(GITLAB_PUSH, "/commits/0/message", "older [ci skip]".into());
    let old_format = edit(GITLAB_PUSH, "/project", Value::Null);
    let mut retried = gitlab("Push Hook", SECRET);
    retried.insert("idempotency-key", HeaderValue::from_static("908a6d9e-45fd-46c8-97e6-c4f350f219dd"));
    let mut no_token = gitlab("Push Hook", SECRET);
    no_token.remove("x-gitlab-token");
    vec![
        case(
            "gitlab push",
            cfg(),
            gitlab("Push Hook", SECRET),
            &push,
            Want::Run(run(GITLAB_REPO, "refs/heads/master", Some(commit), delivered)),
        ),
        case(
            "gitlab push, repository.git_http_url",
            cfg(),
            gitlab("Push Hook", SECRET),
            &old_format,
            Want::Run(run(GITLAB_REPO, "refs/heads/master", Some(commit), delivered)),
        ),
        case(
            "gitlab push, Idempotency-Key is the delivery",
            cfg(),
            retried,
            &push,
            Want::Run(run(
                GITLAB_REPO,
                "refs/heads/master",
                Some(commit),
                Some("908a6d9e-45fd-46c8-97e6-c4f350f219dd"),
            )),
        ),
        case("gitlab push, wrong token", cfg(), gitlab("Push Hook", "hunter2"), &push, Want::Status(401)),
        case("gitlab push, no token", cfg(), no_token, &push, Want::Status(401)),
        case(
            "gitlab tag push",
            cfg(),
            gitlab("Tag Push Hook", SECRET),
            GITLAB_TAG,
            Want::Run(run(
                "http://example.com/jsmith/example.git",
                "refs/tags/v1.0.0",
                Some("82b3d5ae55f7080f1e6022629cdb57bfae7cccc7"),
                delivered,
            )),
        ),
        case("gitlab tag push, tags not run", no_tags_cfg(), gitlab("Tag Push Hook", SECRET), GITLAB_TAG, Want::Skip),
        case("gitlab branch deleted", cfg(), gitlab("Push Hook", SECRET), &deleted, Want::Skip),
        case("gitlab [ci skip] on the head commit", cfg(), gitlab("Push Hook", SECRET), &skip, Want::Skip),
        case(
            "gitlab [ci skip] on an older commit runs",
            cfg(),
            gitlab("Push Hook", SECRET),
            &skip_older,
            Want::Run(run(GITLAB_REPO, "refs/heads/master", Some(commit), delivered)),
        ),
        case("gitlab merge request event", cfg(), gitlab("Merge Request Hook", SECRET), "{}", Want::Skip),
        case("gitlab garbage", cfg(), gitlab("Push Hook", SECRET), "[1, 2", Want::Status(400)),
    ]
}

fn poc_cases() -> Vec<Case> {
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let mut cases = vec![
        case("poc branch", cfg(), json(), r#"{"branch": "master"}"#, Want::Run(run(OWN_REPO, "master", None, None))),
        case(
            "poc branch without a secret",
            unsigned_cfg(),
            json(),
            r#"{"branch":"feature"}"#,
            Want::Run(run(OWN_REPO, "feature", None, None)),
        ),
        case(
            "poc branch with its own repo and a commit",
            cfg(),
            json(),
            format!(r#"{{"branch": "master", "repo": "{OWN_REPO}", "commit": "{}"}}"#, commit.to_uppercase()),
            Want::Run(run(OWN_REPO, "master", Some(commit), None)),
        ),
        case(
            "poc another repo",
            cfg(),
            json(),
            r#"{"branch": "master", "repo": "file:///srv/git/other"}"#,
            Want::Status(400),
        ),
        case(
            "poc without --repo",
            IntakeConfig { repo: None, ..cfg() },
            json(),
            r#"{"branch": "master"}"#,
            Want::Status(400),
        ),
        case("poc short commit", cfg(), json(), r#"{"branch": "master", "commit": "abc123"}"#, Want::Status(400)),
        case("poc missing branch", cfg(), json(), r#"{"repo": "file:///srv/git/app"}"#, Want::Status(400)),
        case("poc misspelt field", cfg(), json(), r#"{"brnach": "master"}"#, Want::Status(400)),
        case("poc branch not a string", cfg(), json(), r#"{"branch": 7}"#, Want::Status(400)),
        case("poc garbage", cfg(), json(), "branch=master", Want::Status(400)),
        case("poc empty body", cfg(), json(), "", Want::Status(400)),
        case(
            "poc option injection",
            cfg(),
            json(),
            r#"{"branch": "--upload-pack=touch /tmp/pwned"}"#,
            Want::Status(400),
        ),
        case("poc dot-dot", cfg(), json(), r#"{"branch": "../../etc/passwd"}"#, Want::Status(400)),
        case("poc control character", cfg(), json(), r#"{"branch": "a\u0007b"}"#, Want::Status(400)),
        case("poc reflog syntax", cfg(), json(), r#"{"branch": "master@{yesterday}"}"#, Want::Status(400)),
        case("poc glob", cfg(), json(), r#"{"branch": "feat*"}"#, Want::Status(400)),
        case("poc empty branch", cfg(), json(), r#"{"branch": ""}"#, Want::Status(400)),
    ];
    // git's refname rules, one breach each.
    for hostile in [
        "a~1", "a^", "a:b", "a?", "a[0]", "a\\\\b", "@", ".hidden", "x/.y", "x.lock", "a//b", "a/", "/a", "a.",
        "refs/x", "a\\u007f",
    ] {
        let body = format!(r#"{{"branch": "{hostile}"}}"#);
        // Refused by the ref rules, not as malformed JSON.
        let err = intake(&cfg(), &json(), body.as_bytes(), Encoding::Json).unwrap_err();
        assert!(err.to_string().contains("invalid ref"), "{hostile}: {err}");
        cases.push(case("poc hostile ref", cfg(), json(), body, Want::Status(400)));
    }
    cases
}

#[test]
fn deliveries_are_run_skipped_or_refused_as_the_table_says() {
    let mut failures = Vec::new();
    for c in github_cases().into_iter().chain(gitea_cases()).chain(gitlab_cases()).chain(poc_cases()) {
        let got = intake(&c.cfg, &c.headers, c.body.as_bytes(), c.encoding);
        let ok = match (&c.want, &got) {
            (Want::Run(want), got) => *want == unforged(got),
            (Want::Skip, Ok(Intake::Skip(_))) => true,
            (Want::Status(s), Err(e)) => e.status().as_u16() == *s,
            _ => false,
        };
        if !ok {
            failures.push(format!("{}: want {:?}, got {got:?}", c.name, c.want));
        }
    }
    assert!(failures.is_empty(), "{} cases failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn github_form_deliveries_are_signed_over_the_raw_form_body() {
    let body: String = form_urlencoded::Serializer::new(String::new()).append_pair("payload", GITHUB_PUSH).finish();
    let mut h = github("push", &body, SECRET);
    h.insert("content-type", HeaderValue::from_static("application/x-www-form-urlencoded"));
    let got = intake(&cfg(), &h, body.as_bytes(), Encoding::Form);
    assert_eq!(unforged(&got), run(GH_REPO, "refs/heads/main", Some(GH_COMMIT), Some(GH_DELIVERY)));
    // Signed over the JSON rather than the form body: refused.
    let h = github("push", GITHUB_PUSH, SECRET);
    assert_eq!(intake(&cfg(), &h, body.as_bytes(), Encoding::Form).unwrap_err().status().as_u16(), 401);
    // A form without `payload`.
    let h = github("push", "x=1", SECRET);
    assert_eq!(intake(&cfg(), &h, b"x=1", Encoding::Form).unwrap_err().status().as_u16(), 400);
}

#[test]
fn skip_and_error_reasons_say_why() {
    let got = intake(&cfg(), &github("push", GITHUB_DELETE, SECRET), GITHUB_DELETE.as_bytes(), Encoding::Json);
    assert!(matches!(&got, Ok(Intake::Skip(r)) if r.contains("deleted")), "{got:?}");
    let body = r#"{"branch": "--upload-pack=x"}"#;
    let err = intake(&cfg(), &json(), body.as_bytes(), Encoding::Json).unwrap_err();
    assert!(err.to_string().contains("starts with '-'"), "{err}");
    let err = intake(&cfg(), &github("push", GITHUB_PUSH, "x"), GITHUB_PUSH.as_bytes(), Encoding::Json).unwrap_err();
    assert!(err.to_string().contains("X-Hub-Signature-256"), "{err}");
}

#[test]
fn github_and_gitea_pushes_name_the_repository_their_statuses_go_to() {
    let forge = |got: Result<Intake, IntakeError>| match got {
        Ok(Intake::Run(sub)) => sub.forge,
        other => panic!("{other:?}"),
    };
    let got = intake(&cfg(), &github("push", GITHUB_PUSH, SECRET), GITHUB_PUSH.as_bytes(), Encoding::Json);
    assert_eq!(forge(got), Some(Forge { kind: ForgeKind::GitHub, repo: "Codertocat/Hello-World".into() }));
    let got = intake(&cfg(), &gitea("push", GITEA_PUSH, SECRET), GITEA_PUSH.as_bytes(), Encoding::Json);
    assert_eq!(forge(got), Some(Forge { kind: ForgeKind::Gitea, repo: "gitea/webhooks".into() }));
    let got = intake(&cfg(), &gitlab("Push Hook", SECRET), GITLAB_PUSH.as_bytes(), Encoding::Json);
    assert_eq!(forge(got), None, "GitLab's status API is not spoken");
    // A name that could reach another API path posts no status; the job still runs.
    for hostile in ["a/../../admin", "a/b/c", "../x", "a b/c", "a/b?x=1", "owner/"] {
        let body = edit(GITHUB_PUSH, "/repository/full_name", Value::String(hostile.into()));
        let got = intake(&cfg(), &github("push", &body, SECRET), body.as_bytes(), Encoding::Json);
        assert_eq!(forge(got), None, "{hostile}");
    }
}
