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

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pbft_node::membership::Membership;
use pbft_node::net::client::{Client, ClientEvent};
use pbft_node::wire::{Digest, JobId, Rejection, Reply, ReplyBody, Request, Signed};
use tracing::{debug, info, warn};

use crate::gateway::{now_ms, RelayLinks};
use crate::jobs::{Job, Jobs, JobsError};
use crate::metrics::Metrics;
use crate::status::{Note, Notes};
use crate::verdict::{decide, Decision, Verdict, Vote};

/// Evidence logged once per (job, replica); the memory of it is bounded.
const EVIDENCE_SHOWN_MAX: usize = 4096;
/// Jobs whose replies one sweep asks the replicas for.
const FETCH_BATCH_MAX: usize = 256;
/// Requests handed to the client and not yet ordered (nor refused), at
/// most. Past it, accepted jobs wait here in order: the replicas are never
/// flooded, and the client's queues stay far from full (its task waits on a
/// full event queue while this loop would wait on a full command queue: a
/// deadlock that a flood of webhooks once caused).
const IN_FLIGHT_MAX: usize = 512;
/// Accepted requests waiting here for a place in flight; past it, the
/// gateway's queue to the relay fills and intake waits.
const BACKLOG_MAX: usize = 4096;
/// Wait before submitting again a request refused as too far ahead.
const RESUBMIT_AFTER: Duration = Duration::from_secs(5);

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
    metrics: Arc<Metrics>,
    statuses: Option<Notes>,
    /// (job number, replica) whose conflicting results were logged.
    shown_evidence: HashSet<(u64, usize)>,
}

impl Collector {
    /// Follows every job of the store without a verdict.
    pub fn new(jobs: Arc<Jobs>, membership: Arc<Membership>, deadline: Duration) -> Result<Collector, JobsError> {
        let metrics = Arc::new(Metrics::new(membership.replicas.len()));
        let mut c = Collector {
            jobs,
            membership,
            deadline,
            tracked: HashMap::new(),
            metrics,
            statuses: None,
            shown_evidence: HashSet::new(),
        };
        for number in c.jobs.pending()? {
            if let Some(job) = c.jobs.get(number)? {
                c.load(&job)?;
            }
        }
        Ok(c)
    }

    /// Counts replies and verdicts into `metrics` (the gateway's) from now on.
    pub fn count_into(&mut self, metrics: Arc<Metrics>) {
        self.metrics = metrics;
    }

    /// Tells the commit status poster of acceptances and verdicts from now on.
    pub fn post_statuses(&mut self, notes: Notes) {
        self.statuses = Some(notes);
    }

    /// A verdict given to job `number` (stored), resting on `decision`'s
    /// results; `first_since_ms`: when it was accepted, if this is its
    /// first verdict.
    fn given(
        &self,
        number: u64,
        decision: &Decision,
        votes: &BTreeMap<usize, Vote>,
        first_since_ms: Option<u64>,
        now_ms: u64,
    ) {
        let latency = first_since_ms.map(|at| Duration::from_millis(now_ms.saturating_sub(at)));
        self.metrics.verdict(decision.verdict, latency);
        if let Some(notes) = &self.statuses {
            let agreeing = votes
                .values()
                .filter(|v| matches!(v, Vote::Result { digest, .. } if decision.results.first() == Some(digest)))
                .count();
            let n = self.membership.replicas.len();
            notes.send(Note::Verdict { number, verdict: decision.verdict, agreeing, answered: votes.len(), n });
        }
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
        if self.tracked.contains_key(&number) {
            return;
        }
        self.tracked.insert(number, Tracked { request, accepted_ms, votes: BTreeMap::new(), decision: None });
        if let Some(notes) = &self.statuses {
            notes.send(Note::Accepted { number });
        }
    }

    /// Takes a reply the client checked (signed by replica `replica`,
    /// addressed to this gateway). Returns whether a verdict changed.
    pub fn on_reply(&mut self, replica: usize, reply: &Signed<Reply>, now_ms: u64) -> Result<bool, JobsError> {
        self.metrics.reply(replica, reply_kind(&reply.msg.body));
        let Some(vote) = vote_of(&reply.msg) else { return Ok(false) };
        let number = reply.msg.number;
        if let Some(first) = self.jobs.reply(number, replica)? {
            // A replica's first word counts; a different second one may be
            // evidence against it.
            if first != reply.bytes() {
                self.check_conflict(replica, &first, reply);
            }
            return Ok(false);
        }
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

    /// `replica` signed `first` and now `second` for one request: two
    /// results that differ (or two jobs) are evidence that it is faulty, as
    /// a correct replica signs one result per job and keeps it. Logged once
    /// per replica and job with both signed replies, and counted.
    fn check_conflict(&mut self, replica: usize, first: &[u8], second: &Signed<Reply>) {
        let network = self.membership.network_id();
        let Ok(earlier) = Signed::<Reply>::open(first, &network, self.membership.as_ref()) else { return };
        let (ReplyBody::Result { job: j1, result: r1 }, ReplyBody::Result { job: j2, result: r2 }) =
            (&earlier.msg.body, &second.msg.body)
        else {
            return;
        };
        let same_request = earlier.msg.request == second.msg.request;
        if same_request && j1 == j2 && r1.digest() == r2.digest() {
            return;
        }
        let number = second.msg.number;
        if self.shown_evidence.len() >= EVIDENCE_SHOWN_MAX {
            self.shown_evidence.clear();
        }
        if !self.shown_evidence.insert((number, replica)) {
            return;
        }
        self.metrics.evidence(replica);
        warn!(
            replica,
            "evidence: replica {replica} ({}) signed two different results for job {number}: first {} second {}",
            self.membership.replicas.get(replica).map(|m| m.peer_id.to_string()).unwrap_or_default(),
            hex::encode(first),
            hex::encode(second.bytes()),
        );
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
            let first = t.decision.is_none().then_some(t.accepted_ms);
            self.jobs.update(number, |j| j.decision = Some(d.clone()))?;
            self.given(number, &d, &t.votes, first, now_ms);
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
        let Some(target_job) = self.jobs.get(target)?.filter(|t| t.decision.is_none()) else { return Ok(false) };
        info!("job {target}: cancelled (cancel request {number} ordered as {job})");
        let d = Decision { verdict: Verdict::Cancelled, results: Vec::new() };
        self.jobs.update(target, |t| t.decision = Some(d.clone()))?;
        let votes = self.tracked.remove(&target).map(|t| t.votes).unwrap_or_default();
        self.given(target, &d, &votes, Some(target_job.accepted_ms), now_ms());
        Ok(true)
    }

    /// f + 1 replicas refused the request for good (a number below their
    /// window: stale): it will never run. (`TooFarAhead` is not for good:
    /// the relay submits such a request again later.)
    pub fn on_refused(&mut self, number: u64, reason: Rejection) -> Result<bool, JobsError> {
        let Some(t) = self.tracked.remove(&number) else { return Ok(false) };
        warn!("job {number}: refused by the replicas ({reason:?})");
        let d = Decision { verdict: Verdict::Undecided, results: Vec::new() };
        self.jobs.update(number, |j| {
            j.refused = Some(format!("{reason:?}"));
            j.decision = Some(d.clone());
        })?;
        self.given(number, &d, &t.votes, Some(t.accepted_ms), now_ms());
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

fn reply_kind(body: &ReplyBody) -> &'static str {
    match body {
        ReplyBody::Accepted { .. } => "accepted",
        ReplyBody::Duplicate { .. } => "duplicate",
        ReplyBody::Prepared { .. } => "prepared",
        ReplyBody::Rejected { .. } => "rejected",
        ReplyBody::Result { .. } => "result",
        ReplyBody::Abstain { .. } => "abstain",
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
    collector.count_into(links.metrics.clone());
    let membership = collector.membership.clone();
    let network = membership.network_id();
    // Oldest first, submitted as places in flight free up.
    let mut backlog: VecDeque<Signed<Request>> = VecDeque::new();
    for job in collector.pending().unwrap_or_default() {
        if job.ordered.is_none() {
            if let Ok(req) = Signed::<Request>::open(&job.request, &network, membership.as_ref()) {
                backlog.push_back(req);
            }
        }
    }
    let mut in_flight: HashSet<u64> = HashSet::new();
    let weak = membership.quorum().weak();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_fetch = tokio::time::Instant::now();
    let mut was_reachable = false;
    let mut fetch_from = 0usize;
    let mut later: VecDeque<(tokio::time::Instant, u64)> = VecDeque::new();
    tokio::pin!(shutdown);
    let bump = |links: &RelayLinks| links.changed.send_modify(|v| *v += 1);
    loop {
        while in_flight.len() < IN_FLIGHT_MAX {
            let Some(req) = backlog.pop_front() else { break };
            in_flight.insert(req.msg.number);
            client.submit(req).await;
        }
        tokio::select! {
            _ = &mut shutdown => break,
            req = links.requests.recv(), if backlog.len() < BACKLOG_MAX => {
                let Some((req, accepted_ms)) = req else { break };
                collector.track(req.msg.number, req.msg.digest(), accepted_ms);
                backlog.push_back(req);
            }
            Some((job, answers)) = links.logs.recv() => client.fetch_logs(job, answers).await,
            event = client.next_event() => {
                let Some(event) = event else { break };
                let outcome = match event {
                    ClientEvent::Reply { replica, reply } => collector.on_reply(replica, &reply, now_ms()),
                    ClientEvent::Ordered { number, job, .. } => {
                        in_flight.remove(&number);
                        collector.on_ordered(number, job)
                    }
                    ClientEvent::Refused { number, reason: Rejection::TooFarAhead, .. } => {
                        in_flight.remove(&number);
                        // Numbers this far ahead fit once the ones before are
                        // ordered (many jobs accepted while the network was away).
                        debug!("request {number} is too far ahead of the replicas' window; submitting it again later");
                        later.push_back((tokio::time::Instant::now() + RESUBMIT_AFTER, number));
                        Ok(false)
                    }
                    ClientEvent::Refused { number, reason, .. } => {
                        in_flight.remove(&number);
                        collector.on_refused(number, reason)
                    }
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
                links.metrics.set_connected(connected);
                while later.front().is_some_and(|(at, _)| *at <= tokio::time::Instant::now()) {
                    let (_, number) = later.pop_front().expect("just looked");
                    if !collector.tracked.contains_key(&number) {
                        continue;
                    }
                    if let Ok(Some(job)) = collector.jobs.get(number) {
                        if let Ok(req) = Signed::<Request>::open(&job.request, &network, membership.as_ref()) {
                            backlog.push_back(req);
                        }
                    }
                }
                // A job decided without being ordered (at its deadline) frees its place.
                in_flight.retain(|n| collector.tracked.contains_key(n));
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

#[cfg(test)]
mod tests {
    use libp2p_identity::Keypair;
    use pbft_node::driver::NoneExecutor;
    use pbft_node::membership::Member;
    use pbft_node::wire::{JobResult, Operation};

    use super::*;

    struct Net {
        dir: tempfile::TempDir,
        replicas: Vec<Keypair>,
        gateway: Keypair,
        membership: Arc<Membership>,
    }

    fn net() -> Net {
        let replicas: Vec<Keypair> = (0..4).map(|_| Keypair::generate_ed25519()).collect();
        let gateway = Keypair::generate_ed25519();
        let member = |k: &Keypair| Member { peer_id: k.public().to_peer_id(), addr: None };
        let membership = Membership::new(
            "relay-test".into(),
            replicas.iter().map(member).collect(),
            vec![member(&gateway)],
            vec!["file:///".into()],
        )
        .unwrap();
        Net { dir: tempfile::tempdir().unwrap(), replicas, gateway, membership: Arc::new(membership) }
    }

    impl Net {
        fn jobs(&self) -> Arc<Jobs> {
            Arc::new(Jobs::open(self.dir.path()).unwrap())
        }

        /// Accepts one pinned run; its signed request.
        fn accept(&self, jobs: &Jobs, accepted_ms: u64) -> Signed<Request> {
            let sub = crate::webhook::Submission {
                repo: "file:///r".into(),
                git_ref: "master".into(),
                commit: Some("ab".repeat(20)),
                delivery: None,
                forge: None,
            };
            let network = self.membership.network_id();
            let sign = |number: u64, s: &crate::webhook::Submission| {
                let op = Operation::Run { repo: s.repo.clone(), git_ref: s.git_ref.clone(), commit: s.commit.clone() };
                let req = Request { gateway: self.gateway.public().to_peer_id(), number, delivery: None, op };
                Signed::seal(req, &network, &self.gateway).bytes().to_vec()
            };
            let accepted = jobs.accept(std::slice::from_ref(&sub), accepted_ms, &sign).unwrap();
            let crate::jobs::Accepted::New(job) = &accepted[0] else { panic!("new") };
            Signed::open(&job.request, &network, self.membership.as_ref()).unwrap()
        }

        fn reply(&self, i: usize, req: &Request, body: ReplyBody) -> Signed<Reply> {
            let reply = Reply { view: 0, gateway: req.gateway, number: req.number, request: req.digest(), body };
            Signed::seal(reply, &self.membership.network_id(), &self.replicas[i])
        }

        fn result(&self, i: usize, req: &Request, result: &JobResult) -> Signed<Reply> {
            self.reply(i, req, ReplyBody::Result { job: JobId { seq: 1, index: 0 }, result: result.clone() })
        }
    }

    const DEADLINE: Duration = Duration::from_secs(60);

    /// Two results for one request: the `none` executor's pass, and a failure.
    fn passed_and_failed(req: &Request) -> (JobResult, JobResult) {
        let passed = NoneExecutor::result(req);
        let outcome = pbft_node::wire::Outcome::Failed { step: "test".into(), exit_code: 1 };
        let failed = JobResult { outcome, ..passed.clone() };
        (passed, failed)
    }

    #[test]
    fn replies_stored_before_a_restart_count_after_it() {
        let net = net();
        let req = {
            let jobs = net.jobs();
            let req = net.accept(&jobs, 0);
            let mut c = Collector::new(jobs.clone(), net.membership.clone(), DEADLINE).unwrap();
            let passed = NoneExecutor::result(&req.msg);
            assert!(!c.on_reply(2, &net.result(2, &req.msg, &passed), 1).unwrap());
            assert!(!c.on_reply(0, &net.result(0, &req.msg, &passed), 1).unwrap());
            req
        };
        let jobs = net.jobs();
        let mut c = Collector::new(jobs.clone(), net.membership.clone(), DEADLINE).unwrap();
        assert_eq!(c.pending_requests(), vec![req.msg.digest()], "resumed");
        assert_eq!(c.pending().unwrap()[0].request, req.bytes(), "its signed request, to submit again");
        let passed = NoneExecutor::result(&req.msg);
        assert!(c.on_reply(1, &net.result(1, &req.msg, &passed), 2).unwrap(), "third of four: decided");
        let decision = jobs.get(1).unwrap().unwrap().decision.unwrap();
        assert_eq!((decision.verdict, decision.results), (Verdict::Passed, vec![passed.digest()]));
        assert!(c.pending_requests().is_empty());
        assert!(jobs.pending().unwrap().is_empty());
    }

    #[test]
    fn replies_for_another_request_or_not_final_are_ignored() {
        let net = net();
        let jobs = net.jobs();
        let req = net.accept(&jobs, 0);
        let mut c = Collector::new(jobs.clone(), net.membership.clone(), DEADLINE).unwrap();
        let mut other = req.msg.clone();
        other.delivery = Some("else".into());
        let passed = NoneExecutor::result(&req.msg);
        for i in 0..4 {
            c.on_reply(i, &net.result(i, &other, &passed), 1).unwrap();
            c.on_reply(i, &net.reply(i, &req.msg, ReplyBody::Accepted { job: JobId { seq: 1, index: 0 } }), 1).unwrap();
        }
        assert!(jobs.replies(1).unwrap().is_empty());
        assert_eq!(jobs.get(1).unwrap().unwrap().decision, None);
    }

    #[test]
    fn abstentions_show_and_the_deadline_decides() {
        let net = net();
        let jobs = net.jobs();
        let req = net.accept(&jobs, 1_000);
        let mut c = Collector::new(jobs.clone(), net.membership.clone(), DEADLINE).unwrap();
        let passed = NoneExecutor::result(&req.msg);
        let abstain = ReplyBody::Abstain { job: JobId { seq: 1, index: 0 }, reason: "no engine".into() };
        c.on_reply(3, &net.reply(3, &req.msg, abstain), 2_000).unwrap();
        c.on_reply(0, &net.result(0, &req.msg, &passed), 2_000).unwrap();
        c.on_reply(1, &net.result(1, &req.msg, &passed), 2_000).unwrap();
        // Two of four passed, one abstained, one outstanding: another result
        // cannot reach two, so it is decided without waiting.
        assert_eq!(jobs.get(1).unwrap().unwrap().decision.unwrap().verdict, Verdict::Passed);

        let req = net.accept(&jobs, 1_000);
        c.track(req.msg.number, req.msg.digest(), 1_000);
        c.on_reply(0, &net.result(0, &req.msg, &passed), 2_000).unwrap();
        assert!(!c.on_tick(1_000 + DEADLINE.as_millis() as u64 - 1).unwrap());
        assert!(c.on_tick(1_000 + DEADLINE.as_millis() as u64).unwrap());
        assert_eq!(jobs.get(2).unwrap().unwrap().decision.unwrap().verdict, Verdict::Undecided);
    }

    #[test]
    fn a_late_contradicting_result_turns_a_deadline_verdict_disputed() {
        let net = net();
        let jobs = net.jobs();
        let req = net.accept(&jobs, 0);
        let mut c = Collector::new(jobs.clone(), net.membership.clone(), DEADLINE).unwrap();
        let (passed, failed) = passed_and_failed(&req.msg);
        c.on_reply(0, &net.result(0, &req.msg, &passed), 1).unwrap();
        c.on_reply(1, &net.result(1, &req.msg, &passed), 1).unwrap();
        c.on_reply(2, &net.result(2, &req.msg, &failed), 1).unwrap();
        assert!(c.on_tick(DEADLINE.as_millis() as u64).unwrap());
        assert_eq!(jobs.get(1).unwrap().unwrap().decision.unwrap().verdict, Verdict::Passed);
        // After a restart, even.
        let mut c = Collector::new(jobs.clone(), net.membership.clone(), DEADLINE).unwrap();
        assert!(c.on_reply(3, &net.result(3, &req.msg, &failed), 1).unwrap());
        let d = jobs.get(1).unwrap().unwrap().decision.unwrap();
        assert_eq!((d.verdict, d.results), (Verdict::Disputed, vec![passed.digest(), failed.digest()]));
    }

    #[test]
    fn two_different_results_signed_by_one_replica_are_evidence_and_the_first_counts() {
        let net = net();
        let jobs = net.jobs();
        let req = net.accept(&jobs, 0);
        let mut c = Collector::new(jobs.clone(), net.membership.clone(), DEADLINE).unwrap();
        let (passed, failed) = passed_and_failed(&req.msg);
        let evidence = |c: &Collector| {
            let text = c.metrics.encode();
            text.lines().find_map(|l| l.strip_prefix("pbft_gw_evidence_total{replica=\"2\"} ")).map(str::to_owned)
        };
        c.on_reply(2, &net.result(2, &req.msg, &passed), 1).unwrap();
        // The same signed reply again (a retransmission, a fetch) is no evidence.
        c.on_reply(2, &net.result(2, &req.msg, &passed), 1).unwrap();
        assert_eq!(evidence(&c), None);
        c.on_reply(2, &net.result(2, &req.msg, &failed), 1).unwrap();
        c.on_reply(2, &net.result(2, &req.msg, &failed), 1).unwrap();
        assert_eq!(evidence(&c).as_deref(), Some("1"), "counted once per job");
        assert_eq!(jobs.reply(1, 2).unwrap().unwrap(), net.result(2, &req.msg, &passed).bytes(), "the first kept");
        // The second word never counts: two more passes decide it (the
        // fourth could not make it a 2-2 dispute any more).
        assert!(!c.on_reply(0, &net.result(0, &req.msg, &passed), 1).unwrap());
        assert!(c.on_reply(1, &net.result(1, &req.msg, &passed), 1).unwrap());
        assert_eq!(jobs.get(1).unwrap().unwrap().decision.unwrap().verdict, Verdict::Passed);
    }

    #[test]
    fn a_refused_request_is_undecided_with_the_reason() {
        let net = net();
        let jobs = net.jobs();
        net.accept(&jobs, 0);
        let mut c = Collector::new(jobs.clone(), net.membership.clone(), DEADLINE).unwrap();
        assert!(c.on_refused(1, Rejection::Stale).unwrap());
        let job = jobs.get(1).unwrap().unwrap();
        assert_eq!((job.decision.unwrap().verdict, job.refused.as_deref()), (Verdict::Undecided, Some("Stale")));
        assert!(!c.on_refused(1, Rejection::Stale).unwrap());
    }
}
