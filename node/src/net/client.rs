//! A gateway's side of the network, as a small API: join the swarm, sign and
//! publish requests, retransmit them point to point to every replica that has
//! not answered until f + 1 replicas agree they are ordered, and hand over
//! every reply as it arrives. The gateway (`pbft-gw`), the load generator and
//! the multi-process tests use it; it runs the swarm on a task of its own.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p_identity::{Keypair, PeerId};
use tokio::sync::{mpsc, oneshot};

use super::{Channel, Net, NetConfig, NetError, NetEvent, Opened, Role};
use crate::membership::Membership;
use crate::pbft::Message;
use crate::wire::{
    limits, Digest, JobId, JobLogs, Operation, PeerRequest, Rejection, Reply, ReplyBody, Request, Signed, SignedBytes,
};

pub struct ClientConfig {
    pub key: Keypair,
    pub membership: Arc<Membership>,
    /// Multiaddrs to listen on (none needed: a gateway dials out).
    pub listen: Vec<String>,
    pub bootstrap: Vec<String>,
    pub mdns: Option<bool>,
    /// Retransmit a request not yet ordered after this long; the wait
    /// doubles with each retransmission of it (up to [`RETRY_MAX`]), so an
    /// overloaded network is not buried under copies.
    pub retry: Duration,
    /// Also hand over the protocol messages seen on the consensus topic.
    pub observe_consensus: bool,
}

impl ClientConfig {
    pub fn new(key: Keypair, membership: Arc<Membership>) -> ClientConfig {
        ClientConfig {
            key,
            membership,
            listen: Vec::new(),
            bootstrap: Vec::new(),
            mdns: None,
            retry: Duration::from_millis(1000),
            observe_consensus: false,
        }
    }
}

/// What the client hands over.
#[derive(Clone, Debug)]
pub enum ClientEvent {
    /// A signed reply addressed to this gateway, from replica `replica`: every
    /// kind (accepted, duplicate, rejected, result, abstain), as it arrives.
    Reply { replica: usize, reply: Signed<Reply> },
    /// f + 1 replicas answered that request `number` is ordered as `job`
    /// (accepted, or a duplicate of `job`): retransmission stopped.
    Ordered { number: u64, request: Digest, job: JobId },
    /// f + 1 replicas rejected request `number` for `reason`.
    Refused { number: u64, request: Digest, reason: Rejection },
    /// A protocol message from the consensus topic (observers only).
    Consensus { from: PeerId, message: Message },
}

#[allow(clippy::large_enum_variant)] // moved once each, never stored in bulk
enum Command {
    Submit(Signed<Request>),
    SubmitUnsigned(Request),
    PublishRaw(Channel, Vec<u8>),
    FetchReplies(Digest),
    FetchLogs(JobId, LogAnswers),
    ConnectedReplicas(oneshot::Sender<usize>),
}

pub struct Client {
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<ClientEvent>,
    key: Arc<Keypair>,
    membership: Arc<Membership>,
    task: tokio::task::JoinHandle<()>,
}

/// The longest wait between two retransmissions of one request.
pub const RETRY_MAX: Duration = Duration::from_secs(8);

/// Commands and events queued between the caller and the swarm task.
const QUEUE_MAX: usize = 65_536;
/// Commands taken in one round, before the requests among them are published.
const COMMANDS_ROUND_MAX: usize = 1024;
/// Where the replicas' answers to one log fetch go, with their index.
pub type LogAnswers = mpsc::Sender<(usize, JobLogs)>;

/// Jobs whose logs are being fetched at once; the oldest fetch is dropped
/// past it.
const LOG_FETCHES_MAX: usize = 64;
/// How long answers to one log fetch are passed on (the peers' request
/// timeout).
const LOG_FETCH_TIMEOUT: Duration = Duration::from_secs(30);

impl Client {
    /// Joins the network. Must run inside a tokio runtime.
    pub fn start(cfg: ClientConfig) -> Result<Client, NetError> {
        let key = Arc::new(cfg.key.clone());
        let membership = cfg.membership.clone();
        let net = Net::new(NetConfig {
            key: cfg.key,
            membership: cfg.membership.clone(),
            role: Role::Gateway,
            listen: cfg.listen,
            bootstrap: cfg.bootstrap,
            mdns: cfg.mdns,
            observe_consensus: cfg.observe_consensus,
        })?;
        let (commands, command_rx) = mpsc::channel(QUEUE_MAX);
        let (event_tx, events) = mpsc::channel(QUEUE_MAX);
        let task = Task {
            net,
            key: key.clone(),
            me: key.public().to_peer_id(),
            membership: cfg.membership,
            retry: cfg.retry,
            outstanding: HashMap::new(),
            submitted: Vec::new(),
            unsigned: Vec::new(),
            events: event_tx,
            log_fetches: Vec::new(),
        };
        let task = tokio::spawn(task.run(command_rx));
        Ok(Client { commands, events, key, membership, task })
    }

    pub fn peer_id(&self) -> PeerId {
        self.key.public().to_peer_id()
    }

    /// Signs a request of this gateway.
    pub fn request(&self, number: u64, delivery: Option<String>, op: Operation) -> Signed<Request> {
        let req = Request { gateway: self.peer_id(), number, delivery, op };
        Signed::seal(req, &self.membership.network_id(), self.key.as_ref())
    }

    /// Publishes a signed request and retransmits it until it is ordered.
    pub async fn submit(&self, request: Signed<Request>) {
        let _ = self.commands.send(Command::Submit(request)).await;
    }

    /// Like [`Client::submit`], for a request of this gateway not signed
    /// yet: it is signed together with the others submitted meanwhile, one
    /// signature for all (a signed batch), which is how load is cheap to send
    /// and to check.
    pub async fn submit_unsigned(&self, request: Request) {
        let _ = self.commands.send(Command::SubmitUnsigned(request)).await;
    }

    /// Publishes bytes as they are on a topic: how a faulty peer would
    /// (tests, tools).
    pub async fn publish_raw(&self, channel: Channel, bytes: Vec<u8>) {
        let _ = self.commands.send(Command::PublishRaw(channel, bytes)).await;
    }

    /// Asks every replica for the replies it holds for `request`; they arrive
    /// as [`ClientEvent::Reply`].
    pub async fn fetch_replies(&self, request: Digest) {
        let _ = self.commands.send(Command::FetchReplies(request)).await;
    }

    /// Asks every replica for its step logs of `job`; each answer goes to
    /// `answers` with the replica's index, as it arrives, until `answers` is
    /// dropped or the peers' request timeout passes.
    pub async fn fetch_logs(&self, job: JobId, answers: LogAnswers) {
        let _ = self.commands.send(Command::FetchLogs(job, answers)).await;
    }

    /// Replicas this client is connected to.
    pub async fn connected_replicas(&self) -> usize {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::ConnectedReplicas(tx)).await.is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// The next event; `None` once the client stopped.
    pub async fn next_event(&mut self) -> Option<ClientEvent> {
        self.events.recv().await
    }

    /// Leaves the network.
    pub async fn shutdown(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

struct Outstanding {
    number: u64,
    bytes: Arc<[u8]>,
    sent_at: Instant,
    /// Wait before the next retransmission.
    wait: Duration,
    /// Replicas that answered accepted or duplicate, by the job they named.
    ordered: BTreeMap<JobId, BTreeSet<usize>>,
    /// Replicas that answered prepared (tentatively ordered), by job.
    prepared: BTreeMap<JobId, BTreeSet<usize>>,
    answered: BTreeSet<usize>,
    rejected: Vec<(Rejection, usize)>,
}

struct Task {
    net: Net,
    key: Arc<Keypair>,
    me: PeerId,
    membership: Arc<Membership>,
    retry: Duration,
    outstanding: HashMap<Digest, Outstanding>,
    /// Requests submitted this round, published together at its end.
    submitted: Vec<Arc<[u8]>>,
    /// Requests of this round to sign together at its end.
    unsigned: Vec<Request>,
    events: mpsc::Sender<ClientEvent>,
    /// Log fetches under way: the job, when asked, where answers go.
    log_fetches: Vec<(JobId, Instant, LogAnswers)>,
}

impl Task {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(self.retry / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { return };
                    self.on_command(cmd);
                    // What else was queued goes out with it: one gossip
                    // message for the requests submitted meanwhile.
                    for _ in 1..COMMANDS_ROUND_MAX {
                        match commands.try_recv() {
                            Ok(cmd) => self.on_command(cmd),
                            Err(_) => break,
                        }
                    }
                    self.publish_submitted();
                }
                event = self.net.next_event() => {
                    for e in self.on_net_event(event) {
                        if self.events.send(e).await.is_err() {
                            return;
                        }
                    }
                }
                _ = tick.tick() => self.retransmit(None),
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(req) => self.track(req),
            Command::SubmitUnsigned(req) => self.unsigned.push(req),
            Command::PublishRaw(channel, bytes) => self.net.publish_raw(channel, bytes),
            Command::FetchReplies(request) => {
                for r in self.membership.replica_ids() {
                    self.net.send(&r, PeerRequest::Replies { request });
                }
            }
            Command::FetchLogs(job, answers) => {
                self.log_fetches.retain(|(_, at, tx)| !tx.is_closed() && at.elapsed() < LOG_FETCH_TIMEOUT);
                if self.log_fetches.len() == LOG_FETCHES_MAX {
                    self.log_fetches.remove(0);
                }
                self.log_fetches.push((job, Instant::now(), answers));
                for r in self.membership.replica_ids() {
                    self.net.send(&r, PeerRequest::Logs { job });
                }
            }
            Command::ConnectedReplicas(tx) => {
                let _ = tx.send(self.net.connected_replicas());
            }
        }
    }

    /// Publishes `req` at the end of the round and retransmits it until
    /// it is ordered.
    fn track(&mut self, req: Signed<Request>) {
        self.submitted.push(req.shared_bytes());
        self.outstanding.insert(
            req.msg.digest(),
            Outstanding {
                number: req.msg.number,
                bytes: req.shared_bytes(),
                sent_at: Instant::now(),
                wait: self.retry,
                ordered: BTreeMap::new(),
                prepared: BTreeMap::new(),
                answered: BTreeSet::new(),
                rejected: Vec::new(),
            },
        );
    }

    fn publish_submitted(&mut self) {
        let unsigned = std::mem::take(&mut self.unsigned);
        for req in Signed::seal_batch(unsigned, &self.membership.network_id(), self.key.as_ref()) {
            self.track(req);
        }
        let submitted = std::mem::take(&mut self.submitted);
        let requests: Vec<&[u8]> = submitted.iter().map(|r| &r[..]).collect();
        self.net.publish_requests(&requests);
    }

    fn on_net_event(&mut self, event: NetEvent) -> Vec<ClientEvent> {
        match event {
            NetEvent::Signed { opened: Opened::Reply(reply), .. } => self.on_reply(reply),
            NetEvent::Signed { from, opened: Opened::Message(message) } => {
                vec![ClientEvent::Consensus { from, message }]
            }
            NetEvent::Logs { from, logs } => {
                if let Some(replica) = self.membership.replica_index(&from) {
                    for (_, _, tx) in self.log_fetches.iter().filter(|(job, _, _)| *job == logs.job) {
                        let _ = tx.try_send((replica, logs.clone()));
                    }
                }
                Vec::new()
            }
            NetEvent::Connected { peer } if self.membership.replica_index(&peer).is_some() => {
                // Whatever was published before this replica was reachable.
                self.retransmit(Some(peer));
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn on_reply(&mut self, reply: Signed<Reply>) -> Vec<ClientEvent> {
        let Some(replica) = self.membership.replica_index(&reply.signer) else { return Vec::new() };
        if reply.msg.gateway != self.me {
            return Vec::new();
        }
        let quorum = self.membership.quorum();
        let weak = quorum.weak();
        let mut events = Vec::new();
        let digest = reply.msg.request;
        if let Some(out) = self.outstanding.get_mut(&digest) {
            if out.number == reply.msg.number {
                match &reply.msg.body {
                    ReplyBody::Accepted { job } | ReplyBody::Duplicate { job } | ReplyBody::Prepared { job } => {
                        out.answered.insert(replica);
                        let tentative = matches!(reply.msg.body, ReplyBody::Prepared { .. });
                        let votes = if tentative { &mut out.prepared } else { &mut out.ordered };
                        votes.entry(*job).or_default().insert(replica);
                        let none = BTreeSet::new();
                        let executed = out.ordered.get(job).unwrap_or(&none);
                        if quorum.ordered(executed, out.prepared.get(job).unwrap_or(&none)) {
                            events.push(ClientEvent::Ordered { number: out.number, request: digest, job: *job });
                        }
                    }
                    ReplyBody::Rejected { reason } => {
                        if !out.rejected.contains(&(*reason, replica)) {
                            out.rejected.push((*reason, replica));
                        }
                        let same = out.rejected.iter().filter(|(r, _)| r == reason).count();
                        // Busy is worth retrying; stale and too-far-ahead are final.
                        if *reason != Rejection::Busy && same >= weak {
                            events.push(ClientEvent::Refused { number: out.number, request: digest, reason: *reason });
                        }
                    }
                    ReplyBody::Result { .. } | ReplyBody::Abstain { .. } => {}
                }
                if !events.is_empty() {
                    self.outstanding.remove(&digest);
                }
            }
        }
        events.insert(0, ClientEvent::Reply { replica, reply });
        events
    }

    /// Sends every request due (or all, to a newly connected `only` replica)
    /// point to point to the replicas that have not answered it.
    fn retransmit(&mut self, only: Option<PeerId>) {
        let now = Instant::now();
        let replicas = self.membership.replica_ids();
        let mut batches: BTreeMap<usize, Vec<SignedBytes>> = BTreeMap::new();
        for out in self.outstanding.values_mut() {
            if only.is_none() && now < out.sent_at + out.wait {
                continue;
            }
            if only.is_none() {
                out.sent_at = now;
                out.wait = (out.wait * 2).min(RETRY_MAX.max(self.retry));
            }
            for (i, r) in replicas.iter().enumerate() {
                if only.is_some_and(|p| p != *r) || out.answered.contains(&i) {
                    continue;
                }
                batches.entry(i).or_default().push(SignedBytes(out.bytes.to_vec()));
            }
        }
        for (i, items) in batches {
            for chunk in items.chunks(limits::BATCH_REQUESTS_MAX) {
                self.net.send(&replicas[i], PeerRequest::Deliver(chunk.to_vec()));
            }
        }
    }
}
