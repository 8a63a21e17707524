//! The seed corpus, `fuzz/seeds/<target>/`: a few realistic inputs per
//! target, written by code so they stay real (signed with the fixture's
//! keys, encoded by the wire module itself, the providers' own payloads from
//! `client-gw/tests/fixtures/`). Regenerate with
//! `PBFT_FUZZ_WRITE_SEEDS=fuzz/seeds fuzz/target/…/release/wire`.

use std::io;
use std::path::Path;

use pbft_node::pbft::ReplicatedState;
use pbft_node::wire::{
    decode, encode, limits::ENVELOPE_BYTES_MAX, Certificate, Checkpoint, Digest, Envelope, JobId, PeerRequest,
    PeerResponse, Signed, SignedBytes, Status,
};

use crate::fixture::{self, fixture};
use crate::webhook::{encode_input, FORM, HARNESS_SIGNS, HAS_REPO, OWN_REPO, RUN_TAGS, SECRET, SECRET_SET};

/// Writes every target's seeds under `root`; returns how many files.
pub fn write(root: &Path) -> io::Result<usize> {
    let mut n = 0;
    for (target, seeds) in [("wire", wire()), ("webhook", webhook()?), ("pipeline", pipeline()), ("refs", refs())] {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in seeds {
            std::fs::write(dir.join(name), bytes)?;
            n += 1;
        }
    }
    Ok(n)
}

type Seeds = Vec<(String, Vec<u8>)>;

fn wire() -> Seeds {
    let fx = fixture();
    let mut out = Seeds::new();
    let sealed = fixture::sealed(fx);
    for (i, (kind, bytes)) in sealed.iter().enumerate() {
        out.push((format!("envelope-{i:02}-{kind:?}"), bytes.clone()));
        let env: Envelope = decode(bytes, ENVELOPE_BYTES_MAX).expect("a sealed envelope decodes");
        out.push((format!("body-{i:02}-{kind:?}"), env.body));
    }
    let req = Signed::seal(fixture::request(fx, 1), &fx.network, &fx.gateway);
    let checkpoint = Signed::seal(Checkpoint { seq: 64, state: Digest([5; 32]) }, &fx.network, &fx.replicas[3]);
    let mut state = ReplicatedState::default();
    state.apply(JobId { seq: 1, index: 0 }, &req.msg, &req.msg.digest());
    let reply = fixture::result_reply(fx, 0, &req.msg, &fixture::passed());
    let peer_requests = [
        PeerRequest::Requests(vec![req.msg.digest(), Digest([7; 32])]),
        PeerRequest::Deliver(vec![SignedBytes(req.bytes().to_vec())]),
        PeerRequest::Status(Status { view: 1, changing: true, executed: 70, stable: 64 }),
        PeerRequest::State { proof: vec![SignedBytes(checkpoint.bytes().to_vec())], state: state.encode() },
        PeerRequest::Replies { request: req.msg.digest() },
    ];
    for (i, r) in peer_requests.iter().enumerate() {
        out.push((format!("peer-request-{i}"), encode(r)));
    }
    let peer_responses = [
        PeerResponse::Ack,
        PeerResponse::Replies(vec![SignedBytes(reply.bytes().to_vec())]),
        PeerResponse::Refused("not a member".into()),
    ];
    for (i, r) in peer_responses.iter().enumerate() {
        out.push((format!("peer-response-{i}"), encode(r)));
    }
    out.push(("state".into(), state.encode()));
    // Certificates: one result, and a disputed one with two.
    let replies = |result: &pbft_node::wire::JobResult, signers: &[usize]| -> Vec<Vec<u8>> {
        signers.iter().map(|&i| fixture::result_reply(fx, i, &req.msg, result).bytes().to_vec()).collect()
    };
    let (passed, failed) = (fixture::passed(), fixture::failed());
    let one = Certificate::new(&fx.network, req.bytes(), vec![(passed.digest(), replies(&passed, &[0, 2]))]);
    let two = Certificate::new(
        &fx.network,
        req.bytes(),
        vec![(passed.digest(), replies(&passed, &[0, 1])), (failed.digest(), replies(&failed, &[2, 3]))],
    );
    for (name, cert) in [("certificate-passed", one), ("certificate-disputed", two)] {
        assert!(cert.verify(&fx.members).is_ok(), "the seed {name} verifies");
        out.push((name.into(), serde_json::to_vec_pretty(&cert).expect("JSON")));
    }
    out
}

const GH_DELIVERY: &str = "72d3162e-cc78-11e3-81ab-4c9367dc0958";
const GITEA_DELIVERY: &str = "f6266f16-1bf3-46a5-9ea4-602e06ead473";
const GITLAB_UUID: &str = "13792a34-cac6-4fda-95a8-c58e00a3954e";

fn webhook() -> io::Result<Seeds> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../client-gw/tests/fixtures");
    let fixture = |name: &str| std::fs::read(dir.join(name));
    let sig = |body: &[u8]| pbft_gw::webhook::signature::hmac_sha256_hex(SECRET, body);
    let token = std::str::from_utf8(SECRET).expect("ASCII");
    let signed = SECRET_SET | RUN_TAGS | HAS_REPO;
    let mut out = Seeds::new();
    let mut github = |name: &str, event: &str, flags: u8| -> io::Result<()> {
        let body = fixture(&format!("{name}.json"))?;
        let hub = format!("sha256={}", sig(&body));
        let headers = [
            ("Content-Type", "application/json"),
            ("User-Agent", "GitHub-Hookshot/044aadd"),
            ("X-GitHub-Event", event),
            ("X-GitHub-Delivery", GH_DELIVERY),
            ("X-Hub-Signature-256", hub.as_str()),
        ];
        out.push((format!("{name}-{flags:02x}"), encode_input(flags, &headers, &body)));
        Ok(())
    };
    github("github-push", "push", signed)?;
    github("github-push", "push", RUN_TAGS | HAS_REPO)?;
    github("github-ping", "ping", signed)?;
    github("github-delete", "push", signed)?;
    github("github-tag-push", "push", signed)?;
    github("github-tag-push", "push", SECRET_SET | HAS_REPO)?;
    let gitea_body = fixture("gitea-push.json")?;
    let gitea_sig = sig(&gitea_body);
    let hub = format!("sha256={gitea_sig}");
    let gitea = [
        ("Content-Type", "application/json"),
        ("X-Gitea-Delivery", GITEA_DELIVERY),
        ("X-Gitea-Event", "push"),
        ("X-Gitea-Signature", gitea_sig.as_str()),
        ("X-GitHub-Event", "push"),
        ("X-Hub-Signature-256", hub.as_str()),
    ];
    out.push(("gitea-push".into(), encode_input(signed, &gitea, &gitea_body)));
    let forgejo = [
        ("X-Forgejo-Delivery", GITEA_DELIVERY),
        ("X-Forgejo-Event", "push"),
        ("X-Forgejo-Signature", gitea_sig.as_str()),
        ("X-Gitea-Event", "push"),
    ];
    out.push(("forgejo-push".into(), encode_input(signed, &forgejo, &gitea_body)));
    for (name, event) in [("gitlab-push", "Push Hook"), ("gitlab-tag-push", "Tag Push Hook")] {
        let body = fixture(&format!("{name}.json"))?;
        let headers = [
            ("Content-Type", "application/json"),
            ("X-Gitlab-Event", event),
            ("X-Gitlab-Token", token),
            ("X-Gitlab-Event-UUID", GITLAB_UUID),
        ];
        out.push((name.into(), encode_input(signed, &headers, &body)));
    }
    // GitHub's form delivery, signed by the harness.
    let push = fixture("github-push.json")?;
    let form: String = form_body(&push);
    let headers = [("Content-Type", "application/x-www-form-urlencoded"), ("X-GitHub-Event", "push")];
    out.push(("github-push-form".into(), encode_input(signed | FORM | HARNESS_SIGNS, &headers, form.as_bytes())));
    // The proof of concept's calls.
    let json = [("Content-Type", "application/json")];
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let calls = [
        ("poc-branch", r#"{"branch": "master"}"#.to_string()),
        ("poc-pinned", format!(r#"{{"branch": "feature", "repo": "{OWN_REPO}", "commit": "{commit}"}}"#)),
        ("poc-option", r#"{"branch": "--upload-pack=touch /tmp/pwned"}"#.to_string()),
    ];
    for (name, body) in calls {
        out.push((name.into(), encode_input(HAS_REPO, &json, body.as_bytes())));
    }
    Ok(out)
}

/// `payload=<the JSON, form-urlencoded>`.
fn form_body(json: &[u8]) -> String {
    let mut s = String::from("payload=");
    for &b in json {
        if b.is_ascii_alphanumeric() || b"-_.*".contains(&b) {
            s.push(b as char);
        } else if b == b' ' {
            s.push('+');
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

fn pipeline() -> Seeds {
    let texts = [
        (
            "documented",
            "image: busybox          # default image of the steps\n\
             timeout: 10m            # whole pipeline\n\
             network: false\n\
             steps:\n  - name: build\n    image: other\n    commands: [\"make\", \"make test\"]\n    \
             environment: { KEY: value }\n    timeout: 60\n  - name: check\n    commands:\n      - ./check.sh\n",
        ),
        (
            "testnet-example",
            "# The example pipeline: each replica runs it and signs what it got.\n\
             image: pbft-ci/busybox:latest\ntimeout: 5m\nsteps:\n  - name: build\n    commands:\n      \
             - echo \"building $(cat VERSION)\"\n      - test -s VERSION\n  - name: test\n    commands:\n      \
             - sh tests.sh\n",
        ),
        (
            "anchors-merge",
            "steps:\n  - name: a\n    image: &img alpine:3\n    commands: [make]\n    timeout: &t 90s\n  \
             - name: b\n    image: *img\n    commands: [make test]\n    timeout: *t\n",
        ),
        (
            "merge-keys",
            "image: busybox\nnetwork: true\nsteps:\n  - &base\n    name: lint\n    commands: [\"cargo clippy\"]\n    \
             environment: &env { RUST_LOG: debug, CI: \"true\" }\n  - <<: *base\n    name: test\n    \
             environment: *env\n    timeout: 1h\n",
        ),
        ("flow", "{steps: [{name: a, commands: [\"true\"]}, {name: b, commands: ['false'], timeout: '5m'}]}\n"),
        (
            "block-scalars",
            "steps:\n  - name: script\n    commands:\n      - |\n        set -e\n        make\n      \
             - >\n        folded\n        text\n",
        ),
        ("duplicate-step", "steps:\n  - name: a\n    commands: [x]\n  - name: a\n    commands: [y]\n"),
        ("tagged", "steps: !!seq\n  - name: a\n    commands: [x]\n"),
        ("two-documents", "steps: []\n---\nsteps: []\n"),
        ("unknown-field", "image: x\nstages: [a]\nsteps:\n  - name: a\n    commands: [x]\n"),
    ];
    texts.iter().map(|(n, t)| (n.to_string(), t.as_bytes().to_vec())).collect()
}

fn refs() -> Seeds {
    let texts = [
        "master",
        "feature/login-form",
        "refs/heads/master",
        "refs/tags/v1.2.3",
        "refs/heads",
        "--upload-pack=touch /tmp/pwned",
        "a..b",
        "HEAD@{1}",
        "@",
        "topic.lock",
        "release/.hidden",
        "0123456789abcdef0123456789abcdef01234567",
        "0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF",
        "https://git.example.org/team/app.git",
        "file:///srv/git/app",
        "ssh://git@git.example.org/team/app.git",
        "git+ssh://-oProxyCommand=touch%20x/app",
        "ext::sh -c touch% /tmp/pwned",
        "https://user@-host/app",
    ];
    texts.iter().enumerate().map(|(i, t)| (format!("ref-{i:02}"), t.as_bytes().to_vec())).collect()
}
