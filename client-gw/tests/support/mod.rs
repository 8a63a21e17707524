//! A testnet of real processes for the gateway's multi-process tests: four
//! `pbft-node run` replicas and `pbft-gw` on 127.0.0.1 (or each on a host of
//! its own on a LAN of network namespaces, see [`netns`]), a real git
//! repository as the gateway's `--repo`, HTTP calls made as curl would.
//!
//! Every process is killed when its testnet is dropped. One multi-process
//! testnet runs at a time on this machine: a file lock (flock) is held for
//! the testnet's life, shared by any test binary that takes the same lock.

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use libp2p_identity::Keypair;
use pbft_node::membership::{Member, Membership};
use pbft_node::store::Store;
use pbft_node::wire::{Digest, JobId};
use serde_json::Value;

/// The LAN of network namespaces that node's host tests use, shared as is.
#[path = "../../../node/tests/support/netns.rs"]
pub mod netns;

pub const SECRET: &str = "e2e-webhook-secret";

/// The lock every multi-process testnet of pbft-ci takes (see the module doc).
pub fn testnet_lock() -> File {
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

fn cargo_build(args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", "pbft-node", "--bin", "pbft-node"])
        .args(args)
        .arg("--manifest-path")
        .arg(&manifest)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "cargo build -p pbft-node {args:?} failed");
}

/// `target/<profile>/pbft-node`, built (or found up to date) by cargo.
pub fn pbft_node_binary() -> PathBuf {
    // The profile `cargo test` built this gateway with, so nothing is rebuilt
    // for nothing: `target/debug` holds both the dev and the test profile.
    cargo_build(&["--profile", "test"]);
    let node = node_path();
    assert!(node.exists(), "{} missing after the build", node.display());
    node
}

fn node_path() -> PathBuf {
    let gw = Path::new(env!("CARGO_BIN_EXE_pbft-gw"));
    gw.with_file_name(format!("pbft-node{}", std::env::consts::EXE_SUFFIX))
}

/// A `pbft-node` built with `--features fault-injection`, copied aside as
/// `target/<profile>/pbft-node-fault-injection`. It is built in the shared
/// target dir (the feature changes only pbft-node, so no dependency is
/// compiled again), and the default binary is restored right after: the
/// `pbft-node` of the default build never holds the feature.
pub fn pbft_node_binary_with_fault_injection() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let node = node_path();
            let faulty = node.with_file_name(format!("pbft-node-fault-injection{}", std::env::consts::EXE_SUFFIX));
            cargo_build(&["--profile", "test", "--features", "fault-injection"]);
            std::fs::copy(&node, &faulty).unwrap_or_else(|e| panic!("copying {}: {e}", node.display()));
            cargo_build(&["--profile", "test"]);
            let knows_fault = |bin: &Path| {
                let out = Command::new(bin).args(["run", "--help"]).output().expect("pbft-node runs");
                String::from_utf8_lossy(&out.stdout).contains("--fault")
            };
            assert!(knows_fault(&faulty), "{} lacks --fault", faulty.display());
            assert!(!knows_fault(&node), "the default {} must not hold fault injection", node.display());
            faulty
        })
        .clone()
}

/// Runs git in `dir`, isolated from the machine's configuration; its trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
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

/// How the replicas run.
pub struct Setup {
    /// The `pbft-node` binary.
    pub node: PathBuf,
    /// `--executor` of every replica.
    pub executor: &'static str,
    /// Arguments of replica `i` besides the common ones (e.g. `--fault lie`).
    pub replica_args: [Vec<String>; 4],
    /// Replica `i` on host `i` of this LAN and the gateway on host 4, all
    /// finding each other by mDNS alone; `None`: all on 127.0.0.1, through
    /// replica 0's address.
    pub lan: Option<netns::Lan>,
}

impl Setup {
    /// The e2e setup: the default binary, `--executor none`.
    pub fn none() -> Setup {
        Setup { node: pbft_node_binary(), executor: "none", replica_args: Default::default(), lan: None }
    }
}

/// On a LAN, every replica (and the gateway's swarm) listens on this port of
/// its host's address.
const LAN_PORT: u16 = 7000;
/// On a LAN, the gateway serves HTTP on this port of its host's address.
const LAN_HTTP_PORT: u16 = 8080;
/// The gateway's host on a LAN.
const GATEWAY_HOST: usize = 4;

pub struct Testnet {
    // Dropped first (after Drop::drop killed every process): the LAN is
    // removed while the lock is held.
    pub lan: Option<netns::Lan>,
    _lock: File,
    pub dir: tempfile::TempDir,
    /// The gateway's `--repo`: a git repository with a `master` branch.
    pub repo: String,
    /// `master`'s commit.
    pub head: String,
    pub node: PathBuf,
    pub members: PathBuf,
    pub membership: Membership,
    pub port0: u16,
    pub http: SocketAddr,
    executor: &'static str,
    replica_args: [Vec<String>; 4],
    replicas: Vec<Option<Child>>,
    gateway: Option<Child>,
}

impl Testnet {
    pub fn start() -> Testnet {
        let lock = testnet_lock();
        Testnet::start_locked(lock, Setup::none())
    }

    /// Takes the lock first: `setup` may build a binary meanwhile.
    pub fn start_with(setup: impl FnOnce() -> Setup) -> Testnet {
        let lock = testnet_lock();
        Testnet::start_locked(lock, setup())
    }

    fn start_locked(lock: File, setup: Setup) -> Testnet {
        let dir = tempfile::tempdir().unwrap();
        // As root, the local executor runs steps as `nobody`, who must be
        // able to pass through to its workspace under a replica's data dir.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
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
        let http = match &setup.lan {
            Some(lan) => SocketAddr::from((lan.host_ip(GATEWAY_HOST), LAN_HTTP_PORT)),
            None => SocketAddr::from(([127, 0, 0, 1], free_port())),
        };
        let mut net = Testnet {
            lan: setup.lan,
            _lock: lock,
            dir,
            repo,
            head,
            node: setup.node,
            members,
            membership,
            port0,
            http,
            executor: setup.executor,
            replica_args: setup.replica_args,
            replicas: (0..4).map(|_| None).collect(),
            gateway: None,
        };
        for i in 0..4 {
            net.start_replica(i);
        }
        net.start_gateway();
        net
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replica `i`'s data dir: `data<i>`, a name its job workspaces carry
    /// (`data<i>/ci/work/<seq>-<index>`).
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.path(&format!("data{i}"))
    }

    /// Replica `i`'s PeerId, as votes name it.
    pub fn peer(&self, i: usize) -> String {
        self.membership.replicas[i].peer_id.to_string()
    }

    fn replica(&self, i: usize) -> Command {
        let mut cmd = Command::new(&self.node);
        cmd.arg("run")
            .arg("--key")
            .arg(self.path(&format!("replica{i}.key")))
            .arg("--members")
            .arg(&self.members)
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .arg("--log-dir")
            .arg(self.path("log"))
            .args(["--executor", self.executor])
            .args(&self.replica_args[i])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.executor == "local" {
            cmd.arg("--allow-file-urls");
        }
        match &self.lan {
            // mDNS alone (on by default beyond loopback).
            Some(lan) => {
                cmd.args(["--listen", &format!("/ip4/{}/tcp/{LAN_PORT}", lan.host_ip(i))]);
            }
            None => {
                let port = if i == 0 { self.port0 } else { 0 };
                cmd.args(["--listen", &format!("/ip4/127.0.0.1/tcp/{port}")]);
                if i != 0 {
                    cmd.args(["--bootstrap", &format!("/ip4/127.0.0.1/tcp/{}", self.port0)]);
                }
            }
        }
        cmd
    }

    /// Starts replica `i` (again: same key, same data dir).
    pub fn start_replica(&mut self, i: usize) {
        let mut cmd = self.replica(i);
        let child = match &self.lan {
            Some(lan) => lan.run(i, &cmd),
            None => cmd.spawn(),
        };
        self.replicas[i] = Some(child.expect("pbft-node starts"));
    }

    /// kill -9 of replica `i`.
    pub fn kill_replica(&mut self, i: usize) {
        if let Some(mut c) = self.replicas[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts replica `i` with other arguments (besides the common ones).
    pub fn restart_replica(&mut self, i: usize, args: &[&str]) {
        self.kill_replica(i);
        self.replica_args[i] = args.iter().map(|a| a.to_string()).collect();
        self.start_replica(i);
    }

    /// Starts the gateway (again: same key, same data dir) and waits until
    /// it reports a quorum of replicas connected.
    pub fn start_gateway(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pbft-gw"));
        cmd.arg("--key")
            .arg(self.path("gateway.key"))
            .arg("--members")
            .arg(&self.members)
            .args(["--listen", &self.http.to_string(), "--repo", &self.repo, "--allow-file-urls"])
            .arg("--webhook-secret-file")
            .arg(self.path("webhook.secret"))
            .arg("--data-dir")
            .arg(self.path("gw-data"))
            .arg("--log-dir")
            .arg(self.path("log"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = match &self.lan {
            Some(lan) => {
                let p2p = format!("/ip4/{}/tcp/{LAN_PORT}", lan.host_ip(GATEWAY_HOST));
                cmd.args(["--p2p-listen", &p2p, "--mdns"]);
                lan.run(GATEWAY_HOST, &cmd)
            }
            None => {
                cmd.args(["--bootstrap", &format!("/ip4/127.0.0.1/tcp/{}", self.port0), "--no-mdns"]);
                cmd.spawn()
            }
        };
        let child = child.expect("pbft-gw starts");
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

    pub fn kill_gateway(&mut self) {
        if let Some(mut c) = self.gateway.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// A branch `name` of the repository off `master`, whose `.pbft-ci.yml`
    /// is `pipeline`; its commit.
    pub fn branch(&self, name: &str, pipeline: &str) -> String {
        let origin = self.path("git/origin");
        git(&origin, &["checkout", "-q", "-b", name, "master"]);
        std::fs::write(origin.join(".pbft-ci.yml"), pipeline).unwrap();
        git(&origin, &["add", ".pbft-ci.yml"]);
        git(&origin, &["commit", "-q", "-m", name]);
        let commit = git(&origin, &["rev-parse", "HEAD"]);
        git(&origin, &["checkout", "-q", "master"]);
        commit
    }

    /// One HTTP/1.1 exchange, as curl would make it.
    pub fn try_request(
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

    pub fn request(&self, method: &str, target: &str, headers: &[(&str, String)], body: &str) -> (u16, Value) {
        self.try_request(method, target, headers, body).unwrap_or_else(|e| panic!("{method} {target}: {e}"))
    }

    pub fn post_json(&self, target: &str, body: &str) -> (u16, Value) {
        self.request("POST", target, &[("Content-Type", "application/json".into())], body)
    }

    /// Posts `{"branch": B}`; the job's id.
    pub fn submit(&self, branch: &str) -> String {
        let (status, accepted) = self.post_json("/webHook", &format!(r#"{{"branch": "{branch}"}}"#));
        assert_eq!(status, 202, "{accepted}");
        accepted["id"].as_str().expect("an id").to_string()
    }

    /// Job `id` once it has a verdict and `votes` replicas voted.
    pub fn wait_job(&self, id: &str, votes: usize, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            // 202: the wait ran out before the verdict.
            let (status, job) = self.request("GET", &format!("/jobs/{id}?wait=5"), &[], "");
            assert!(status == 200 || status == 202, "{status}: {job}");
            let cast = job["votes"].as_array().map_or(0, |v| v.iter().filter(|v| !v["vote"].is_null()).count());
            if !job["verdict"].is_null() && cast >= votes {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id}: no verdict with {votes} votes within {within:?}: {job}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Replica `i`'s vote on `job` (`passed`, `failed`, `abstain`, …; "" before it voted).
    pub fn vote<'a>(&self, job: &'a Value, i: usize) -> &'a str {
        let peer = self.peer(i);
        job["votes"]
            .as_array()
            .and_then(|votes| votes.iter().find(|v| v["replica"] == peer.as_str()))
            .and_then(|v| v["vote"].as_str())
            .unwrap_or("")
    }

    /// `pbft-node verify --members M FILE` on `json`: (success, stdout + stderr).
    pub fn verify(&self, name: &str, json: &Value) -> (bool, String) {
        let file = self.path(name);
        std::fs::write(&file, serde_json::to_string_pretty(json).unwrap()).unwrap();
        let out =
            Command::new(&self.node).arg("verify").arg("--members").arg(&self.members).arg(&file).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// Replica `i`'s job log (job id → request digest), read once it stopped.
    pub fn job_log(&self, i: usize) -> std::collections::BTreeMap<JobId, Digest> {
        let store = Store::open(&self.data_dir(i)).expect("the store opens once the replica stopped");
        let mut jobs = std::collections::BTreeMap::new();
        for seq in 1..=store.last_batch().unwrap() {
            for index in 0.. {
                let job = JobId { seq, index };
                match store.job(job).unwrap() {
                    Some(record) => jobs.insert(job, record.request),
                    None => break,
                };
            }
        }
        jobs
    }

    /// Every log line of replica `i` so far (its file is appended to across restarts).
    pub fn replica_log(&self, i: usize) -> String {
        let file = self.path("log").join(format!("pbft-node-{}.log", self.peer(i)));
        std::fs::read_to_string(file).unwrap_or_default()
    }

    /// The last lines of every log, for a failing test's output.
    pub fn logs(&self) -> String {
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
        for i in 0..self.replicas.len() {
            self.kill_replica(i);
        }
        if std::thread::panicking() {
            eprintln!("the testnet's last log lines:\n{}", self.logs());
        }
    }
}
