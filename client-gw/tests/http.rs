//! The HTTP contract, driven in process (`tower::ServiceExt::oneshot`) and
//! once over a real socket: exact statuses and JSON for good and bad input,
//! nothing stored or relayed for what is refused, verdicts and certificates
//! that verify.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode};
use axum::Router;
use libp2p_identity::Keypair;
use pbft_gw::gateway::{Gateway, RelayLinks};
use pbft_gw::jobs::Jobs;
use pbft_gw::relay::Collector;
use pbft_gw::webhook::signature::hmac_sha256_hex;
use pbft_gw::webhook::IntakeConfig;
use pbft_node::driver::NoneExecutor;
use pbft_node::membership::{Member, Membership};
use pbft_node::wire::{
    Certificate, JobId, JobResult, Operation, Outcome, Reply, ReplyBody, Request as WireRequest, Signed,
};
use serde_json::Value;
use tower::ServiceExt as _;

const REPO: &str = "file:///srv/git/app";
const SECRET: &str = "s3cret-for-tests";
const GITHUB_PUSH: &str = include_str!("fixtures/github-push.json");

struct Harness {
    _dir: tempfile::TempDir,
    jobs: Arc<Jobs>,
    links: RelayLinks,
    replicas: Vec<Keypair>,
    membership: Arc<Membership>,
    router: Router,
}

fn harness(rate_limit: Option<u32>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let replicas: Vec<Keypair> = (0..4).map(|_| Keypair::generate_ed25519()).collect();
    let key = Keypair::generate_ed25519();
    let member = |k: &Keypair| Member { peer_id: k.public().to_peer_id(), addr: None };
    let membership = Arc::new(
        Membership::new(
            "http-test".into(),
            replicas.iter().map(member).collect(),
            vec![member(&key)],
            vec!["file:///srv/git/".into(), "https://github.com/Codertocat/".into()],
        )
        .unwrap(),
    );
    let jobs = Arc::new(Jobs::open(dir.path()).unwrap());
    let intake = IntakeConfig { repo: Some(REPO.into()), secret: Some(SECRET.as_bytes().to_vec()), run_tags: true };
    let (gateway, links) = Gateway::new(jobs.clone(), membership.clone(), key, intake, None);
    let router = pbft_gw::http::router(gateway.clone(), rate_limit.and_then(NonZeroU32::new));
    Harness { _dir: dir, jobs, links, replicas, membership, router }
}

fn from(ip: [u8; 4]) -> MockConnectInfo<SocketAddr> {
    MockConnectInfo(SocketAddr::from((ip, 40000)))
}

impl Harness {
    async fn send_from(&self, ip: [u8; 4], req: Request<Body>) -> (StatusCode, Value) {
        let resp = self.router.clone().layer(from(ip)).oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
        (status, json)
    }

    async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        self.send_from([192, 0, 2, 1], req).await
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.send(Request::get(uri).body(Body::empty()).unwrap()).await
    }

    /// Takes the request the gateway handed to the relay, if any.
    fn relayed(&mut self) -> Option<Signed<WireRequest>> {
        self.links.requests.try_recv().ok().map(|(r, _)| r)
    }

    /// Replica `i`'s signed result for `req`.
    fn result(&self, i: usize, req: &WireRequest, result: &JobResult) -> Signed<Reply> {
        let reply = Reply {
            view: 0,
            gateway: req.gateway,
            number: req.number,
            request: req.digest(),
            body: ReplyBody::Result { job: JobId { seq: 1, index: 0 }, result: result.clone() },
        };
        Signed::seal(reply, &self.membership.network_id(), &self.replicas[i])
    }
}

fn poc(body: &str) -> Request<Body> {
    post("/webHook", "application/json", &[], body.as_bytes().to_vec())
}

fn post(uri: &str, content_type: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Request<Body> {
    let mut b = Request::post(uri);
    if !content_type.is_empty() {
        b = b.header("content-type", content_type);
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::from(body)).unwrap()
}

fn github(body: &str, delivery: &str, secret: &str) -> Request<Body> {
    let sig = format!("sha256={}", hmac_sha256_hex(secret.as_bytes(), body.as_bytes()));
    post(
        "/webhook",
        "application/json",
        &[("x-github-event", "push"), ("x-github-delivery", delivery), ("x-hub-signature-256", &sig)],
        body.as_bytes().to_vec(),
    )
}

fn failed(req: &WireRequest) -> JobResult {
    JobResult { outcome: Outcome::Failed { step: "test".into(), exit_code: 1 }, ..NoneExecutor::result(req) }
}

#[tokio::test]
async fn bad_input_gets_its_exact_status_and_nothing_is_submitted() {
    let mut h = harness(None);
    let other_repo = GITHUB_PUSH.replace("https://github.com/Codertocat/Hello-World.git", "https://evil.example/x.git");
    let oversized = format!(r#"{{"branch": "master", "pad": "{}"}}"#, "x".repeat(1024 * 1024));
    let cases: Vec<(&str, Request<Body>, u16)> = vec![
        ("garbage JSON", poc("{\"branch\": "), 400),
        ("not JSON at all", poc("\u{0}\u{1}binary"), 400),
        ("missing branch", poc("{}"), 400),
        ("branch of the wrong type", poc(r#"{"branch": ["master"]}"#), 400),
        ("another repository", poc(r#"{"branch": "master", "repo": "file:///srv/git/other"}"#), 400),
        ("option injection", poc(r#"{"branch": "--upload-pack=touch /tmp/pwned"}"#), 400),
        ("dot-dot", poc(r#"{"branch": "a/../../b"}"#), 400),
        ("a space", poc(r#"{"branch": "a b"}"#), 400),
        ("a control character", poc(r#"{"branch": "a\nb"}"#), 400),
        ("a lock file", poc(r#"{"branch": "main.lock"}"#), 400),
        ("not a commit id", poc(r#"{"branch": "master", "commit": "HEAD~1"}"#), 400),
        (
            "unsigned GitHub push",
            post("/webhook", "application/json", &[("x-github-event", "push")], GITHUB_PUSH.into()),
            401,
        ),
        ("wrong signature", github(GITHUB_PUSH, "d-1", "not the secret"), 401),
        ("signed, repository not allowed", github(&other_repo, "d-2", SECRET), 400),
        ("oversized", poc(&oversized), 413),
        ("text/plain", post("/webHook", "text/plain", &[], br#"{"branch": "master"}"#.to_vec()), 415),
        ("no content type", post("/webHook", "", &[], br#"{"branch": "master"}"#.to_vec()), 415),
        (
            "form without payload",
            post("/webHook", "application/x-www-form-urlencoded", &[], b"branch=master".to_vec()),
            400,
        ),
        ("bad wait", post("/webHook?wait=soon", "application/json", &[], br#"{"branch": "master"}"#.to_vec()), 400),
        ("GET on the webhook", Request::get("/webHook").body(Body::empty()).unwrap(), 405),
        ("unknown route", Request::get("/nope").body(Body::empty()).unwrap(), 404),
        ("unknown job", Request::get("/jobs/17").body(Body::empty()).unwrap(), 404),
        ("job id not a number", Request::get("/jobs/..%2F..%2Fetc").body(Body::empty()).unwrap(), 404),
    ];
    let mut failures = Vec::new();
    for (name, req, want) in cases {
        let (status, body) = h.send(req).await;
        if status.as_u16() != want || !body["error"].is_string() || body.as_object().unwrap().len() != 1 {
            failures.push(format!("{name}: want {want} {{\"error\"}}, got {status} {body}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    assert!(h.jobs.list(None, 10).unwrap().is_empty(), "nothing stored");
    assert!(h.relayed().is_none(), "nothing relayed");
}

#[tokio::test]
async fn a_flood_from_one_source_gets_429_while_others_get_through() {
    let mut h = harness(Some(3));
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(h.send(poc(r#"{"branch": "master"}"#)).await.0.as_u16());
    }
    assert_eq!(statuses, [202, 202, 202, 429, 429, 429]);
    let (status, body) = h.send(poc(r#"{"branch": "master"}"#)).await;
    assert_eq!((status.as_u16(), body["error"].is_string()), (429, true));
    // Another source has its own budget.
    assert_eq!(h.send_from([198, 51, 100, 7], poc(r#"{"branch": "master"}"#)).await.0, StatusCode::ACCEPTED);
    assert_eq!(h.jobs.list(None, 100).unwrap().len(), 4, "only what got 202 was stored");
    let mut relayed = 0;
    while h.relayed().is_some() {
        relayed += 1;
    }
    assert_eq!(relayed, 4);
}

#[tokio::test]
async fn a_poc_call_is_stored_signed_and_relayed_before_its_202() {
    let mut h = harness(None);
    let (status, body) = h.send(poc(r#"{"branch": "master"}"#)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body, serde_json::json!({"id": "1", "status_url": "/jobs/1"}));
    let stored = h.jobs.get(1).unwrap().expect("durable before the 202");
    let req = h.relayed().expect("relayed");
    assert_eq!(req.bytes(), stored.request.as_slice());
    assert_eq!(req.signer, h.membership.gateways[0].peer_id);
    assert_eq!(req.msg.number, 1);
    assert_eq!(req.msg.op, Operation::Run { repo: REPO.into(), git_ref: "master".into(), commit: None });

    let (status, job) = h.get("/jobs/1").await;
    assert_eq!(status, StatusCode::ACCEPTED, "pending");
    for field in ["id", "repo", "ref", "commit", "verdict", "votes", "certificate"] {
        assert!(job.get(field).is_some(), "{field} missing from {job}");
    }
    assert_eq!((job["repo"].as_str(), job["ref"].as_str()), (Some(REPO), Some("master")));
    assert!(job["verdict"].is_null() && job["certificate"].is_null());
    let votes = job["votes"].as_array().unwrap();
    assert_eq!(votes.len(), 4);
    assert_eq!(votes[2]["replica"], h.membership.replicas[2].peer_id.to_string());
    assert!(votes.iter().all(|v| v["vote"].is_null()));
    assert_eq!(h.get("/jobs/1/certificate").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_redelivery_names_the_existing_job_and_runs_nothing() {
    let mut h = harness(None);
    let (s1, first) = h.send(github(GITHUB_PUSH, "72d3162e-cc78-11e3-81ab-4c9367dc0958", SECRET)).await;
    let (s2, again) = h.send(github(GITHUB_PUSH, "72d3162e-cc78-11e3-81ab-4c9367dc0958", SECRET)).await;
    assert_eq!((s1, s2), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    assert_eq!(first["id"], again["id"]);
    assert_eq!(again["redelivery"], true);
    let req = h.relayed().expect("the first is relayed");
    assert_eq!(req.msg.delivery.as_deref(), Some("72d3162e-cc78-11e3-81ab-4c9367dc0958"));
    assert!(h.relayed().is_none(), "the redelivery is not");
    // A ping is acknowledged and runs nothing either.
    let sig = format!("sha256={}", hmac_sha256_hex(SECRET.as_bytes(), b"{}"));
    let ping = post(
        "/webhook",
        "application/json",
        &[("x-github-event", "ping"), ("x-hub-signature-256", &sig)],
        b"{}".to_vec(),
    );
    let (status, body) = h.send(ping).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["skipped"].is_string());
    assert!(h.relayed().is_none());
}

#[tokio::test]
async fn wait_answers_with_the_verdict_and_a_certificate_that_verifies() {
    let mut h = harness(None);
    let mut collector = Collector::new(h.jobs.clone(), h.membership.clone(), Duration::from_secs(600)).unwrap();
    let router = h.router.clone().layer(from([192, 0, 2, 1]));
    let waiting = tokio::spawn(router.oneshot(post(
        "/webHook?wait=30",
        "application/json",
        &[],
        br#"{"branch": "master", "commit": "0123456789abcdef0123456789abcdef01234567"}"#.to_vec(),
    )));
    // The relay's part: the request arrives, the replicas answer.
    let req = loop {
        if let Some(r) = h.relayed() {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    collector.track(req.msg.number, req.msg.digest(), pbft_gw::gateway::now_ms());
    let passed = NoneExecutor::result(&req.msg);
    for i in [3, 1] {
        collector.on_reply(i, &h.result(i, &req.msg, &passed), pbft_gw::gateway::now_ms()).unwrap();
    }
    // Two of four agree, but two outstanding could still agree on another result.
    assert!(h.jobs.get(1).unwrap().unwrap().decision.is_none());
    assert!(collector.on_reply(0, &h.result(0, &req.msg, &passed), pbft_gw::gateway::now_ms()).unwrap());
    h.links.changed.send_modify(|v| *v += 1);

    let resp = waiting.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let job: Value =
        serde_json::from_slice(&axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap()).unwrap();
    assert_eq!(job["verdict"], "passed");
    assert_eq!(job["commit"], "0123456789abcdef0123456789abcdef01234567");
    let votes: Vec<&str> = job["votes"].as_array().unwrap().iter().map(|v| v["vote"].as_str().unwrap_or("-")).collect();
    assert_eq!(votes, ["passed", "passed", "-", "passed"]);
    assert_eq!(job["votes"][1]["result"], passed.digest().to_hex());

    // The certificate field, and the certificate route, are what `pbft-node verify` reads.
    let cert: Certificate = serde_json::from_value(job["certificate"].clone()).unwrap();
    let verified = cert.verify(h.membership.as_ref()).expect("valid");
    assert_eq!(verified.results, vec![(passed.digest(), passed.clone())]);
    assert_eq!(cert.sets[0].replies.len(), 3);
    let (status, alone) = h.get("/jobs/1/certificate").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(serde_json::from_value::<Certificate>(alone).unwrap(), cert);
    // One hex digit of a signed reply changed: refused.
    let mut bad = cert.clone();
    let r = &mut bad.sets[0].replies[0];
    let flipped = if r.ends_with('0') { '1' } else { '0' };
    r.pop();
    r.push(flipped);
    assert!(bad.verify(h.membership.as_ref()).is_err());
}

#[tokio::test]
async fn two_results_with_f_plus_one_each_are_disputed_with_two_certificate_sets() {
    let mut h = harness(None);
    let mut collector = Collector::new(h.jobs.clone(), h.membership.clone(), Duration::from_secs(600)).unwrap();
    h.send(poc(r#"{"branch": "master", "commit": "0123456789abcdef0123456789abcdef01234567"}"#)).await;
    let req = h.relayed().unwrap();
    collector.track(req.msg.number, req.msg.digest(), pbft_gw::gateway::now_ms());
    let (ok, bad) = (NoneExecutor::result(&req.msg), failed(&req.msg));
    for (i, r) in [(0, &ok), (1, &bad), (2, &ok), (3, &bad)] {
        collector.on_reply(i, &h.result(i, &req.msg, r), pbft_gw::gateway::now_ms()).unwrap();
    }
    let (status, job) = h.get("/jobs/1").await;
    assert_eq!((status, job["verdict"].as_str()), (StatusCode::OK, Some("disputed")));
    let cert: Certificate = serde_json::from_value(job["certificate"].clone()).unwrap();
    assert_eq!(cert.verify(h.membership.as_ref()).unwrap().results.len(), 2);
    // A second word from a replica does not count.
    collector.on_reply(0, &h.result(0, &req.msg, &bad), pbft_gw::gateway::now_ms()).unwrap();
    assert_eq!(h.get("/jobs/1").await.1["votes"][0]["vote"], "passed");
}

#[tokio::test]
async fn wait_runs_out_with_the_pending_job() {
    let h = harness(None);
    let started = std::time::Instant::now();
    let (status, job) = h.send(poc_wait(1)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!((job["id"].as_str(), job["status_url"].as_str()), (Some("1"), Some("/jobs/1")));
    assert!(job["verdict"].is_null());
}

fn poc_wait(secs: u64) -> Request<Body> {
    post(&format!("/webHook?wait={secs}"), "application/json", &[], br#"{"branch": "master"}"#.to_vec())
}

#[tokio::test]
async fn jobs_are_listed_newest_first_in_pages() {
    let h = harness(None);
    for b in ["a", "b", "c"] {
        h.send(poc(&format!(r#"{{"branch": "{b}"}}"#))).await;
    }
    let (status, page) = h.get("/jobs?limit=2").await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = page["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["3", "2"]);
    assert_eq!(page["next"], "/jobs?before=2&limit=2");
    let (_, rest) = h.get(page["next"].as_str().unwrap()).await;
    assert_eq!(rest["jobs"][0]["ref"], "a");
    assert!(rest["next"].is_null());
    assert_eq!(h.get("/jobs?limit=x").await.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn healthz_is_503_below_a_quorum_of_connected_replicas() {
    let h = harness(None);
    let (status, body) = h.get("/healthz").await;
    assert_eq!((status, body["replicas_connected"].as_u64()), (StatusCode::SERVICE_UNAVAILABLE, Some(0)));
    h.links.connected.store(2, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(h.get("/healthz").await.0, StatusCode::SERVICE_UNAVAILABLE);
    h.links.connected.store(3, std::sync::atomic::Ordering::Relaxed);
    let (status, body) = h.get("/healthz").await;
    assert_eq!((status, body["quorum"].as_u64(), body["replicas"].as_u64()), (StatusCode::OK, Some(3), Some(4)));
}

/// One HTTP/1.1 exchange over a socket: (status, JSON body).
fn exchange(addr: SocketAddr, raw: &str) -> (u16, Value) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_holds_over_a_real_socket() {
    let mut h = harness(Some(2));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(pbft_gw::http::serve(listener, h.router.clone(), std::future::pending()));
    let body = r#"{"branch":"master"}"#;
    let post = format!(
        "POST /webHook HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let answers: Vec<(u16, Value)> =
        tokio::task::spawn_blocking(move || (0..3).map(|_| exchange(addr, &post)).collect()).await.unwrap();
    assert_eq!(answers[0], (202, serde_json::json!({"id": "1", "status_url": "/jobs/1"})));
    assert_eq!(answers[1].0, 202);
    assert_eq!(answers[2].0, 429, "the socket's source address is rate limited: {:?}", answers[2]);
    assert!(h.relayed().is_some());
    let get = "GET /jobs/1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_string();
    let (status, job) = tokio::task::spawn_blocking(move || exchange(addr, &get)).await.unwrap();
    assert_eq!((status, job["ref"].as_str()), (202, Some("master")));
    server.abort();
}

#[tokio::test]
async fn a_rerun_orders_the_same_commit_again_as_a_new_job() {
    let mut h = harness(None);
    let body = r#"{"branch": "master", "commit": "0123456789abcdef0123456789abcdef01234567"}"#;
    h.send(poc(body)).await;
    let first = h.relayed().unwrap();
    let (status, answer) = h.send(post("/jobs/1/rerun", "", &[], vec![])).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(answer, serde_json::json!({"id": "2", "status_url": "/jobs/2", "rerun_of": "1"}));
    let again = h.relayed().unwrap();
    assert_eq!((again.msg.number, &again.msg.op), (2, &first.msg.op));
    assert_eq!(h.send(post("/jobs/9/rerun", "", &[], vec![])).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_cancel_ordered_before_the_verdict_makes_it_cancelled() {
    let mut h = harness(None);
    let mut collector = Collector::new(h.jobs.clone(), h.membership.clone(), Duration::from_secs(600)).unwrap();
    h.send(poc(r#"{"branch": "master"}"#)).await;
    let req = h.relayed().unwrap();
    collector.track(1, req.msg.digest(), pbft_gw::gateway::now_ms());
    // Not ordered yet: nothing to name in a cancel.
    let (status, body) = h.send(post("/jobs/1/cancel", "", &[], vec![])).await;
    assert_eq!((status, body["error"].is_string()), (StatusCode::CONFLICT, true));
    assert!(h.relayed().is_none());
    let job = JobId { seq: 4, index: 2 };
    collector.on_ordered(1, job).unwrap();
    let (status, answer) = h.send(post("/jobs/1/cancel", "", &[], vec![])).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(answer, serde_json::json!({"id": "2", "status_url": "/jobs/2", "cancels": "1"}));
    let cancel = h.relayed().unwrap();
    assert_eq!((cancel.msg.number, cancel.msg.op.clone()), (2, Operation::Cancel { job }));
    assert!(collector.on_ordered(2, JobId { seq: 5, index: 0 }).unwrap(), "the target's verdict changed");
    let (status, target) = h.get("/jobs/1").await;
    assert_eq!((status, target["verdict"].as_str()), (StatusCode::OK, Some("cancelled")));
    assert!(target["certificate"].is_null());
    assert_eq!(h.get("/jobs/2").await.1["cancel_of"], "1");
    // Results arriving afterwards change nothing.
    let passed = NoneExecutor::result(&req.msg);
    for i in 0..4 {
        collector.on_reply(i, &h.result(i, &req.msg, &passed), pbft_gw::gateway::now_ms()).unwrap();
    }
    assert_eq!(h.get("/jobs/1").await.1["verdict"], "cancelled");
    assert_eq!(h.send(post("/jobs/1/cancel", "", &[], vec![])).await.0, StatusCode::CONFLICT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deliveries_get_distinct_numbers_and_concurrent_redeliveries_one_job() {
    let mut h = harness(None);
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let router = h.router.clone().layer(from([192, 0, 2, 1]));
        tasks.push(tokio::spawn(router.oneshot(poc(&format!(r#"{{"branch": "b{i}"}}"#)))));
    }
    let same = "5f0a7c1e-0d2b-4c7e-9a51-2f6b8d3e1c40";
    for _ in 0..20 {
        let router = h.router.clone().layer(from([192, 0, 2, 1]));
        tasks.push(tokio::spawn(router.oneshot(github(GITHUB_PUSH, same, SECRET))));
    }
    let mut ids = Vec::new();
    for t in tasks {
        let resp = t.await.unwrap().unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        let body: Value =
            serde_json::from_slice(&axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap()).unwrap();
        ids.push(body["id"].as_str().unwrap().parse::<u64>().unwrap());
    }
    eprintln!("220 concurrent deliveries stored in {:?}", started.elapsed());
    let redelivered: std::collections::BTreeSet<u64> = ids[200..].iter().copied().collect();
    assert_eq!(redelivered.len(), 1, "one job for one delivery id: {redelivered:?}");
    let mut all: Vec<u64> = ids[..200].to_vec();
    all.extend(&redelivered);
    all.sort_unstable();
    assert_eq!(all, (1..=201).collect::<Vec<u64>>(), "distinct numbers, none skipped");
    let mut relayed = 0;
    while h.relayed().is_some() {
        relayed += 1;
    }
    assert_eq!(relayed, 201);
}

/// `GET /metrics` as Prometheus scrapes it: (content type, text).
async fn scrape(h: &Harness) -> (String, String) {
    let resp = h.router.clone().oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (ctype, String::from_utf8(bytes.to_vec()).unwrap())
}

/// The value of the sample `name{labels}` (exactly as written), if exposed.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_count_webhooks_by_outcome_verdicts_replies_and_connected_replicas() {
    let mut h = harness(None);
    let mut collector = Collector::new(h.jobs.clone(), h.membership.clone(), Duration::from_secs(600)).unwrap();
    collector.count_into(h.links.metrics.clone());
    let (ctype, before) = scrape(&h).await;
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert_eq!(sample(&before, "pbft_gw_replicas"), Some(4.0));
    assert_eq!(sample(&before, "pbft_gw_replicas_connected"), Some(0.0));

    let pinned = r#"{"branch": "master", "commit": "0123456789abcdef0123456789abcdef01234567"}"#;
    assert_eq!(h.send(poc(pinned)).await.0, StatusCode::ACCEPTED);
    assert_eq!(h.send(poc(r#"{"branch": "b"}"#)).await.0, StatusCode::ACCEPTED);
    let delivery = "0f8d7a4e-1111-4c7e-9a51-2f6b8d3e1c40";
    assert_eq!(h.send(github(GITHUB_PUSH, delivery, SECRET)).await.0, StatusCode::ACCEPTED);
    assert_eq!(h.send(github(GITHUB_PUSH, delivery, SECRET)).await.0, StatusCode::ACCEPTED);
    let sig = format!("sha256={}", hmac_sha256_hex(SECRET.as_bytes(), b"{}"));
    let ping = post(
        "/webhook",
        "application/json",
        &[("x-github-event", "ping"), ("x-hub-signature-256", &sig)],
        b"{}".into(),
    );
    assert_eq!(h.send(ping).await.0, StatusCode::OK);
    assert_eq!(h.send(github(GITHUB_PUSH, "d-bad", "wrong")).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(h.send(github(GITHUB_PUSH, "d-bad2", "wrong")).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(h.send(poc("{")).await.0, StatusCode::BAD_REQUEST);
    let plain = post("/webHook", "text/plain", &[], b"{}".to_vec());
    assert_eq!(h.send(plain).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // The first job gets three passing results: a verdict.
    let req = h.relayed().unwrap();
    collector.track(req.msg.number, req.msg.digest(), pbft_gw::gateway::now_ms());
    let passed = NoneExecutor::result(&req.msg);
    for i in [0, 1, 2] {
        collector.on_reply(i, &h.result(i, &req.msg, &passed), pbft_gw::gateway::now_ms()).unwrap();
    }
    h.links.connected.store(3, std::sync::atomic::Ordering::Relaxed);

    let (_, text) = scrape(&h).await;
    let want = [
        ("pbft_gw_webhooks_total{outcome=\"accepted\",status=\"202\"}", 3.0),
        ("pbft_gw_webhooks_total{outcome=\"redelivery\",status=\"202\"}", 1.0),
        ("pbft_gw_webhooks_total{outcome=\"skipped\",status=\"200\"}", 1.0),
        ("pbft_gw_webhooks_total{outcome=\"rejected\",status=\"401\"}", 2.0),
        ("pbft_gw_webhooks_total{outcome=\"rejected\",status=\"400\"}", 1.0),
        ("pbft_gw_webhooks_total{outcome=\"rejected\",status=\"415\"}", 1.0),
        ("pbft_gw_verdicts_total{verdict=\"passed\"}", 1.0),
        ("pbft_gw_webhook_to_verdict_seconds_count", 1.0),
        ("pbft_gw_webhook_to_verdict_seconds_bucket{le=\"+Inf\"}", 1.0),
        ("pbft_gw_replies_total{replica=\"0\",kind=\"result\"}", 1.0),
        ("pbft_gw_replies_total{replica=\"2\",kind=\"result\"}", 1.0),
        ("pbft_gw_replicas_connected", 3.0),
    ];
    let mut failures = Vec::new();
    for (series, value) in want {
        if sample(&text, series) != Some(value) {
            failures.push(format!("{series}: want {value}, got {:?}", sample(&text, series)));
        }
    }
    assert!(failures.is_empty(), "\n{}\n--- scraped:\n{text}", failures.join("\n"));
    assert_eq!(sample(&text, "pbft_gw_replies_total{replica=\"3\",kind=\"result\"}"), None);
}

/// One exchange, whatever the body: (status, headers, body text).
async fn fetch(h: &Harness, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let resp = h.router.clone().layer(from([192, 0, 2, 1])).oneshot(req).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, headers, String::from_utf8(bytes.to_vec()).unwrap())
}

fn browser(uri: &str) -> Request<Body> {
    Request::get(uri)
        .header("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn pages_for_people_show_votes_certificate_and_logs_with_everything_escaped() {
    use pbft_node::wire::{JobLogs, StepLog};
    use sha2::Digest as _;

    let mut h = harness(None);
    let mut collector = Collector::new(h.jobs.clone(), h.membership.clone(), Duration::from_secs(600)).unwrap();
    // A valid git ref, chosen to break out of HTML.
    let evil = r#"x\"><script>alert(1)</script>&amp;"#;
    let body = format!(r#"{{"branch": "{evil}", "commit": "0123456789abcdef0123456789abcdef01234567"}}"#);
    let (status, answer) = h.send(poc(&body)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let req = h.relayed().unwrap();
    collector.track(1, req.msg.digest(), pbft_gw::gateway::now_ms());
    let job = JobId { seq: 7, index: 2 };
    collector.on_ordered(1, job).unwrap();
    let passed = NoneExecutor::result(&req.msg);
    for i in [0, 1, 2] {
        collector.on_reply(i, &h.result(i, &req.msg, &passed), pbft_gw::gateway::now_ms()).unwrap();
    }
    let abstain = Reply {
        view: 0,
        gateway: req.msg.gateway,
        number: 1,
        request: req.msg.digest(),
        body: ReplyBody::Abstain { job, reason: "<img src=x onerror=alert(2)>".into() },
    };
    let abstain = Signed::seal(abstain, &h.membership.network_id(), &h.replicas[3]);
    collector.on_reply(3, &abstain, pbft_gw::gateway::now_ms()).unwrap();

    // The relay's part for logs: each replica answers with its own.
    let mut fetches = std::mem::replace(&mut h.links.logs, tokio::sync::mpsc::channel(1).1);
    tokio::spawn(async move {
        while let Some((asked, answers)) = fetches.recv().await {
            for i in 0..4 {
                let log = format!("step {i} says <script>alert(3)</script>\n").into_bytes();
                let sum = hex::encode(sha2::Sha256::digest(&log));
                let step = StepLog { file: "0-test.log".into(), bytes: log.len() as u64, tail: log, sha256: Some(sum) };
                answers.send((i, JobLogs { job: asked, steps: vec![step] })).await.unwrap();
            }
        }
    });

    let (status, headers, index) = fetch(&h, browser("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert!(headers["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    assert!(index.contains("<a href=\"/jobs/1\">1</a>"), "{index}");
    assert!(index.contains("x&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&amp;amp;"), "{index}");
    assert!(index.contains(r#"<span class="v passed" title="passed">passed</span>"#));
    assert!(index.contains(r#"title="replica 3 ("#) && index.contains(">A</span>"));

    let (status, headers, page) = fetch(&h, browser("/jobs/1")).await;
    assert_eq!((status, headers["vary"].to_str().unwrap()), (StatusCode::OK, "Accept"));
    for want in [
        "&lt;img src=x onerror=alert(2)&gt;",
        "step 2 says &lt;script&gt;alert(3)&lt;/script&gt;",
        "matches its SHA256SUMS entry",
        "/jobs/1/certificate?download=1",
        "&quot;sets&quot;",
        "7-2",
    ] {
        assert!(page.contains(want), "{want:?} missing from\n{page}");
    }
    for page in [&index, &page] {
        assert!(!page.contains("<script") && !page.contains("<img"), "unescaped markup in\n{page}");
    }

    // The JSON contract is intact for scripts, whatever else they accept.
    for accept in [None, Some("application/json"), Some("application/json, text/html"), Some("*/*")] {
        let mut b = Request::get("/jobs/1");
        if let Some(a) = accept {
            b = b.header("accept", a);
        }
        let (status, job) = h.send(b.body(Body::empty()).unwrap()).await;
        assert_eq!((status, job["verdict"].as_str()), (StatusCode::OK, Some("passed")), "{accept:?}");
    }
    let (_, headers, text) =
        fetch(&h, Request::get("/jobs/1/certificate?download=1").body(Body::empty()).unwrap()).await;
    assert_eq!(headers["content-disposition"], "attachment; filename=\"job-1-certificate.json\"");
    let cert: Certificate = serde_json::from_str(&text).unwrap();
    assert!(cert.verify(h.membership.as_ref()).is_ok());
    let (status, logs) = h.get("/jobs/1/logs").await;
    assert_eq!((status, logs["job"].as_str()), (StatusCode::OK, Some("7-2")));
    assert_eq!(logs["replicas"][1]["steps"][0]["verified"], true);
    assert_eq!(logs["replicas"][1]["steps"][0]["tail"], "step 1 says <script>alert(3)</script>\n");
}

/// What the stand-in git host received: (path, authorization, user agent, JSON body).
type Received = Arc<std::sync::Mutex<Vec<(String, String, String, Value)>>>;

/// A git host's status API on 127.0.0.1 that records every request and
/// answers the first one with 502, the others with 201.
async fn git_host() -> (SocketAddr, Received) {
    let received: Received = Default::default();
    let seen = received.clone();
    let app = Router::new().fallback(move |req: axum::extract::Request| {
        let seen = seen.clone();
        async move {
            let (parts, body) = req.into_parts();
            let header =
                |name: &str| parts.headers.get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
            let (auth, agent, path) = (header("authorization"), header("user-agent"), parts.uri.path().to_string());
            let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
            let mut seen = seen.lock().unwrap();
            seen.push((path, auth, agent, serde_json::from_slice(&body).unwrap()));
            if seen.len() == 1 {
                StatusCode::BAD_GATEWAY
            } else {
                StatusCode::CREATED
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_statuses_go_to_the_git_host_pending_then_the_verdict_retried_past_a_failure() {
    use pbft_gw::status::{self, StatusConfig};

    let (addr, received) = git_host().await;
    let mut h = harness(None);
    let mut collector = Collector::new(h.jobs.clone(), h.membership.clone(), Duration::from_secs(600)).unwrap();
    let cfg = StatusConfig {
        token: "tok-123".into(),
        github_api: format!("http://{addr}/api/v3/"),
        gitea_api: None,
        public_url: "https://ci.example.org/".into(),
        attempts: 3,
        retry_delay: Duration::from_millis(50),
    };
    collector.post_statuses(status::start(cfg, h.jobs.clone(), h.links.metrics.clone()));

    // A push, then three matching results: pending, then success.
    assert_eq!(h.send(github(GITHUB_PUSH, "d-status", SECRET)).await.0, StatusCode::ACCEPTED);
    let req = h.relayed().unwrap();
    collector.track(req.msg.number, req.msg.digest(), pbft_gw::gateway::now_ms());
    let passed = NoneExecutor::result(&req.msg);
    for i in [0, 2, 3] {
        collector.on_reply(i, &h.result(i, &req.msg, &passed), pbft_gw::gateway::now_ms()).unwrap();
    }
    // A proof-of-concept call names no host: no status, whatever its verdict.
    h.send(poc(r#"{"branch": "master", "commit": "0123456789abcdef0123456789abcdef01234567"}"#)).await;
    let poc_req = h.relayed().unwrap();
    collector.track(poc_req.msg.number, poc_req.msg.digest(), pbft_gw::gateway::now_ms());
    let poc_passed = NoneExecutor::result(&poc_req.msg);
    for i in [0, 1, 2] {
        collector.on_reply(i, &h.result(i, &poc_req.msg, &poc_passed), pbft_gw::gateway::now_ms()).unwrap();
    }

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while received.lock().unwrap().len() < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = received.lock().unwrap().clone();
    let states: Vec<&str> = got.iter().map(|r| r.3["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["pending", "pending", "success"], "the 502 is retried, the verdict comes after: {got:#?}");
    for (path, auth, agent, body) in &got {
        assert_eq!(path, "/api/v3/repos/Codertocat/Hello-World/statuses/0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c");
        assert_eq!(auth, "Bearer tok-123");
        assert!(agent.starts_with("pbft-gw/"), "{agent}");
        assert_eq!(body["context"], "pbft-ci");
        assert_eq!(body["target_url"], "https://ci.example.org/jobs/1");
    }
    assert_eq!(got[2].3["description"], "passed: 3 of 4 replicas signed this result");
    let (_, text) = scrape(&h).await;
    assert_eq!(sample(&text, "pbft_gw_commit_statuses_total{state=\"pending\",result=\"sent\"}"), Some(1.0));
    assert_eq!(sample(&text, "pbft_gw_commit_statuses_total{state=\"success\",result=\"sent\"}"), Some(1.0));
}
