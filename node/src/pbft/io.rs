//! What goes into the replica and what comes out of it.
//!
//! The driver calls [`Replica::step`](super::Replica::step) with the current
//! time and one [`Input`], then takes the [`Ready`] and handles it **in this
//! order**: write every [`Record`] of `persist` durably, and only then send
//! `messages` and `replies` and start the `execute`d batches. A replica whose
//! driver keeps that order never contradicts, after a restart, anything it
//! said before it.

use std::sync::Arc;

use libp2p_identity::PeerId;

use crate::wire::{
    Checkpoint, Commit, Digest, Envelope, JobId, Kind, NetworkId, NewView, OpenError, PrePrepare, Prepare, Request,
    Signed, Status, Verifier, ViewChange,
};

/// Milliseconds on the driver's monotonic clock (simulated in tests).
pub type Millis = u64;

/// A protocol message from a replica, its signature already checked by the
/// driver against the membership.
#[derive(Clone, Debug)]
pub enum Message {
    PrePrepare(Signed<PrePrepare>),
    Prepare(Signed<Prepare>),
    Commit(Signed<Commit>),
    Checkpoint(Signed<Checkpoint>),
    ViewChange(Signed<ViewChange>),
    NewView(Signed<NewView>),
}

impl Message {
    /// Opens a signed protocol message of any kind.
    pub fn open(bytes: &[u8], network: &NetworkId, verifier: &dyn Verifier) -> Result<Message, OpenError> {
        let env = Envelope::open(bytes, network, verifier)?;
        Message::from_envelope(env, bytes.into())
    }

    /// Decodes the body of an envelope already opened from `bytes`.
    pub fn from_envelope(env: Envelope, bytes: Arc<[u8]>) -> Result<Message, OpenError> {
        Ok(match env.kind {
            Kind::PrePrepare => Message::PrePrepare(Signed::from_envelope(env, bytes)?),
            Kind::Prepare => Message::Prepare(Signed::from_envelope(env, bytes)?),
            Kind::Commit => Message::Commit(Signed::from_envelope(env, bytes)?),
            Kind::Checkpoint => Message::Checkpoint(Signed::from_envelope(env, bytes)?),
            Kind::ViewChange => Message::ViewChange(Signed::from_envelope(env, bytes)?),
            Kind::NewView => Message::NewView(Signed::from_envelope(env, bytes)?),
            Kind::Request | Kind::Reply => return Err(OpenError::Invalid("not a protocol message")),
        })
    }

    pub fn signer(&self) -> PeerId {
        match self {
            Message::PrePrepare(m) => m.signer,
            Message::Prepare(m) => m.signer,
            Message::Commit(m) => m.signer,
            Message::Checkpoint(m) => m.signer,
            Message::ViewChange(m) => m.signer,
            Message::NewView(m) => m.signer,
        }
    }

    pub fn bytes(&self) -> Arc<[u8]> {
        match self {
            Message::PrePrepare(m) => m.shared_bytes(),
            Message::Prepare(m) => m.shared_bytes(),
            Message::Commit(m) => m.shared_bytes(),
            Message::Checkpoint(m) => m.shared_bytes(),
            Message::ViewChange(m) => m.shared_bytes(),
            Message::NewView(m) => m.shared_bytes(),
        }
    }
}

/// One event for the replica.
#[derive(Clone, Debug)]
pub enum Input {
    /// A gateway's signed request (signer checked to be a gateway).
    Request(Signed<Request>),
    /// A protocol message from a replica.
    Message(Message),
    /// Replica `from` asks for these requests by digest.
    FetchRequests { from: usize, digests: Vec<Digest> },
    /// Replica `from` reports how far it got; the answer helps it catch up.
    Status { from: usize, status: Status },
    /// A stable checkpoint's state, offered by a peer for state transfer:
    /// accepted only if `proof` holds 2f + 1 signed CHECKPOINTs of its digest.
    State { proof: Vec<Signed<Checkpoint>>, state: Vec<u8> },
    /// The driver durably recorded the batch at `seq` (its jobs will run).
    Executed { seq: u64 },
    /// Time passed (a timer the replica asked for fired).
    Tick,
}

/// Where a message goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Every other replica (gossip).
    All,
    /// One replica, point to point (retransmission, answers to fetches).
    Replica(usize),
}

/// Something the replica wants sent.
#[derive(Clone, Debug)]
pub enum Outbound {
    /// A signed protocol message or request envelope.
    Signed { to: Target, bytes: Arc<[u8]> },
    /// Ask replica `to` for these requests.
    FetchRequests { to: usize, digests: Vec<Digest> },
    /// Tell `to` how far this replica got (unsigned; the transport
    /// authenticates the peer).
    Status { to: Target, status: Status },
    /// State transfer: a stable checkpoint's proof and state for `to`.
    State { to: usize, proof: Vec<Arc<[u8]>>, state: Arc<[u8]> },
}

/// What must be durable before anything of the same `Ready` is sent.
#[derive(Clone, Debug)]
pub enum Record {
    /// A request accepted for ordering.
    Request(Arc<[u8]>),
    /// A protocol message accepted into the log (sent or received).
    Message(Arc<[u8]>),
    /// A stable checkpoint: its state and proof. Records of messages at or
    /// below `seq` are no longer needed.
    Stable { seq: u64, state: Arc<[u8]>, proof: Vec<Arc<[u8]>> },
}

/// A committed batch, in sequence order, for the driver to record and run.
#[derive(Clone, Debug)]
pub struct Batch {
    pub seq: u64,
    pub view: u64,
    /// The batch digest that committed.
    pub batch: Digest,
    /// Every request the batch names, in order (jobs or not): the store may
    /// forget their records once the batch is below a stable checkpoint.
    pub requests: Vec<Digest>,
    /// The requests ordered as new jobs (duplicates and rejections excluded).
    pub jobs: Vec<(JobId, Signed<Request>)>,
}

/// A signed reply for a gateway.
#[derive(Clone, Debug)]
pub struct ReplyOut {
    pub to: PeerId,
    pub request: Digest,
    pub bytes: Arc<[u8]>,
}

/// Jobs a state transfer skipped: this replica never saw them and casts no
/// vote on them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub from_seq: u64,
    pub to_seq: u64,
}

/// Noteworthy events, for logs and for the simulator's checkers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// `replica` signed two different messages of one kind for one slot: the
    /// two signed messages are the evidence.
    Equivocation { replica: usize, first: Arc<[u8]>, second: Arc<[u8]> },
    /// 2f + 1 replicas certified a state at `seq` that differs from ours.
    Diverged { seq: u64 },
    /// This replica adopted the state at `seq` from a peer.
    StateTransferred { seq: u64 },
}

/// Everything one step produced. Handle in field order: `persist` first.
/// Two exceptions. When `messages` and `skipped` are empty, `replies` may go
/// before `persist` and `execute` are durable: a reply states what executing
/// fixed, which the durable COMMITs of 2f + 1 replicas fix already; this
/// replica's own COMMIT, if any, went out (persisted) in an earlier Ready.
/// And a light Ready ([`Ready::is_light`]) sends its messages at once and
/// may leave its records for the next Ready that is not.
#[derive(Debug, Default)]
pub struct Ready {
    pub persist: Vec<Record>,
    /// Its messages must wait until `persist` is durable: it signed a
    /// COMMIT, CHECKPOINT, VIEW-CHANGE or NEW-VIEW, or moved to another
    /// view. PRE-PREPAREs and PREPAREs alone need not wait: after a crash a
    /// replica sends neither in the view it restarted in
    /// ([`crate::pbft::Replica::restore`]), so one it sent
    /// and lost cannot be contradicted.
    pub durable: bool,
    pub messages: Vec<Outbound>,
    pub replies: Vec<ReplyOut>,
    /// Before `execute`: a state transfer jumps over these slots first.
    pub skipped: Vec<Skipped>,
    pub execute: Vec<Batch>,
    /// Things an operator should hear about.
    pub notes: Vec<Note>,
    /// Call `step(_, Input::Tick)` at this time at the latest.
    pub wake_at: Option<Millis>,
}

impl Ready {
    /// Nothing of it leaves the replica or executes: it only took in
    /// messages (and perhaps a stable checkpoint). Its records may then wait
    /// for the next Ready that is not quiet, and be persisted with that one's,
    /// before anything of it is sent: what no message has depended on yet may
    /// be lost in a crash like a message in transit (PBFT survives both), and
    /// an fsync for each message received would sit on every slot's path.
    pub fn is_quiet(&self) -> bool {
        self.messages.is_empty() && self.is_light()
    }

    /// Its messages may go out now and its records wait, like a quiet
    /// Ready's, for the next Ready that is not light: it sends no reply,
    /// executes nothing, and signed nothing that must be durable first
    /// (`durable`). The records of a PRE-PREPARE or PREPARE this replica
    /// sent are then durable before its COMMIT of that slot goes out, which
    /// is what a prepared certificate promised to later views rests on.
    pub fn is_light(&self) -> bool {
        !self.durable && self.replies.is_empty() && self.execute.is_empty() && self.skipped.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        self.persist.is_empty()
            && self.messages.is_empty()
            && self.replies.is_empty()
            && self.execute.is_empty()
            && self.skipped.is_empty()
            && self.notes.is_empty()
    }
}
