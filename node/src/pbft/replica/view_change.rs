//! View change: replacing a primary that stopped making progress.
//!
//! A backup holding a request that is not ordered within its timer moves to
//! view v + 1 and sends VIEW-CHANGE: its stable checkpoint with the 2f + 1
//! CHECKPOINTs proving it, and a prepared certificate (the pre-prepare and
//! 2f matching prepares) for every slot above it that prepared here. The new
//! primary collects 2f + 1 of them and sends NEW-VIEW: those VIEW-CHANGEs and,
//! for every slot between the highest checkpoint and the highest prepared
//! slot, the pre-prepare of the highest-view certificate or a null request.
//! Every backup recomputes that set from the VIEW-CHANGEs and accepts the
//! NEW-VIEW only if it matches. A request that prepared at a correct replica
//! thus survives into the new view, so no two correct replicas execute
//! different batches at one seq.
//!
//! The timer doubles with every view that fails; a replica that sees f + 1
//! others ask for higher views joins the smallest of them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::Replica;
use crate::pbft::io::{Message, Millis, Outbound, Target};
use crate::pbft::state::ReplicatedState;
use crate::wire::{
    Checkpoint, Commit, Digest, NewView, PrePrepare, Prepare, PreparedProof, Signed, SignedBytes, ViewChange,
    WireMessage,
};

/// A prepared certificate this replica holds: it survives view changes.
#[derive(Clone, Debug)]
pub(super) struct PreparedCert {
    pub pre_prepare: Signed<PrePrepare>,
    pub prepares: Vec<Signed<Prepare>>,
}

/// A VIEW-CHANGE whose every nested signature and claim was checked.
#[derive(Clone, Debug)]
pub(super) struct CheckedViewChange {
    pub signed: Signed<ViewChange>,
    pub checkpoint_seq: u64,
    pub checkpoint_state: Digest,
    pub checkpoint_proof: Vec<Signed<Checkpoint>>,
    /// seq → (view of the certificate, its pre-prepare)
    pub prepared: BTreeMap<u64, (u64, Signed<PrePrepare>)>,
}

/// View-change bookkeeping of one replica.
#[derive(Debug, Default)]
pub(super) struct ViewChangeState {
    /// False between sending VIEW-CHANGE for `view` and accepting its NEW-VIEW.
    pub in_view_change: bool,
    /// When the running timer fires (request timer or view-change timer).
    pub deadline: Option<Millis>,
    /// Executed seq when the request timer was last (re)started.
    pub progress_mark: u64,
    /// Executed seq when a peer's progress in our view last deferred the
    /// request timer: a lag that help did not shrink within a whole timeout
    /// defers it no more.
    pub lag_mark: Option<u64>,
    /// Views that failed in a row; the timeout doubles with each.
    pub failed_views: u32,
    /// Prepared certificates by seq (the highest view wins).
    pub prepared: BTreeMap<u64, PreparedCert>,
    /// The latest checked VIEW-CHANGE of each replica (one per replica bounds memory).
    pub view_changes: BTreeMap<usize, CheckedViewChange>,
    /// The NEW-VIEW this replica accepted (or sent) for its current view.
    pub new_view: Option<Signed<NewView>>,
    /// Commit certificates of views below ours, by seq (see `learn_*`).
    pub learned: BTreeMap<u64, Learned>,
}

/// A slot of an older view this replica may still learn the outcome of.
#[derive(Debug)]
pub(super) struct Learned {
    /// Candidate pre-prepares by (view, batch): an equivocating primary signs
    /// several, and only commits tell which one won. At most n are kept.
    pub pre_prepares: BTreeMap<(u64, Digest), Signed<PrePrepare>>,
    pub commits: BTreeMap<usize, Signed<Commit>>,
}

fn open_all<T: WireMessage>(r: &Replica, bytes: &[SignedBytes]) -> Result<Vec<Signed<T>>, &'static str> {
    bytes
        .iter()
        .map(|b| {
            Signed::<T>::open(&b.0, &r.cfg.network, r.verifier.as_ref()).map_err(|_| "a nested message does not open")
        })
        .collect()
}

fn to_bytes<T>(signed: &[Signed<T>]) -> Vec<SignedBytes>
where
    T: WireMessage,
{
    signed.iter().map(|s| SignedBytes(s.bytes().to_vec())).collect()
}

impl Replica {
    fn view_timeout(&self) -> Millis {
        self.cfg.view_change_timeout_ms << self.vc.failed_views.min(self.cfg.view_change_doublings_max)
    }

    /// Whether some request waits for ordering here.
    fn has_pending_work(&self) -> bool {
        !self.queued.is_empty() || !self.assigned.is_empty()
    }

    /// Runs the timers; called after every step.
    pub(super) fn check_view_timer(&mut self) {
        if self.restoring {
            return;
        }
        if self.vc.in_view_change {
            // As in PBFT, the timer of a view change runs only once 2f + 1
            // replicas asked for this view or a later one: a replica that got
            // ahead alone waits for the others instead of running further
            // ahead, and one that leaves a view knows 2f + 1 reached it, so the
            // timers of those left behind run too.
            let Some(deadline) = self.vc.deadline else {
                let view = self.view;
                let asked = self.vc.view_changes.values().filter(|c| c.signed.msg.view >= view).count();
                if asked >= self.q.quorum() {
                    self.vc.deadline = Some(self.now + self.view_timeout());
                }
                return;
            };
            if self.now >= deadline {
                // The new primary did not deliver: try the next one.
                self.start_view_change(self.view + 1);
            }
            return;
        }
        if self.executed > self.vc.progress_mark {
            // Ordering progresses: the primary is doing its job.
            self.vc.progress_mark = self.executed;
            self.vc.failed_views = 0;
            self.vc.deadline = None;
        }
        if !self.has_pending_work() {
            self.vc.deadline = None;
            return;
        }
        match self.vc.deadline {
            None => self.vc.deadline = Some(self.now + self.view_timeout()),
            Some(d) if self.now >= d => self.start_view_change(self.view + 1),
            Some(_) => {}
        }
    }

    /// Evidence that the current view progresses elsewhere (a peer in it
    /// executed more): we are lagging, not the primary failing.
    pub(super) fn view_progresses(&mut self) {
        if !self.vc.in_view_change && self.vc.deadline.is_some() && self.vc.lag_mark != Some(self.executed) {
            self.vc.lag_mark = Some(self.executed);
            self.vc.deadline = Some(self.now + self.view_timeout());
        }
    }

    pub(super) fn view_change_deadline(&self) -> Option<Millis> {
        self.vc.deadline
    }

    /// Records a slot that prepared in the current view, unless its
    /// certificate of this view is recorded already.
    pub(super) fn record_prepared(&mut self, seq: u64) {
        let slot = &self.slots[&seq];
        let Some(pp) = &slot.pre_prepare else { return };
        if self.vc.prepared.get(&seq).is_some_and(|c| c.pre_prepare.msg.view >= pp.msg.view) {
            return;
        }
        let prepares: Vec<Signed<Prepare>> =
            slot.prepares.values().filter(|p| p.msg.batch == slot.batch && p.msg.view == slot.view).cloned().collect();
        self.vc.prepared.insert(seq, PreparedCert { pre_prepare: pp.clone(), prepares });
    }

    /// Drops certificates at or below a stable checkpoint.
    pub(super) fn gc_prepared(&mut self, seq: u64) {
        self.vc.prepared = self.vc.prepared.split_off(&(seq + 1));
        self.vc.learned = self.vc.learned.split_off(&(seq + 1));
    }

    // Learning a slot's outcome without voting in it: a pre-prepare with
    // 2f + 1 matching commits of its view proves the batch committed (f + 1
    // correct replicas prepared it, so no other batch can commit there).
    // Two replicas need this: one that moved to a higher view alone (it timed
    // out while cut off) and cannot go back, since its VIEW-CHANGE promised
    // to take no part in lower views; and one that accepted the losing half of
    // an equivocating primary's pre-prepares.

    pub(super) fn learn_pre_prepare(&mut self, from: usize, pp: Signed<PrePrepare>) {
        let (view, seq) = (pp.msg.view, pp.msg.seq);
        if from != self.q.primary(view) || !self.in_window(seq) || seq <= self.executed {
            return;
        }
        let n = self.q.n;
        let l =
            self.vc.learned.entry(seq).or_insert(Learned { pre_prepares: BTreeMap::new(), commits: BTreeMap::new() });
        let key = (view, pp.msg.batch_digest());
        if l.pre_prepares.len() >= n && !l.pre_prepares.contains_key(&key) {
            // Full: make room only for a batch some replica committed to.
            let supported = |k: &(u64, Digest)| l.commits.values().any(|c| (c.msg.view, c.msg.batch) == *k);
            if !supported(&key) {
                return;
            }
            let Some(victim) = l.pre_prepares.keys().find(|k| !supported(k)).copied() else { return };
            l.pre_prepares.remove(&victim);
        }
        l.pre_prepares.insert(key, pp);
        self.check_learned(seq);
    }

    pub(super) fn learn_commit(&mut self, from: usize, c: Signed<Commit>) {
        let seq = c.msg.seq;
        if !self.in_window(seq) || seq <= self.executed {
            return;
        }
        let l =
            self.vc.learned.entry(seq).or_insert(Learned { pre_prepares: BTreeMap::new(), commits: BTreeMap::new() });
        if l.commits.get(&from).is_none_or(|old| old.msg.view < c.msg.view) {
            l.commits.insert(from, c);
        }
        self.check_learned(seq);
    }

    fn check_learned(&mut self, seq: u64) {
        let Some(l) = self.vc.learned.get(&seq) else { return };
        // Commits may sit in the learned set or in the slot itself (those that
        // came before the losing pre-prepare did).
        let in_slot = self.slots.get(&seq).map(|s| &s.commits);
        let all: Vec<(&usize, &Signed<Commit>)> = l.commits.iter().chain(in_slot.into_iter().flatten()).collect();
        // The slot's own pre-prepare is a candidate too (our own, as primary,
        // never comes back to us over the network).
        let own = self
            .slots
            .get(&seq)
            .and_then(|s| s.pre_prepare.as_ref())
            .map(|pp| ((pp.msg.view, pp.msg.batch_digest()), pp));
        let winner = l.pre_prepares.iter().map(|(k, pp)| (*k, pp)).chain(own).find_map(|((view, batch), pp)| {
            let matching: BTreeMap<usize, Signed<Commit>> = all
                .iter()
                .filter(|(_, c)| c.msg.view == view && c.msg.batch == batch)
                .map(|(i, c)| (**i, (*c).clone()))
                .collect();
            (matching.len() >= self.q.quorum()).then(|| (pp.clone(), batch, matching))
        });
        let Some((pp, batch, matching)) = winner else { return };
        if self.slots.get(&seq).is_some_and(|s| s.committed) {
            return;
        }
        // The slot holds this batch in this view, or is being ordered again
        // in a later view with the same batch (as NEW-VIEW guarantees): it is
        // committed, and this replica keeps its votes and prepared
        // certificate, and keeps voting in the current view, where others
        // may still need its votes.
        if let Some(slot) = self.slots.get_mut(&seq) {
            if slot.pre_prepare.as_ref().is_some_and(|p| p.msg.view >= pp.msg.view && slot.batch == batch) {
                if slot.view == pp.msg.view {
                    for (i, c) in matching {
                        slot.commits.entry(i).or_insert(c);
                    }
                }
                slot.committed = true;
                self.vc.learned.remove(&seq);
                self.try_execute();
                return;
            }
        }
        let digests = pp.msg.requests.clone();
        // A different pre-prepare we held for this slot lost: its requests
        // that the winner does not carry wait for ordering again.
        if let Some(old) = self.slots.get(&seq).and_then(|s| s.pre_prepare.as_ref()) {
            let lost: Vec<Digest> = old.msg.requests.iter().filter(|d| !digests.contains(d)).copied().collect();
            for d in lost {
                self.assigned.remove(&d);
                if self.requests.contains_key(&d) && !self.queued.contains(&d) {
                    self.queue(d);
                }
            }
        }
        for d in &digests {
            self.queued.remove(d);
            self.assigned.insert(*d, seq);
        }
        let slot = super::Slot {
            view: pp.msg.view,
            batch,
            pre_prepare: Some(pp),
            prepares: BTreeMap::new(),
            commits: matching,
            sent_prepare: true,
            sent_commit: true,
            committed: true,
            answered_tentatively: true,
        };
        self.slots.insert(seq, slot);
        self.vc.learned.remove(&seq);
        let primary = self.q.primary(self.view);
        self.want(digests, primary);
        self.try_execute();
    }

    /// Moves to `view` and asks for it with a VIEW-CHANGE.
    pub(super) fn start_view_change(&mut self, view: u64) {
        if view <= self.view && self.vc.in_view_change {
            return;
        }
        if view < self.view {
            return;
        }
        self.view = view;
        self.vc.in_view_change = true;
        self.vc.failed_views += 1;
        self.vc.deadline = None;
        self.vc.new_view = None;
        // A VIEW-CHANGE we already signed for this view (before a restart) is
        // sent again, never a second, different one.
        if let Some(own) = self.vc.view_changes.get(&self.me).filter(|c| c.signed.msg.view == view) {
            let bytes = own.signed.shared_bytes();
            self.ready.messages.push(Outbound::Signed { to: Target::All, bytes });
            return;
        }
        let prepared: Vec<PreparedProof> = self
            .vc
            .prepared
            .range(self.low + 1..)
            .map(|(_, c)| PreparedProof {
                pre_prepare: SignedBytes(c.pre_prepare.bytes().to_vec()),
                prepares: to_bytes(&c.prepares[..self.q.prepares().min(c.prepares.len())]),
            })
            .collect();
        let msg = ViewChange {
            view,
            checkpoint_seq: self.low,
            checkpoint_state: self.stable_digest(),
            checkpoint_proof: to_bytes(&self.stable_proof),
            prepared,
        };
        let signed = self.broadcast(msg);
        self.on_view_change(self.me, signed);
    }

    fn stable_digest(&self) -> Digest {
        self.stable_proof.first().map(|c| c.msg.state).unwrap_or_else(|| ReplicatedState::default().digest())
    }

    /// Checks a VIEW-CHANGE's nested proofs against the membership.
    fn check_view_change(&self, signed: Signed<ViewChange>) -> Result<CheckedViewChange, &'static str> {
        let vc = &signed.msg;
        let proof: Vec<Signed<Checkpoint>> = open_all(self, &vc.checkpoint_proof)?;
        if vc.checkpoint_seq > 0 {
            let signers: BTreeSet<usize> = proof
                .iter()
                .filter(|c| c.msg.seq == vc.checkpoint_seq && c.msg.state == vc.checkpoint_state)
                .filter_map(|c| self.index.get(&c.signer).copied())
                .collect();
            if signers.len() < self.q.quorum() {
                return Err("checkpoint proof lacks 2f + 1 matching CHECKPOINTs");
            }
        } else if vc.checkpoint_state != ReplicatedState::default().digest() {
            return Err("checkpoint 0 is not the initial state");
        }
        let mut prepared = BTreeMap::new();
        for p in &vc.prepared {
            let pp = Signed::<PrePrepare>::open(&p.pre_prepare.0, &self.cfg.network, self.verifier.as_ref())
                .map_err(|_| "a prepared pre-prepare does not open")?;
            let (v, seq) = (pp.msg.view, pp.msg.seq);
            if v >= vc.view || self.index.get(&pp.signer) != Some(&self.q.primary(v)) {
                return Err("a prepared pre-prepare is not from its view's primary");
            }
            if seq <= vc.checkpoint_seq || seq > vc.checkpoint_seq + self.cfg.window {
                return Err("a prepared certificate lies outside the watermarks");
            }
            let batch = pp.msg.batch_digest();
            let prepares: Vec<Signed<Prepare>> = open_all(self, &p.prepares)?;
            let signers: BTreeSet<usize> = prepares
                .iter()
                .filter(|x| x.msg.view == v && x.msg.seq == seq && x.msg.batch == batch)
                .filter_map(|x| self.index.get(&x.signer).copied())
                .filter(|&i| i != self.q.primary(v))
                .collect();
            if signers.len() < self.q.prepares() {
                return Err("a prepared certificate lacks 2f matching prepares");
            }
            if prepared.insert(seq, (v, pp)).is_some() {
                return Err("two certificates for one slot");
            }
        }
        Ok(CheckedViewChange {
            checkpoint_seq: vc.checkpoint_seq,
            checkpoint_state: vc.checkpoint_state,
            checkpoint_proof: proof,
            prepared,
            signed,
        })
    }

    pub(super) fn on_view_change(&mut self, from: usize, signed: Signed<ViewChange>) {
        let view = signed.msg.view;
        if from == self.me && view > self.view {
            // Replayed from our store: we had moved to this view before a restart.
            self.view = view;
            self.vc.in_view_change = true;
            self.vc.new_view = None;
        }
        if view < self.view || (view == self.view && !self.vc.in_view_change) {
            // For a view we are in already: a peer that missed the NEW-VIEW.
            if let Some(nv) = self.vc.new_view.as_ref().filter(|_| view == self.view && from != self.me) {
                let bytes = nv.shared_bytes();
                self.ready.messages.push(Outbound::Signed { to: Target::Replica(from), bytes });
            }
            return;
        }
        if let Some(old) = self.vc.view_changes.get(&from) {
            if old.signed.msg.view > view {
                return;
            }
            if old.signed.msg.view == view {
                let (a, b) = (old.signed.shared_bytes(), signed.shared_bytes());
                self.note_equivocation(from, a, b);
                return;
            }
        }
        let Ok(checked) = self.check_view_change(signed) else { return };
        let bytes = checked.signed.shared_bytes();
        self.vc.view_changes.insert(from, checked);
        if from != self.me {
            self.persist(bytes);
        }
        self.maybe_join_view_change();
        self.maybe_send_new_view();
    }

    /// f + 1 replicas asking for views above ours include a correct one: join
    /// the smallest such view.
    pub(super) fn maybe_join_view_change(&mut self) {
        // While replaying our store, our own VIEW-CHANGE may still be ahead:
        // deciding now could sign a second, different one.
        if self.restoring {
            return;
        }
        let current = self.view;
        let mut higher: Vec<u64> = self
            .vc
            .view_changes
            .iter()
            .filter(|(i, c)| **i != self.me && (c.signed.msg.view > current))
            .map(|(_, c)| c.signed.msg.view)
            .collect();
        if higher.len() >= self.q.weak() {
            higher.sort_unstable();
            // The smallest view that f + 1 of them reach.
            let target = higher[higher.len() - self.q.weak()];
            self.start_view_change(target);
        }
    }

    /// The view changes for `view` this replica holds, first 2f + 1 by index.
    fn quorum_for(&self, view: u64) -> Option<Vec<CheckedViewChange>> {
        let set: Vec<CheckedViewChange> = self
            .vc
            .view_changes
            .values()
            .filter(|c| c.signed.msg.view == view)
            .take(self.q.quorum())
            .cloned()
            .collect();
        (set.len() == self.q.quorum()).then_some(set)
    }

    /// The new primary announces its view once 2f + 1 VIEW-CHANGEs are in.
    pub(super) fn maybe_send_new_view(&mut self) {
        let view = self.view;
        if self.restoring {
            return;
        }
        if !self.vc.in_view_change || self.q.primary(view) != self.me {
            return;
        }
        if self.vc.view_changes.get(&self.me).is_none_or(|c| c.signed.msg.view != view) {
            return;
        }
        let Some(set) = self.quorum_for(view) else { return };
        let forget = self.cfg.unsafe_forget_prepared_in_new_view;
        let pre_prepares: Vec<Signed<PrePrepare>> = new_view_slots(&set, self.cfg.window, forget)
            .into_iter()
            .map(|(seq, requests)| {
                Signed::seal(PrePrepare { view, seq, requests }, &self.cfg.network, self.signer.as_ref())
            })
            .collect();
        let nv = NewView {
            view,
            view_changes: set.iter().map(|c| SignedBytes(c.signed.bytes().to_vec())).collect(),
            pre_prepares: to_bytes(&pre_prepares),
        };
        let signed = self.broadcast(nv);
        self.enter_view(signed, set, pre_prepares);
    }

    pub(super) fn on_new_view(&mut self, from: usize, signed: Signed<NewView>) {
        let view = signed.msg.view;
        if from != self.q.primary(view) || view < self.view || (view == self.view && !self.vc.in_view_change) {
            return;
        }
        let Ok(set) = self.check_new_view(&signed) else { return };
        let Ok(pre_prepares) = open_all::<PrePrepare>(self, &signed.msg.pre_prepares) else { return };
        self.persist(signed.shared_bytes());
        if view > self.view {
            // We never asked for this view, but 2f + 1 did: follow them.
            self.view = view;
        }
        self.enter_view(signed, set, pre_prepares);
    }

    /// A NEW-VIEW is valid when its 2f + 1 VIEW-CHANGEs check out and its
    /// pre-prepares are exactly what they determine.
    fn check_new_view(&self, nv: &Signed<NewView>) -> Result<Vec<CheckedViewChange>, &'static str> {
        let view = nv.msg.view;
        let mut set = Vec::new();
        let mut signers = BTreeSet::new();
        for b in &nv.msg.view_changes {
            let vc = Signed::<ViewChange>::open(&b.0, &self.cfg.network, self.verifier.as_ref())
                .map_err(|_| "a view change does not open")?;
            let from = *self.index.get(&vc.signer).ok_or("a view change from a non-replica")?;
            if vc.msg.view != view || !signers.insert(from) {
                return Err("view changes for another view, or one replica twice");
            }
            set.push(self.check_view_change(vc)?);
        }
        if set.len() < self.q.quorum() {
            return Err("fewer than 2f + 1 view changes");
        }
        let expected = new_view_slots(&set, self.cfg.window, self.cfg.unsafe_forget_prepared_in_new_view);
        let got = open_all::<PrePrepare>(self, &nv.msg.pre_prepares)?;
        let primary = self.q.primary(view);
        let matches = got.len() == expected.len()
            && got.iter().zip(&expected).all(|(pp, (seq, requests))| {
                pp.msg.view == view
                    && pp.msg.seq == *seq
                    && pp.msg.requests == *requests
                    && self.index.get(&pp.signer) == Some(&primary)
            });
        if !matches {
            return Err("the pre-prepares differ from what the view changes determine");
        }
        Ok(set)
    }

    /// Starts normal operation in the current view from a NEW-VIEW.
    fn enter_view(&mut self, nv: Signed<NewView>, set: Vec<CheckedViewChange>, pre_prepares: Vec<Signed<PrePrepare>>) {
        let view = nv.msg.view;
        self.vc.in_view_change = false;
        self.vc.deadline = None;
        self.vc.progress_mark = self.executed;
        self.vc.new_view = Some(nv);
        // The highest checkpoint among the view changes becomes stable here
        // if our own state matches; if we are behind it, ask for help.
        if let Some(best) = set.iter().max_by_key(|c| c.checkpoint_seq) {
            let (seq, digest, proof) = (best.checkpoint_seq, best.checkpoint_state, best.checkpoint_proof.clone());
            if seq > self.low {
                match self.own_checkpoints.get(&seq) {
                    Some((own, state, _)) if *own == digest => {
                        let state = state.clone();
                        self.make_stable(seq, proof, state);
                    }
                    _ if self.executed < seq => {
                        for c in &proof {
                            if let Some(&i) = self.index.get(&c.signer) {
                                self.ask_for_help(i);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        // Every slot above the checkpoint starts over in the new view, executed
        // or not: a replica that missed the commits of an executed slot can
        // only commit it again in this view. Requests of slots that neither
        // executed nor reappear below wait for ordering again.
        let stale: Vec<u64> = self.slots.range(self.low + 1..).map(|(s, _)| *s).collect();
        for seq in stale {
            if let Some(slot) = self.slots.remove(&seq) {
                if let Some(pp) = slot.pre_prepare.filter(|_| seq > self.executed) {
                    for d in pp.msg.requests {
                        self.assigned.remove(&d);
                        if self.requests.contains_key(&d) && !self.queued.contains(&d) {
                            self.queue(d);
                        }
                    }
                }
            }
            self.waiting.remove(&seq);
        }
        let primary = self.q.primary(view);
        let max_seq = pre_prepares.iter().map(|p| p.msg.seq).max().unwrap_or(0);
        for pp in pre_prepares {
            self.on_message(Message::PrePrepare(pp));
        }
        if primary == self.me {
            self.next_seq = self.next_seq.max(max_seq + 1).max(self.executed + 1).max(self.low + 1);
        }
        self.try_execute();
    }

    /// For retransmission: our VIEW-CHANGE while in view change, else the
    /// NEW-VIEW of our view.
    pub(super) fn view_messages(&self) -> Vec<Arc<[u8]>> {
        if self.vc.in_view_change {
            self.vc
                .view_changes
                .get(&self.me)
                .filter(|c| c.signed.msg.view == self.view)
                .map(|c| vec![c.signed.shared_bytes()])
                .unwrap_or_default()
        } else {
            self.vc.new_view.iter().map(|nv| nv.shared_bytes()).collect()
        }
    }
}

/// The pre-prepares a NEW-VIEW must carry, as (seq, requests): for every
/// slot from the highest checkpoint up to the highest prepared slot, the
/// batch of the highest-view certificate, or a null request.
fn new_view_slots(set: &[CheckedViewChange], window: u64, forget_prepared: bool) -> Vec<(u64, Vec<Digest>)> {
    let min_s = set.iter().map(|c| c.checkpoint_seq).max().unwrap_or(0);
    let max_s = set.iter().flat_map(|c| c.prepared.keys().copied()).max().unwrap_or(min_s).max(min_s);
    let max_s = max_s.min(min_s + window);
    (min_s + 1..=max_s)
        .map(|seq| {
            let best =
                set.iter().filter_map(|c| c.prepared.get(&seq)).max_by_key(|(v, _)| *v).filter(|_| !forget_prepared);
            (seq, best.map(|(_, pp)| pp.msg.requests.clone()).unwrap_or_default())
        })
        .collect()
}
