//! The `pbft-node` binary as users and scripts run it: keygen, id, verify,
//! run's refusals, and `-h` everywhere.

use std::path::Path;
use std::process::{Command, Output};

use libp2p_identity::Keypair;
use pbft_node::membership::{Member, Membership};
use pbft_node::wire::{Certificate, JobId, JobResult, Operation, Outcome, Reply, ReplyBody, Request, Signed};

fn pbft_node(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pbft-node")).args(args).output().expect("pbft-node runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

#[test]
fn keygen_then_id_print_the_same_peer_id() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("node.key");
    let made = pbft_node(&["keygen", "--out", path(&key)]);
    assert!(made.status.success(), "{}", stderr(&made));
    let peer_id = stdout(&made).trim().to_string();
    assert!(peer_id.starts_with("12D3KooW"), "an ed25519 PeerId: {peer_id}");
    let shown = pbft_node(&["id", "--key", path(&key)]);
    assert!(shown.status.success(), "{}", stderr(&shown));
    assert_eq!(stdout(&shown).trim(), peer_id);
}

#[cfg(unix)]
#[test]
fn keygen_writes_a_key_only_its_owner_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("node.key");
    assert!(pbft_node(&["keygen", "--out", path(&key)]).status.success());
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
}

#[test]
fn keygen_refuses_to_overwrite_a_key_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("node.key");
    let first = pbft_node(&["keygen", "--out", path(&key)]);
    let before = std::fs::read(&key).unwrap();
    let again = pbft_node(&["keygen", "--out", path(&key)]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    assert!(stdout(&again).is_empty());
    assert_eq!(std::fs::read(&key).unwrap(), before, "the key is untouched");
    let forced = pbft_node(&["keygen", "--out", path(&key), "--force"]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert_ne!(stdout(&forced), stdout(&first), "a new identity");
    let shown = pbft_node(&["id", "--key", path(&key)]);
    assert_eq!(stdout(&shown), stdout(&forced));
}

#[test]
fn id_of_a_missing_or_foreign_key_fails_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let missing = pbft_node(&["id", "--key", path(&dir.path().join("absent.key"))]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("absent.key"), "{}", stderr(&missing));
    let secp = dir.path().join("secp.key");
    let mut bytes = vec![0x08, 0x02, 0x12, 0x20];
    bytes.extend_from_slice(&[7; 32]);
    std::fs::write(&secp, bytes).unwrap();
    let foreign = pbft_node(&["id", "--key", path(&secp)]);
    assert_eq!(foreign.status.code(), Some(1));
    assert!(stderr(&foreign).contains("ed25519"), "{}", stderr(&foreign));
}

/// A 4-replica network's membership file and a certificate with f + 1 = 2
/// result replies, written to `dir`.
fn write_network_and_certificate(dir: &Path) -> (String, String, Certificate) {
    let replicas: Vec<Keypair> = (0..4).map(|_| Keypair::generate_ed25519()).collect();
    let gateway = Keypair::generate_ed25519();
    let member = |k: &Keypair| Member { peer_id: k.public().to_peer_id(), addr: None };
    let members = Membership::new(
        "cli-test".into(),
        replicas.iter().map(member).collect(),
        vec![member(&gateway)],
        vec!["https://git.example.org/team/".into()],
    )
    .unwrap();
    let network = members.network_id();
    let request = Request {
        gateway: gateway.public().to_peer_id(),
        number: 1,
        delivery: None,
        op: Operation::Run {
            repo: "https://git.example.org/team/app.git".into(),
            git_ref: "master".into(),
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
        },
    };
    let result = JobResult {
        commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
        tree: None,
        pipeline: None,
        executor: "local".into(),
        steps: vec![],
        outcome: Outcome::Passed,
    };
    let sealed = Signed::seal(request.clone(), &network, &gateway);
    let replies = [0, 2]
        .iter()
        .map(|&i| {
            let reply = Reply {
                view: 0,
                gateway: request.gateway,
                number: 1,
                request: request.digest(),
                body: ReplyBody::Result { job: JobId { seq: 1, index: 0 }, result: result.clone() },
            };
            Signed::seal(reply, &network, &replicas[i]).bytes().to_vec()
        })
        .collect();
    let cert = Certificate::new(&network, sealed.bytes(), vec![(result.digest(), replies)]);
    let members_path = dir.join("members.toml");
    let cert_path = dir.join("cert.json");
    std::fs::write(&members_path, members.to_toml()).unwrap();
    std::fs::write(&cert_path, serde_json::to_string_pretty(&cert).unwrap()).unwrap();
    (path(&members_path).to_string(), path(&cert_path).to_string(), cert)
}

#[test]
fn verify_accepts_a_valid_certificate_with_a_one_line_summary() {
    let dir = tempfile::tempdir().unwrap();
    let (members, cert, _) = write_network_and_certificate(dir.path());
    let out = pbft_node(&["verify", "--members", &members, &cert]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with("valid"), "{text}");
    assert!(text.contains("passed") && text.contains("job 1-0"), "{text}");
    assert!(text.contains("2 of 4"), "{text}");
}

#[test]
fn verify_rejects_a_tampered_certificate_with_exit_1_and_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (members, cert_path, cert) = write_network_and_certificate(dir.path());
    let mut reply = hex::decode(&cert.sets[0].replies[1]).unwrap();
    let last = reply.len() - 1;
    reply[last] ^= 0x01; // inside the signature
    let mut tampered = cert.clone();
    tampered.sets[0].replies[1] = hex::encode(reply);
    std::fs::write(&cert_path, serde_json::to_string(&tampered).unwrap()).unwrap();
    let out = pbft_node(&["verify", "--members", &members, &cert_path]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    assert!(stderr(&out).contains("bad signature"), "{}", stderr(&out));
}

#[test]
fn verify_against_another_network_or_with_unreadable_input_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, _) = write_network_and_certificate(dir.path());
    let other = tempfile::tempdir().unwrap();
    let (other_members, _, _) = write_network_and_certificate(other.path());
    let out = pbft_node(&["verify", "--members", &other_members, &cert]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("network"), "{}", stderr(&out));
    std::fs::write(&cert, "{\"not\": \"a certificate\"}").unwrap();
    let out = pbft_node(&["verify", "--members", &other_members, &cert]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not a certificate"), "{}", stderr(&out));
    let out = pbft_node(&["verify", "--members", path(&dir.path().join("absent.toml")), &cert]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("absent.toml"), "{}", stderr(&out));
}

#[test]
fn every_subcommand_answers_h() {
    for args in [
        &["-h"][..],
        &["--help"],
        &["keygen", "-h"],
        &["id", "-h"],
        &["verify", "-h"],
        &["help", "verify"],
        &["run", "-h"],
    ] {
        let out = pbft_node(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(stdout(&out).contains("Usage: pbft-node"), "{args:?}: {}", stdout(&out));
    }
    let top = stdout(&pbft_node(&["-h"]));
    for sub in ["keygen", "id", "verify", "run"] {
        assert!(top.contains(sub), "{top}");
    }
    let run = stdout(&pbft_node(&["run", "-h"]));
    for flag in [
        "--key",
        "--members",
        "--listen",
        "--bootstrap",
        "--mdns",
        "--no-mdns",
        "--data-dir",
        "--executor",
        "--log-dir",
        "--max-jobs",
        "--default-pipeline",
        "--allow-file-urls",
        "--git-scheme",
    ] {
        assert!(run.contains(flag), "run -h names {flag}: {run}");
    }
}

#[test]
fn run_refuses_an_invalid_default_pipeline_before_joining() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = String::from("name = \"cli-test\"\nrepos = []\n");
    for i in 0..4 {
        let out = pbft_node(&["keygen", "--out", path(&dir.path().join(format!("r{i}.key")))]);
        members.push_str(&format!("\n[[replicas]]\npeer_id = \"{}\"\n", stdout(&out).trim()));
    }
    let members_file = dir.path().join("members.toml");
    std::fs::write(&members_file, members).unwrap();
    let pipeline = dir.path().join("default.yml");
    std::fs::write(&pipeline, "steps:\n  - name: build\n    commands: 3\n").unwrap();
    let out = pbft_node(&[
        "run",
        "--key",
        path(&dir.path().join("r0.key")),
        "--members",
        path(&members_file),
        "--executor",
        "none",
        "--default-pipeline",
        path(&pipeline),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--data-dir",
        path(&dir.path().join("data")),
        "--log-dir",
        path(&dir.path().join("log")),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("is not a valid pipeline") && err.contains("line 3"), "{err}");
}

#[test]
fn run_with_a_key_that_is_not_a_replica_fails_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (members, _, _) = write_network_and_certificate(dir.path());
    let key = dir.path().join("outsider.key");
    assert!(pbft_node(&["keygen", "--out", path(&key)]).status.success());
    let log = dir.path().join("log");
    let out = pbft_node(&[
        "run",
        "--key",
        path(&key),
        "--members",
        &members,
        "--executor",
        "none",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--data-dir",
        path(&dir.path().join("data")),
        "--log-dir",
        path(&log),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not a replica"), "{}", stderr(&out));
}
