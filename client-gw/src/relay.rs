//! The gateway's side of the swarm: submits accepted requests through the
//! library client (which retransmits until f + 1 replicas say they are
//! ordered, and checks every reply's signature against the membership),
//! collects the replicas' final replies, applies the verdict rule and stores
//! what it decides.
//!
//! [`Collector`] is the bookkeeping, synchronous and testable without a
//! network; [`run`] drives it from the client's events and a timer. On
//! start every job without a verdict is submitted again (the replicas
//! de-duplicate by request number and answer `Duplicate`) and, once replicas
//! are reachable, their stored replies are fetched: nothing accepted before
//! a crash is lost.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pbft_node::membership::Membership;
use pbft_node::net::client::{Client, ClientEvent};
use pbft_node::wire::{Digest, JobId, Rejection, Reply, ReplyBody, Request, Signed};
use tracing::{debug, info, warn};

use crate::gateway::{now_ms, RelayLinks};
use crate::jobs::{Job, Jobs, JobsError};
use crate::verdict::{decide, Decision, Verdict, Vote};

/// Jobs whose replies one sweep asks the replicas for.
const FETCH_BATCH_MAX: usize = 256;

/// A job without a verdict, as the collector follows it.
struct Tracked {
    request: Digest,
    accepted_ms: u64,
    votes: BTreeMap<usize, Vote>,
    decision: Option<Decision>,
}

pub struct Collector {
    jobs: Arc<Jobs>,
    membership: Arc<Membership>,
    deadline: Duration,
    tracked: HashMap<u64, Tracked>,
}

impl Collector {
    /// Follows every job of the store without a verdict.
    pub fn new(jobs: Arc<Jobs>, membership: Arc<Membership>, deadline: Duration) -> Result<Collector, JobsError> {
        let mut c = Collector { jobs, membership, deadline, tracked: HashMap::new() };
        for number in c.jobs.pending()? {
            if let Some(job) = c.jobs.get(number)? {
                c.load(&job)?;
            }
        }
        Ok(c)
    }

    /// Jobs followed (no verdict yet), oldest first, with their signed
    /// requests: what a restart submits again.
    pub fn pending(&self) -> Result<Vec<Job>, JobsError> {
        let mut numbers: Vec<u64> = self.tracked.keys().copied().collect();
        numbers.sort_unstable();
        Ok(numbers.into_iter().filter_map(|n| self.jobs.get(n).ok().flatten()).collect())
    }

    /// Request digests of the jobs followed, oldest first.
    pub fn pending_requests(&self) -> Vec<Digest> {
        let mut v: Vec<(u64, Digest)> = self.tracked.iter().map(|(n, t)| (*n, t.request)).collect();
        v.sort_unstable();
        v.into_iter().map(|(_, d)| d).collect()
    }

    fn request_digest(&self, job: &Job) -> Option<Digest> {
        let network = self.membership.network_id();
        Signed::<Request>::open(&job.request, &network, self.membership.as_ref()).ok().map(|r| r.msg.digest())
    }

    /// Follows `job` with the replies stored for it.
    fn load(&mut self, job: &Job) -> Result<Option<&mut Tracked>, JobsError> {
        let Some(request) = self.request_digest(job) else {
            warn!("job {}: its stored request does not open; not followed", job.number);
            return Ok(None);
        };
        let network = self.membership.network_id();
        let mut votes = BTreeMap::new();
        for (i, bytes) in self.jobs.replies(job.number)? {
            if let Ok(r) = Signed::<Reply>::open(&bytes, &network, self.membership.as_ref()) {
                if let Some(v) = vote_of(&r.msg) {
                    votes.insert(i, v);
                }
            }
        }
        let t = Tracked { request, accepted_ms: job.accepted_ms, votes, decision: job.decision.clone() };
        Ok(Some(self.tracked.entry(job.number).or_insert(t)))
    }

    /// Starts following a job just accepted.
    pub fn track(&mut self, number: u64, request: Digest, accepted_ms: u64) {
        self.tracked.entry(number).or_insert(Tracked { request, accepted_ms, votes: BTreeMap::new(), decision: None });
    }

    /// Takes a reply the client checked (signed by replica `replica`,
    /// addressed to this gateway). Returns whether a verdict changed.
    pub fn on_reply(&mut self, replica: usize, reply: &Signed<Reply>, now_ms: u64) -> Result<bool, JobsError> {
        let Some(vote) = vote_of(&reply.msg) else { return Ok(false) };
        let number = reply.msg.number;
        if !self.tracked.contains_key(&number) {
            // A late reply to a decided job can still show a dispute.
            let Some(job) = self.jobs.get(number)? else { return Ok(false) };
            if !job
                .decision
                .as_ref()
                .is_some_and(|d| matches!(d.verdict, Verdict::Passed | Verdict::Failed | Verdict::Error))
            {
                return Ok(false);
            }
            self.load(&job)?;
        }
        let Some(t) = self.tracked.get(&number) else { return Ok(false) };
        if reply.msg.request != t.request {
            debug!("replica {replica} answered request {number} with another request's digest");
            return Ok(false);
        }
        if !self.jobs.record_reply(number, replica, reply.bytes())? {
            return Ok(false);
        }
        self.tracked.get_mut(&number).expect("followed").votes.insert(replica, vote);
        self.settle(number, now_ms)
    }

    /// Applies the verdict rule to job `number`; stores and reports a change.
    fn settle(&mut self, number: u64, now_ms: u64) -> Result<bool, JobsError> {
        let n = self.membership.replicas.len();
        let deadline_ms = self.deadline.as_millis() as u64;
        let Some(t) = self.tracked.get(&number) else { return Ok(false) };
        let deadline_passed = now_ms >= t.accepted_ms.saturating_add(deadline_ms);
        let decision = decide(n, &t.votes, t.decision.as_ref(), deadline_passed, false);
        let changed = decision != t.decision;
        if changed {
            let d = decision.clone().expect("a verdict once given stays");
            info!("job {number}: {}", d.verdict.as_str());
            self.jobs.update(number, |j| j.decision = Some(d))?;
        }
        if decision.is_some() {
            // A late reply to a decided job loads it again from the store.
            self.tracked.remove(&number);
        }
        Ok(changed)
    }

    /// f + 1 replicas said request `number` is ordered as `job`. For a
    /// cancel request, its target gets the verdict `cancelled` unless it has
    /// one. Returns whether a verdict changed.
    pub fn on_ordered(&mut self, number: u64, job: JobId) -> Result<bool, JobsError> {
        let Some(updated) = self.jobs.update(number, |j| j.ordered = Some(job))? else { return Ok(false) };
        let Some(target) = updated.cancel_of else { return Ok(false) };
        if self.jobs.get(target)?.is_none_or(|t| t.decision.is_some()) {
            return Ok(false);
        }
        info!("job {target}: cancelled (cancel request {number} ordered as {job})");
        let d = Decision { verdict: Verdict::Cancelled, results: Vec::new() };
        self.jobs.update(target, |t| t.decision = Some(d))?;
        self.tracked.remove(&target);
        Ok(true)
    }

    /// f + 1 replicas refused the request for good: it will never run.
    pub fn on_refused(&mut self, number: u64, reason: Rejection) -> Result<bool, JobsError> {
        if self.tracked.remove(&number).is_none() {
            return Ok(false);
        }
        warn!("job {number}: refused by the replicas ({reason:?})");
        let d = Decision { verdict: Verdict::Undecided, results: Vec::new() };
        self.jobs.update(number, |j| {
            j.refused = Some(format!("{reason:?}"));
            j.decision = Some(d);
        })?;
        Ok(true)
    }

    /// Applies deadlines. Returns whether any verdict changed.
    pub fn on_tick(&mut self, now_ms: u64) -> Result<bool, JobsError> {
        let deadline_ms = self.deadline.as_millis() as u64;
        let due: Vec<u64> = self
            .tracked
            .iter()
            .filter(|(_, t)| now_ms >= t.accepted_ms.saturating_add(deadline_ms))
            .map(|(n, _)| *n)
            .collect();
        let mut changed = false;
        for n in due {
            changed |= self.settle(n, now_ms)?;
        }
        Ok(changed)
    }
}

fn vote_of(r: &Reply) -> Option<Vote> {
    match &r.body {
        ReplyBody::Result { result, .. } => {
            Some(Vote::Result { digest: result.digest(), verdict: Verdict::of(&result.outcome) })
        }
        ReplyBody::Abstain { .. } => Some(Vote::Abstain),
        _ => None,
    }
}

pub struct RelayConfig {
    /// How often the replicas are asked again for the replies of jobs
    /// without a verdict (replies sent while this gateway was away).
    pub fetch_every: Duration,
}

/// Drives the collector from the client until `shutdown` resolves.
pub async fn run(
    mut client: Client,
    mut collector: Collector,
    mut links: RelayLinks,
    cfg: RelayConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let membership = collector.membership.clone();
    let network = membership.network_id();
    for job in collector.pending().unwrap_or_default() {
        if job.ordered.is_none() {
            if let Ok(req) = Signed::<Request>::open(&job.request, &network, membership.as_ref()) {
                client.submit(req).await;
            }
        }
    }
    let weak = membership.quorum().weak();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_fetch = tokio::time::Instant::now();
    let mut was_reachable = false;
    let mut fetch_from = 0usize;
    tokio::pin!(shutdown);
    let bump = |links: &RelayLinks| links.changed.send_modify(|v| *v += 1);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            req = links.requests.recv() => {
                let Some((req, accepted_ms)) = req else { break };
                collector.track(req.msg.number, req.msg.digest(), accepted_ms);
                client.submit(req).await;
            }
            event = client.next_event() => {
                let Some(event) = event else { break };
                let outcome = match event {
                    ClientEvent::Reply { replica, reply } => collector.on_reply(replica, &reply, now_ms()),
                    ClientEvent::Ordered { number, job, .. } => collector.on_ordered(number, job),
                    ClientEvent::Refused { number, reason, .. } => collector.on_refused(number, reason),
                    ClientEvent::Consensus { .. } => Ok(false),
                };
                match outcome {
                    Ok(true) => bump(&links),
                    Ok(false) => {}
                    Err(e) => warn!("storing what the replicas said: {e}"),
                }
            }
            _ = tick.tick() => {
                let connected = client.connected_replicas().await;
                links.connected.store(connected, Ordering::Relaxed);
                match collector.on_tick(now_ms()) {
                    Ok(true) => bump(&links),
                    Ok(false) => {}
                    Err(e) => warn!("storing a verdict: {e}"),
                }
                let reachable = connected >= weak;
                let due = last_fetch.elapsed() >= cfg.fetch_every;
                if reachable && (due || !was_reachable) {
                    // Round-robin over the jobs without a verdict, a batch per sweep.
                    let pending = collector.pending_requests();
                    if fetch_from >= pending.len() {
                        fetch_from = 0;
                    }
                    for d in pending.iter().skip(fetch_from).take(FETCH_BATCH_MAX) {
                        client.fetch_replies(*d).await;
                    }
                    fetch_from += FETCH_BATCH_MAX;
                    last_fetch = tokio::time::Instant::now();
                }
                was_reachable = reachable;
            }
        }
    }
    client.shutdown().await;
}
