//! A restart against the core itself: four replicas in memory, one of them
//! persisting through a real store; it is dropped, restored from the file,
//! and must resume where it stopped, signing nothing it had not signed
//! before.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use libp2p_identity::Keypair;

use super::tests::{slots, temp};
use super::*;
use crate::membership::Membership;
use crate::pbft::{Config, Input, Message, Millis, Outbound, Ready, Replica, Target};
use crate::wire::testkit::Net;
use crate::wire::{Checkpoint, Envelope, NetworkId, Request, Signed};

/// Four replicas in memory and one gateway; every message is opened
/// (signature checked) as a driver would. Replica 1's driver persists each
/// Ready through a real [`Store`] before it sends anything.
struct Cluster {
    network: NetworkId,
    membership: Arc<Membership>,
    keys: Vec<Arc<Keypair>>,
    gateway: Keypair,
    replicas: Vec<Replica>,
    queue: VecDeque<(usize, Input)>,
    now: Millis,
    next_number: u64,
    store: Option<Store>,
    /// Every byte string replica 1 ever persisted, GC'd or not.
    persisted: HashSet<Vec<u8>>,
}

const STORED: usize = 1;

impl Cluster {
    fn new(net: &Net, store: Store) -> Cluster {
        let membership = Arc::new(net.members.clone());
        let keys: Vec<Arc<Keypair>> = net.replicas.iter().cloned().map(Arc::new).collect();
        let mut c = Cluster {
            network: net.network(),
            replicas: Vec::new(),
            gateway: net.gateway.clone(),
            queue: VecDeque::new(),
            now: 0,
            next_number: 1,
            store: Some(store),
            persisted: HashSet::new(),
            membership,
            keys,
        };
        for i in 0..4 {
            let r = Replica::new(c.config(), c.keys[i].clone(), c.membership.clone());
            c.replicas.push(r);
        }
        c
    }

    /// Small batches, checkpoints and window: a short run crosses several
    /// stable checkpoints, so the store collects garbage.
    fn config(&self) -> Config {
        let mut cfg = Config::new(self.network, self.membership.replica_ids());
        cfg.batch_max = 3;
        cfg.checkpoint_interval = 4;
        cfg.window = 8;
        cfg.status_interval_ms = 100;
        cfg.fetch_retry_ms = 50;
        cfg
    }

    fn submit(&mut self, count: usize) {
        for _ in 0..count {
            let number = self.next_number;
            self.next_number += 1;
            let req = Request {
                gateway: self.gateway.public().to_peer_id(),
                number,
                delivery: Some(format!("delivery-{number}")),
                op: crate::wire::Operation::Run {
                    repo: "file:///repo".into(),
                    git_ref: "master".into(),
                    commit: Some(format!("{number:040x}")),
                },
            };
            let signed = Signed::seal(req, &self.network, &self.gateway);
            for i in 0..4 {
                self.queue.push_back((i, Input::Request(signed.clone())));
            }
        }
    }

    fn step(&mut self, i: usize, input: Input) {
        self.replicas[i].step(self.now, input);
        let ready = self.replicas[i].take_ready();
        self.handle(i, ready);
    }

    /// The driver's order: persist, then send, then record and run batches.
    fn handle(&mut self, i: usize, ready: Ready) {
        if i == STORED {
            let store = self.store.as_ref().expect("replica 1 runs with its store");
            store.persist(&ready.persist).unwrap();
            for r in &ready.persist {
                match r {
                    Record::Request(b) | Record::Message(b) => {
                        self.persisted.insert(b.to_vec());
                    }
                    Record::Stable { proof, .. } => self.persisted.extend(proof.iter().map(|b| b.to_vec())),
                }
            }
        }
        for out in ready.messages {
            self.send(i, out);
        }
        if i == STORED {
            let store = self.store.as_ref().expect("replica 1 runs with its store");
            for s in &ready.skipped {
                store.record_skipped(s.from_seq, s.to_seq).unwrap();
            }
            for b in &ready.execute {
                store.record_batch(b).unwrap();
            }
        }
        for b in ready.execute {
            self.queue.push_back((i, Input::Executed { seq: b.seq }));
        }
    }

    fn targets(from: usize, to: &Target) -> Vec<usize> {
        match to {
            Target::All => (0..4).filter(|&t| t != from).collect(),
            Target::Replica(t) => vec![*t],
        }
    }

    fn open(&self, bytes: &Arc<[u8]>) -> Input {
        let env = Envelope::open(bytes, &self.network, self.membership.as_ref()).expect("a valid signed message");
        if env.kind == Kind::Request {
            Input::Request(Signed::from_envelope(env, bytes.clone()).unwrap())
        } else {
            Input::Message(Message::from_envelope(env, bytes.clone()).unwrap())
        }
    }

    fn send(&mut self, from: usize, out: Outbound) {
        match out {
            Outbound::Signed { to, bytes } => {
                for t in Self::targets(from, &to) {
                    let input = self.open(&bytes);
                    self.queue.push_back((t, input));
                }
            }
            Outbound::FetchRequests { to, digests } => {
                self.queue.push_back((to, Input::FetchRequests { from, digests }))
            }
            // Nothing is lost on this network, so nobody needs help catching up.
            Outbound::Status { .. } => {}
            Outbound::State { to, proof, state } => {
                let proof = proof
                    .iter()
                    .map(|b| Signed::<Checkpoint>::open(b, &self.network, self.membership.as_ref()).unwrap())
                    .collect();
                self.queue.push_back((to, Input::State { proof, state: state.to_vec() }));
            }
        }
    }

    /// Delivers everything, with time moving on when the network is quiet.
    fn run(&mut self, quiet_rounds: usize) {
        for _ in 0..quiet_rounds {
            while let Some((to, input)) = self.queue.pop_front() {
                self.step(to, input);
            }
            self.now += 25;
            for i in 0..4 {
                self.step(i, Input::Tick);
            }
        }
        while let Some((to, input)) = self.queue.pop_front() {
            self.step(to, input);
        }
    }
}

#[test]
fn a_replica_restored_from_the_store_resumes_and_signs_nothing_new() {
    let dir = temp();
    let net = Net::new();
    let mut c = Cluster::new(&net, Store::open(dir.path()).unwrap());
    for _ in 0..6 {
        c.submit(5);
        c.run(4);
    }
    let executed = c.replicas[STORED].last_executed();
    let state = c.replicas[STORED].state().digest();
    let low = c.replicas[STORED].low_watermark();
    assert!(low >= 4 && executed >= 8, "the run crossed stable checkpoints: executed {executed}, low {low}");
    assert_eq!(c.replicas[0].last_executed(), executed);
    assert_eq!(c.replicas[0].state().digest(), state);

    // What restore gets is bounded by the window: nothing at or below the
    // stable checkpoint is left.
    let stored = c.store.as_ref().unwrap().records().unwrap();
    assert!(matches!(&stored[0], Record::Stable { seq, .. } if *seq == low));
    assert!(slots(&stored).iter().all(|s| matches!(s.kind, Kind::ViewChange | Kind::NewView) || s.seq > low));
    assert!(stored.len() < c.persisted.len(), "garbage was collected");

    // Crash replica 1: drop it and its store, reopen the file, restore.
    c.store = None;
    let store = Store::open(dir.path()).unwrap();
    let cfg = c.config();
    let mut restored =
        Replica::restore(cfg, c.keys[STORED].clone(), c.membership.clone(), c.now, store.records().unwrap(), true)
            .unwrap();
    assert_eq!(restored.last_executed(), executed);
    assert_eq!(restored.state().digest(), state);
    assert_eq!(restored.low_watermark(), low);

    let ready = restored.take_ready();
    for out in &ready.messages {
        let signed: Vec<&Arc<[u8]>> = match out {
            Outbound::Signed { bytes, .. } => vec![bytes],
            Outbound::State { proof, .. } => proof.iter().collect(),
            Outbound::FetchRequests { .. } | Outbound::Status { .. } => vec![],
        };
        for bytes in signed {
            assert!(c.persisted.contains(&bytes[..]), "after restore it sent a signed message it never persisted");
        }
    }
    for b in &ready.execute {
        assert!(!store.record_batch(b).unwrap(), "re-executed seq {} is in the job log already", b.seq);
    }

    // It rejoins and keeps ordering with the others, persisting as it goes.
    c.replicas[STORED] = restored;
    c.store = Some(store);
    c.handle(STORED, ready);
    for _ in 0..3 {
        c.submit(5);
        c.run(4);
    }
    let top = c.replicas[0].last_executed();
    assert!(top > executed);
    for r in &c.replicas {
        assert_eq!(r.last_executed(), top);
        assert_eq!(r.state().digest(), c.replicas[0].state().digest());
    }
    assert_eq!(c.store.as_ref().unwrap().last_batch().unwrap(), top);
}
