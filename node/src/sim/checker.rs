//! The simulator's checkers: properties every schedule must keep, checked as
//! the simulation runs (safety) and at its end (liveness).

use std::collections::{BTreeMap, HashMap};

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
    by_delivery: HashMap<String, JobId>,
    checkpoints: HashMap<u64, (Digest, usize)>,
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
