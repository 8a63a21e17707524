//! A loopback testnet of real `pbft-node run` processes for the
//! multi-process tests: keys and membership in a temporary directory,
//! replica 0 on a known port, the others finding the network only through
//! `--bootstrap` of replica 0. Every process is killed when the testnet is
//! dropped, whatever the test did. Only 127.0.0.1 is ever used, but by
//! [`netns`]: a LAN of hosts with addresses of their own.

#![allow(dead_code)]

pub mod netns;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p_identity::Keypair;
use pbft_node::membership::{Member, Membership};
use pbft_node::net::client::{Client, ClientConfig};
use pbft_node::store::Store;
use pbft_node::wire::{Digest, JobId};

/// One testnet at a time: four replicas per test already fill two cores,
/// and timers (view changes, retransmissions) are part of what is tested.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub struct Testnet {
    /// Held for the testnet's life (a failed test's lock is taken over).
    _turn: std::sync::MutexGuard<'static, ()>,
    pub dir: tempfile::TempDir,
    pub replica_keys: Vec<Keypair>,
    /// Member gateways: [0] submits, the others are observers or faulty.
    pub gateway_keys: Vec<Keypair>,
    pub membership: Arc<Membership>,
    pub members_file: PathBuf,
    pub port0: u16,
    pub procs: Vec<Option<Child>>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Testnet {
    pub fn new(gateways: usize) -> Testnet {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let replica_keys: Vec<Keypair> = (0..4).map(|_| Keypair::generate_ed25519()).collect();
        let gateway_keys: Vec<Keypair> = (0..gateways).map(|_| Keypair::generate_ed25519()).collect();
        let member = |k: &Keypair| Member { peer_id: k.public().to_peer_id(), addr: None };
        let membership = Membership::new(
            "multi-process-test".into(),
            replica_keys.iter().map(member).collect(),
            gateway_keys.iter().map(member).collect(),
            vec!["file:///".into()],
        )
        .unwrap();
        let members_file = dir.path().join("members.toml");
        std::fs::write(&members_file, membership.to_toml()).unwrap();
        for (i, k) in replica_keys.iter().enumerate() {
            pbft_node::keys::save(&dir.path().join(format!("replica{i}.key")), k, false).unwrap();
        }
        Testnet {
            _turn: turn,
            dir,
            replica_keys,
            gateway_keys,
            membership: Arc::new(membership),
            members_file,
            port0: free_port(),
            procs: (0..4).map(|_| None).collect(),
        }
    }

    pub fn bootstrap(&self) -> String {
        format!("/ip4/127.0.0.1/tcp/{}", self.port0)
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("data{i}"))
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// `pbft-node run` for replica `i` with its key, membership, data and log
    /// dirs and the none executor; where it listens and what it dials is the
    /// caller's.
    pub fn replica_command(&self, i: usize) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pbft-node"));
        cmd.arg("run")
            .arg("--key")
            .arg(self.dir.path().join(format!("replica{i}.key")))
            .arg("--members")
            .arg(&self.members_file)
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .arg("--log-dir")
            .arg(self.log_dir())
            .args(["--executor", "none"])
            .env("RUST_LOG", std::env::var("PBFT_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    /// Starts replica `i` (again, if it ran before: same key, same data dir).
    pub fn start(&mut self, i: usize) {
        let port = if i == 0 { self.port0 } else { 0 };
        let mut cmd = self.replica_command(i);
        cmd.args(["--listen", &format!("/ip4/127.0.0.1/tcp/{port}")]);
        if i != 0 {
            cmd.args(["--bootstrap", &self.bootstrap()]);
        }
        self.procs[i] = Some(cmd.spawn().expect("pbft-node starts"));
    }

    pub fn start_all(&mut self) {
        for i in 0..4 {
            self.start(i);
        }
    }

    /// kill -9.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit (bounded).
    pub fn stop(&mut self, i: usize) {
        let Some(mut c) = self.procs[i].take() else { return };
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match c.try_wait() {
                Ok(Some(status)) => {
                    assert!(status.success(), "replica {i} exited with {status} on SIGTERM");
                    return;
                }
                _ if Instant::now() > deadline => {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("replica {i} did not stop within 15 s of SIGTERM");
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    pub fn stop_all(&mut self) {
        for i in 0..4 {
            self.stop(i);
        }
    }

    /// A client for member gateway `g`, found through replica 0.
    pub fn client(&self, g: usize, observe_consensus: bool) -> Client {
        self.client_with_key(self.gateway_keys[g].clone(), observe_consensus)
    }

    pub fn client_with_key(&self, key: Keypair, observe_consensus: bool) -> Client {
        self.client_via(key, observe_consensus, vec![self.bootstrap()])
    }

    /// A client that finds the network through `bootstrap`.
    pub fn client_via(&self, key: Keypair, observe_consensus: bool, bootstrap: Vec<String>) -> Client {
        // The clients' logs show with a failing test's output; filter with
        // PBFT_TEST_CLIENT_LOG (e.g. pbft_node::net=debug), default warn.
        let filter = std::env::var("PBFT_TEST_CLIENT_LOG").unwrap_or_else(|_| "warn".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
        let mut cfg = ClientConfig::new(key, self.membership.clone());
        cfg.bootstrap = bootstrap;
        cfg.observe_consensus = observe_consensus;
        cfg.retry = Duration::from_millis(500);
        Client::start(cfg).expect("client starts")
    }

    /// Every log line of every replica so far.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        if let Ok(entries) = std::fs::read_dir(self.log_dir()) {
            for e in entries.flatten() {
                all += &std::fs::read_to_string(e.path()).unwrap_or_default();
            }
        }
        all
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        for i in 0..self.procs.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            // Keep the evidence: the logs outlive the temporary directory.
            let kept = std::env::temp_dir().join(format!("pbft-ci-test-logs-{}", std::process::id()));
            let _ = std::fs::create_dir_all(&kept);
            if let Ok(entries) = std::fs::read_dir(self.log_dir()) {
                for e in entries.flatten() {
                    let _ = std::fs::copy(e.path(), kept.join(e.file_name()));
                }
            }
            eprintln!("replica logs kept in {}; the last lines:\n{}", kept.display(), tail(&self.logs(), 40));
        }
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Waits until `client` is connected to all 4 replicas.
pub async fn wait_connected(client: &Client, within: Duration) {
    let deadline = Instant::now() + within;
    while client.connected_replicas().await < 4 {
        assert!(Instant::now() < deadline, "client not connected to every replica within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A replica's job log as its store holds it: (last batch, every job with
/// its request). The replica's own signed result differs from replica to
/// replica (it carries its signature), so it is left out. Read once the
/// replica stopped.
pub type JobLog = (u64, BTreeMap<JobId, (Digest, Vec<u8>)>);

pub fn job_log(dir: &Path) -> JobLog {
    let store = Store::open(dir).expect("store opens after the replica stopped");
    let last = store.last_batch().unwrap();
    let mut jobs = BTreeMap::new();
    for seq in 1..=last {
        for index in 0.. {
            let job = JobId { seq, index };
            match store.job(job).unwrap() {
                Some(record) => jobs.insert(job, (record.request, record.request_bytes)),
                None => break,
            };
        }
    }
    (last, jobs)
}
