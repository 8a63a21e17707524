//! A gateway as the simulator plays it: signs requests, sends them to every
//! replica, retransmits until f + 1 replicas accepted, and counts replies.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use libp2p_identity::PeerId;

use super::keys::SimKey;
use crate::pbft::Quorum;
use crate::wire::{Digest, JobId, Operation, Reply, ReplyBody, Request, Signed, Signer as _};

pub struct Outstanding {
    pub digest: Digest,
    pub bytes: Arc<[u8]>,
    pub sent_at: u64,
    pub delivery: Option<String>,
    /// Replicas that answered Accepted/Duplicate, by the job they named.
    pub answers: BTreeMap<JobId, BTreeSet<usize>>,
    /// Replicas that answered Prepared (tentatively), by job.
    pub prepared: BTreeMap<JobId, BTreeSet<usize>>,
}

pub struct Client {
    pub key: SimKey,
    pub peer: PeerId,
    pub next_number: u64,
    pub outstanding: BTreeMap<u64, Outstanding>,
    /// Request number → the job the replicas' answers fixed, and the
    /// request's delivery id.
    pub done: BTreeMap<u64, (JobId, Option<String>)>,
}

impl Client {
    pub fn new(key: SimKey) -> Client {
        Client { peer: key.peer_id(), key, next_number: 1, outstanding: BTreeMap::new(), done: BTreeMap::new() }
    }

    /// Makes the next request; the caller sends it.
    pub fn submit(&mut self, sim: &super::Shared, now: u64, delivery: Option<String>) -> Arc<[u8]> {
        let number = self.next_number;
        self.next_number += 1;
        let req = Request {
            gateway: self.peer,
            number,
            delivery: delivery.clone(),
            op: Operation::Run {
                repo: "file:///repo".into(),
                git_ref: "master".into(),
                commit: Some(format!("{number:040x}")),
            },
        };
        let digest = req.digest();
        let bytes = Signed::seal(req, &sim.network, &self.key).shared_bytes();
        self.outstanding.insert(
            number,
            Outstanding {
                digest,
                bytes: bytes.clone(),
                sent_at: now,
                delivery,
                answers: BTreeMap::new(),
                prepared: BTreeMap::new(),
            },
        );
        bytes
    }

    /// Takes one reply; returns a complaint if a replica said something no
    /// correct replica would.
    pub fn on_reply(&mut self, quorum: Quorum, replica: usize, reply: &Reply) -> Option<String> {
        if reply.gateway != self.peer {
            return Some(format!("replica {replica} sent a reply meant for another gateway"));
        }
        let out = self.outstanding.get_mut(&reply.number)?;
        if out.digest != reply.request {
            return Some(format!("replica {replica} answered request {} with another digest", reply.number));
        }
        match &reply.body {
            ReplyBody::Accepted { job } | ReplyBody::Duplicate { job } | ReplyBody::Prepared { job } => {
                let votes =
                    if matches!(reply.body, ReplyBody::Prepared { .. }) { &mut out.prepared } else { &mut out.answers };
                votes.entry(*job).or_default().insert(replica);
                let none = BTreeSet::new();
                let executed = out.answers.get(job).unwrap_or(&none);
                if quorum.ordered(executed, out.prepared.get(job).unwrap_or(&none)) {
                    let out = self.outstanding.remove(&reply.number).expect("outstanding");
                    self.done.insert(reply.number, (*job, out.delivery));
                }
                None
            }
            ReplyBody::Rejected { reason } => Some(format!("request {} rejected: {reason:?}", reply.number)),
            ReplyBody::Result { .. } | ReplyBody::Abstain { .. } => None,
        }
    }

    /// Requests due for retransmission at `now`.
    pub fn due(&mut self, now: u64, retry_ms: u64) -> Vec<Arc<[u8]>> {
        let mut out = Vec::new();
        for o in self.outstanding.values_mut() {
            if now >= o.sent_at + retry_ms {
                o.sent_at = now;
                out.push(o.bytes.clone());
            }
        }
        out
    }
}
