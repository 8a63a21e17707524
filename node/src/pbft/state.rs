//! The replicated state: what every correct replica holds identically after
//! executing the same sequence of batches. Checkpoints are digests of it and
//! state transfer ships it, so it stays small and bounded: a de-duplication
//! window per gateway, the most recent delivery ids, and a hash chain over the
//! job log (the jobs themselves live in the driver's store).

use std::collections::BTreeMap;

use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};

use crate::wire::{self, Digest, JobId, Rejection, ReplyBody, Request};

/// Request numbers a gateway may have outstanding, and how far back replays
/// are recognised as duplicates rather than rejected as stale.
pub const CLIENT_WINDOW: u64 = 4096;
/// Delivery ids remembered (the oldest are forgotten first).
pub const DELIVERIES_MAX: usize = 65_536;

/// One gateway's de-duplication window: numbers ≤ `floor` are stale; above it,
/// `done` names the ones already ordered, with the digest of the request
/// each number was ordered for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientWindow {
    pub floor: u64,
    pub done: BTreeMap<u64, (JobId, Digest)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicatedState {
    /// The last sequence number executed into this state.
    pub seq: u64,
    /// Jobs ordered so far.
    pub jobs: u64,
    /// Hash chain over the job log: `H(head, job id, request digest)`.
    pub log_head: Digest,
    pub clients: BTreeMap<PeerId, ClientWindow>,
    pub deliveries: BTreeMap<String, JobId>,
    /// The same delivery ids by job, to forget the oldest first.
    pub deliveries_by_job: BTreeMap<JobId, String>,
}

impl ReplicatedState {
    /// What ordering `req` (whose digest is `digest`) would answer now,
    /// without changing anything.
    pub fn classify(&self, req: &Request, digest: &Digest) -> Option<ReplyBody> {
        if let Some(job) = req.delivery.as_ref().and_then(|d| self.deliveries.get(d)) {
            return Some(ReplyBody::Duplicate { job: *job });
        }
        let w = self.clients.get(&req.gateway)?;
        if let Some((job, ordered)) = w.done.get(&req.number) {
            // The same number for another request: a gateway that lost its
            // counter. Attaching it to the old job would hide that.
            if ordered != digest {
                return Some(ReplyBody::Rejected { reason: Rejection::Conflict });
            }
            return Some(ReplyBody::Duplicate { job: *job });
        }
        if req.number <= w.floor {
            return Some(ReplyBody::Rejected { reason: Rejection::Stale });
        }
        if req.number > w.floor + 2 * CLIENT_WINDOW {
            return Some(ReplyBody::Rejected { reason: Rejection::TooFarAhead });
        }
        None
    }

    /// Orders `req` as job `job` unless it is a duplicate or out of window;
    /// returns the reply every correct replica gives.
    pub fn apply(&mut self, job: JobId, req: &Request, digest: &Digest) -> ReplyBody {
        if let Some(r) = self.classify(req, digest) {
            return r;
        }
        let w = self.clients.entry(req.gateway).or_default();
        w.done.insert(req.number, (job, *digest));
        // Slide the window: keep the last CLIENT_WINDOW numbers below the highest.
        let top = *w.done.keys().next_back().expect("just inserted");
        let floor = top.saturating_sub(CLIENT_WINDOW);
        if floor > w.floor {
            w.floor = floor;
            w.done = w.done.split_off(&(floor + 1));
        }
        if let Some(d) = &req.delivery {
            self.deliveries.insert(d.clone(), job);
            self.deliveries_by_job.insert(job, d.clone());
            while self.deliveries.len() > DELIVERIES_MAX {
                let (_, old) = self.deliveries_by_job.pop_first().expect("non-empty");
                self.deliveries.remove(&old);
            }
        }
        self.jobs += 1;
        let seq = job.seq.to_be_bytes();
        let index = job.index.to_be_bytes();
        self.log_head = Digest::of_parts(b"pbft-ci/job-log", &[&self.log_head.0, &seq, &index, &digest.0]);
        ReplyBody::Accepted { job }
    }

    /// What executing `batch` at `seq` would answer for each of its
    /// requests (request, digest), changing nothing: the answers of
    /// tentative execution. Applies the batch to a scratch state holding
    /// only what it reads (its gateways' windows, its delivery ids), or to
    /// a full copy when executing it would forget old delivery ids, which
    /// the batch might name again.
    pub fn preview(&self, seq: u64, batch: &[(&Request, Digest)]) -> Vec<ReplyBody> {
        let mut scratch = if self.deliveries.len() + batch.len() > DELIVERIES_MAX {
            self.clone()
        } else {
            let mut s = ReplicatedState::default();
            for (req, _) in batch {
                if let Some(w) = self.clients.get(&req.gateway) {
                    s.clients.entry(req.gateway).or_insert_with(|| w.clone());
                }
                if let Some((d, job)) = req.delivery.as_ref().and_then(|d| self.deliveries.get_key_value(d)) {
                    s.deliveries.insert(d.clone(), *job);
                    s.deliveries_by_job.insert(*job, d.clone());
                }
            }
            s
        };
        batch
            .iter()
            .enumerate()
            .map(|(i, (req, digest))| scratch.apply(JobId { seq, index: i as u32 }, req, digest))
            .collect()
    }

    pub fn encode(&self) -> Vec<u8> {
        wire::encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<ReplicatedState, wire::DecodeError> {
        wire::decode(bytes, STATE_BYTES_MAX)
    }

    /// The checkpoint digest: over the canonical encoding (maps are ordered).
    pub fn digest(&self) -> Digest {
        Digest::of_parts(b"pbft-ci/state", &[&self.encode()])
    }
}

/// Bound on an encoded state (gateways × window + delivery ids).
pub const STATE_BYTES_MAX: usize = 64 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Operation;

    fn req(gw: PeerId, number: u64, delivery: Option<&str>) -> Request {
        Request {
            gateway: gw,
            number,
            delivery: delivery.map(str::to_string),
            op: Operation::Run { repo: "r".into(), git_ref: "master".into(), commit: None },
        }
    }

    #[test]
    fn out_of_order_numbers_are_accepted_once_each() {
        let gw = PeerId::random();
        let mut s = ReplicatedState::default();
        for (i, n) in [3u64, 1, 2].into_iter().enumerate() {
            let r = req(gw, n, None);
            let job = JobId { seq: 1, index: i as u32 };
            assert_eq!(s.apply(job, &r, &r.digest()), ReplyBody::Accepted { job });
        }
        let again = req(gw, 1, None);
        assert_eq!(
            s.apply(JobId { seq: 2, index: 0 }, &again, &again.digest()),
            ReplyBody::Duplicate { job: JobId { seq: 1, index: 1 } }
        );
        assert_eq!(s.jobs, 3);
    }

    #[test]
    fn a_redelivery_through_another_gateway_is_a_duplicate() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut s = ReplicatedState::default();
        let first = req(a, 1, Some("d-1"));
        let job = JobId { seq: 1, index: 0 };
        s.apply(job, &first, &first.digest());
        let second = req(b, 7, Some("d-1"));
        assert_eq!(s.apply(JobId { seq: 2, index: 0 }, &second, &second.digest()), ReplyBody::Duplicate { job });
    }

    #[test]
    fn a_number_reused_for_another_request_is_a_conflict_and_changes_nothing() {
        let gw = PeerId::random();
        let mut s = ReplicatedState::default();
        let first = req(gw, 1, None);
        s.apply(JobId { seq: 1, index: 0 }, &first, &first.digest());
        let mut other = req(gw, 1, None);
        other.op = Operation::Run { repo: "r".into(), git_ref: "feature".into(), commit: None };
        let before = s.digest();
        let body = s.apply(JobId { seq: 2, index: 0 }, &other, &other.digest());
        assert_eq!(body, ReplyBody::Rejected { reason: Rejection::Conflict });
        assert_eq!(s.digest(), before);
    }

    #[test]
    fn numbers_below_the_window_are_stale_and_far_ahead_refused() {
        let gw = PeerId::random();
        let mut s = ReplicatedState::default();
        let top = req(gw, CLIENT_WINDOW + 10, None);
        s.apply(JobId { seq: 1, index: 0 }, &top, &top.digest());
        let old = req(gw, 5, None);
        assert_eq!(s.classify(&old, &old.digest()), Some(ReplyBody::Rejected { reason: Rejection::Stale }));
        let far = req(gw, 10 * CLIENT_WINDOW, None);
        assert_eq!(s.classify(&far, &far.digest()), Some(ReplyBody::Rejected { reason: Rejection::TooFarAhead }));
        let state_before = s.digest();
        assert!(matches!(s.apply(JobId { seq: 2, index: 0 }, &old, &old.digest()), ReplyBody::Rejected { .. }));
        assert_eq!(s.digest(), state_before, "a rejected request changes nothing");
    }

    /// Tentative execution's answers are the ones executing gives, whatever
    /// the batch repeats of itself or of the state (numbers, delivery ids,
    /// a window that slides within the batch, delivery ids forgotten).
    #[test]
    fn a_preview_answers_what_applying_answers_and_changes_nothing() {
        let gateways = [PeerId::random(), PeerId::random()];
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut s = ReplicatedState::default();
        for seq in 1..=300u64 {
            let batch: Vec<Request> = (0..1 + next(6))
                .map(|_| {
                    let gw = gateways[next(2) as usize];
                    // Mostly nearby numbers, now and then one far enough to slide the window.
                    let number = if next(10) == 0 { seq * 40 + next(3 * CLIENT_WINDOW) } else { seq * 4 + next(8) };
                    let delivery = (next(3) == 0).then(|| format!("d-{}", next(60)));
                    let mut r = req(gw, number, delivery.as_deref());
                    if next(8) == 0 {
                        r.op = Operation::Run { repo: "r".into(), git_ref: "other".into(), commit: None };
                    }
                    r
                })
                .collect();
            let pairs: Vec<(&Request, Digest)> = batch.iter().map(|r| (r, r.digest())).collect();
            let before = s.clone();
            let preview = s.preview(seq, &pairs);
            assert_eq!(s, before, "a preview changes nothing");
            let applied: Vec<ReplyBody> =
                pairs.iter().enumerate().map(|(i, (r, d))| s.apply(JobId { seq, index: i as u32 }, r, d)).collect();
            assert_eq!(preview, applied, "seq {seq}");
        }

        // With the delivery ids full, executing forgets the oldest: a batch
        // that names one it forgets on the way sees it as new.
        let mut s = ReplicatedState::default();
        for i in 0..DELIVERIES_MAX as u32 {
            let d = format!("x-{i}");
            s.deliveries.insert(d.clone(), JobId { seq: 1, index: i });
            s.deliveries_by_job.insert(JobId { seq: 1, index: i }, d);
        }
        let fresh = req(gateways[0], 1, Some("new"));
        let oldest = req(gateways[0], 2, Some("x-0"));
        let pairs = [(&fresh, fresh.digest()), (&oldest, oldest.digest())];
        let preview = s.preview(2, &pairs);
        let applied: Vec<ReplyBody> =
            pairs.iter().enumerate().map(|(i, (r, d))| s.apply(JobId { seq: 2, index: i as u32 }, r, d)).collect();
        assert_eq!(applied[1], ReplyBody::Accepted { job: JobId { seq: 2, index: 1 } });
        assert_eq!(preview, applied);
    }

    #[test]
    fn state_round_trips_through_its_encoding() {
        let gw = PeerId::random();
        let mut s = ReplicatedState::default();
        let r = req(gw, 1, Some("x"));
        s.apply(JobId { seq: 1, index: 0 }, &r, &r.digest());
        let back = ReplicatedState::decode(&s.encode()).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.digest(), s.digest());
    }
}
