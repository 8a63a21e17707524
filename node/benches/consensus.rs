//! Requests ordered per second through 4 in-process replicas with real
//! ed25519 signatures, for batch sizes 1, 16 and 128, beside this machine's
//! signing and verification rates measured in the same run.
//!
//! Every replica opens (verifies) every message it receives itself, as
//! separate machines would; replies are signed. Counting wrappers around the
//! signer and verifier give the exact signatures and verifications one
//! ordered request costs, and so the fraction of the signature budget the
//! core reaches: `budget = 1 / (signs · t_sign + verifies · t_verify)` per core.
//!
//! `cargo bench -p pbft-node --bench consensus`

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use libp2p_identity::{Keypair, PeerId};
use pbft_node::membership::{Member, Membership};
use pbft_node::pbft::{Config, Input, Message, Outbound, Replica, Target};
use pbft_node::wire::{Envelope, Kind, Operation, Request, Signed, Signer, Verifier};

static SIGNS: AtomicU64 = AtomicU64::new(0);
static VERIFIES: AtomicU64 = AtomicU64::new(0);

struct CountingSigner(Keypair);
impl Signer for CountingSigner {
    fn peer_id(&self) -> PeerId {
        self.0.public().to_peer_id()
    }
    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        SIGNS.fetch_add(1, Ordering::Relaxed);
        Signer::sign(&self.0, msg)
    }
}

struct CountingVerifier(Arc<Membership>);
impl Verifier for CountingVerifier {
    fn verify(&self, signer: &PeerId, msg: &[u8], sig: &[u8]) -> bool {
        VERIFIES.fetch_add(1, Ordering::Relaxed);
        self.0.verify(signer, msg, sig)
    }
}

struct Net {
    membership: Arc<Membership>,
    verifier: Arc<CountingVerifier>,
    replicas: Vec<Replica>,
    gateway: Keypair,
}

fn keys(tag: u8, count: usize) -> Vec<Keypair> {
    (0..count)
        .map(|i| {
            let mut seed = [7u8; 32];
            seed[0] = tag;
            seed[1] = i as u8;
            Keypair::ed25519_from_bytes(seed).expect("32 bytes make a key")
        })
        .collect()
}

fn network(batch: usize) -> Net {
    let replica_keys = keys(1, 4);
    let gateway = keys(2, 1).remove(0);
    let member = |k: &Keypair| Member { peer_id: k.public().to_peer_id(), addr: None };
    let membership = Arc::new(
        Membership::new("bench".into(), replica_keys.iter().map(member).collect(), vec![member(&gateway)], vec![])
            .unwrap(),
    );
    let verifier = Arc::new(CountingVerifier(membership.clone()));
    let replicas = replica_keys
        .into_iter()
        .map(|k| {
            let mut cfg = Config::new(membership.network_id(), membership.replica_ids());
            cfg.batch_max = batch;
            cfg.window = 1024;
            cfg.checkpoint_interval = 128;
            cfg.batch_delay_ms = 1_000_000;
            Replica::new(cfg, Arc::new(CountingSigner(k)), verifier.clone())
        })
        .collect();
    Net { membership, verifier, replicas, gateway }
}

fn requests(net: &Net, count: usize) -> Vec<Arc<[u8]>> {
    (1..=count as u64)
        .map(|number| {
            let req = Request {
                gateway: net.gateway.public().to_peer_id(),
                number,
                delivery: None,
                op: Operation::Run { repo: "https://example.org/r.git".into(), git_ref: "master".into(), commit: None },
            };
            Signed::seal(req, &net.membership.network_id(), &net.gateway).shared_bytes()
        })
        .collect()
}

/// Delivers every request to every replica and runs the network until it is
/// quiet; returns the requests ordered (executed by all four).
fn order(mut net: Net, reqs: Vec<Arc<[u8]>>) -> u64 {
    let network = net.membership.network_id();
    let mut queue: VecDeque<(usize, Arc<[u8]>)> = VecDeque::new();
    for r in &reqs {
        for to in 0..4 {
            queue.push_back((to, r.clone()));
        }
    }
    let mut executed = [0u64; 4];
    while let Some((to, bytes)) = queue.pop_front() {
        // Each replica verifies what it receives, as separate machines would.
        let env = Envelope::open(&bytes, &network, net.verifier.as_ref()).expect("valid");
        let input = match env.kind {
            Kind::Request => Input::Request(Signed::from_envelope(env, bytes).expect("valid")),
            _ => Input::Message(Message::from_envelope(env, bytes).expect("valid")),
        };
        let r = &mut net.replicas[to];
        r.step(0, input);
        let ready = r.take_ready();
        for b in &ready.execute {
            executed[to] += b.jobs.len() as u64;
            r.step(0, Input::Executed { seq: b.seq });
        }
        let mut out = ready.messages;
        out.extend(r.take_ready().messages);
        for m in out {
            if let Outbound::Signed { to: target, bytes } = m {
                match target {
                    Target::All => (0..4).filter(|&i| i != to).for_each(|i| queue.push_back((i, bytes.clone()))),
                    Target::Replica(i) => queue.push_back((i, bytes)),
                }
            }
        }
    }
    assert!(executed.iter().all(|&e| e == reqs.len() as u64), "every replica ordered every request: {executed:?}");
    executed[0]
}

const REQUESTS: usize = 1024;

fn bench_consensus(c: &mut Criterion) {
    let mut g = c.benchmark_group("ordering");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(REQUESTS as u64));
    for batch in [1usize, 16, 128] {
        g.bench_function(format!("4 replicas, batch {batch}"), |b| {
            b.iter_batched(
                || {
                    let net = network(batch);
                    let reqs = requests(&net, REQUESTS);
                    (net, reqs)
                },
                |(net, reqs)| order(net, reqs),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();

    let key = keys(3, 1).remove(0);
    let msg = [0u8; 128];
    let sig = Signer::sign(&key, &msg);
    let public = key.public();
    let mut s = c.benchmark_group("ed25519");
    s.throughput(Throughput::Elements(1));
    s.bench_function("sign", |b| b.iter(|| Signer::sign(&key, &msg)));
    s.bench_function("verify", |b| b.iter(|| assert!(public.verify(&msg, &sig))));
    s.finish();
}

/// The same figures as a plain table: ordered requests/s, the signatures and
/// verifications one ordered request costs, and the fraction of the
/// signature budget reached.
fn summary() {
    let key = keys(3, 1).remove(0);
    let msg = [0u8; 128];
    let public = key.public();
    let n = 4000;
    let t = Instant::now();
    let mut sig = Vec::new();
    for _ in 0..n {
        sig = Signer::sign(&key, &msg);
    }
    let sign_s = t.elapsed().as_secs_f64() / n as f64;
    let t = Instant::now();
    for _ in 0..n {
        assert!(public.verify(&msg, &sig));
    }
    let verify_s = t.elapsed().as_secs_f64() / n as f64;
    println!();
    println!("ed25519 on this machine: {:.0} signatures/s, {:.0} verifications/s", 1.0 / sign_s, 1.0 / verify_s);
    println!("batch  ordered req/s  signs/req  verifies/req  budget req/s  fraction");
    for batch in [1usize, 16, 128] {
        let mut best = f64::MAX;
        let (mut signs, mut verifies) = (0.0, 0.0);
        for _ in 0..3 {
            let net = network(batch);
            let reqs = requests(&net, REQUESTS);
            SIGNS.store(0, Ordering::Relaxed);
            VERIFIES.store(0, Ordering::Relaxed);
            let t = Instant::now();
            let ordered = order(net, reqs);
            best = best.min(t.elapsed().as_secs_f64());
            signs = SIGNS.load(Ordering::Relaxed) as f64 / ordered as f64;
            verifies = VERIFIES.load(Ordering::Relaxed) as f64 / ordered as f64;
        }
        let rps = REQUESTS as f64 / best;
        let budget = 1.0 / (signs * sign_s + verifies * verify_s);
        println!(
            "{batch:>5}  {rps:>13.0}  {signs:>9.2}  {verifies:>12.2}  {budget:>12.0}  {:>7.0} %",
            100.0 * rps / budget
        );
    }
}

criterion_group!(benches, bench_consensus);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
