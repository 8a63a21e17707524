//! End to end over real processes on 127.0.0.1: four `pbft-node run
//! --executor none` replicas and `pbft-gw`, driven over HTTP as curl would.
//! A webhook gets a verdict whose certificate `pbft-node verify` accepts
//! (and refuses once one signed hex digit changes); a redelivered GitHub
//! event runs once; a gateway killed with -9 right after its 202 still
//! delivers that job's verdict once restarted.
//!
//! The testnet is `support`'s: one at a time on this machine, every process
//! killed when it is dropped.

mod support;

use std::time::Instant;

use pbft_gw::webhook::signature::hmac_sha256_hex;
use serde_json::Value;
use support::{Testnet, SECRET};

const COMMIT: &str = "89abcdef0123456789abcdef0123456789abcdef";
const GITHUB_PUSH: &str = include_str!("fixtures/github-push.json");

/// Changes the last hex digit of the first signed reply of the first set.
fn tampered(cert: &Value) -> Value {
    let mut bad = cert.clone();
    let reply = bad["sets"][0]["replies"][0].as_str().unwrap().to_string();
    let last = reply.chars().last().unwrap();
    let other = if last == '0' { '1' } else { '0' };
    bad["sets"][0]["replies"][0] = Value::String(format!("{}{other}", &reply[..reply.len() - 1]));
    bad
}

#[test]
fn a_webhook_gets_a_verdict_whose_certificate_pbft_node_verify_accepts_and_a_redelivery_runs_once() {
    let net = Testnet::start();
    let started = Instant::now();

    // The proof of concept's call, waiting for the verdict: the gateway pins
    // the branch to its commit, and `none` passes a pinned commit.
    let (status, job) = net.post_json("/webHook?wait=60", r#"{"branch": "master"}"#);
    assert_eq!(status, 200, "{job}");
    assert_eq!((job["verdict"].as_str(), job["ref"].as_str()), (Some("passed"), Some("master")));
    assert_eq!((job["repo"].as_str(), job["commit"].as_str()), (Some(net.repo.as_str()), Some(net.head.as_str())));
    let votes = job["votes"].as_array().unwrap();
    assert_eq!(votes.len(), 4);
    assert!(votes.iter().filter(|v| v["vote"] == "passed").count() >= 2, "{job}");

    // What `GET /jobs/ID` serves: its certificate field, and the certificate route.
    let (ok, said) = net.verify("cert.json", &job["certificate"]);
    assert!(ok, "pbft-node verify refused the certificate: {said}");
    assert!(said.contains("valid") && said.contains("passed"), "{said}");
    let id = job["id"].as_str().unwrap();
    let (status, alone) = net.request("GET", &format!("/jobs/{id}/certificate"), &[], "");
    assert_eq!(status, 200);
    assert!(net.verify("alone.json", &alone).0);
    let (ok, said) = net.verify("tampered.json", &tampered(&job["certificate"]));
    assert!(!ok, "a changed hex digit must fail: {said}");

    // A branch that does not exist goes unpinned: the replicas agree the ref was not found.
    let (status, job) = net.post_json("/webHook?wait=60", r#"{"branch": "no-such-branch"}"#);
    assert_eq!((status, job["verdict"].as_str(), job["commit"].as_null()), (200, Some("error"), Some(())), "{job}");
    assert!(job["certificate"].is_object(), "an error result is certified too: {job}");

    // The same GitHub delivery twice: one job, run once.
    let sig = format!("sha256={}", hmac_sha256_hex(SECRET.as_bytes(), GITHUB_PUSH.as_bytes()));
    let headers = [
        ("Content-Type", "application/json".to_string()),
        ("X-GitHub-Event", "push".into()),
        ("X-GitHub-Delivery", "3b1a2c90-0f3e-11ef-9f1a-5f3c1d2e4a6b".into()),
        ("X-Hub-Signature-256", sig),
    ];
    let (s1, first) = net.request("POST", "/webhook", &headers, GITHUB_PUSH);
    let (s2, second) = net.request("POST", "/webhook?wait=60", &headers, GITHUB_PUSH);
    assert_eq!((s1, s2), (202, 200), "{first} {second}");
    assert_eq!(first["id"], second["id"]);
    assert_eq!(second["verdict"], "passed");
    let (_, list) = net.request("GET", "/jobs", &[], "");
    let deliveries = list["jobs"].as_array().unwrap().iter().filter(|j| j["delivery"] == headers[2].1).count();
    assert_eq!(deliveries, 1, "{list}");
    // Replicas ran it once: one ordered job id, and one result per replica at most.
    assert!(second["job"].is_string());
    eprintln!("e2e: verdict, certificate and redelivery in {:?} once the testnet was up", started.elapsed());
}

#[test]
fn a_gateway_killed_right_after_its_202_delivers_the_verdict_once_restarted() {
    let mut net = Testnet::start();
    let started = Instant::now();
    let body = format!(r#"{{"branch": "release", "commit": "{COMMIT}"}}"#);
    let (status, accepted) = net.post_json("/webHook", &body);
    assert_eq!(status, 202, "{accepted}");
    net.kill_gateway();

    net.start_gateway();
    let url = format!("{}?wait=60", accepted["status_url"].as_str().unwrap());
    let (status, job) = net.request("GET", &url, &[], "");
    assert_eq!((status, job["verdict"].as_str()), (200, Some("passed")), "{job}");
    assert_eq!(job["id"], accepted["id"]);
    let (ok, said) = net.verify("cert.json", &job["certificate"]);
    assert!(ok, "{said}");
    // And the restarted gateway numbers new jobs after the ones it had.
    let (status, next) = net.post_json("/webHook", r#"{"branch": "master"}"#);
    assert_eq!(status, 202);
    assert!(
        next["id"].as_str().unwrap().parse::<u64>().unwrap() > accepted["id"].as_str().unwrap().parse::<u64>().unwrap()
    );
    eprintln!("e2e: kill -9 and restart of the gateway in {:?} once the testnet was up", started.elapsed());
}
