//! A deterministic simulator of a whole network: n replicas and a few
//! gateways in memory, one seeded random stream, a simulated clock, and a
//! network that drops, duplicates, reorders and delays messages; backups
//! crash and restart from what they persisted. Checkers watch every step
//! ([`checker`]). The same seed replays the same trace, so a failure is
//! reproduced by its seed alone.
//!
//! Checked signatures: every message is sealed and opened through the same
//! `Signer`/`Verifier` traits as in production, with real ed25519 `PeerId`s,
//! but signed with a keyed SHA-256 instead of ed25519 ([`keys`]): forgeries
//! and flipped bytes still fail, at a fraction of the cost. An opened message
//! is cached by its bytes, as a driver verifies each message once.
//!
//! Faults are data ([`Faults`]); Byzantine behaviour is a wrapper around the
//! outputs of a correct core ([`Byzantine`]), so new adversaries are added
//! without touching the engine.

pub mod checker;
pub mod client;
pub mod keys;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;

use libp2p_identity::{Keypair, PeerId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::Digest as _;

use crate::membership::{Member, Membership};
use crate::pbft::{Config, Input, Message, Millis, Outbound, Record, Replica, Target};
use crate::wire::{
    Digest, Envelope, Kind, NetworkId, NewView, PrePrepare, Reply, Request, Sha256, Signed, Signer as _, ViewChange,
};
use checker::{Checker, Violation};
use client::Client;
use keys::{SimKey, SimVerifier};

/// What the network and the machines do wrong, until `heal_at_ms`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Probability a message is lost.
    pub drop: f64,
    /// Probability a message is delivered twice.
    pub duplicate: f64,
    /// Latency range; a wide range reorders messages.
    pub latency_ms: (Millis, Millis),
    /// Occasionally delay a message by this much more (0: never).
    pub long_delay_ms: Millis,
    /// Crash backups at random moments and restart them from their store.
    pub crash_restart: bool,
    /// Crash the primary (of the highest view) once or twice; it restarts later.
    pub crash_primary: bool,
    /// Split the replicas into two sides for a while, once or twice; the
    /// split heals by `heal_at_ms` (the global stabilisation time).
    pub partition: bool,
}

/// The named fault classes the tests sweep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultClass {
    Clean,
    Drop,
    Duplicate,
    Reorder,
    Delay,
    CrashRestart,
    PrimaryCrash,
    Partition,
    Mixed,
}

impl FaultClass {
    pub const ALL: [FaultClass; 9] = [
        FaultClass::Clean,
        FaultClass::Drop,
        FaultClass::Duplicate,
        FaultClass::Reorder,
        FaultClass::Delay,
        FaultClass::CrashRestart,
        FaultClass::PrimaryCrash,
        FaultClass::Partition,
        FaultClass::Mixed,
    ];

    pub fn faults(self) -> Faults {
        let base = Faults { latency_ms: (1, 3), ..Faults::default() };
        match self {
            FaultClass::Clean => base,
            FaultClass::Drop => Faults { drop: 0.15, ..base },
            FaultClass::Duplicate => Faults { duplicate: 0.3, ..base },
            FaultClass::Reorder => Faults { latency_ms: (1, 40), ..base },
            FaultClass::Delay => Faults { long_delay_ms: 700, ..base },
            FaultClass::CrashRestart => Faults { crash_restart: true, ..base },
            FaultClass::PrimaryCrash => Faults { crash_primary: true, latency_ms: (1, 10), ..base },
            FaultClass::Partition => Faults { partition: true, latency_ms: (1, 10), ..base },
            FaultClass::Mixed => Faults {
                drop: 0.05,
                duplicate: 0.1,
                latency_ms: (1, 25),
                long_delay_ms: 300,
                crash_restart: true,
                crash_primary: true,
                partition: true,
            },
        }
    }
}

/// A replica that does not follow the protocol (at most f of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Byzantine {
    /// Replica 0, primary of view 0, sends one pre-prepare to half the
    /// backups and a different one for the same slot to the others.
    EquivocatingPrimary,
    /// Replica 0, the first primary, sends nothing at all.
    SilentPrimary,
    /// Replica 1, primary of view 1, never announces its view: the backups
    /// must change view again (back-to-back view changes).
    SilentNextPrimary,
    /// Replica 0 sends, besides each message, a garbled copy, a copy claiming
    /// another replica signed it, and random bytes.
    Forger,
    /// Replica 0 replays messages it sent or saw earlier (old views, old slots).
    Replayer,
    /// Replica 0 signs CHECKPOINTs with wrong state digests.
    WrongCheckpoints,
    /// Twins ("Twins: BFT Systems Made Robust"): f keys, each run by two
    /// correct cores at once. The twinned keys are drawn per seed among the
    /// primaries of views 0..=f (so a twin is primary of view 0, or of the
    /// first view after a view change, and again n views later). Each correct
    /// replica talks to one twin of a pair or to both, and that grouping is
    /// drawn again several times before the network heals; after it, both
    /// twins talk to everyone. The second twin of each pair hears requests
    /// later than the first, so the two order them differently. The twins'
    /// own messages go only to other keys: two instances of one key never
    /// talk directly (relays by correct replicas still reach them).
    Twins,
}

impl Byzantine {
    pub const ALL: [Byzantine; 7] = [
        Byzantine::EquivocatingPrimary,
        Byzantine::SilentPrimary,
        Byzantine::SilentNextPrimary,
        Byzantine::Forger,
        Byzantine::Replayer,
        Byzantine::WrongCheckpoints,
        Byzantine::Twins,
    ];

    /// The replica that misbehaves (for Twins: the first candidate; which
    /// keys are twinned is drawn per seed, see [`Sim::faulty_replicas`]).
    pub fn replica(self) -> usize {
        match self {
            Byzantine::SilentNextPrimary => 1,
            _ => 0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub n: usize,
    pub seed: u64,
    pub requests: usize,
    pub gateways: usize,
    pub faults: Faults,
    pub byzantine: Option<Byzantine>,
    /// Test-only knobs passed to every replica's config.
    pub unsafe_quorum_override: Option<(usize, usize)>,
    pub unsafe_forget_prepared_in_new_view: bool,
    pub unsafe_tentative_at_pre_prepare: bool,
    /// Requests are submitted before this time.
    pub submit_until_ms: Millis,
    /// Faults stop here; the network is then reliable and timely.
    pub heal_at_ms: Millis,
    pub end_ms: Millis,
    /// Probability a request reuses an earlier delivery id (a redelivered
    /// webhook, possibly through another gateway).
    pub redeliver: f64,
    /// Replicas persist the records of light Readies (nothing sent but
    /// PRE-PREPAREs, PREPAREs and point-to-point traffic) only with the next
    /// Ready that is not light, as the driver does; a crash loses them
    /// ([`crate::pbft::Ready::is_light`]). Off: every Ready's records at once.
    pub defer_quiet_records: bool,
    /// [`Config::help_only_lagging`].
    pub help_only_lagging: bool,
}

impl SimConfig {
    pub fn new(n: usize, seed: u64, class: FaultClass) -> SimConfig {
        SimConfig {
            n,
            seed,
            requests: 16,
            gateways: 2,
            faults: class.faults(),
            byzantine: None,
            unsafe_quorum_override: None,
            unsafe_forget_prepared_in_new_view: false,
            unsafe_tentative_at_pre_prepare: false,
            submit_until_ms: 1_500,
            heal_at_ms: 2_500,
            end_ms: 9_000,
            redeliver: 0.15,
            defer_quiet_records: true,
            help_only_lagging: true,
        }
    }

    /// The replica parameters: small batches, checkpoints and windows, so a
    /// short run crosses several checkpoints and hits the watermarks.
    pub fn replica_config(&self, network: NetworkId, replicas: Vec<PeerId>) -> Config {
        let mut c = Config::new(network, replicas);
        c.batch_max = 4;
        c.batch_delay_ms = 2;
        c.checkpoint_interval = 4;
        c.window = 8;
        // No pipeline bound: the seeds keep the traces they had.
        c.pipeline_max = u64::MAX;
        c.status_interval_ms = 100;
        c.fetch_retry_ms = 50;
        c.help_slots_max = 8;
        c.view_change_timeout_ms = 500;
        c.view_change_doublings_max = 2;
        c.help_only_lagging = self.help_only_lagging;
        c.unsafe_quorum_override = self.unsafe_quorum_override;
        c.unsafe_forget_prepared_in_new_view = self.unsafe_forget_prepared_in_new_view;
        c.unsafe_tentative_at_pre_prepare = self.unsafe_tentative_at_pre_prepare;
        c
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    pub violations: Vec<Violation>,
    /// SHA-256 over every event delivered, in order.
    pub trace_hash: String,
    pub max_executed: u64,
    pub jobs: usize,
    pub events: u64,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// What the engine and the gateways share.
pub struct Shared {
    pub network: NetworkId,
    pub membership: Arc<Membership>,
    /// Checks the simulator's signatures ([`keys`]) of the same members.
    pub verifier: Arc<SimVerifier>,
}

enum Payload {
    Signed(Arc<[u8]>),
    Fetch(Vec<crate::wire::Digest>),
    Status(crate::wire::Status),
    State { proof: Vec<Arc<[u8]>>, state: Arc<[u8]> },
}

enum Event {
    ToReplica {
        to: usize,
        from: usize,
        payload: Payload,
    },
    ToGateway {
        to: usize,
        bytes: Arc<[u8]>,
    },
    Wake {
        replica: usize,
        epoch: u64,
    },
    Executed {
        replica: usize,
        epoch: u64,
        seq: u64,
    },
    Submit {
        gateway: usize,
    },
    GatewayTick,
    Crash {
        replica: usize,
    },
    CrashPrimary,
    /// Crash the replica in the window between an executed batch's replies
    /// and its durable record (see `Node::crash_after_replies`).
    ArmCrash {
        replica: usize,
    },
    Restart {
        replica: usize,
    },
    /// Twins: a new grouping of correct replicas around the twins.
    Regroup,
}

enum Opened {
    Request(Signed<Request>),
    Message(Message),
    Reply(Signed<Reply>),
    Bad,
}

struct Node {
    /// The replica index of its key (a twin shares it with its sibling).
    id: usize,
    /// Twins only: which twins this node talks to (bit 0: the first twin of
    /// a pair, bit 1: the second). A twin has one bit; a correct node one or
    /// both.
    side: u8,
    key: Arc<SimKey>,
    replica: Option<Replica>,
    /// Bumped at each restart, so timers of a dead incarnation are ignored.
    epoch: u64,
    store: Vec<Record>,
    /// Records of quiet Readies not yet in `store` (lost in a crash).
    deferred: Vec<Record>,
    wake_at: Option<Millis>,
    /// Crash right after the next replies sent ahead of their Ready's
    /// records (an execution), before those records are durable.
    crash_after_replies: bool,
}

pub struct Sim {
    cfg: SimConfig,
    rng: ChaCha8Rng,
    now: Millis,
    queue: BinaryHeap<Reverse<(Millis, u64)>>,
    events: HashMap<u64, Event>,
    next_event: u64,
    shared: Shared,
    nodes: Vec<Node>,
    gateways: Vec<Client>,
    gateway_index: HashMap<PeerId, usize>,
    deliveries: Vec<String>,
    opened: HashMap<usize, (Arc<[u8]>, Opened)>,
    trace: Sha256,
    events_run: u64,
    /// (start, end, side of each replica): messages between sides are lost.
    partitions: Vec<(Millis, Millis, Vec<bool>)>,
    /// Messages a replaying replica may send again.
    replay_pool: Vec<Arc<[u8]>>,
    /// What each correct replica signed, by (signer, kind, view, seq).
    signed: HashMap<(PeerId, u8, u64, u64), crate::wire::Digest>,
    /// By replica index: keys that may sign conflicting things (Byzantine).
    faulty: Vec<bool>,
    pub checker: Checker,
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let mut key = |tag: u8, i: usize| {
            // Keys depend on the seed too: nothing is shared between runs.
            let mut bytes: [u8; 32] = rng.random();
            bytes[0] = tag;
            bytes[1] = i as u8;
            let ed25519 = Keypair::ed25519_from_bytes(bytes).expect("32 bytes make a key");
            SimKey::new(&ed25519, rng.random())
        };
        let keys: Vec<SimKey> = (0..cfg.n).map(|i| key(1, i)).collect();
        let gw_keys: Vec<SimKey> = (0..cfg.gateways).map(|i| key(2, i)).collect();
        let member = |k: &SimKey| Member { peer_id: k.peer_id(), addr: None };
        let membership = Membership::new(
            "sim".into(),
            keys.iter().map(member).collect(),
            gw_keys.iter().map(member).collect(),
            vec!["file:///".into()],
        )
        .expect("valid membership");
        let all: Vec<&SimKey> = keys.iter().chain(&gw_keys).collect();
        let verifier = Arc::new(SimVerifier::new(&membership, &all));
        let shared = Shared { network: membership.network_id(), membership: Arc::new(membership), verifier };
        let gateways: Vec<Client> = gw_keys.into_iter().map(Client::new).collect();
        let gateway_index = gateways.iter().enumerate().map(|(i, g)| (g.peer, i)).collect();
        let mut sim = Sim {
            rng,
            now: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            next_event: 0,
            shared,
            nodes: Vec::new(),
            gateways,
            gateway_index,
            deliveries: Vec::new(),
            opened: HashMap::new(),
            trace: Sha256::new(),
            events_run: 0,
            signed: HashMap::new(),
            faulty: vec![false; cfg.n],
            replay_pool: Vec::new(),
            partitions: Vec::new(),
            checker: Checker::default(),
            cfg,
        };
        sim.checker.quorum = sim.shared.membership.quorum().quorum();
        let keys: Vec<Arc<SimKey>> = keys.into_iter().map(Arc::new).collect();
        for (id, key) in keys.iter().enumerate() {
            sim.add_node(id, 3, key.clone());
        }
        match sim.cfg.byzantine {
            Some(Byzantine::Twins) => {
                // f keys among the primaries of views 0..=f, each run twice.
                let f = sim.shared.membership.quorum().f;
                let mut candidates: Vec<usize> = (0..=f).collect();
                candidates.swap_remove(sim.rng.random_range(0..candidates.len()));
                for id in candidates {
                    sim.faulty[id] = true;
                    sim.nodes[id].side = 1;
                    sim.add_node(id, 2, keys[id].clone());
                }
            }
            Some(b) => sim.faulty[b.replica()] = true,
            None => {}
        }
        for i in 0..sim.nodes.len() {
            sim.drive(i, Input::Tick);
        }
        for _ in 0..sim.cfg.requests {
            let at = sim.rng.random_range(0..sim.cfg.submit_until_ms);
            let gateway = sim.rng.random_range(0..sim.cfg.gateways);
            sim.schedule(at, Event::Submit { gateway });
        }
        sim.schedule(0, Event::GatewayTick);
        if sim.cfg.byzantine == Some(Byzantine::Twins) {
            sim.regroup();
            let mut at = 0;
            loop {
                at += sim.rng.random_range(200..800);
                if at >= sim.cfg.heal_at_ms {
                    break;
                }
                sim.schedule(at, Event::Regroup);
            }
            sim.schedule(sim.cfg.heal_at_ms, Event::Regroup);
        }
        if sim.cfg.faults.partition {
            for _ in 0..sim.rng.random_range(1..=2) {
                let start = sim.rng.random_range(0..sim.cfg.heal_at_ms / 2);
                let end = (start + sim.rng.random_range(200..1_500)).min(sim.cfg.heal_at_ms);
                let side: Vec<bool> = loop {
                    let side: Vec<bool> = (0..sim.cfg.n).map(|_| sim.rng.random_bool(0.5)).collect();
                    if side.iter().any(|s| *s) && side.iter().any(|s| !*s) {
                        break side;
                    }
                };
                sim.partitions.push((start, end, side));
            }
        }
        if sim.cfg.faults.crash_primary {
            for _ in 0..sim.rng.random_range(1..=2) {
                let at = sim.rng.random_range(0..sim.cfg.submit_until_ms);
                sim.schedule(at, Event::CrashPrimary);
            }
        }
        if sim.cfg.faults.crash_restart {
            let crashes = sim.rng.random_range(1..=4);
            for _ in 0..crashes {
                let at = sim.rng.random_range(0..sim.cfg.heal_at_ms);
                let replica = sim.rng.random_range(1..sim.cfg.n);
                sim.schedule(at, Event::Crash { replica });
            }
            // From a stream of its own, so that the seeds keep their traces
            // up to the first such crash.
            let mut rng = ChaCha8Rng::seed_from_u64(sim.cfg.seed ^ 0xc4a5_4af7_e44e_91e5);
            for _ in 0..rng.random_range(1..=3) {
                let at = rng.random_range(0..sim.cfg.heal_at_ms);
                let replica = rng.random_range(0..sim.cfg.n);
                sim.schedule(at, Event::ArmCrash { replica });
            }
        }
        sim
    }

    fn add_node(&mut self, id: usize, side: u8, key: Arc<SimKey>) {
        let replica = Replica::new(self.replica_config(), key.clone(), self.shared.verifier.clone());
        self.nodes.push(Node {
            id,
            side,
            key,
            replica: Some(replica),
            epoch: 0,
            store: Vec::new(),
            deferred: Vec::new(),
            wake_at: None,
            crash_after_replies: false,
        });
    }

    /// How many cores run (twins included).
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// The replica indices of the keys that may sign conflicting things.
    pub fn faulty_replicas(&self) -> Vec<usize> {
        (0..self.cfg.n).filter(|&i| self.faulty[i]).collect()
    }

    /// Twins: which twin(s) each correct replica talks to, until the next
    /// regrouping; from the heal on, both.
    fn regroup(&mut self) {
        let healed = !self.faulty();
        for i in 0..self.nodes.len() {
            if !self.faulty[self.nodes[i].id] {
                self.nodes[i].side = if healed {
                    3
                } else {
                    match self.rng.random_range(0..5) {
                        0 | 1 => 1,
                        2 | 3 => 2,
                        _ => 3,
                    }
                };
            }
        }
    }

    /// Whether node `a` may reach node `b` at all: never itself or its twin;
    /// around a twin, only if their sides meet.
    fn linked(&self, a: usize, b: usize) -> bool {
        let (x, y) = (&self.nodes[a], &self.nodes[b]);
        x.id != y.id && (x.side & y.side != 0 || (!self.faulty[x.id] && !self.faulty[y.id]))
    }

    /// The nodes a message from node `from` to `to` reaches.
    fn targets(&self, from: usize, to: &Target) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&v| match to {
                Target::All => true,
                Target::Replica(i) => self.nodes[v].id == *i,
            })
            .filter(|&v| self.linked(from, v))
            .collect()
    }

    fn replica_config(&self) -> Config {
        self.cfg.replica_config(self.shared.network, self.shared.membership.replica_ids())
    }

    fn schedule(&mut self, at: Millis, e: Event) {
        let id = self.next_event;
        self.next_event += 1;
        self.events.insert(id, e);
        self.queue.push(Reverse((at, id)));
    }

    fn faulty(&self) -> bool {
        self.now < self.cfg.heal_at_ms
    }

    /// Whether the key of replica index `replica` is faulty.
    fn is_byzantine(&self, replica: usize) -> bool {
        self.faulty[replica]
    }

    /// Sends over the simulated network: drop, duplicate, delay.
    fn send(&mut self, from: usize, to_replica: Option<usize>, to_gateway: Option<usize>, payload: Payload) {
        self.send_later(from, to_replica, to_gateway, payload, 0);
    }

    /// [`Sim::send`], `extra` ms later. `from` and `to_replica` are nodes.
    fn send_later(
        &mut self,
        from: usize,
        to_replica: Option<usize>,
        to_gateway: Option<usize>,
        payload: Payload,
        extra: Millis,
    ) {
        let f = self.cfg.faults;
        let faulty = self.faulty();
        if let Some(to) = to_replica {
            let now = self.now;
            let (a, b) = (self.nodes[from].id, self.nodes[to].id);
            let cut =
                self.partitions.iter().any(|(start, end, side)| now >= *start && now < *end && side[a] != side[b]);
            if cut {
                return;
            }
        }
        if faulty && f.drop > 0.0 && self.rng.random_bool(f.drop) {
            return;
        }
        let copies = if faulty && f.duplicate > 0.0 && self.rng.random_bool(f.duplicate) { 2 } else { 1 };
        let mut payload = Some(payload);
        for c in 0..copies {
            let (lo, hi) = if faulty { f.latency_ms } else { (1, 3) };
            let mut delay = self.rng.random_range(lo..=hi);
            if faulty && f.long_delay_ms > 0 && self.rng.random_bool(0.05) {
                delay += f.long_delay_ms;
            }
            let p = if c + 1 == copies {
                payload.take().expect("present")
            } else {
                clone_payload(payload.as_ref().expect("present"))
            };
            let at = self.now + delay + extra;
            match (to_replica, to_gateway, p) {
                (Some(to), _, payload) => self.schedule(at, Event::ToReplica { to, from, payload }),
                (None, Some(to), Payload::Signed(bytes)) => self.schedule(at, Event::ToGateway { to, bytes }),
                _ => unreachable!("gateways receive signed replies only"),
            }
        }
    }

    /// Opens signed bytes once (a driver verifies each message once).
    fn open(&mut self, bytes: &Arc<[u8]>) -> &Opened {
        let key = Arc::as_ptr(bytes) as *const u8 as usize;
        if !self.opened.contains_key(&key) {
            if self.opened.len() > 200_000 {
                self.opened.clear();
            }
            let m = self.shared.verifier.as_ref();
            let opened = match Envelope::open(bytes, &self.shared.network, m) {
                Err(_) => Opened::Bad,
                Ok(env) => match env.kind {
                    Kind::Request => {
                        Signed::from_envelope(env, bytes.clone()).map(Opened::Request).unwrap_or(Opened::Bad)
                    }
                    Kind::Reply => Signed::from_envelope(env, bytes.clone()).map(Opened::Reply).unwrap_or(Opened::Bad),
                    _ => Message::from_envelope(env, bytes.clone()).map(Opened::Message).unwrap_or(Opened::Bad),
                },
            };
            // Holding the Arc keeps the address from being reused.
            self.opened.insert(key, (bytes.clone(), opened));
        }
        &self.opened[&key].1
    }

    /// Steps replica `i` and handles its Ready the way a driver must:
    /// persist, then send, then execute.
    fn drive(&mut self, i: usize, input: Input) {
        let now = self.now;
        let Some(replica) = self.nodes[i].replica.as_mut() else { return };
        replica.step(now, input);
        let ready = replica.take_ready();
        let id = self.nodes[i].id;
        let correct = !self.is_byzantine(id);
        if correct {
            // A NEW-VIEW is persisted by a correct replica as it enters the view.
            for rec in &ready.persist {
                if let Record::Message(bytes) = rec {
                    if let Opened::Message(Message::NewView(nv)) = self.open(bytes) {
                        let summary = summarise_new_view(&nv.msg);
                        self.checker.new_view(now, summary);
                    }
                }
            }
        }
        // The driver's order: replies of a Ready that sends no protocol
        // message go before its records are durable.
        let early = ready.messages.is_empty() && ready.skipped.is_empty();
        let mut ready = ready;
        if early {
            for r in std::mem::take(&mut ready.replies) {
                if let Some(&g) = self.gateway_index.get(&r.to) {
                    self.send(i, None, Some(g), Payload::Signed(r.bytes));
                }
            }
            if !ready.execute.is_empty() && std::mem::take(&mut self.nodes[i].crash_after_replies) && self.faulty() {
                self.handle(Event::Crash { replica: i });
                if self.nodes[i].replica.is_none() {
                    return;
                }
            }
        }
        let node = &mut self.nodes[i];
        if self.cfg.defer_quiet_records && ready.is_light() {
            node.deferred.extend(ready.persist);
        } else {
            node.store.append(&mut node.deferred);
            node.store.extend(ready.persist);
        }
        for out in ready.messages {
            self.outbound(i, out, correct);
        }
        for r in ready.replies {
            if let Some(&g) = self.gateway_index.get(&r.to) {
                self.send(i, None, Some(g), Payload::Signed(r.bytes));
            }
        }
        for s in ready.skipped {
            if correct {
                self.checker.skipped_to(id, s.to_seq);
            }
        }
        for b in ready.execute {
            if correct {
                self.checker.executed(now, id, b.seq, b.batch);
                for (job, req) in &b.jobs {
                    self.checker.job(now, *job, req.msg.gateway, req.msg.number, req.msg.delivery.as_deref());
                }
            }
            let epoch = self.nodes[i].epoch;
            let lag = self.rng.random_range(0..3);
            self.schedule(now + lag, Event::Executed { replica: i, epoch, seq: b.seq });
        }
        for note in ready.notes {
            match note {
                crate::pbft::Note::Equivocation { replica, first, second } if !self.is_byzantine(replica) => {
                    let show = |b: &[u8]| match crate::wire::decode::<Envelope>(b, usize::MAX) {
                        Ok(e) => format!("{:?} {}", e.kind, hex::encode(&e.body[..e.body.len().min(48)])),
                        Err(_) => "undecodable".into(),
                    };
                    let what = format!(
                        "replica {id} caught correct replica {replica} equivocating: {} / {}",
                        show(&first),
                        show(&second)
                    );
                    self.checker.other(now, what);
                }
                crate::pbft::Note::Diverged { seq } if correct => {
                    self.checker.other(now, format!("replica {id} diverged from a certified state at {seq}"));
                }
                _ => {}
            }
        }
        if let Some(at) = ready.wake_at {
            let node = &mut self.nodes[i];
            if node.wake_at.is_none_or(|w| at < w || w <= now) {
                node.wake_at = Some(at);
                let epoch = node.epoch;
                self.schedule(at.max(now + 1), Event::Wake { replica: i, epoch });
            }
        }
    }

    fn outbound(&mut self, from: usize, out: Outbound, correct: bool) {
        match out {
            Outbound::Signed { to, bytes } => {
                self.observe(&bytes);
                let targets = self.targets(from, &to);
                let byzantine = if correct { None } else { self.cfg.byzantine };
                if let Some(b) = byzantine {
                    if self.misbehave(b, from, &bytes, &targets) {
                        return;
                    }
                }
                let equivocate = byzantine == Some(Byzantine::EquivocatingPrimary)
                    && matches!(self.open(&bytes), Opened::Message(Message::PrePrepare(_)));
                if equivocate {
                    let other = self.forge_variant(from, &bytes);
                    for t in targets {
                        let b = if t <= self.cfg.n / 2 { bytes.clone() } else { other.clone() };
                        self.send(from, Some(t), None, Payload::Signed(b));
                    }
                } else {
                    for t in targets {
                        self.send(from, Some(t), None, Payload::Signed(bytes.clone()));
                    }
                }
            }
            _ if !correct && self.cfg.byzantine == Some(Byzantine::SilentPrimary) => {}
            Outbound::FetchRequests { to, digests } => {
                for t in self.targets(from, &Target::Replica(to)) {
                    self.send(from, Some(t), None, Payload::Fetch(digests.clone()));
                }
            }
            Outbound::Status { to, status } => {
                for t in self.targets(from, &to) {
                    self.send(from, Some(t), None, Payload::Status(status));
                }
            }
            Outbound::State { to, proof, state } => {
                for t in self.targets(from, &Target::Replica(to)) {
                    let payload = Payload::State { proof: proof.clone(), state: state.clone() };
                    self.send(from, Some(t), None, payload);
                }
            }
        }
    }

    /// Byzantine behaviour around one signed message; true when the message
    /// itself must not go out as it is.
    fn misbehave(&mut self, b: Byzantine, from: usize, bytes: &Arc<[u8]>, targets: &[usize]) -> bool {
        let network = self.shared.network;
        match b {
            Byzantine::EquivocatingPrimary | Byzantine::Twins => false,
            Byzantine::SilentPrimary => true,
            Byzantine::SilentNextPrimary => matches!(
                self.open(bytes),
                Opened::Message(Message::NewView(_)) | Opened::Message(Message::PrePrepare(_))
            ),
            Byzantine::Forger => {
                let mut garbled = bytes.to_vec();
                let at = self.rng.random_range(0..garbled.len());
                garbled[at] ^= 1 << self.rng.random_range(0..8);
                let mut forged = None;
                if let Ok(mut env) = crate::wire::decode::<Envelope>(bytes, usize::MAX) {
                    // Claim another replica signed it; the signature stays ours.
                    let other = (from + 1 + self.rng.random_range(0..self.cfg.n - 1)) % self.cfg.n;
                    env.signer = self.shared.membership.replica_ids()[other];
                    forged = Some(crate::wire::encode(&env));
                }
                let noise: Vec<u8> = (0..self.rng.random_range(0..200)).map(|_| self.rng.random()).collect();
                for &t in targets {
                    for junk in [Some(garbled.clone()), forged.clone(), Some(noise.clone())].into_iter().flatten() {
                        self.send(from, Some(t), None, Payload::Signed(junk.into()));
                    }
                }
                false
            }
            Byzantine::Replayer => {
                self.replay_pool.push(bytes.clone());
                if self.replay_pool.len() > 512 {
                    let k = self.rng.random_range(0..self.replay_pool.len());
                    self.replay_pool.swap_remove(k);
                }
                let old = self.replay_pool[self.rng.random_range(0..self.replay_pool.len())].clone();
                let to = self.rng.random_range(0..self.cfg.n);
                if to != from {
                    self.send(from, Some(to), None, Payload::Signed(old));
                }
                false
            }
            Byzantine::WrongCheckpoints => {
                let Opened::Message(Message::Checkpoint(c)) = self.open(bytes) else { return false };
                let mut msg = c.msg.clone();
                msg.state = Digest::of_parts(b"sim/wrong-state", &[&msg.state.0]);
                let wrong = Signed::seal(msg, &network, self.nodes[from].key.as_ref()).shared_bytes();
                for &t in targets {
                    self.send(from, Some(t), None, Payload::Signed(wrong.clone()));
                }
                true
            }
        }
    }

    /// The equivocating primary's second pre-prepare for the same slot.
    fn forge_variant(&mut self, from: usize, bytes: &Arc<[u8]>) -> Arc<[u8]> {
        let Opened::Message(Message::PrePrepare(pp)) = self.open(bytes) else { unreachable!("checked") };
        let mut msg = pp.msg.clone();
        if msg.requests.len() >= 2 {
            msg.requests.reverse();
        } else {
            msg.requests.clear();
        }
        Signed::seal(msg, &self.shared.network, self.nodes[from].key.as_ref()).shared_bytes()
    }

    /// Checkpoints sent by correct replicas must agree.
    /// Watches what correct replicas sign: checkpoints must agree, and no
    /// correct replica may sign two different messages of one kind for one
    /// slot (or one view), across restarts included.
    fn observe(&mut self, bytes: &Arc<[u8]>) {
        let now = self.now;
        let key = match self.open(bytes) {
            Opened::Message(m) => {
                let (kind, view, seq) = match m {
                    Message::PrePrepare(x) => (Kind::PrePrepare, x.msg.view, x.msg.seq),
                    Message::Prepare(x) => (Kind::Prepare, x.msg.view, x.msg.seq),
                    Message::Commit(x) => (Kind::Commit, x.msg.view, x.msg.seq),
                    Message::Checkpoint(x) => (Kind::Checkpoint, 0, x.msg.seq),
                    Message::ViewChange(x) => (Kind::ViewChange, x.msg.view, 0),
                    Message::NewView(x) => (Kind::NewView, x.msg.view, 0),
                };
                let state = if let Message::Checkpoint(c) = m { Some(c.msg.state) } else { None };
                (m.signer(), kind as u8, view, seq, state)
            }
            _ => return,
        };
        let Some(signer) = self.shared.membership.replica_index(&key.0) else { return };
        let correct = !self.is_byzantine(signer);
        match self.open(bytes) {
            Opened::Message(Message::Commit(c)) => {
                let (view, seq, batch) = (c.msg.view, c.msg.seq, c.msg.batch);
                self.checker.commit(now, signer, correct, view, seq, batch);
            }
            Opened::Message(Message::ViewChange(vc)) if correct => {
                let certs: BTreeMap<u64, (u64, Digest)> = vc
                    .msg
                    .prepared
                    .iter()
                    .filter_map(|p| peek::<PrePrepare>(&p.pre_prepare.0))
                    .map(|pp| (pp.seq, (pp.view, pp.batch_digest())))
                    .collect();
                let (view, checkpoint) = (vc.msg.view, vc.msg.checkpoint_seq);
                self.checker.view_change(now, signer, view, checkpoint, &certs);
            }
            _ => {}
        }
        if !correct {
            return;
        }
        if let Some(state) = key.4 {
            self.checker.checkpoint(now, signer, key.3, state);
        }
        let key = (key.0, key.1, key.2, key.3);
        let digest = Digest::of_parts(b"sim/signed", &[bytes]);
        match self.signed.get(&key) {
            Some(d) if *d != digest => {
                let what = format!(
                    "correct replica {signer} signed two different {:?} for view {} seq {}",
                    key.1, key.2, key.3
                );
                self.checker.other(now, what);
            }
            Some(_) => {}
            None => {
                self.signed.insert(key, digest);
            }
        }
    }

    fn trace(&mut self, tag: u8, a: u64, b: u64, bytes: &[u8]) {
        self.trace.update(self.now.to_be_bytes());
        self.trace.update([tag]);
        self.trace.update(a.to_be_bytes());
        self.trace.update(b.to_be_bytes());
        self.trace.update((bytes.len() as u64).to_be_bytes());
        self.trace.update(bytes);
    }

    /// Runs to the end and checks liveness.
    pub fn run(mut self) -> Report {
        while let Some(Reverse((at, id))) = self.queue.pop() {
            if at > self.cfg.end_ms {
                break;
            }
            self.now = at;
            let e = self.events.remove(&id).expect("scheduled");
            self.events_run += 1;
            self.handle(e);
        }
        let told: Vec<_> =
            self.gateways.iter().flat_map(|g| g.done.iter().map(|(&n, (j, d))| (g.peer, n, *j, d.clone()))).collect();
        for (gateway, number, job, delivery) in told {
            self.checker.told(self.now, gateway, number, delivery.as_deref(), job);
        }
        self.check_liveness();
        Report {
            seed: self.cfg.seed,
            max_executed: self.checker.max_executed(),
            jobs: self.checker.jobs(),
            events: self.events_run,
            trace_hash: hex::encode(self.trace.clone().finalize()),
            violations: std::mem::take(&mut self.checker.violations),
        }
    }

    fn handle(&mut self, e: Event) {
        match e {
            Event::ToReplica { to, from, payload } => {
                if self.nodes[to].replica.is_none() {
                    return;
                }
                match payload {
                    Payload::Signed(bytes) => {
                        self.trace(1, to as u64, from as u64, &bytes);
                        let input = match self.open(&bytes) {
                            Opened::Request(r) => Input::Request(r.clone()),
                            Opened::Message(m) => Input::Message(m.clone()),
                            _ => return,
                        };
                        // The driver's membership check: requests come from gateways.
                        if matches!(&input, Input::Request(r) if !self.gateway_index.contains_key(&r.signer)) {
                            return;
                        }
                        self.drive(to, input);
                    }
                    Payload::Fetch(digests) => {
                        self.trace(2, to as u64, from as u64, &[]);
                        let from = self.nodes[from].id;
                        self.drive(to, Input::FetchRequests { from, digests });
                    }
                    Payload::Status(status) => {
                        self.trace(3, to as u64, from as u64, &crate::wire::encode(&status));
                        let from = self.nodes[from].id;
                        self.drive(to, Input::Status { from, status });
                    }
                    Payload::State { proof, state } => {
                        self.trace(4, to as u64, from as u64, &state);
                        let m = self.shared.verifier.clone();
                        let proof = proof
                            .iter()
                            .filter_map(|b| Signed::open(b, &self.shared.network, m.as_ref()).ok())
                            .collect();
                        self.drive(to, Input::State { proof, state: state.to_vec() });
                    }
                }
            }
            Event::ToGateway { to, bytes } => {
                self.trace(5, to as u64, 0, &bytes);
                let quorum = self.shared.membership.quorum();
                let Opened::Reply(r) = self.open(&bytes) else { return };
                let (signer, reply) = (r.signer, r.msg.clone());
                let Some(replica) = self.shared.membership.replica_index(&signer) else { return };
                if let Some(complaint) = self.gateways[to].on_reply(quorum, replica, &reply) {
                    if !self.is_byzantine(replica) {
                        self.checker.other(self.now, complaint);
                    }
                }
            }
            Event::Wake { replica, epoch } => {
                if self.nodes[replica].epoch == epoch {
                    self.trace(6, replica as u64, 0, &[]);
                    self.nodes[replica].wake_at = None;
                    self.drive(replica, Input::Tick);
                }
            }
            Event::Executed { replica, epoch, seq } => {
                if self.nodes[replica].epoch == epoch {
                    self.drive(replica, Input::Executed { seq });
                }
            }
            Event::Submit { gateway } => {
                let delivery = if !self.deliveries.is_empty() && self.rng.random_bool(self.cfg.redeliver) {
                    let k = self.rng.random_range(0..self.deliveries.len());
                    Some(self.deliveries[k].clone())
                } else {
                    let d = format!("delivery-{}", self.deliveries.len());
                    self.deliveries.push(d.clone());
                    Some(d)
                };
                let bytes = self.gateways[gateway].submit(&self.shared, self.now, delivery);
                self.trace(7, gateway as u64, 0, &bytes);
                self.send_to_every_node(bytes);
            }
            Event::GatewayTick => {
                for g in 0..self.gateways.len() {
                    for bytes in self.gateways[g].due(self.now, 300) {
                        self.send_to_every_node(bytes);
                    }
                }
                self.schedule(self.now + 50, Event::GatewayTick);
            }
            Event::Regroup => {
                self.trace(10, 0, 0, &[]);
                self.regroup();
            }
            Event::ArmCrash { replica } => self.nodes[replica].crash_after_replies = true,
            Event::CrashPrimary => {
                let view = self.nodes.iter().filter_map(|n| n.replica.as_ref()).map(|r| r.view()).max().unwrap_or(0);
                let replica = (view % self.cfg.n as u64) as usize;
                self.handle(Event::Crash { replica });
            }
            Event::Crash { replica } => {
                let down = self.nodes.iter().filter(|n| n.replica.is_none()).count();
                if self.nodes[replica].replica.is_none() || down >= self.shared.membership.quorum().f {
                    return;
                }
                self.trace(8, replica as u64, 0, &[]);
                self.nodes[replica].replica = None;
                self.nodes[replica].deferred.clear();
                self.nodes[replica].epoch += 1;
                self.nodes[replica].wake_at = None;
                let back = self.now + self.rng.random_range(50..600);
                self.schedule(back, Event::Restart { replica });
            }
            Event::Restart { replica } => {
                self.trace(9, replica as u64, 0, &[]);
                let node = &self.nodes[replica];
                let restored = Replica::restore(
                    self.replica_config(),
                    node.key.clone(),
                    self.shared.verifier.clone(),
                    self.now,
                    node.store.clone(),
                    // Every stop here is a crash.
                    true,
                );
                match restored {
                    Ok(r) => {
                        self.nodes[replica].replica = Some(r);
                        // The restored replica's Ready holds the replay's output.
                        self.drive(replica, Input::Tick);
                    }
                    Err(e) => self.checker.other(self.now, format!("replica {replica} failed to restore: {e}")),
                }
            }
        }
    }

    /// A gateway's request reaches every node; the second twin of a pair
    /// hears it later, so the twins order requests differently.
    fn send_to_every_node(&mut self, bytes: Arc<[u8]>) {
        for r in 0..self.nodes.len() {
            let late = self.faulty[self.nodes[r].id] && r >= self.cfg.n;
            let extra = if late { self.rng.random_range(0..300) } else { 0 };
            self.send_later(r, Some(r), None, Payload::Signed(bytes.clone()), extra);
        }
    }

    fn check_liveness(&mut self) {
        let now = self.now;
        if self.cfg.unsafe_quorum_override.is_some()
            || self.cfg.unsafe_forget_prepared_in_new_view
            || self.cfg.unsafe_tentative_at_pre_prepare
        {
            // A broken protocol owes no progress; only its safety is checked.
            return;
        }
        let pending: usize = self.gateways.iter().map(|g| g.outstanding.len()).sum();
        if pending > 0 {
            self.checker.liveness(now, format!("{pending} requests never got f + 1 accepted replies"));
        }
        let max = self.checker.max_executed();
        if std::env::var("SIM_DEBUG").is_ok() {
            for g in &self.gateways {
                for (number, o) in &g.outstanding {
                    eprintln!("outstanding request {number} ({}), answers {:?}", o.digest, o.answers);
                    for (i, node) in self.nodes.iter().enumerate() {
                        if let Some(r) = &node.replica {
                            eprintln!("  replica {i}: {}", r.debug_request(&o.digest));
                        }
                    }
                }
            }
            for (i, node) in self.nodes.iter().enumerate() {
                if let Some(r) = &node.replica {
                    eprintln!("replica {i}: {}", r.debug_summary());
                }
            }
        }
        for i in 0..self.nodes.len() {
            if self.is_byzantine(self.nodes[i].id) {
                continue;
            }
            if let Some(r) = &self.nodes[i].replica {
                if r.last_executed() < max {
                    let what = format!("replica {i} stopped at seq {} of {max}", r.last_executed());
                    self.checker.liveness(now, what);
                }
            }
        }
    }
}

/// Decodes a signed message without checking its signature (for the
/// checkers, on messages the core already accepted or produced).
fn peek<T: crate::wire::WireMessage>(bytes: &[u8]) -> Option<T> {
    let env = crate::wire::decode::<Envelope>(bytes, usize::MAX).ok()?;
    crate::wire::decode::<T>(&env.body, usize::MAX).ok()
}

fn summarise_new_view(nv: &NewView) -> checker::NewViewSummary {
    let checkpoint =
        nv.view_changes.iter().filter_map(|b| peek::<ViewChange>(&b.0)).map(|vc| vc.checkpoint_seq).max().unwrap_or(0);
    let slots =
        nv.pre_prepares.iter().filter_map(|b| peek::<PrePrepare>(&b.0)).map(|pp| (pp.seq, pp.batch_digest())).collect();
    checker::NewViewSummary { view: nv.view, checkpoint, slots }
}

fn clone_payload(p: &Payload) -> Payload {
    match p {
        Payload::Signed(b) => Payload::Signed(b.clone()),
        Payload::Fetch(d) => Payload::Fetch(d.clone()),
        Payload::Status(s) => Payload::Status(*s),
        Payload::State { proof, state } => Payload::State { proof: proof.clone(), state: state.clone() },
    }
}

/// Runs one seed.
pub fn run(cfg: SimConfig) -> Report {
    Sim::new(cfg).run()
}

/// Runs `seeds` seeds of one scenario and returns the failing reports.
pub fn sweep(n: usize, class: FaultClass, byzantine: Option<Byzantine>, seeds: std::ops::Range<u64>) -> Vec<Report> {
    seeds
        .map(|seed| {
            let mut cfg = SimConfig::new(n, seed, class);
            cfg.byzantine = byzantine;
            run(cfg)
        })
        .filter(|r| !r.ok())
        .collect()
}
