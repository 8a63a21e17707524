//! The replica: the normal case of PBFT (pre-prepare, prepare, commit,
//! execute in order), batching at the primary, fetching missing requests,
//! watermarks, checkpoints and garbage collection, catching up a lagging
//! replica by retransmission or state transfer, and restart from what was
//! persisted.
//!
//! Deterministic: the same inputs at the same times give the same outputs.
//! It never reads a clock, touches a socket or a disk, or draws a random
//! number; signing is deterministic (ed25519).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use libp2p_identity::PeerId;

mod view_change;

use view_change::ViewChangeState;

/// Stale entries `pending` may hold beyond twice the queued requests.
const PENDING_SLACK: usize = 64;

use super::config::Config;
use super::io::*;
use super::quorum::Quorum;
use super::state::ReplicatedState;
use crate::wire::{
    Checkpoint, Commit, Digest, JobId, Kind, OpenError, PrePrepare, Prepare, Rejection, Reply, ReplyBody, Request,
    Signed, Signer, Status, Verifier, WireMessage,
};

/// One sequence number's messages in the current view.
#[derive(Debug, Default)]
pub(super) struct Slot {
    view: u64,
    pre_prepare: Option<Signed<PrePrepare>>,
    batch: Digest,
    /// At most one prepare and one commit per replica: the first one counts.
    prepares: BTreeMap<usize, Signed<Prepare>>,
    commits: BTreeMap<usize, Signed<Commit>>,
    sent_prepare: bool,
    sent_commit: bool,
    committed: bool,
    /// Its `Prepared` answers went out (tentative execution).
    answered_tentatively: bool,
}

/// Why restoring from persisted records failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("persisted message does not open: {0}")]
    Message(#[from] OpenError),
    #[error("persisted stable checkpoint is invalid: {0}")]
    Stable(String),
}

pub struct Replica {
    cfg: Config,
    q: Quorum,
    me: usize,
    signer: Arc<dyn Signer>,
    verifier: Arc<dyn Verifier>,
    index: HashMap<PeerId, usize>,
    now: Millis,
    view: u64,

    /// Request bodies by digest: pending, in the log, or executed since the
    /// last stable checkpoint (peers may still fetch them).
    requests: HashMap<Digest, Signed<Request>>,
    /// Requests not yet in any pre-prepare, in arrival order. Entries whose
    /// digest left `queued` are skipped lazily.
    pending: VecDeque<(Digest, Millis)>,
    queued: BTreeSet<Digest>,
    /// Requests named by a pre-prepare not yet executed, with its seq.
    assigned: HashMap<Digest, u64>,
    /// Slots whose pre-prepare names a request we do not have yet.
    waiting: BTreeSet<u64>,
    /// Missing requests: when last asked, and how often.
    fetches: BTreeMap<Digest, (Millis, u32)>,

    slots: BTreeMap<u64, Slot>,
    /// Next sequence number this replica assigns as primary.
    next_seq: u64,
    /// Last sequence number executed.
    executed: u64,
    /// Highest `seq` the driver confirmed it recorded.
    acked: u64,
    /// Low watermark h: the last stable checkpoint.
    low: u64,
    state: ReplicatedState,
    executed_requests: BTreeMap<u64, Vec<Digest>>,

    /// Our own state digest and encoding at each checkpoint sequence number
    /// not yet stable; `bool` is whether our CHECKPOINT went out.
    own_checkpoints: BTreeMap<u64, (Digest, Arc<[u8]>, bool)>,
    /// CHECKPOINTs by seq, then by (replica, state digest): a replica that
    /// equivocates may hold two, and each digest counts its own signers.
    checkpoint_votes: BTreeMap<u64, BTreeMap<(usize, Digest), Signed<Checkpoint>>>,
    stable_proof: Vec<Signed<Checkpoint>>,
    stable_state: Arc<[u8]>,

    last_status: Millis,
    /// What this replica had executed at its last two status broadcasts:
    /// the first is at least a status interval old.
    executed_marks: [u64; 2],
    /// Per peer: when we last helped it, and when we last asked it for help.
    helped_at: HashMap<usize, Millis>,
    asked_at: HashMap<usize, Millis>,

    vc: ViewChangeState,

    restoring: bool,
    /// The view this replica restarted in after a crash: it proposes and
    /// prepares nothing there (see `restore`).
    abstain_view: Option<u64>,
    /// (view, in view change) as of the last `take_ready`: a change makes
    /// that Ready durable.
    reported_view: (u64, bool),
    ready: Ready,
    /// Replies of the steps since the last `take_ready`, signed together there.
    unsigned_replies: Vec<Reply>,
}

impl Replica {
    /// A fresh replica, index `me` in `cfg.replicas`, signing with `signer`.
    pub fn new(cfg: Config, signer: Arc<dyn Signer>, verifier: Arc<dyn Verifier>) -> Replica {
        cfg.check();
        let me = cfg.replicas.iter().position(|p| *p == signer.peer_id()).expect("the signer is one of the replicas");
        let index = cfg.replicas.iter().enumerate().map(|(i, p)| (*p, i)).collect();
        let state = ReplicatedState::default();
        let stable_state: Arc<[u8]> = state.encode().into();
        Replica {
            q: Quorum::new(cfg.replicas.len()),
            cfg,
            me,
            signer,
            verifier,
            index,
            now: 0,
            view: 0,
            requests: HashMap::new(),
            pending: VecDeque::new(),
            queued: BTreeSet::new(),
            assigned: HashMap::new(),
            waiting: BTreeSet::new(),
            fetches: BTreeMap::new(),
            slots: BTreeMap::new(),
            next_seq: 1,
            executed: 0,
            acked: 0,
            low: 0,
            state,
            executed_requests: BTreeMap::new(),
            own_checkpoints: BTreeMap::new(),
            checkpoint_votes: BTreeMap::new(),
            stable_proof: Vec::new(),
            stable_state,
            last_status: 0,
            executed_marks: [0; 2],
            helped_at: HashMap::new(),
            asked_at: HashMap::new(),
            vc: ViewChangeState::default(),
            restoring: false,
            abstain_view: None,
            reported_view: (0, false),
            ready: Ready::default(),
            unsigned_replies: Vec::new(),
        }
    }

    /// Rebuilds a replica from the records its driver persisted, in the order
    /// they were persisted. Replays them through the normal handlers: derived
    /// messages are the same signed bytes as before (signing is
    /// deterministic), and no new batch is proposed while replaying, so the
    /// restarted replica never contradicts what it sent.
    ///
    /// After a crash (`crashed`; not after a clean stop, which made every
    /// record durable) it sends no PRE-PREPARE and no PREPARE in the view it
    /// is in. Those go out before they are durable (`Ready::durable`), so
    /// the store may lack some it sent in this view, and proposing or
    /// preparing again could contradict them. Its COMMITs were durable
    /// first, and it still commits what 2f others prepared; from the next
    /// view on it takes full part. (A replica restored in the middle of a
    /// view change never entered the view it asks for: entering one is
    /// durable first.) A primary restarted after a crash thus leaves its
    /// view to the next.
    pub fn restore(
        cfg: Config,
        signer: Arc<dyn Signer>,
        verifier: Arc<dyn Verifier>,
        now: Millis,
        records: impl IntoIterator<Item = Record>,
        crashed: bool,
    ) -> Result<Replica, RestoreError> {
        let mut r = Replica::new(cfg, signer, verifier);
        r.now = now;
        r.last_status = now;
        r.restoring = true;
        let mut requests = Vec::new();
        let mut messages = Vec::new();
        let mut stable = None;
        for rec in records {
            match rec {
                Record::Request(b) => requests.push(b),
                Record::Message(b) => messages.push(b),
                Record::Stable { seq, state, proof } => stable = Some((seq, state, proof)),
            }
        }
        if let Some((seq, state, proof)) = stable {
            let proof = proof
                .iter()
                .map(|b| Signed::<Checkpoint>::open(b, &r.cfg.network, r.verifier.as_ref()))
                .collect::<Result<Vec<_>, _>>()?;
            if !r.adopt_state(seq, proof, &state) {
                return Err(RestoreError::Stable(format!("checkpoint {seq} does not match its proof")));
            }
            r.ready.skipped.clear();
            r.ready.notes.clear();
        }
        for b in requests {
            let req = Signed::<Request>::open(&b, &r.cfg.network, r.verifier.as_ref())?;
            r.on_request(req);
        }
        for b in messages {
            let m = Message::open(&b, &r.cfg.network, r.verifier.as_ref())?;
            r.on_message(m);
        }
        // Requests no pre-prepare named wait for ordering again, unless the
        // state shows them ordered already.
        let mut loose: Vec<(Digest, bool)> = r
            .requests
            .iter()
            .filter(|(d, _)| !r.assigned.contains_key(d) && !r.executed_requests.values().any(|v| v.contains(d)))
            .map(|(d, req)| (*d, r.state.classify(&req.msg, d).is_none()))
            .collect();
        loose.sort();
        let named = r.named_above(r.low);
        for (d, fresh) in loose {
            if fresh {
                r.queue(d);
            } else {
                r.drop_request(d, &named);
            }
        }
        r.restoring = false;
        if crashed && !r.vc.in_view_change {
            r.abstain_view = Some(r.view);
        }
        r.executed_marks = [r.executed; 2];
        // Votes held back during the replay go out now, if still due.
        let seqs: Vec<u64> = r.slots.keys().copied().collect();
        for seq in seqs {
            r.check_slot(seq);
        }
        r.maybe_join_view_change();
        r.maybe_send_new_view();
        r.tick();
        r.reported_view = (r.view, r.vc.in_view_change);
        Ok(r)
    }

    /// Feeds one input at time `now`. Then call [`Replica::take_ready`].
    pub fn step(&mut self, now: Millis, input: Input) {
        self.now = self.now.max(now);
        match input {
            Input::Request(r) => self.on_request(r),
            Input::Message(m) => self.on_message(m),
            Input::FetchRequests { from, digests } => self.on_fetch(from, digests),
            Input::Status { from, status } => self.on_status(from, status),
            Input::State { proof, state } => {
                let seq = proof.first().map(|c| c.msg.seq).unwrap_or(0);
                self.adopt_state(seq, proof, &state);
            }
            Input::Executed { seq } => self.on_executed(seq),
            Input::Tick => {}
        }
        self.tick();
    }

    /// Takes what the last steps produced; see [`Ready`] for the order in
    /// which to handle it.
    pub fn take_ready(&mut self) -> Ready {
        let mut ready = std::mem::take(&mut self.ready);
        let view = (self.view, self.vc.in_view_change);
        if view != self.reported_view {
            // Entering a view must be durable before we vote in it, or a
            // restart would not know to abstain there.
            self.reported_view = view;
            ready.durable = true;
        }
        let replies = std::mem::take(&mut self.unsigned_replies);
        for signed in Signed::seal_batch(replies, &self.cfg.network, self.signer.as_ref()) {
            ready.replies.push(ReplyOut {
                to: signed.msg.gateway,
                request: signed.msg.request,
                bytes: signed.shared_bytes(),
            });
        }
        ready.wake_at = Some(self.wake_at());
        ready
    }

    // --- accessors (for drivers, the simulator and tests) ---

    pub fn index(&self) -> usize {
        self.me
    }
    pub fn view(&self) -> u64 {
        self.view
    }
    /// Between sending VIEW-CHANGE and accepting the NEW-VIEW.
    pub fn in_view_change(&self) -> bool {
        self.vc.in_view_change
    }
    pub fn is_primary(&self) -> bool {
        self.q.primary(self.view) == self.me
    }
    pub fn last_executed(&self) -> u64 {
        self.executed
    }
    pub fn low_watermark(&self) -> u64 {
        self.low
    }
    pub fn state(&self) -> &ReplicatedState {
        &self.state
    }
    /// Requests held, pending or in the log.
    pub fn requests_held(&self) -> usize {
        self.requests.len()
    }

    /// Where a request stands here (for the simulator's liveness reports).
    pub fn debug_request(&self, d: &Digest) -> String {
        let executed_in = self.executed_requests.iter().find(|(_, v)| v.contains(d)).map(|(s, _)| *s);
        format!(
            "held {} queued {} assigned {:?} fetching {} executed in {executed_in:?} view timer {:?}",
            self.requests.contains_key(d),
            self.queued.contains(d),
            self.assigned.get(d),
            self.fetches.contains_key(d),
            self.vc.deadline,
        )
    }

    /// One line on where this replica stands, for debugging.
    pub fn debug_summary(&self) -> String {
        let slots: Vec<String> = self
            .slots
            .iter()
            .map(|(s, sl)| {
                format!(
                    "{s}:v{}:pp={} p={} c={} committed={}",
                    sl.view,
                    sl.pre_prepare.is_some(),
                    sl.prepares.len(),
                    sl.commits.len(),
                    sl.committed
                )
            })
            .collect();
        let votes: Vec<String> =
            self.checkpoint_votes.iter().map(|(s, v)| format!("{s}:{:?}", v.keys().collect::<Vec<_>>())).collect();
        let own: Vec<String> =
            self.own_checkpoints.iter().map(|(s, (d, _, sent))| format!("{s}:{d:?}:{sent}")).collect();
        format!(
            "view {} changing {} (timer {:?}, asked by {:?}) executed {} low {} next_seq {} requests {} queued {} assigned {} waiting {:?} fetches {} slots [{}]",
            self.view,
            self.vc.in_view_change,
            self.vc.deadline,
            self.vc.view_changes.iter().map(|(i, c)| (*i, c.signed.msg.view)).collect::<Vec<_>>(),
            self.executed,
            self.low,
            self.next_seq,
            self.requests.len(),
            self.queued.len(),
            self.assigned.len(),
            self.waiting,
            self.fetches.len(),
            slots.join(" ")
        )
            + &format!(" checkpoint votes [{}] own [{}] acked {}", votes.join(" "), own.join(" "), self.acked)
    }

    // --- helpers ---

    fn prepares_needed(&self) -> usize {
        self.cfg.unsafe_quorum_override.map_or(self.q.prepares(), |(p, _)| p)
    }
    fn commits_needed(&self) -> usize {
        self.cfg.unsafe_quorum_override.map_or(self.q.quorum(), |(_, c)| c)
    }

    /// Normal-case messages count only in the current view, outside a view change.
    fn in_view(&self, view: u64) -> bool {
        view == self.view && !self.vc.in_view_change
    }

    fn in_window(&self, seq: u64) -> bool {
        seq > self.low && seq <= self.low + self.cfg.window
    }

    fn persist(&mut self, bytes: Arc<[u8]>) {
        if !self.restoring {
            self.ready.persist.push(Record::Message(bytes));
        }
    }

    fn broadcast<T: WireMessage>(&mut self, msg: T) -> Signed<T> {
        let signed = Signed::seal(msg, &self.cfg.network, self.signer.as_ref());
        self.persist(signed.shared_bytes());
        if !matches!(T::KIND, Kind::PrePrepare | Kind::Prepare) {
            self.ready.durable = true;
        }
        self.ready.messages.push(Outbound::Signed { to: Target::All, bytes: signed.shared_bytes() });
        signed
    }

    fn reply(&mut self, req: &Request, digest: Digest, body: ReplyBody) {
        if self.restoring {
            return;
        }
        let reply = Reply { view: self.view, gateway: req.gateway, number: req.number, request: digest, body };
        self.unsigned_replies.push(reply);
    }

    fn note_equivocation(&mut self, replica: usize, first: Arc<[u8]>, second: Arc<[u8]>) {
        if first != second {
            self.ready.notes.push(Note::Equivocation { replica, first, second });
        }
    }

    // --- requests ---

    fn on_request(&mut self, req: Signed<Request>) {
        if req.signer != req.msg.gateway {
            return;
        }
        let digest = req.msg.digest();
        // A request some pre-prepare names is needed whatever it turns out to
        // be at execution (perhaps a duplicate): keep it.
        let wanted = self.assigned.contains_key(&digest) || self.fetches.contains_key(&digest);
        if !self.restoring {
            match self.state.classify(&req.msg, &digest) {
                // Ordered before (or out of window): answer at once, order
                // nothing. A request ordered already is answered even if a
                // slot above still names it (a faulty primary's second slot,
                // or a view change's): the gateway retransmits because our
                // first answer was lost.
                Some(answer) if !wanted || matches!(answer, ReplyBody::Duplicate { .. }) => {
                    self.reply(&req.msg, digest, answer);
                    if !wanted {
                        return;
                    }
                }
                _ => {}
            }
        }
        if self.requests.contains_key(&digest) {
            return;
        }
        if !wanted && !self.restoring && self.requests.len() >= self.cfg.pending_max {
            self.reply(&req.msg, digest, ReplyBody::Rejected { reason: Rejection::Busy });
            return;
        }
        if !self.restoring {
            self.ready.persist.push(Record::Request(req.shared_bytes()));
        }
        self.requests.insert(digest, req);
        if wanted {
            self.fetches.remove(&digest);
            let waiting: Vec<u64> = self.waiting.iter().copied().collect();
            for seq in waiting {
                self.check_slot(seq);
            }
            self.try_execute();
        } else if !self.restoring {
            self.queue(digest);
        }
    }

    fn queue(&mut self, digest: Digest) {
        // Entries whose request left `queued` are skipped lazily when the
        // primary proposes; a backup never does, so compact them here or
        // they pile up for as long as it runs.
        if self.pending.len() >= 2 * self.queued.len() + PENDING_SLACK {
            let queued = &self.queued;
            self.pending.retain(|(d, _)| queued.contains(d));
        }
        self.queued.insert(digest);
        self.pending.push_back((digest, self.now));
    }

    fn on_fetch(&mut self, from: usize, digests: Vec<Digest>) {
        let found: Vec<Arc<[u8]>> =
            digests.iter().filter_map(|d| self.requests.get(d)).map(|r| r.shared_bytes()).collect();
        for bytes in found {
            self.ready.messages.push(Outbound::Signed { to: Target::Replica(from), bytes });
        }
    }

    fn want(&mut self, digests: Vec<Digest>, ask: usize) {
        let mut fresh = Vec::new();
        for d in digests {
            if !self.requests.contains_key(&d) && !self.fetches.contains_key(&d) {
                self.fetches.insert(d, (self.now, 0));
                fresh.push(d);
            }
        }
        if !fresh.is_empty() && ask != self.me && !self.restoring {
            self.ready.messages.push(Outbound::FetchRequests { to: ask, digests: fresh });
        }
    }

    // --- the normal case ---

    fn on_message(&mut self, m: Message) {
        let Some(&from) = self.index.get(&m.signer()) else {
            return;
        };
        // Our own messages normally come back only from our own store, but a
        // peer may hand one back that we no longer hold (a NEW-VIEW
        // pre-prepare beyond our window when we entered the view): what we
        // signed is ours to accept, and the handlers ignore what we have.
        match m {
            Message::PrePrepare(pp) => self.on_pre_prepare(from, pp),
            Message::Prepare(p) => self.on_prepare(from, p),
            Message::Commit(c) => self.on_commit(from, c),
            Message::Checkpoint(c) => self.on_checkpoint(from, c),
            Message::ViewChange(vc) => self.on_view_change(from, vc),
            Message::NewView(nv) => self.on_new_view(from, nv),
        }
    }

    fn on_pre_prepare(&mut self, from: usize, pp: Signed<PrePrepare>) {
        let (view, seq) = (pp.msg.view, pp.msg.seq);
        if view < self.view {
            self.learn_pre_prepare(from, pp);
            return;
        }
        if !self.in_view(view) || from != self.q.primary(view) || !self.in_window(seq) {
            return;
        }
        if pp.msg.requests.len() > self.cfg.batch_max {
            return;
        }
        let slot = self.slots.entry(seq).or_default();
        if let Some(old) = &slot.pre_prepare {
            if old.msg.view == view {
                let (a, b) = (old.shared_bytes(), pp.shared_bytes());
                if a == b {
                    // A copy we hold already (a replay may meet a NEW-VIEW's
                    // pre-prepare and then the primary's own copy of it).
                    return;
                }
                self.note_equivocation(from, a, b);
                // The primary equivocated: whichever batch gathers a commit
                // certificate is the one that committed.
                self.learn_pre_prepare(from, pp);
                return;
            }
            // A slot learned from an older view's commit certificate: this
            // view orders it again (the same batch, by the view-change rules),
            // and this replica votes in it.
            let committed = slot.committed && old.msg.batch_digest() == pp.msg.batch_digest();
            *slot = Slot { committed, ..Slot::default() };
        }
        slot.view = view;
        slot.batch = pp.msg.batch_digest();
        let digests = pp.msg.requests.clone();
        let bytes = pp.shared_bytes();
        slot.pre_prepare = Some(pp);
        if from == self.me {
            self.next_seq = self.next_seq.max(seq + 1);
        }
        self.persist(bytes);
        for d in &digests {
            self.queued.remove(d);
            // A slot executed here already (a view change orders it again)
            // will not execute again: its requests wait for nothing, and
            // counting them as pending would keep the view timer running.
            if seq > self.executed {
                self.assigned.insert(*d, seq);
            }
        }
        self.want(digests, from);
        self.check_slot(seq);
    }

    fn on_prepare(&mut self, from: usize, p: Signed<Prepare>) {
        let (view, seq) = (p.msg.view, p.msg.seq);
        if !self.in_view(view) || from == self.q.primary(view) || !self.in_window(seq) {
            return;
        }
        let slot = self.slots.entry(seq).or_default();
        if let Some(old) = slot.prepares.get(&from) {
            let (a, b) = (old.shared_bytes(), p.shared_bytes());
            self.note_equivocation(from, a, b);
            return;
        }
        if from == self.me {
            slot.sent_prepare = true;
        }
        let bytes = p.shared_bytes();
        slot.prepares.insert(from, p);
        self.persist(bytes);
        self.check_slot(seq);
    }

    fn on_commit(&mut self, from: usize, c: Signed<Commit>) {
        let (view, seq) = (c.msg.view, c.msg.seq);
        if view < self.view {
            self.learn_commit(from, c);
            return;
        }
        if !self.in_view(view) || !self.in_window(seq) {
            return;
        }
        let slot = self.slots.entry(seq).or_default();
        if let Some(old) = slot.commits.get(&from).filter(|old| old.msg.view == view) {
            let (a, b) = (old.shared_bytes(), c.shared_bytes());
            self.note_equivocation(from, a, b);
            return;
        }
        if from == self.me {
            slot.sent_commit = true;
        }
        let bytes = c.shared_bytes();
        let conflicting = slot.pre_prepare.is_some() && c.msg.batch != slot.batch;
        slot.commits.insert(from, c.clone());
        self.persist(bytes);
        if conflicting {
            self.learn_commit(from, c);
        }
        self.check_slot(seq);
    }

    /// Moves a slot as far as its messages allow: prepare once the
    /// pre-prepare and its requests are here, commit once prepared, execute
    /// once committed.
    fn check_slot(&mut self, seq: u64) {
        let primary = self.q.primary(self.view);
        let (prepares_needed, commits_needed) = (self.prepares_needed(), self.commits_needed());
        let Some(slot) = self.slots.get(&seq) else {
            return;
        };
        let Some(pp) = &slot.pre_prepare else { return };
        if pp.msg.requests.iter().any(|d| !self.requests.contains_key(d)) {
            self.waiting.insert(seq);
            return;
        }
        self.waiting.remove(&seq);
        let (view, batch) = (slot.view, slot.batch);
        // Votes go out only in the current view, outside a view change. A
        // replica that sent VIEW-CHANGE promised to take no part in lower
        // views: its VIEW-CHANGE carries the certificates it holds, and a
        // COMMIT signed afterwards (say, once a missing request arrived for a
        // slot of the old view) could complete a commit certificate that no
        // VIEW-CHANGE reports, and the NEW-VIEW could then order another
        // batch there. A commit certificate of others still commits the slot.
        // Nor while restoring: our votes then come from the store, and the
        // replay may reach a slot's quorum earlier than the original run did
        // (every persisted request is replayed first, also those that came
        // after our VIEW-CHANGE); voting resumes once the replay is done.
        let voting = self.in_view(view) && !self.restoring;
        if voting && self.me != primary && !slot.sent_prepare && self.abstain_view != Some(view) {
            let p = self.broadcast(Prepare { view, seq, batch });
            let slot = self.slots.get_mut(&seq).expect("slot exists");
            slot.prepares.insert(self.me, p);
            slot.sent_prepare = true;
        }
        let slot = &self.slots[&seq];
        let prepared = slot.prepares.values().filter(|p| p.msg.batch == batch).count() >= prepares_needed;
        if !prepared {
            if self.cfg.unsafe_tentative_at_pre_prepare {
                self.execute_tentatively(seq);
            }
            return;
        }
        let sent_commit = slot.sent_commit;
        // A prepared certificate, whether or not we vote with it: a
        // VIEW-CHANGE may carry every certificate a replica holds. Recorded
        // also when the slot counts our COMMIT as sent already (a replay
        // meets our COMMIT and the commits of others before the prepares of
        // a late pre-prepare): a COMMIT we sent promises the certificate to
        // the next view.
        self.record_prepared(seq);
        if voting && !sent_commit {
            let c = self.broadcast(Commit { view, seq, batch });
            let slot = self.slots.get_mut(&seq).expect("slot exists");
            slot.commits.insert(self.me, c);
            slot.sent_commit = true;
        }
        let slot = self.slots.get_mut(&seq).expect("slot exists");
        if !slot.committed && slot.commits.values().filter(|c| c.msg.batch == batch).count() >= commits_needed {
            slot.committed = true;
            self.try_execute();
        }
        self.execute_tentatively(seq);
    }

    /// Tentative execution (Castro and Liskov): a slot prepared here, in
    /// the current view, with every slot before it executed, answers
    /// `Prepared` at once, a round before it commits. 2f + 1 matching
    /// answers hold f + 1 correct replicas with the prepared certificate,
    /// which every later view keeps at this seq (each view change quorum
    /// meets one of them), after a prefix that committed already: the job
    /// is what executing will make it. Only our COMMIT marks the slot
    /// prepared: it went out (or comes from our store) after the
    /// certificate was persisted, so a restart keeps what this promised.
    /// The state is not touched; executing answers again, for good.
    fn execute_tentatively(&mut self, seq: u64) {
        if self.restoring || seq != self.executed + 1 {
            return;
        }
        let Some(slot) = self.slots.get(&seq) else { return };
        let prepared = slot.sent_commit || self.cfg.unsafe_tentative_at_pre_prepare;
        if slot.committed || slot.answered_tentatively || !prepared || !self.in_view(slot.view) {
            return;
        }
        let Some(pp) = &slot.pre_prepare else { return };
        let Some(requests) =
            pp.msg.requests.iter().map(|d| self.requests.get(d).map(|r| (&r.msg, *d))).collect::<Option<Vec<_>>>()
        else {
            return;
        };
        let answers: Vec<(Request, Digest, JobId)> = self
            .state
            .preview(seq, &requests)
            .into_iter()
            .zip(&requests)
            .filter_map(|(body, (req, d))| match body {
                ReplyBody::Accepted { job } => Some(((*req).clone(), *d, job)),
                _ => None,
            })
            .collect();
        self.slots.get_mut(&seq).expect("slot exists").answered_tentatively = true;
        for (req, digest, job) in answers {
            self.reply(&req, digest, ReplyBody::Prepared { job });
        }
    }

    /// Executes committed slots in sequence order.
    fn try_execute(&mut self) {
        while let Some(slot) = self.slots.get(&(self.executed + 1)) {
            if !slot.committed {
                break;
            }
            let seq = self.executed + 1;
            let (view, batch) = (slot.view, slot.batch);
            let digests = slot.pre_prepare.as_ref().expect("committed slots have a pre-prepare").msg.requests.clone();
            if digests.iter().any(|d| !self.requests.contains_key(d)) {
                // A slot learned from a commit certificate: its requests are
                // being fetched, and arrive through on_request.
                break;
            }
            let mut jobs = Vec::new();
            for (i, d) in digests.iter().enumerate() {
                let req = self.requests.get(d).expect("committed requests are present").clone();
                let job = JobId { seq, index: i as u32 };
                let body = self.state.apply(job, &req.msg, d);
                if matches!(body, ReplyBody::Accepted { .. }) {
                    jobs.push((job, req.clone()));
                }
                self.queued.remove(d);
                self.assigned.remove(d);
                self.reply(&req.msg, *d, body);
            }
            self.state.seq = seq;
            self.executed = seq;
            self.executed_requests.entry(seq).or_default().extend(digests.iter().copied());
            self.ready.execute.push(Batch { seq, view, batch, requests: digests, jobs });
            if seq % self.cfg.checkpoint_interval == 0 {
                self.own_checkpoints.insert(seq, (self.state.digest(), self.state.encode().into(), false));
                if self.acked >= seq {
                    self.send_checkpoints();
                }
            }
        }
        self.execute_tentatively(self.executed + 1);
    }

    /// Batches this primary proposed that have not executed yet.
    fn batches_in_flight(&self) -> u64 {
        (self.next_seq - 1).saturating_sub(self.executed)
    }

    /// The primary proposes batches: at once when nothing is in flight, else
    /// when a batch is full or its oldest request waited `batch_delay_ms`.
    fn try_propose(&mut self) {
        if !self.is_primary() || self.restoring || self.vc.in_view_change || self.abstain_view == Some(self.view) {
            return;
        }
        loop {
            while let Some((d, _)) = self.pending.front() {
                if self.queued.contains(d) {
                    break;
                }
                self.pending.pop_front();
            }
            let Some(&(_, oldest)) = self.pending.front() else {
                return;
            };
            if !self.in_window(self.next_seq) {
                return;
            }
            let in_flight = self.batches_in_flight();
            let full = self.queued.len() >= self.cfg.batch_max;
            if in_flight > 0 && !full && self.now < oldest + self.cfg.batch_delay_ms {
                return;
            }
            if in_flight >= self.cfg.pipeline_max {
                return;
            }
            let mut requests = Vec::new();
            while requests.len() < self.cfg.batch_max {
                let Some((d, _)) = self.pending.pop_front() else {
                    break;
                };
                if self.queued.remove(&d) {
                    requests.push(d);
                }
            }
            let seq = self.next_seq;
            let pp =
                Signed::seal(PrePrepare { view: self.view, seq, requests }, &self.cfg.network, self.signer.as_ref());
            self.ready.messages.push(Outbound::Signed { to: Target::All, bytes: pp.shared_bytes() });
            self.on_pre_prepare(self.me, pp);
        }
    }

    // --- checkpoints ---

    fn on_executed(&mut self, seq: u64) {
        if seq > self.acked && seq <= self.executed {
            self.acked = seq;
            self.send_checkpoints();
        }
    }

    fn send_checkpoints(&mut self) {
        let due: Vec<(u64, Digest)> = self
            .own_checkpoints
            .range(..=self.acked)
            .filter(|(_, (_, _, sent))| !sent)
            .map(|(s, (d, _, _))| (*s, *d))
            .collect();
        for (seq, state) in due {
            self.own_checkpoints.get_mut(&seq).expect("present").2 = true;
            let c = self.broadcast(Checkpoint { seq, state });
            self.record_checkpoint_vote(self.me, c);
        }
    }

    fn on_checkpoint(&mut self, from: usize, c: Signed<Checkpoint>) {
        if from == self.me {
            // Replayed from our store: it went out before the restart.
            if let Some(own) = self.own_checkpoints.get_mut(&c.msg.seq) {
                own.2 = true;
            }
        }
        self.record_checkpoint_vote(from, c);
    }

    fn record_checkpoint_vote(&mut self, from: usize, c: Signed<Checkpoint>) {
        let seq = c.msg.seq;
        // Beyond one window above us a CHECKPOINT proves nothing we can use
        // (status exchanges tell us we lag); dropping it bounds what a faulty
        // replica can make us store.
        if seq <= self.low || seq > self.low + self.cfg.window || seq % self.cfg.checkpoint_interval != 0 {
            return;
        }
        let votes = self.checkpoint_votes.entry(seq).or_default();
        if votes.contains_key(&(from, c.msg.state)) {
            return;
        }
        // A second, different digest from one replica is evidence; it is
        // kept (the other one may be the lie that others never saw), a third
        // is not: at most two votes per replica and seq.
        let earlier: Vec<Arc<[u8]>> = votes
            .range((from, Digest::default())..)
            .take_while(|((i, _), _)| *i == from)
            .map(|(_, v)| v.shared_bytes())
            .collect();
        if earlier.len() >= 2 {
            return;
        }
        let bytes = c.shared_bytes();
        votes.insert((from, c.msg.state), c);
        if let Some(first) = earlier.into_iter().next() {
            self.note_equivocation(from, first, bytes.clone());
        }
        if from != self.me {
            self.persist(bytes);
        }
        self.check_stable(seq);
    }

    fn check_stable(&mut self, seq: u64) {
        let Some(votes) = self.checkpoint_votes.get(&seq) else {
            return;
        };
        let mut by_digest: BTreeMap<Digest, Vec<&Signed<Checkpoint>>> = BTreeMap::new();
        for v in votes.values() {
            by_digest.entry(v.msg.state).or_default().push(v);
        }
        let Some((digest, proof)) = by_digest.into_iter().find(|(_, v)| v.len() >= self.q.quorum()) else {
            return;
        };
        let proof: Vec<Signed<Checkpoint>> = proof.into_iter().cloned().collect();
        match self.own_checkpoints.get(&seq) {
            Some((own, state, _)) if *own == digest => {
                let state = state.clone();
                self.make_stable(seq, proof, state);
            }
            Some(_) => self.ready.notes.push(Note::Diverged { seq }),
            None if self.executed < seq => {
                // 2f + 1 are ahead of us: ask them for help (messages, or state).
                let voters: Vec<usize> = proof.iter().filter_map(|c| self.index.get(&c.signer).copied()).collect();
                for v in voters {
                    self.ask_for_help(v);
                }
            }
            None => {}
        }
    }

    fn make_stable(&mut self, seq: u64, proof: Vec<Signed<Checkpoint>>, state: Arc<[u8]>) {
        if seq <= self.low {
            return;
        }
        self.low = seq;
        self.gc_prepared(seq);
        self.slots = self.slots.split_off(&(seq + 1));
        self.waiting = self.waiting.split_off(&(seq + 1));
        self.checkpoint_votes = self.checkpoint_votes.split_off(&(seq + 1));
        self.own_checkpoints = self.own_checkpoints.split_off(&(seq + 1));
        let kept = self.executed_requests.split_off(&(seq + 1));
        let named = self.named_above(seq);
        // A request no slot above names any more is not worth fetching:
        // without this, what a faulty primary named and no one had would
        // stay wanted for good.
        self.fetches.retain(|d, _| named.contains_key(d));
        for digests in std::mem::replace(&mut self.executed_requests, kept).into_values() {
            for d in digests {
                if !self.queued.contains(&d) {
                    self.drop_request(d, &named);
                }
            }
        }
        // A request a slot at or below `seq` named but did not execute (the
        // losing half of an equivocating primary's pre-prepares, a slot a later
        // view filled with another batch) waits for ordering again unless the
        // state ordered it: else it would stay here for good, unordered, and
        // the gateway's retransmissions would find it held and change nothing.
        // One the state ordered (a state transfer) is dropped like an executed
        // one. (A restore sorts these out once its replay is done.)
        // In slot order: `assigned` is a HashMap, and its order (random per
        // process) would make the queue's, so a seed's simulated run.
        let mut orphans: Vec<(u64, Digest)> =
            self.assigned.iter().filter(|(_, s)| **s <= seq).map(|(d, s)| (*s, *d)).collect();
        orphans.sort_unstable();
        self.assigned.retain(|_, s| *s > seq);
        for (_, d) in orphans {
            let Some(req) = self.requests.get(&d).filter(|_| !self.restoring && !self.queued.contains(&d)) else {
                continue;
            };
            if self.state.classify(&req.msg, &d).is_none() {
                self.queue(d);
            } else {
                self.drop_request(d, &named);
            }
        }
        self.next_seq = self.next_seq.max(seq + 1);
        let proof_bytes = proof.iter().map(|c| c.shared_bytes()).collect();
        if !self.restoring {
            self.ready.persist.push(Record::Stable { seq, state: state.clone(), proof: proof_bytes });
        }
        self.stable_proof = proof;
        self.stable_state = state;
    }

    /// Requests named above `seq` by a pre-prepare in the log, a prepared
    /// certificate, or a candidate of an older view's slot. One request may
    /// sit in two slots (a faulty primary, or one slot's pre-prepare from an
    /// older view that a later NEW-VIEW carries again); executing it in the
    /// first does not make its body garbage: the other slot executes it too
    /// (as a duplicate) and needs it. A replica holding such a slot or
    /// certificate keeps the body, so every replica that needs it can fetch it
    /// (the gateway stopped sending it once it got its replies).
    /// Each maps to the lowest such seq.
    fn named_above(&self, seq: u64) -> BTreeMap<Digest, u64> {
        let above = seq + 1..;
        let slots = self.slots.range(above.clone()).filter_map(|(_, s)| s.pre_prepare.as_ref());
        let certs = self.vc.prepared.range(above.clone()).map(|(_, c)| &c.pre_prepare);
        let learned = self.vc.learned.range(above).flat_map(|(_, l)| l.pre_prepares.values());
        let mut named = BTreeMap::new();
        for pp in slots.chain(certs).chain(learned) {
            for d in &pp.msg.requests {
                let lowest = named.entry(*d).or_insert(pp.msg.seq);
                *lowest = (*lowest).min(pp.msg.seq);
            }
        }
        named
    }

    /// Forgets an ordered request's body, unless a slot above still names it
    /// (see [`Replica::named_above`]): then it is kept, and looked at again
    /// once that slot is below a stable checkpoint.
    fn drop_request(&mut self, d: Digest, named: &BTreeMap<Digest, u64>) {
        match named.get(&d) {
            Some(&seq) => self.executed_requests.entry(seq).or_default().push(d),
            None => {
                self.requests.remove(&d);
            }
        }
    }

    /// Adopts a stable checkpoint's state received from a peer, if `proof`
    /// holds 2f + 1 CHECKPOINTs from distinct replicas for its digest and it is
    /// ahead of us.
    fn adopt_state(&mut self, seq: u64, proof: Vec<Signed<Checkpoint>>, bytes: &[u8]) -> bool {
        if seq <= self.executed && !(self.restoring && seq > self.low) {
            return false;
        }
        let Ok(state) = ReplicatedState::decode(bytes) else {
            return false;
        };
        let digest = state.digest();
        let signers: BTreeSet<usize> = proof
            .iter()
            .filter(|c| c.msg.seq == seq && c.msg.state == digest)
            .filter_map(|c| self.index.get(&c.signer).copied())
            .collect();
        if signers.len() < self.q.quorum() || state.seq != seq {
            return false;
        }
        if seq > self.executed {
            self.ready.skipped.push(Skipped { from_seq: self.executed + 1, to_seq: seq });
            self.ready.notes.push(Note::StateTransferred { seq });
        }
        // Requests the new state already ordered are not pending any more.
        let done: Vec<Digest> = self
            .queued
            .iter()
            .filter(|d| self.requests.get(d).is_some_and(|r| state.classify(&r.msg, d).is_some()))
            .copied()
            .collect();
        let named = self.named_above(seq);
        for d in done {
            self.queued.remove(&d);
            self.drop_request(d, &named);
        }
        self.state = state;
        self.executed = self.executed.max(seq);
        self.acked = self.acked.max(seq);
        self.make_stable(seq, proof, bytes.into());
        // Slots above the adopted state may have committed meanwhile.
        self.try_execute();
        true
    }

    // --- catching up ---

    fn on_status(&mut self, from: usize, status: Status) {
        let Status { view, changing, executed, stable } = status;
        if from == self.me || from >= self.q.n {
            return;
        }
        let changing_here = self.vc.in_view_change;
        if view < self.view || (view == self.view && changing && !changing_here) {
            // It missed our view change or our NEW-VIEW: send them again.
            for bytes in self.view_messages() {
                self.ready.messages.push(Outbound::Signed { to: Target::Replica(from), bytes });
            }
        } else if view > self.view || (view == self.view && !changing && changing_here) {
            // It is further along in views: our status makes it send us what we lack.
            self.ask_for_help(from);
        }
        if stable < self.low && executed >= self.low && !self.stable_proof.is_empty() {
            // It executed past our stable checkpoint but missed the CHECKPOINTs
            // that make it stable: our proof carries them.
            for c in &self.stable_proof {
                let bytes = c.shared_bytes();
                self.ready.messages.push(Outbound::Signed { to: Target::Replica(from), bytes });
            }
        }
        let lagging = !self.cfg.help_only_lagging || executed < self.low || executed < self.executed_marks[0];
        if executed < self.executed && lagging {
            self.help(from, executed);
        } else if executed > self.executed {
            if view == self.view && !changing {
                self.view_progresses();
            }
            self.ask_for_help(from);
        }
    }

    fn ask_for_help(&mut self, to: usize) {
        if to == self.me || self.restoring {
            return;
        }
        let last = self.asked_at.get(&to).copied();
        if last.is_some_and(|t| self.now < t + self.cfg.status_interval_ms / 2) {
            return;
        }
        self.asked_at.insert(to, self.now);
        self.send_status(Target::Replica(to));
    }

    fn send_status(&mut self, to: Target) {
        let (view, executed, stable, changing) = (self.view, self.executed, self.low, self.vc.in_view_change);
        self.ready.messages.push(Outbound::Status { to, status: Status { view, changing, executed, stable } });
    }

    /// Sends a lagging replica what it needs for the next few slots: the
    /// signed certificates we hold and the requests they name, or our stable
    /// state when it fell below our log.
    fn help(&mut self, to: usize, executed: u64) {
        let last = self.helped_at.get(&to).copied();
        if last.is_some_and(|t| self.now < t + self.cfg.status_interval_ms / 2) {
            return;
        }
        self.helped_at.insert(to, self.now);
        if executed < self.low {
            self.ready.messages.push(Outbound::State {
                to,
                proof: self.stable_proof.iter().map(|c| c.shared_bytes()).collect(),
                state: self.stable_state.clone(),
            });
            return;
        }
        let mut out = Vec::new();
        for (_, slot) in self.slots.range(executed + 1..=executed + self.cfg.help_slots_max) {
            let Some(pp) = &slot.pre_prepare else {
                continue;
            };
            out.extend(pp.msg.requests.iter().filter_map(|d| self.requests.get(d)).map(|r| r.shared_bytes()));
            out.push(pp.shared_bytes());
            out.extend(slot.prepares.values().map(|p| p.shared_bytes()));
            out.extend(slot.commits.values().map(|c| c.shared_bytes()));
        }
        let me = self.me;
        let own = self.checkpoint_votes.values().flat_map(|v| v.iter().filter(|((i, _), _)| *i == me)).next_back();
        if let Some((_, c)) = own {
            out.push(c.shared_bytes());
        }
        for bytes in out {
            self.ready.messages.push(Outbound::Signed { to: Target::Replica(to), bytes });
        }
    }

    // --- time ---

    fn tick(&mut self) {
        self.try_propose();
        if self.restoring {
            return;
        }
        self.check_view_timer();
        if self.now >= self.last_status + self.cfg.status_interval_ms {
            self.last_status = self.now;
            self.executed_marks = [self.executed_marks[1], self.executed];
            self.send_status(Target::All);
            self.retransmit();
        }
        // Ask another replica for requests still missing.
        let due: Vec<Digest> = self
            .fetches
            .iter()
            .filter(|(_, (at, _))| self.now >= at + self.cfg.fetch_retry_ms)
            .map(|(d, _)| *d)
            .collect();
        let mut by_peer: BTreeMap<usize, Vec<Digest>> = BTreeMap::new();
        for d in due {
            let entry = self.fetches.get_mut(&d).expect("present");
            entry.0 = self.now;
            entry.1 += 1;
            let mut peer = (self.me + entry.1 as usize) % self.q.n;
            if peer == self.me {
                peer = (peer + 1) % self.q.n;
            }
            by_peer.entry(peer).or_default().push(d);
        }
        for (to, digests) in by_peer {
            self.ready.messages.push(Outbound::FetchRequests { to, digests });
        }
    }

    /// Slots that stay uncommitted may lack messages somewhere (gossip lost
    /// them): send ours again, point to point, since gossip would swallow
    /// identical bytes as duplicates. The primary's pre-prepare is forwarded
    /// too: it is signed, so anyone may relay it.
    fn retransmit(&mut self) {
        let mut out = Vec::new();
        if self.vc.in_view_change {
            out.extend(self.view_messages());
        }
        // Also the slots a view change ordered again that we executed in an
        // earlier view but that have not committed in this one: a replica
        // that missed them in the earlier view needs our votes in this one,
        // and no peer counts it as lagging behind us for long enough to help.
        let below = (self.low + 1).min(self.executed + 1)..self.executed + 1;
        let reordered = self.slots.range(below).filter(|(_, s)| !s.committed);
        let ahead = self.slots.range(self.executed + 1..=self.executed + self.cfg.help_slots_max);
        for (_, slot) in reordered.chain(ahead) {
            if slot.committed && slot.commits.len() == self.q.n {
                continue;
            }
            out.extend(slot.pre_prepare.as_ref().map(|p| p.shared_bytes()));
            out.extend(slot.prepares.get(&self.me).map(|p| p.shared_bytes()));
            out.extend(slot.commits.get(&self.me).map(|c| c.shared_bytes()));
        }
        // Our CHECKPOINTs not yet stable: lost ones (a partition) are sent by
        // nobody else when every replica executed as far as we did, and
        // without them the window stays full.
        let me = self.me;
        let own = self.checkpoint_votes.values().flat_map(|v| v.iter().filter(|((i, _), _)| *i == me));
        out.extend(own.map(|(_, c)| c.shared_bytes()));
        for bytes in out {
            for to in (0..self.q.n).filter(|&i| i != self.me) {
                self.ready.messages.push(Outbound::Signed { to: Target::Replica(to), bytes: bytes.clone() });
            }
        }
    }

    fn wake_at(&self) -> Millis {
        let mut at = self.last_status + self.cfg.status_interval_ms;
        if let Some((at_fetch, _)) = self.fetches.values().min() {
            at = at.min(at_fetch + self.cfg.fetch_retry_ms);
        }
        if let Some(d) = self.view_change_deadline() {
            at = at.min(d);
        }
        // A primary wakes when the oldest request has waited long enough to
        // go in a batch; at its pipeline bound it waits for a batch to
        // execute instead (a timer already due would spin).
        if self.is_primary() && self.batches_in_flight() < self.cfg.pipeline_max {
            if let Some((_, oldest)) = self.pending.iter().find(|(d, _)| self.queued.contains(d)) {
                at = at.min(oldest + self.cfg.batch_delay_ms);
            }
        }
        at.max(self.now)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::wire::testkit::Net;
    use crate::wire::{Envelope, Kind, Operation, Request, Signed};

    /// Replica 0, primary of view 0, handed `count` requests one at a time
    /// with no batching delay: how many PRE-PREPAREs it sends (nothing
    /// executes, as no other replica answers), and whether it then wants a
    /// timer that is due already.
    fn proposals(pipeline_max: u64, count: u64) -> (usize, bool) {
        let net = Net::new();
        let mut cfg = Config::new(net.network(), net.members.replica_ids());
        cfg.batch_delay_ms = 0;
        cfg.pipeline_max = pipeline_max;
        let mut primary = Replica::new(cfg, Arc::new(net.replicas[0].clone()), Arc::new(net.members.clone()));
        let (mut pre_prepares, mut due) = (0, false);
        for number in 1..=count {
            primary.step(10, Input::Request(request(&net, number)));
            let ready = primary.take_ready();
            for out in &ready.messages {
                if let Outbound::Signed { bytes, .. } = out {
                    let env = Envelope::open(bytes, &net.network(), &net.members).expect("signed by the primary");
                    pre_prepares += usize::from(env.kind == Kind::PrePrepare);
                }
            }
            due = ready.wake_at.is_some_and(|at| at <= 10);
        }
        (pre_prepares, due)
    }

    #[test]
    fn a_backup_forgets_the_requests_it_saw_ordered() {
        let net = Net::new();
        let mut cfg = Config::new(net.network(), net.members.replica_ids());
        cfg.batch_delay_ms = 0;
        // One batch per request, all within the first watermark window.
        cfg.pipeline_max = u64::MAX;
        let count = cfg.window - 1;
        let replica =
            |i: usize| Replica::new(cfg.clone(), Arc::new(net.replicas[i].clone()), Arc::new(net.members.clone()));
        let (mut primary, mut backup) = (replica(0), replica(1));
        for number in 1..=count {
            let req = request(&net, number);
            backup.step(10, Input::Request(req.clone()));
            primary.step(10, Input::Request(req));
            for out in primary.take_ready().messages {
                if let Outbound::Signed { bytes, .. } = out {
                    let message = Message::open(&bytes, &net.network(), &net.members).expect("signed by the primary");
                    backup.step(10, Input::Message(message));
                }
            }
            let _ = backup.take_ready();
        }
        // Every request went into a pre-prepare: none is left to propose.
        assert!(backup.queued.is_empty());
        assert!(backup.pending.len() <= PENDING_SLACK, "{} stale entries", backup.pending.len());
    }

    /// Replica `i` of the test network, configured as by default.
    fn replica(net: &Net, i: usize) -> Replica {
        let cfg = Config::new(net.network(), net.members.replica_ids());
        Replica::new(cfg, Arc::new(net.replicas[i].clone()), Arc::new(net.members.clone()))
    }

    /// Request `number` of the test gateway.
    fn request(net: &Net, number: u64) -> Signed<Request> {
        let op = Operation::Run { repo: "file:///repo".into(), git_ref: "master".into(), commit: None };
        let req = Request { gateway: net.gateway.public().to_peer_id(), number, delivery: None, op };
        Signed::seal(req, &net.network(), &net.gateway)
    }

    /// `msg` signed by replica `by`, as a replica receives it.
    fn signed_by<T: WireMessage>(net: &Net, by: usize, msg: T) -> Input {
        let signed = Signed::seal(msg, &net.network(), &net.replicas[by]);
        Input::Message(Message::open(signed.bytes(), &net.network(), &net.members).unwrap())
    }

    /// `state`, stable with the CHECKPOINTs of replicas 0, 2 and 3.
    fn state_transfer(net: &Net, state: &ReplicatedState) -> Input {
        let checkpoint = Checkpoint { seq: state.seq, state: state.digest() };
        let proof =
            [0, 2, 3].iter().map(|&i| Signed::seal(checkpoint.clone(), &net.network(), &net.replicas[i])).collect();
        Input::State { proof, state: state.encode() }
    }

    #[test]
    fn a_request_no_slot_names_any_more_is_not_fetched_past_a_stable_checkpoint() {
        let net = Net::new();
        let mut backup = replica(&net, 1);
        // The primary names a request no one has.
        let missing = crate::wire::testkit::digest(7);
        backup.step(10, signed_by(&net, 0, PrePrepare { view: 0, seq: 1, requests: vec![missing] }));
        let _ = backup.take_ready();
        assert!(backup.fetches.contains_key(&missing), "a request a pre-prepare names is fetched");
        // The others moved on past that slot: a stable checkpoint at 64.
        backup.step(20, state_transfer(&net, &ReplicatedState { seq: 64, ..Default::default() }));
        let _ = backup.take_ready();
        assert_eq!(backup.low, 64, "the state was adopted");
        assert!(backup.fetches.is_empty(), "still fetching {:?}", backup.fetches.keys().collect::<Vec<_>>());
    }

    #[test]
    fn a_pre_prepare_met_twice_keeps_the_slot_s_prepared_certificate() {
        // The order a restarted replica's replay can take: the pre-prepare
        // (from a NEW-VIEW, say) before its request, the others' votes, then
        // the primary's own copy of that pre-prepare, then the request.
        let net = Net::new();
        let mut backup = replica(&net, 2);
        let req = request(&net, 1);
        let pre_prepare = PrePrepare { view: 0, seq: 1, requests: vec![req.msg.digest()] };
        let batch = pre_prepare.batch_digest();
        let mut inputs = vec![signed_by(&net, 0, pre_prepare.clone())];
        inputs.extend([0, 1, 3].map(|i| signed_by(&net, i, Commit { view: 0, seq: 1, batch })));
        inputs.extend([1, 3].map(|i| signed_by(&net, i, Prepare { view: 0, seq: 1, batch })));
        inputs.push(signed_by(&net, 0, pre_prepare));
        inputs.push(Input::Request(req));
        let mut notes = Vec::new();
        for input in inputs {
            backup.step(10, input);
            notes.extend(backup.take_ready().notes);
        }
        assert_eq!(backup.executed, 1, "the slot committed and executed");
        assert!(notes.is_empty(), "a copy is no equivocation: {notes:?}");
        let cert = backup.vc.prepared.get(&1).expect("a VIEW-CHANGE would carry the slot");
        assert_eq!((cert.pre_prepare.msg.view, cert.prepares.len()), (0, 3));
    }

    #[test]
    fn a_request_named_below_a_stable_checkpoint_but_not_ordered_waits_for_ordering_again() {
        let net = Net::new();
        let mut backup = replica(&net, 1);
        let (req, ordered) = (request(&net, 1), request(&net, 2));
        let (digest, ordered_digest) = (req.msg.digest(), ordered.msg.digest());
        backup.step(10, Input::Request(req));
        backup.step(10, Input::Request(ordered.clone()));
        backup.step(10, signed_by(&net, 0, PrePrepare { view: 0, seq: 1, requests: vec![digest, ordered_digest] }));
        let _ = backup.take_ready();
        assert!(!backup.queued.contains(&digest), "a pre-prepare named it");
        // The others moved past that slot with a state that ordered only the
        // second request (another batch executed there, and it later).
        let mut state = ReplicatedState { seq: 64, ..Default::default() };
        state.apply(JobId { seq: 3, index: 0 }, &ordered.msg, &ordered_digest);
        backup.step(20, state_transfer(&net, &state));
        let _ = backup.take_ready();
        assert_eq!(backup.low, 64, "the state was adopted");
        assert!(backup.queued.contains(&digest), "the request waits for ordering again");
        assert!(!backup.queued.contains(&ordered_digest), "the state ordered this one");
        assert!(!backup.requests.contains_key(&ordered_digest), "and its body is not kept");
    }

    /// The bodies of the replies in `ready`.
    fn replies(net: &Net, ready: &Ready) -> Vec<ReplyBody> {
        ready
            .replies
            .iter()
            .map(|r| Signed::<Reply>::open(&r.bytes, &net.network(), &net.members).unwrap().msg.body)
            .collect()
    }

    #[test]
    fn a_slot_prepared_after_an_executed_prefix_answers_prepared_before_it_commits() {
        let net = Net::new();
        let mut backup = replica(&net, 1);
        let (r1, r2) = (request(&net, 1), request(&net, 2));
        let pp = |seq, r: &Signed<Request>| PrePrepare { view: 0, seq, requests: vec![r.msg.digest()] };
        let (b1, b2) = (pp(1, &r1).batch_digest(), pp(2, &r2).batch_digest());
        let job = |seq| JobId { seq, index: 0 };
        let mut answers = Vec::new();
        let mut feed = |backup: &mut Replica, input| {
            backup.step(10, input);
            let ready = backup.take_ready();
            answers.push(replies(&net, &ready));
        };
        for input in [
            Input::Request(r1.clone()),
            Input::Request(r2.clone()),
            signed_by(&net, 0, pp(1, &r1)),
            signed_by(&net, 0, pp(2, &r2)),
            // Slot 2 prepares first: slot 1 is not executed, no answer.
            signed_by(&net, 2, Prepare { view: 0, seq: 2, batch: b2 }),
            // Slot 1 prepares: our COMMIT and its tentative answer.
            signed_by(&net, 2, Prepare { view: 0, seq: 1, batch: b1 }),
            signed_by(&net, 0, Commit { view: 0, seq: 1, batch: b1 }),
            // Slot 1 commits and executes: its answer for good, and slot 2's
            // tentative one, now that everything before it executed.
            signed_by(&net, 2, Commit { view: 0, seq: 1, batch: b1 }),
        ] {
            feed(&mut backup, input);
        }
        let tail: Vec<Vec<ReplyBody>> = answers.split_off(4);
        assert!(answers.iter().all(Vec::is_empty), "{answers:?}");
        assert_eq!(
            tail,
            vec![
                vec![],
                vec![ReplyBody::Prepared { job: job(1) }],
                vec![],
                vec![ReplyBody::Accepted { job: job(1) }, ReplyBody::Prepared { job: job(2) }],
            ]
        );
        // Slot 2 commits: the final answer, and no second tentative one.
        for i in [0, 2] {
            backup.step(10, signed_by(&net, i, Commit { view: 0, seq: 2, batch: b2 }));
        }
        assert_eq!(replies(&net, &backup.take_ready()), vec![ReplyBody::Accepted { job: job(2) }]);

        // A replica that asked for a view change answers nothing tentatively.
        let mut leaving = replica(&net, 1);
        for input in [Input::Request(r1.clone()), signed_by(&net, 0, pp(1, &r1))] {
            leaving.step(10, input);
        }
        let _ = leaving.take_ready();
        leaving.step(10_000, Input::Tick);
        assert!(leaving.in_view_change());
        leaving.step(10_000, signed_by(&net, 2, Prepare { view: 0, seq: 1, batch: b1 }));
        assert!(replies(&net, &leaving.take_ready()).is_empty());
    }

    /// Whether `ready` sends a message of `kind`.
    fn sends(net: &Net, ready: &Ready, kind: Kind) -> bool {
        ready.messages.iter().any(|out| match out {
            Outbound::Signed { bytes, .. } => Envelope::open(bytes, &net.network(), &net.members).unwrap().kind == kind,
            _ => false,
        })
    }

    #[test]
    fn after_a_crash_a_replica_neither_proposes_nor_prepares_in_its_view_but_still_commits() {
        let net = Net::new();
        let req = request(&net, 1);
        let pp = PrePrepare { view: 0, seq: 1, requests: vec![req.msg.digest()] };
        let batch = pp.batch_digest();

        // A PREPARE goes out before it is durable; a COMMIT does not.
        let mut backup = replica(&net, 1);
        backup.step(10, Input::Request(req.clone()));
        let _ = backup.take_ready();
        backup.step(10, signed_by(&net, 0, pp.clone()));
        let ready = backup.take_ready();
        assert!(sends(&net, &ready, Kind::Prepare) && ready.is_light(), "{ready:?}");
        backup.step(10, signed_by(&net, 2, Prepare { view: 0, seq: 1, batch }));
        let ready = backup.take_ready();
        assert!(sends(&net, &ready, Kind::Commit) && !ready.is_light());

        // It crashed with only the request durable: the PREPARE it sent is lost.
        let cfg = Config::new(net.network(), net.members.replica_ids());
        let mut restarted = Replica::restore(
            cfg.clone(),
            Arc::new(net.replicas[1].clone()),
            Arc::new(net.members.clone()),
            20,
            vec![Record::Request(req.shared_bytes())],
            true,
        )
        .unwrap();
        let _ = restarted.take_ready();
        restarted.step(30, signed_by(&net, 0, pp.clone()));
        assert!(!sends(&net, &restarted.take_ready(), Kind::Prepare), "no second PREPARE in view 0");
        // 2f others prepared: it commits, and the slot executes.
        for i in [2, 3] {
            restarted.step(30, signed_by(&net, i, Prepare { view: 0, seq: 1, batch }));
        }
        assert!(sends(&net, &restarted.take_ready(), Kind::Commit));
        for i in [0, 2] {
            restarted.step(30, signed_by(&net, i, Commit { view: 0, seq: 1, batch }));
        }
        assert_eq!(restarted.last_executed(), 1);

        // A primary restarted after a crash proposes nothing in its view.
        let mut primary = Replica::restore(
            cfg,
            Arc::new(net.replicas[0].clone()),
            Arc::new(net.members.clone()),
            20,
            Vec::new(),
            true,
        )
        .unwrap();
        primary.step(30, Input::Request(request(&net, 2)));
        assert!(!sends(&net, &primary.take_ready(), Kind::PrePrepare));
        // Without the crash it would have.
        let mut fresh = replica(&net, 0);
        fresh.step(30, Input::Request(request(&net, 2)));
        assert!(sends(&net, &fresh.take_ready(), Kind::PrePrepare));
    }

    #[test]
    fn a_retransmitted_request_ordered_already_is_answered_while_a_slot_names_it_again() {
        let net = Net::new();
        let mut backup = replica(&net, 1);
        let req = request(&net, 1);
        let digest = req.msg.digest();
        let pre_prepare = |seq| PrePrepare { view: 0, seq, requests: vec![digest] };
        let batch = pre_prepare(1).batch_digest();
        let mut inputs = vec![Input::Request(req.clone()), signed_by(&net, 0, pre_prepare(1))];
        inputs.extend([2, 3].map(|i| signed_by(&net, i, Prepare { view: 0, seq: 1, batch })));
        inputs.extend([0, 2, 3].map(|i| signed_by(&net, i, Commit { view: 0, seq: 1, batch })));
        // The primary names it again in another slot (faulty, or a view change).
        inputs.push(signed_by(&net, 0, pre_prepare(2)));
        for input in inputs {
            backup.step(10, input);
            let _ = backup.take_ready();
        }
        assert_eq!(backup.executed, 1);
        assert_eq!(backup.assigned.get(&digest), Some(&2), "a slot names it again");
        // The gateway lost our first answer and sends the request again.
        backup.step(20, Input::Request(req));
        let answers = replies(&net, &backup.take_ready());
        assert_eq!(answers, vec![ReplyBody::Duplicate { job: JobId { seq: 1, index: 0 } }]);
    }

    #[test]
    fn the_primary_keeps_at_most_pipeline_max_batches_in_flight_without_spinning() {
        // Uncapped, each request goes out in a batch of its own at once.
        assert_eq!(proposals(u64::MAX, 10), (10, false));
        // Capped, the rest wait (for a batch to execute, not for a timer).
        assert_eq!(proposals(2, 10), (2, false));
    }
}
