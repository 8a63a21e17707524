//! End to end over real processes on 127.0.0.1: four `pbft-node run
//! --executor none` replicas and `pbft-gw`, driven over HTTP as curl would.
//! A webhook gets a verdict whose certificate `pbft-node verify` accepts
//! (and refuses once one signed hex digit changes); a redelivered GitHub
//! event runs once; a gateway killed with -9 right after its 202 still
//! delivers that job's verdict once restarted.
//!
//! Every process is killed when its testnet is dropped. One multi-process
//! testnet runs at a time on this machine: a file lock (flock) is held for
//! the testnet's life, shared by any test binary that takes the same lock.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use libp2p_identity::Keypair;
use pbft_gw::webhook::signature::hmac_sha256_hex;
use pbft_node::membership::{Member, Membership};
use serde_json::Value;

const SECRET: &str = "e2e-webhook-secret";
const COMMIT: &str = "89abcdef0123456789abcdef0123456789abcdef";
const GITHUB_PUSH: &str = include_str!("fixtures/github-push.json");

/// The lock every multi-process testnet of pbft-ci takes (see the module doc).
fn testnet_lock() -> File {
    let path = std::env::temp_dir().join("pbft-ci-multiprocess-testnet.lock");
    let file = File::options().create(true).truncate(false).write(true).open(&path).expect("lock file opens");
    // SAFETY: flock on a file descriptor we own; released when it closes,
    // also if this process dies.
    let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {}: {}", path.display(), std::io::Error::last_os_error());
    file
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `target/<profile>/pbft-node`, built (or found up to date) by cargo.
fn pbft_node_binary() -> PathBuf {
    let gw = Path::new(env!("CARGO_BIN_EXE_pbft-gw"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    // The profile `cargo test` built this gateway with, so nothing is rebuilt
    // for nothing: `target/debug` holds both the dev and the test profile.
    let status = Command::new(cargo)
        .args(["build", "--quiet", "--profile", "test", "-p", "pbft-node", "--bin", "pbft-node", "--manifest-path"])
        .arg(&manifest)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "cargo build -p pbft-node failed");
    let node = gw.with_file_name(format!("pbft-node{}", std::env::consts::EXE_SUFFIX));
    assert!(node.exists(), "{} missing after the build", node.display());
    node
}

/// Runs git in `dir`, isolated from the machine's configuration; its trimmed stdout.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.org")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.org")
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

struct Testnet {
    _lock: File,
    dir: tempfile::TempDir,
    /// The gateway's `--repo`: a git repository with a `master` branch.
    repo: String,
    /// `master`'s commit.
    head: String,
    node: PathBuf,
    members: PathBuf,
    port0: u16,
    http: SocketAddr,
    replicas: Vec<Child>,
    gateway: Option<Child>,
}

impl Testnet {
    fn start() -> Testnet {
        let lock = testnet_lock();
        let node = pbft_node_binary();
        let dir = tempfile::tempdir().unwrap();
        let origin = dir.path().join("git/origin");
        std::fs::create_dir_all(&origin).unwrap();
        git(&origin, &["init", "-q", "-b", "master"]);
        std::fs::write(origin.join("README"), "pbft-ci end-to-end\n").unwrap();
        git(&origin, &["add", "README"]);
        git(&origin, &["commit", "-q", "-m", "first"]);
        let head = git(&origin, &["rev-parse", "HEAD"]);
        let repo = format!("file://{}", origin.display());
        let replica_keys: Vec<Keypair> = (0..4).map(|_| Keypair::generate_ed25519()).collect();
        let gw_key = Keypair::generate_ed25519();
        let member = |k: &Keypair| Member { peer_id: k.public().to_peer_id(), addr: None };
        let membership = Membership::new(
            "gateway-e2e".into(),
            replica_keys.iter().map(member).collect(),
            vec![member(&gw_key)],
            vec![format!("file://{}/", dir.path().join("git").display()), "https://github.com/Codertocat/".into()],
        )
        .unwrap();
        let members = dir.path().join("members.toml");
        std::fs::write(&members, membership.to_toml()).unwrap();
        for (i, k) in replica_keys.iter().enumerate() {
            pbft_node::keys::save(&dir.path().join(format!("replica{i}.key")), k, false).unwrap();
        }
        pbft_node::keys::save(&dir.path().join("gateway.key"), &gw_key, false).unwrap();
        std::fs::write(dir.path().join("webhook.secret"), format!("  {SECRET}\n")).unwrap();
        let port0 = free_port();
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut net =
            Testnet { _lock: lock, dir, repo, head, node, members, port0, http, replicas: Vec::new(), gateway: None };
        for i in 0..4 {
            let child = net.replica(i).spawn().expect("pbft-node starts");
            net.replicas.push(child);
        }
        net.start_gateway();
        net
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn replica(&self, i: usize) -> Command {
        let port = if i == 0 { self.port0 } else { 0 };
        let mut cmd = Command::new(&self.node);
        cmd.arg("run")
            .arg("--key")
            .arg(self.path(&format!("replica{i}.key")))
            .arg("--members")
            .arg(&self.members)
            .args(["--listen", &format!("/ip4/127.0.0.1/tcp/{port}")])
            .arg("--data-dir")
            .arg(self.path(&format!("data{i}")))
            .arg("--log-dir")
            .arg(self.path("log"))
            .args(["--executor", "none"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if i != 0 {
            cmd.args(["--bootstrap", &format!("/ip4/127.0.0.1/tcp/{}", self.port0)]);
        }
        cmd
    }

    /// Starts the gateway (again: same key, same data dir) and waits until
    /// it reports a quorum of replicas connected.
    fn start_gateway(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_pbft-gw"))
            .arg("--key")
            .arg(self.path("gateway.key"))
            .arg("--members")
            .arg(&self.members)
            .args(["--listen", &self.http.to_string(), "--repo", &self.repo, "--allow-file-urls"])
            .arg("--webhook-secret-file")
            .arg(self.path("webhook.secret"))
            .args(["--bootstrap", &format!("/ip4/127.0.0.1/tcp/{}", self.port0), "--no-mdns"])
            .arg("--data-dir")
            .arg(self.path("gw-data"))
            .arg("--log-dir")
            .arg(self.path("log"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pbft-gw starts");
        self.gateway = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = self.try_request("GET", "/healthz", &[], "") {
                return;
            }
            assert!(Instant::now() < deadline, "the gateway saw no quorum of replicas within 60 s");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn kill_gateway(&mut self) {
        if let Some(mut c) = self.gateway.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// One HTTP/1.1 exchange, as curl would make it.
    fn try_request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, String)],
        body: &str,
    ) -> std::io::Result<(u16, Value)> {
        let mut s = TcpStream::connect_timeout(&self.http, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.http);
        for (k, v) in headers {
            head += &format!("{k}: {v}\r\n");
        }
        head += &format!("Content-Length: {}\r\n\r\n", body.len());
        s.write_all(head.as_bytes())?;
        s.write_all(body.as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let (head, body) = out.split_once("\r\n\r\n").ok_or(std::io::ErrorKind::InvalidData)?;
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or(std::io::ErrorKind::InvalidData)?;
        Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
    }

    fn request(&self, method: &str, target: &str, headers: &[(&str, String)], body: &str) -> (u16, Value) {
        self.try_request(method, target, headers, body).unwrap_or_else(|e| panic!("{method} {target}: {e}"))
    }

    fn post_json(&self, target: &str, body: &str) -> (u16, Value) {
        self.request("POST", target, &[("Content-Type", "application/json".into())], body)
    }

    /// `pbft-node verify --members M FILE` on `json`: (success, stdout + stderr).
    fn verify(&self, name: &str, json: &Value) -> (bool, String) {
        let file = self.path(name);
        std::fs::write(&file, serde_json::to_string_pretty(json).unwrap()).unwrap();
        let out =
            Command::new(&self.node).arg("verify").arg("--members").arg(&self.members).arg(&file).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        if let Ok(entries) = std::fs::read_dir(self.path("log")) {
            for e in entries.flatten() {
                all += &format!("== {}\n", e.file_name().to_string_lossy());
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                all += &lines[lines.len().saturating_sub(25)..].join("\n");
                all += "\n";
            }
        }
        all
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        self.kill_gateway();
        for c in &mut self.replicas {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("the testnet's last log lines:\n{}", self.logs());
        }
    }
}

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
