//! The replica's driver: owns the consensus core ([`Replica`]), the durable
//! [`Store`] and the swarm ([`Net`]), and turns one into calls on the others
//! in a single `select!` loop over network events, the core's timer and
//! finished jobs.
//!
//! Every [`Ready`] is handled in the documented order: its records are
//! persisted before any protocol message of it is sent (its replies go
//! first when it sends none, see `handle`), and its committed batches are
//! recorded in the job log before their jobs start and before the core hears
//! they were executed — both in one fsync'd transaction per `Ready` (group
//! commit: under load one `Ready` covers up to `ROUND_EVENTS_MAX` inputs); slots jumped over by a state
//! transfer are recorded as skipped. A restart rebuilds the core from the
//! store's records and resumes the jobs that had not finished.
//!
//! It holds no protocol logic (that is the core's) and names no libp2p type
//! (that is `net`'s).

pub mod executor;
#[cfg(feature = "fault-injection")]
pub mod fault;
mod logs;
mod results;
pub mod shutdown;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use libp2p_identity::{Keypair, PeerId};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tracing::{debug, info, warn};

use crate::membership::Membership;
use crate::net::{Net, NetConfig, NetError, NetEvent, Opened, Role};
use crate::pbft::{
    Batch, Config, Input, Message, Millis, Note, Outbound, Ready, Record, Replica, RestoreError, Target,
};
use crate::store::{Store, StoreError};
use crate::wire::{
    limits, Checkpoint, Digest, Envelope, JobId, Operation, PeerRequest, PeerResponse, Reply, ReplyBody, Request,
    Signed, SignedBytes,
};
pub use executor::{Abstain, Executor, JobFuture, NoneExecutor};
pub use shutdown::Shutdown;

/// Unfinished jobs resumed at start.
const RESUME_JOBS_MAX: usize = 65_536;
/// Finished jobs queued for the loop.
const DONE_QUEUE_MAX: usize = 4096;
/// Replies held for a gateway that is not connected (the oldest go first;
/// all stay in the store, served on request).
const HELD_REPLIES_MAX: usize = 4096;
/// Network events taken in one round, before the core's Ready is handled.
const ROUND_EVENTS_MAX: usize = 256;
/// Replies one answer to a `Replies` request carries.
const SERVED_REPLIES_MAX: usize = 64;
/// Records of quiet Readies held for the next commit (past it, they are
/// committed at once).
const DEFERRED_MAX: usize = 4096;
/// Evidence lines remembered, so that a retransmitted proof is logged once.
const EVIDENCE_SHOWN_MAX: usize = 4096;

pub struct NodeConfig {
    pub key: Keypair,
    pub membership: Arc<Membership>,
    pub listen: Vec<String>,
    pub bootstrap: Vec<String>,
    pub mdns: Option<bool>,
    pub data_dir: PathBuf,
    pub executor: Arc<dyn Executor>,
    /// Misbehave on purpose (end-to-end tests of Byzantine replicas).
    #[cfg(feature = "fault-injection")]
    pub fault: Option<fault::Fault>,
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("{0} is not a replica of this membership")]
    NotAReplica(PeerId),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("restoring from the store: {0}")]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    Net(#[from] NetError),
}

/// Runs a replica until `shutdown` fires.
pub async fn run(cfg: NodeConfig, mut shutdown: Shutdown) -> Result<(), DriverError> {
    let mut driver = Driver::start(cfg)?;
    loop {
        driver.flush()?;
        tokio::select! {
            _ = shutdown.fired() => break,
            event = driver.net.next_event() => {
                driver.on_net_event(event)?;
                // Take what else is there already, so that one Ready (one
                // fsync) covers many messages under load.
                for _ in 1..ROUND_EVENTS_MAX {
                    match tokio::time::timeout(Duration::ZERO, driver.net.next_event()).await {
                        Ok(event) => driver.on_net_event(event)?,
                        Err(_) => break,
                    }
                }
            }
            _ = &mut driver.wake => driver.replica.step(driver.now(), Input::Tick),
            Some(done) = driver.done_rx.recv() => {
                driver.on_job_done(done).await;
                while let Ok(done) = driver.done_rx.try_recv() {
                    driver.on_job_done(done).await;
                }
            }
            Some(stored) = driver.results.stored.recv() => {
                driver.on_stored(stored)?;
                while let Ok(stored) = driver.results.stored.try_recv() {
                    driver.on_stored(stored)?;
                }
            }
        }
    }
    // What light Readies left to persist (PRE-PREPAREs and PREPAREs we sent
    // among them), and the mark that spares the next start abstaining in
    // this view.
    let deferred = std::mem::take(&mut driver.deferred);
    if let Err(e) = driver.store.close_cleanly(&deferred) {
        warn!("keeping the last messages: {e}");
    }
    // Jobs stopped now are not cancelled by consensus: their outcomes are
    // never signed, and they run again at the next start.
    driver.executor.shutdown().await;
    info!(executed = driver.replica.last_executed(), "stopped");
    Ok(())
}

struct JobDone {
    job: JobId,
    request: Signed<Request>,
    outcome: Result<crate::wire::JobResult, Abstain>,
}

struct Driver {
    replica: Replica,
    store: Arc<Store>,
    results: results::Writer,
    net: Net,
    membership: Arc<Membership>,
    replicas: Vec<PeerId>,
    executor: Arc<dyn Executor>,
    started: Instant,
    wake: Pin<Box<Sleep>>,
    /// Inputs the driver owes the core (batches recorded).
    inputs: VecDeque<Input>,
    /// Records of quiet Readies, persisted with the next Ready's.
    deferred: Vec<Record>,
    running: HashMap<JobId, tokio::task::AbortHandle>,
    done_tx: mpsc::Sender<JobDone>,
    done_rx: mpsc::Receiver<JobDone>,
    /// Signed replies per gateway, sent together at the end of a round.
    replies: BTreeMap<PeerId, Vec<SignedBytes>>,
    /// Replies for gateways not connected, sent when they connect.
    held: HashMap<PeerId, VecDeque<SignedBytes>>,
    /// The view (and whether changing it) the log last reported.
    shown_view: (u64, bool),
    /// Evidence already logged (replica, what it signed twice): each once.
    shown_evidence: HashSet<(usize, String)>,
    /// Where the executor keeps step logs (`DATA_DIR/ci/logs`, as `pbft-node
    /// run` sets it up), served to gateways that ask.
    logs: PathBuf,
    #[cfg(feature = "fault-injection")]
    fault: fault::Injector,
}

impl Driver {
    fn start(cfg: NodeConfig) -> Result<Driver, DriverError> {
        let me = cfg.key.public().to_peer_id();
        if cfg.membership.replica_index(&me).is_none() {
            return Err(DriverError::NotAReplica(me));
        }
        let key = Arc::new(cfg.key.clone());
        let store = Arc::new(Store::open(&cfg.data_dir)?);
        let records = store.records()?;
        let restored = records.len();
        let clean = store.take_clean_stop()?;
        let core_cfg = Config::new(cfg.membership.network_id(), cfg.membership.replica_ids());
        let replica = Replica::restore(core_cfg, key.clone(), cfg.membership.clone(), 0, records, !clean)?;
        if !clean {
            info!(view = replica.view(), "restarted after a crash: no proposal or PREPARE of ours in this view");
        }
        info!(
            peer_id = %me,
            index = replica.index(),
            records = restored,
            executed = replica.last_executed(),
            view = replica.view(),
            "replica {} of {}",
            replica.index(),
            cfg.membership.replicas.len()
        );
        let net = Net::new(NetConfig {
            key: cfg.key,
            membership: cfg.membership.clone(),
            role: Role::Replica,
            listen: cfg.listen,
            bootstrap: cfg.bootstrap,
            mdns: cfg.mdns,
            observe_consensus: false,
        })?;
        let (done_tx, done_rx) = mpsc::channel(DONE_QUEUE_MAX);
        let started = Instant::now();
        let shown_view = (replica.view(), replica.in_view_change());
        #[cfg(feature = "fault-injection")]
        let fault = {
            let (network, n) = (cfg.membership.network_id(), cfg.membership.replicas.len());
            fault::Injector::new(cfg.fault, key.clone(), network, replica.index(), n)
        };
        let mut driver = Driver {
            replica,
            results: results::Writer::start(store.clone(), key.clone(), cfg.membership.network_id()),
            store,
            net,
            replicas: cfg.membership.replica_ids(),
            membership: cfg.membership,
            executor: cfg.executor,
            started,
            wake: Box::pin(tokio::time::sleep_until(started)),
            inputs: VecDeque::new(),
            deferred: Vec::new(),
            running: HashMap::new(),
            done_tx,
            done_rx,
            replies: BTreeMap::new(),
            held: HashMap::new(),
            shown_view,
            shown_evidence: HashSet::new(),
            logs: cfg.data_dir.join("ci").join("logs"),
            #[cfg(feature = "fault-injection")]
            fault,
        };
        let unfinished = driver.store.unfinished_jobs(RESUME_JOBS_MAX)?;
        if !unfinished.is_empty() {
            info!(jobs = unfinished.len(), "resuming unfinished jobs");
        }
        for (job, bytes) in unfinished {
            match Signed::<Request>::open(&bytes, &driver.membership.network_id(), driver.membership.as_ref()) {
                Ok(req) => driver.start_job(job, req),
                Err(e) => warn!(%job, "stored request does not open: {e}"),
            }
        }
        // The restored core's Ready holds what replaying produced.
        driver.input(Input::Tick);
        driver.flush()?;
        Ok(driver)
    }

    fn now(&self) -> Millis {
        self.started.elapsed().as_millis() as Millis
    }

    /// Feeds `input` to the core; its output is handled at the next flush.
    fn input(&mut self, input: Input) {
        self.replica.step(self.now(), input);
    }

    /// Handles what the core produced, feeds it the inputs the driver owes
    /// it (batches recorded) until there are none, then sends the replies
    /// gathered this round.
    fn flush(&mut self) -> Result<(), DriverError> {
        loop {
            let ready = self.replica.take_ready();
            self.handle(ready)?;
            if self.inputs.is_empty() {
                break;
            }
            while let Some(input) = self.inputs.pop_front() {
                self.input(input);
            }
        }
        self.flush_replies();
        // Compared with what was last logged, not with the view at the start
        // of this flush: the step that changed it ran before.
        let view = (self.replica.view(), self.replica.in_view_change());
        if view != self.shown_view {
            self.shown_view = view;
            let primary = self.replica.view() % self.replicas.len() as u64;
            if self.replica.in_view_change() {
                warn!(
                    view = self.replica.view(),
                    "view change: asking for view {} (primary {primary})",
                    self.replica.view()
                );
            } else {
                info!(view = self.replica.view(), primary, "view change: now in view {}", self.replica.view());
            }
        }
        Ok(())
    }

    /// The driver contract: persist, then send, then record and execute.
    fn handle(&mut self, mut ready: Ready) -> Result<(), DriverError> {
        if !ready.is_empty() {
            tracing::trace!(
                persist = ready.persist.len(),
                messages = ready.messages.len(),
                replies = ready.replies.len(),
                execute = ready.execute.len(),
                wake_at = ?ready.wake_at.map(|w| w.saturating_sub(self.now())),
                "ready"
            );
        }
        // Replies first when this Ready sends no protocol message: a reply
        // says what executing fixed (where a request is in the order), and
        // the 2f + 1 COMMITs behind that are durable at their signers
        // already (ours was persisted before it went out, in an earlier
        // Ready). A crash before the commit below loses only this replica's
        // record of the execution, which it learns again. The reply of an
        // executed batch then waits for no fsync of ours.
        if ready.messages.is_empty() && ready.skipped.is_empty() && !ready.replies.is_empty() {
            for r in std::mem::take(&mut ready.replies) {
                self.replies.entry(r.to).or_default().push(SignedBytes(r.bytes.to_vec()));
            }
            self.flush_replies();
        }
        // One durable transaction (group commit) for everything this Ready
        // asks to persist and the batches it commits to the job log, before
        // any protocol message of it is sent and before its jobs start; with
        // it, what light Readies before it deferred (`Ready::is_light`: their
        // PRE-PREPAREs and PREPAREs went out at once).
        let persist = std::mem::take(&mut ready.persist);
        let new_batches = if ready.is_light() && self.deferred.len() + persist.len() <= DEFERRED_MAX {
            self.deferred.extend(persist);
            Vec::new()
        } else {
            let mut records = std::mem::take(&mut self.deferred);
            records.extend(persist);
            self.store.commit_ready(&records, &ready.execute)?
        };
        #[cfg(feature = "fault-injection")]
        let ready = self.fault.ready(self.replica.view(), ready);
        let mut point_to_point: BTreeMap<usize, Vec<SignedBytes>> = BTreeMap::new();
        for out in ready.messages {
            match out {
                Outbound::Signed { to: Target::All, bytes } => {
                    if let Err(e) = self.net.publish(&bytes) {
                        warn!("not publishing an outbound message: {e}");
                    }
                }
                Outbound::Signed { to: Target::Replica(i), bytes } => {
                    point_to_point.entry(i).or_default().push(SignedBytes(bytes.to_vec()));
                }
                Outbound::FetchRequests { to, digests } => {
                    for chunk in digests.chunks(limits::BATCH_REQUESTS_MAX) {
                        self.send_to(to, PeerRequest::Requests(chunk.to_vec()));
                    }
                }
                Outbound::Status { to, status } => {
                    let targets: Vec<usize> = match to {
                        Target::All => (0..self.replicas.len()).filter(|&i| i != self.replica.index()).collect(),
                        Target::Replica(i) => vec![i],
                    };
                    for i in targets {
                        self.send_to(i, PeerRequest::Status(status));
                    }
                }
                Outbound::State { to, proof, state } => {
                    let proof = proof.iter().map(|b| SignedBytes(b.to_vec())).collect();
                    self.send_to(to, PeerRequest::State { proof, state: state.to_vec() });
                }
            }
        }
        for (i, items) in point_to_point {
            for chunk in items.chunks(4 * limits::BATCH_REQUESTS_MAX) {
                self.send_to(i, PeerRequest::Deliver(chunk.to_vec()));
            }
        }
        for r in ready.replies {
            self.replies.entry(r.to).or_default().push(SignedBytes(r.bytes.to_vec()));
        }
        for s in ready.skipped {
            self.store.record_skipped(s.from_seq, s.to_seq)?;
            info!(from = s.from_seq, to = s.to_seq, "state transfer skipped these slots: no vote on their jobs");
        }
        for (batch, new) in ready.execute.into_iter().zip(new_batches) {
            self.execute(batch, new);
        }
        for note in ready.notes {
            match note {
                Note::Equivocation { replica, first, second } => self.evidence(replica, &first, &second),
                Note::Diverged { seq } => warn!(seq, "2f + 1 replicas certified another state than ours"),
                Note::StateTransferred { seq } => info!(seq, "state transfer: adopted the stable checkpoint"),
            }
        }
        if let Some(at) = ready.wake_at {
            self.wake.as_mut().reset(self.started + Duration::from_millis(at));
        }
        Ok(())
    }

    /// Logs, once per replica and slot, the two signed messages that prove
    /// `replica` equivocated: anyone can check them against the membership.
    fn evidence(&mut self, replica: usize, first: &[u8], second: &[u8]) {
        let slot = slot_of(first);
        if self.shown_evidence.len() >= EVIDENCE_SHOWN_MAX {
            self.shown_evidence.clear();
        }
        if !self.shown_evidence.insert((replica, slot.clone())) {
            return;
        }
        warn!(
            replica,
            "evidence: replica {replica} ({}) signed two conflicting {slot}: first {} second {}",
            self.replicas.get(replica).map(PeerId::to_string).unwrap_or_default(),
            hex::encode(first),
            hex::encode(second),
        );
    }

    /// Starts the jobs of a committed batch the job log holds already
    /// (`new`: recorded just now, not replayed).
    fn execute(&mut self, batch: Batch, new: bool) {
        if new {
            info!(
                seq = batch.seq,
                view = batch.view,
                requests = batch.requests.len(),
                jobs = batch.jobs.len(),
                batch = %batch.batch,
                "ordered batch"
            );
        } else {
            debug!(seq = batch.seq, "batch replayed, recorded before");
        }
        self.inputs.push_back(Input::Executed { seq: batch.seq });
        if new {
            for (job, req) in batch.jobs {
                self.start_job(job, req);
            }
        }
    }

    fn send_to(&mut self, replica: usize, request: PeerRequest) {
        if let Some(peer) = self.replicas.get(replica).copied() {
            self.net.send(&peer, request);
        }
    }

    /// Replies go point to point to a connected gateway. For one that is
    /// not, they go by gossip (other gateways relay) and are held until it
    /// connects.
    fn flush_replies(&mut self) {
        #[cfg(feature = "fault-injection")]
        if self.fault.silent() {
            self.replies.clear();
            return;
        }
        for (gateway, items) in std::mem::take(&mut self.replies) {
            if self.net.is_connected(&gateway) {
                for chunk in items.chunks(4 * limits::BATCH_REQUESTS_MAX) {
                    self.net.send(&gateway, PeerRequest::Deliver(chunk.to_vec()));
                }
            } else {
                let held = self.held.entry(gateway).or_default();
                for item in items {
                    if let Err(e) = self.net.publish(&item.0) {
                        debug!("not publishing a reply: {e}");
                    }
                    if held.len() == HELD_REPLIES_MAX {
                        held.pop_front();
                    }
                    held.push_back(item);
                }
            }
        }
    }

    fn on_connected(&mut self, peer: PeerId) {
        if let Some(held) = self.held.remove(&peer) {
            debug!(gateway = %peer, replies = held.len(), "sending held replies");
            self.replies.entry(peer).or_default().extend(held);
        }
    }

    fn start_job(&mut self, job: JobId, request: Signed<Request>) {
        if self.running.contains_key(&job) {
            return;
        }
        if let Operation::Cancel { job: target } = request.msg.op {
            self.executor.cancel(target);
        }
        let run = self.executor.run(job, request.msg.clone());
        let done = self.done_tx.clone();
        let task = tokio::spawn(async move {
            let outcome = run.await;
            let _ = done.send(JobDone { job, request, outcome }).await;
        });
        self.running.insert(job, task.abort_handle());
    }

    /// Signs the job's result (or abstention) and hands it to the writer;
    /// it is sent once stored.
    async fn on_job_done(&mut self, done: JobDone) {
        self.running.remove(&done.job);
        #[cfg(feature = "fault-injection")]
        let done = JobDone { outcome: self.fault.result(done.outcome), ..done };
        let req = &done.request.msg;
        let body = match done.outcome {
            Ok(result) => ReplyBody::Result { job: done.job, result },
            Err(Abstain { mut reason }) => {
                limits::truncate(&mut reason, limits::TEXT_BYTES_MAX);
                ReplyBody::Abstain { job: done.job, reason }
            }
        };
        let digest = req.digest();
        let reply =
            Reply { view: self.replica.view(), gateway: req.gateway, number: req.number, request: digest, body };
        debug!(job = %done.job, "job done");
        // Waits only while the writer is QUEUE_MAX results behind.
        let _ = self.results.to_store.send(results::JobReply { job: done.job, reply }).await;
    }

    fn on_stored(&mut self, stored: Result<results::SignedResult, StoreError>) -> Result<(), DriverError> {
        let r = stored?;
        self.replies.entry(r.gateway).or_default().push(SignedBytes(r.bytes));
        Ok(())
    }

    fn on_net_event(&mut self, event: NetEvent) -> Result<(), DriverError> {
        tracing::trace!(?event, "net event");
        match event {
            NetEvent::Signed { opened: Opened::Request(r), .. } => self.input(Input::Request(r)),
            NetEvent::Signed { opened: Opened::Message(m), .. } => self.input(Input::Message(m)),
            NetEvent::Signed { opened: Opened::Reply(_), .. } => {}
            NetEvent::Peer { from, request } => {
                let Some(from) = self.membership.replica_index(&from) else { return Ok(()) };
                match request {
                    PeerRequest::Requests(digests) => self.input(Input::FetchRequests { from, digests }),
                    PeerRequest::Status(status) => self.input(Input::Status { from, status }),
                    PeerRequest::State { proof, state } => {
                        let network = self.membership.network_id();
                        let proof = proof
                            .iter()
                            .filter_map(|b| Signed::<Checkpoint>::open(&b.0, &network, self.membership.as_ref()).ok())
                            .collect();
                        self.input(Input::State { proof, state })
                    }
                    // The swarm turns deliveries into signed events and
                    // answers reply requests itself.
                    PeerRequest::Deliver(_) | PeerRequest::Replies { .. } | PeerRequest::Logs { .. } => {}
                }
            }
            NetEvent::RepliesWanted { request, responder, .. } => {
                let replies = self.served_replies(request)?;
                self.net.respond(responder, PeerResponse::Replies(replies));
            }
            NetEvent::LogsWanted { job, responder, .. } => {
                // Served inline: reads of local files, LOGS_BYTES_MAX in all.
                self.net.respond(responder, PeerResponse::Logs(logs::read(&self.logs, job)));
            }
            NetEvent::Connected { peer } => self.on_connected(peer),
            NetEvent::Listening { .. } | NetEvent::Disconnected { .. } | NetEvent::Logs { .. } => {}
        }
        Ok(())
    }

    fn served_replies(&self, request: Digest) -> Result<Vec<SignedBytes>, DriverError> {
        #[cfg(feature = "fault-injection")]
        if self.fault.silent() {
            return Ok(Vec::new());
        }
        let mut replies: Vec<SignedBytes> = self.store.replies(request)?.into_iter().map(SignedBytes).collect();
        replies.truncate(SERVED_REPLIES_MAX);
        Ok(replies)
    }
}

/// What a signed protocol message is, for evidence in logs: kind and slot.
fn slot_of(bytes: &[u8]) -> String {
    let Ok(env) = crate::wire::decode::<Envelope>(bytes, limits::ENVELOPE_BYTES_MAX) else {
        return "undecodable messages".into();
    };
    let kind = env.kind;
    match Message::from_envelope(env, bytes.into()) {
        Ok(Message::PrePrepare(m)) => format!("{kind:?} for view {} seq {}", m.msg.view, m.msg.seq),
        Ok(Message::Prepare(m)) => format!("{kind:?} for view {} seq {}", m.msg.view, m.msg.seq),
        Ok(Message::Commit(m)) => format!("{kind:?} for view {} seq {}", m.msg.view, m.msg.seq),
        Ok(Message::Checkpoint(m)) => format!("{kind:?} for seq {}", m.msg.seq),
        Ok(Message::ViewChange(m)) => format!("{kind:?} for view {}", m.msg.view),
        Ok(Message::NewView(m)) => format!("{kind:?} for view {}", m.msg.view),
        Err(_) => format!("{kind:?}"),
    }
}
