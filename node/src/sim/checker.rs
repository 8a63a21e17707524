//! The simulator's checkers: properties every schedule must keep, checked as
//! the simulation runs (safety) and at its end (liveness).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use libp2p_identity::PeerId;

use crate::wire::{Digest, JobId};

/// A property a run broke, with enough to find it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub at_ms: u64,
    pub what: String,
}

#[derive(Default)]
pub struct Checker {
    pub violations: Vec<Violation>,
    /// seq → (batch digest, first replica that executed it)
    executed: HashMap<u64, (Digest, usize)>,
    /// Per replica: the last seq executed into its durable log.
    last: BTreeMap<usize, u64>,
    by_request: HashMap<(PeerId, u64), JobId>,
    by_job: HashMap<JobId, (PeerId, u64)>,
    by_delivery: HashMap<String, JobId>,
    checkpoints: HashMap<u64, (Digest, usize)>,
    /// 2f + 1: the size of a commit certificate.
    pub quorum: usize,
    /// Signers of COMMIT by (view, seq, batch), any replica (faulty ones too).
    commits: HashMap<(u64, u64, Digest), BTreeSet<usize>>,
    /// Commit certificates: seq → (view, batch) that 2f + 1 replicas committed.
    certified: BTreeMap<u64, Vec<(u64, Digest)>>,
    /// Per correct replica: seq → the highest (view, batch) it prepared.
    prepared: HashMap<usize, BTreeMap<u64, (u64, Digest)>>,
    /// NEW-VIEWs correct replicas entered: (view, checkpoint, seq → batch).
    new_views: Vec<(u64, u64, BTreeMap<u64, Digest>)>,
}

/// What a NEW-VIEW carries, as the checkers read it.
pub struct NewViewSummary {
    pub view: u64,
    /// The highest checkpoint among its VIEW-CHANGEs.
    pub checkpoint: u64,
    /// The batch it assigns to each slot above the checkpoint.
    pub slots: BTreeMap<u64, Digest>,
}

impl Checker {
    fn fail(&mut self, at_ms: u64, what: String) {
        self.violations.push(Violation { at_ms, what });
    }

    /// Agreement and in-order execution: a correct replica executes `seq`
    /// right after `seq - 1` (or a state transfer), and every correct replica
    /// executes the same batch at one seq.
    pub fn executed(&mut self, at_ms: u64, replica: usize, seq: u64, batch: Digest) {
        let last = self.last_executed(replica);
        // A restarted replica executes again what its log already holds: it
        // must be the same batch (checked below), not a gap.
        if seq > last {
            if seq != last + 1 {
                self.fail(at_ms, format!("replica {replica} executed seq {seq} after {last}"));
            }
            self.last.insert(replica, seq);
        }
        match self.executed.get(&seq) {
            Some((d, first)) if *d != batch => {
                let what =
                    format!("agreement: seq {seq} is {d:?} at replica {first} but {batch:?} at replica {replica}");
                self.fail(at_ms, what);
            }
            Some(_) => {}
            None => {
                self.executed.insert(seq, (batch, replica));
            }
        }
    }

    /// A state transfer moved `replica` to `seq` without executing the slots.
    pub fn skipped_to(&mut self, replica: usize, seq: u64) {
        let last = self.last.entry(replica).or_insert(0);
        *last = (*last).max(seq);
    }

    pub fn last_executed(&self, replica: usize) -> u64 {
        self.last.get(&replica).copied().unwrap_or(0)
    }

    /// At most once: a request (by gateway and number) or a delivery id
    /// becomes at most one job.
    pub fn job(&mut self, at_ms: u64, job: JobId, gateway: PeerId, number: u64, delivery: Option<&str>) {
        self.by_job.insert(job, (gateway, number));
        if let Some(prev) = self.by_request.insert((gateway, number), job) {
            if prev != job {
                self.fail(at_ms, format!("request {gateway}/{number} executed twice: jobs {prev} and {job}"));
            }
        }
        if let Some(d) = delivery {
            if let Some(prev) = self.by_delivery.insert(d.to_string(), job) {
                if prev != job {
                    self.fail(at_ms, format!("delivery {d} executed twice: jobs {prev} and {job}"));
                }
            }
        }
    }

    /// What a gateway was told (request `number` is job `job`, by f + 1
    /// replicas that executed it or 2f + 1 that prepared it) is what correct
    /// replicas ran: neither another job for the request nor, unless the
    /// request redelivers one, another request in that job.
    pub fn told(&mut self, at_ms: u64, gateway: PeerId, number: u64, delivery: Option<&str>, job: JobId) {
        if let Some(&ran) = self.by_request.get(&(gateway, number)) {
            if ran != job {
                self.fail(at_ms, format!("request {gateway}/{number}: the gateway was told job {job}, job {ran} ran"));
            }
        }
        if let Some(&(g, n)) = self.by_job.get(&job) {
            // A redelivery is told the job its delivery id ran as.
            let redelivered = delivery.is_some_and(|d| self.by_delivery.get(d) == Some(&job));
            if (g, n) != (gateway, number) && !redelivered {
                self.fail(
                    at_ms,
                    format!("request {gateway}/{number}: the gateway was told job {job}, which ran {g}/{n}"),
                );
            }
        }
    }

    /// Matching checkpoints: correct replicas certify one state per seq.
    pub fn checkpoint(&mut self, at_ms: u64, replica: usize, seq: u64, state: Digest) {
        match self.checkpoints.get(&seq) {
            Some((d, first)) if *d != state => {
                let what = format!("checkpoint {seq}: {d:?} at replica {first}, {state:?} at replica {replica}");
                self.fail(at_ms, what);
            }
            Some(_) => {}
            None => {
                self.checkpoints.insert(seq, (state, replica));
            }
        }
    }

    /// A COMMIT signed by `replica` (correct or not). A correct replica
    /// sends one only for a slot that prepared at it.
    pub fn commit(&mut self, at_ms: u64, replica: usize, correct: bool, view: u64, seq: u64, batch: Digest) {
        if correct {
            let p = self.prepared.entry(replica).or_default();
            if p.get(&seq).is_none_or(|(v, _)| *v < view) {
                p.insert(seq, (view, batch));
            }
        }
        let signers = self.commits.entry((view, seq, batch)).or_default();
        if !signers.insert(replica) || signers.len() != self.quorum {
            return;
        }
        self.certified.entry(seq).or_default().push((view, batch));
        let late: Vec<String> = self
            .new_views
            .iter()
            .filter_map(|(nv, checkpoint, slots)| Self::survives(view, seq, batch, *nv, *checkpoint, slots).err())
            .collect();
        for what in late {
            self.fail(at_ms, what);
        }
    }

    fn survives(
        view: u64,
        seq: u64,
        batch: Digest,
        nv: u64,
        checkpoint: u64,
        slots: &BTreeMap<u64, Digest>,
    ) -> Result<(), String> {
        if nv <= view || seq <= checkpoint || slots.get(&seq) == Some(&batch) {
            return Ok(());
        }
        Err(format!(
            "view change lost a committed batch: {batch:?} committed at seq {seq} in view {view}, \
             NEW-VIEW {nv} (checkpoint {checkpoint}) carries {:?} there",
            slots.get(&seq)
        ))
    }

    /// A correct replica signed VIEW-CHANGE for `view` from its stable
    /// checkpoint `checkpoint`, with certificates seq → (view, batch): every
    /// slot above the checkpoint that prepared here in an earlier view must be
    /// in it, at that view or a later one.
    pub fn view_change(
        &mut self,
        at_ms: u64,
        replica: usize,
        view: u64,
        checkpoint: u64,
        certs: &BTreeMap<u64, (u64, Digest)>,
    ) {
        let Some(prepared) = self.prepared.get(&replica) else { return };
        let mut lost = Vec::new();
        for (&seq, &(v, batch)) in prepared.range(checkpoint + 1..) {
            if v >= view {
                continue;
            }
            let kept = certs.get(&seq).is_some_and(|&(cv, cb)| cv > v || (cv == v && cb == batch));
            if !kept {
                lost.push(format!(
                    "replica {replica}'s VIEW-CHANGE to view {view} (checkpoint {checkpoint}) lost seq {seq}, \
                     prepared in view {v} as {batch:?}; it carries {:?}",
                    certs.get(&seq)
                ));
            }
        }
        for what in lost {
            self.fail(at_ms, what);
        }
    }

    /// A correct replica entered a view by this NEW-VIEW: every batch with a
    /// commit certificate of an earlier view above its checkpoint (prepared
    /// at f + 1 correct replicas, so at one in any 2f + 1 VIEW-CHANGEs) must
    /// be what it assigns to that slot.
    pub fn new_view(&mut self, at_ms: u64, nv: NewViewSummary) {
        let mut lost = Vec::new();
        for (&seq, certs) in self.certified.range(nv.checkpoint + 1..) {
            for &(view, batch) in certs {
                if let Err(what) = Self::survives(view, seq, batch, nv.view, nv.checkpoint, &nv.slots) {
                    lost.push(what);
                }
            }
        }
        for what in lost {
            self.fail(at_ms, what);
        }
        let known = self.new_views.iter().any(|(v, c, s)| *v == nv.view && *c == nv.checkpoint && *s == nv.slots);
        if !known {
            self.new_views.push((nv.view, nv.checkpoint, nv.slots));
        }
    }

    pub fn max_executed(&self) -> u64 {
        self.executed.keys().copied().max().unwrap_or(0)
    }

    pub fn jobs(&self) -> usize {
        self.by_request.len()
    }

    pub fn liveness(&mut self, at_ms: u64, what: String) {
        self.fail(at_ms, format!("liveness: {what}"));
    }

    pub fn other(&mut self, at_ms: u64, what: String) {
        self.fail(at_ms, what);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_told_another_job_than_the_one_that_ran_is_a_violation() {
        let gateway = PeerId::random();
        let (ran, other) = (JobId { seq: 3, index: 0 }, JobId { seq: 4, index: 0 });
        let mut c = Checker::default();
        c.job(10, ran, gateway, 7, Some("d-1"));
        c.told(20, gateway, 7, None, ran);
        c.told(20, gateway, 8, None, other);
        // Request 9 redelivers request 7's delivery: a duplicate of its job.
        c.told(20, gateway, 9, Some("d-1"), ran);
        assert!(c.violations.is_empty(), "the job that ran, one not run, or a redelivery's: fine");
        c.told(30, gateway, 7, None, other);
        assert_eq!(c.violations.len(), 1);
        assert!(c.violations[0].what.contains("job 4-0, job 3-0 ran"), "{}", c.violations[0].what);
        // Told a job that ran another request (a tentative answer that a
        // view change undid would show as this).
        c.told(40, gateway, 8, None, ran);
        assert_eq!(c.violations.len(), 2);
        assert!(c.violations[1].what.contains("which ran"), "{}", c.violations[1].what);
    }
}
