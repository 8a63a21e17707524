//! What the HTTP side asks of the gateway: accept a submission durably and
//! hand its signed request to the relay, read jobs back as JSON views (votes
//! and certificate included), wait for a verdict, report health.
//!
//! It never talks to the swarm itself: the relay ([`crate::relay`]) owns the
//! client; the two meet through [`RelayLinks`] and the store.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libp2p_identity::Keypair;
use pbft_node::ci::git::{resolve_remote, GitConfig};
use pbft_node::membership::Membership;
use pbft_node::net::client::LogAnswers;
use pbft_node::wire::{
    Certificate, Digest, JobId, JobLogs, NetworkId, Operation, Outcome, Reply, ReplyBody, Request, Signed,
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::jobs::{Accepted, Job, Jobs, JobsError};
use crate::metrics::Metrics;
use crate::verdict::Verdict;
use crate::webhook::{IntakeConfig, Submission};

/// Requests accepted but not yet taken by the relay.
const RELAY_QUEUE_MAX: usize = 16_384;
/// Log fetches waiting for the relay; more are answered with no logs.
const LOG_FETCH_QUEUE_MAX: usize = 64;
/// Longest wait for `git ls-remote` when pinning a ref; past it, the job goes
/// unpinned and the replicas resolve the ref themselves.
const PIN_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The submission is refused (400).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] JobsError),
    #[error("the store's worker stopped")]
    Stopped,
    #[error("storing the job: {0}")]
    Storage(String),
    #[error("no job {0}")]
    NotFound(u64),
    /// The request does not fit the job's state (409).
    #[error("{0}")]
    Conflict(String),
}

/// A fetch of a job's step logs from every replica: the job, and where
/// each replica's answer goes (with its index).
pub type LogFetch = (JobId, LogAnswers);

/// The relay's ends of what it shares with the gateway.
pub struct RelayLinks {
    /// Newly accepted jobs, to submit: the signed request and when it was
    /// accepted (Unix ms).
    pub requests: mpsc::Receiver<(Signed<Request>, u64)>,
    /// Bumped whenever a job gets (or changes) its verdict.
    pub changed: watch::Sender<u64>,
    /// Replicas the relay's client is connected to.
    pub connected: Arc<AtomicUsize>,
    /// What the relay counts (replies, verdicts).
    pub metrics: Arc<Metrics>,
    /// Log fetches to pass to the replicas.
    pub logs: mpsc::Receiver<LogFetch>,
}

pub struct Gateway {
    jobs: Arc<Jobs>,
    membership: Arc<Membership>,
    key: Keypair,
    pub intake: IntakeConfig,
    /// How to reach repositories to pin refs (`git ls-remote`); `None`: never pin.
    pin: Option<GitConfig>,
    to_writer: mpsc::Sender<(Submission, oneshot::Sender<Result<Accepted, String>>)>,
    to_relay: mpsc::Sender<(Signed<Request>, u64)>,
    changed: watch::Receiver<u64>,
    connected: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    to_logs: mpsc::Sender<LogFetch>,
}

/// Submissions one transaction stores at most.
const WRITE_BATCH_MAX: usize = 256;

/// The thread that makes submissions durable. It takes every submission
/// waiting and stores them in one transaction, so concurrent webhooks share
/// one fsync instead of queueing for one each.
fn start_writer(
    jobs: Arc<Jobs>,
    network: NetworkId,
    key: Keypair,
) -> mpsc::Sender<(Submission, oneshot::Sender<Result<Accepted, String>>)> {
    let (tx, mut rx) = mpsc::channel::<(Submission, oneshot::Sender<Result<Accepted, String>>)>(RELAY_QUEUE_MAX);
    let signer = key.public().to_peer_id();
    let sign = move |number: u64, s: &Submission| {
        let op = Operation::Run { repo: s.repo.clone(), git_ref: s.git_ref.clone(), commit: s.commit.clone() };
        let req = Request { gateway: signer, number, delivery: s.delivery.clone(), op };
        Signed::seal(req, &network, &key).bytes().to_vec()
    };
    std::thread::Builder::new()
        .name("gw-intake".into())
        .spawn(move || {
            while let Some(first) = rx.blocking_recv() {
                let mut batch = vec![first];
                while batch.len() < WRITE_BATCH_MAX {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let subs: Vec<Submission> = batch.iter().map(|(s, _)| s.clone()).collect();
                match jobs.accept(&subs, now_ms(), &sign) {
                    Ok(accepted) => {
                        for ((_, reply), a) in batch.into_iter().zip(accepted) {
                            let _ = reply.send(Ok(a));
                        }
                    }
                    Err(e) => {
                        tracing::error!("storing {} submission(s): {e}", batch.len());
                        for (_, reply) in batch {
                            let _ = reply.send(Err(e.to_string()));
                        }
                    }
                }
            }
        })
        .expect("a thread starts");
    tx
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Gateway {
    pub fn new(
        jobs: Arc<Jobs>,
        membership: Arc<Membership>,
        key: Keypair,
        intake: IntakeConfig,
        pin: Option<GitConfig>,
    ) -> (Arc<Gateway>, RelayLinks) {
        let (to_relay, requests) = mpsc::channel(RELAY_QUEUE_MAX);
        let (changed_tx, changed) = watch::channel(0);
        let connected = Arc::new(AtomicUsize::new(0));
        let to_writer = start_writer(jobs.clone(), membership.network_id(), key.clone());
        let metrics = Arc::new(Metrics::new(membership.replicas.len()));
        let (to_logs, logs) = mpsc::channel(LOG_FETCH_QUEUE_MAX);
        let gateway = Gateway {
            jobs,
            membership,
            key,
            intake,
            pin,
            to_writer,
            to_relay,
            changed,
            connected: connected.clone(),
            metrics: metrics.clone(),
            to_logs,
        };
        (Arc::new(gateway), RelayLinks { requests, changed: changed_tx, connected, metrics, logs })
    }

    pub fn jobs(&self) -> &Jobs {
        &self.jobs
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Makes `sub` a durable job (or finds the job its delivery id already
    /// made) and hands a new one to the relay. Returns its number and whether
    /// it is new.
    pub async fn accept(&self, sub: Submission) -> Result<(u64, bool), GatewayError> {
        if !self.membership.repo_allowed(&sub.repo) {
            return Err(GatewayError::Invalid(format!(
                "{} is not on the network's repository allow-list",
                sub.repo.chars().take(200).collect::<String>()
            )));
        }
        if let Some(d) = &sub.delivery {
            if let Some(n) = self.jobs.by_delivery(d)? {
                return Ok((n, false));
            }
        }
        let sub = self.pinned(sub).await;
        let (reply, accepted) = oneshot::channel();
        self.to_writer.send((sub, reply)).await.map_err(|_| GatewayError::Stopped)?;
        let accepted = accepted.await.map_err(|_| GatewayError::Stopped)?.map_err(GatewayError::Storage)?;
        match accepted {
            Accepted::New(job) => {
                tracing::info!(
                    "accepted job {}: {} {} at {}{}",
                    job.number,
                    job.repo,
                    job.git_ref,
                    job.commit.as_deref().unwrap_or("(unpinned)"),
                    job.delivery.as_deref().map(|d| format!(" (delivery {d})")).unwrap_or_default()
                );
                self.relay(&job).await;
                Ok((job.number, true))
            }
            Accepted::Existing(n) => Ok((n, false)),
        }
    }

    /// Hands a durable job to the relay. If the relay is gone, a restart
    /// submits it.
    async fn relay(&self, job: &Job) {
        let network = self.membership.network_id();
        let signed = Signed::<Request>::open(&job.request, &network, self.membership.as_ref())
            .expect("a request this gateway just signed opens");
        let _ = self.to_relay.send((signed, job.accepted_ms)).await;
    }

    /// Orders a new run of job `number`'s repository, ref and commit.
    pub async fn rerun(&self, number: u64) -> Result<u64, GatewayError> {
        let job = self.jobs.get(number)?.ok_or(GatewayError::NotFound(number))?;
        if job.cancel_of.is_some() {
            return Err(GatewayError::Conflict(format!("job {number} is a cancel request; it has nothing to rerun")));
        }
        let sub =
            Submission { repo: job.repo, git_ref: job.git_ref, commit: job.commit, delivery: None, forge: job.forge };
        let (n, _) = self.accept(sub).await?;
        tracing::info!("job {n} reruns job {number}");
        Ok(n)
    }

    /// Orders the cancellation of job `number`, which must be ordered (its
    /// job id named) and without a verdict.
    pub async fn cancel(&self, number: u64) -> Result<u64, GatewayError> {
        let target = self.jobs.get(number)?.ok_or(GatewayError::NotFound(number))?;
        if let Some(d) = &target.decision {
            return Err(GatewayError::Conflict(format!("job {number} has its verdict ({})", d.verdict.as_str())));
        }
        if target.cancel_of.is_some() {
            return Err(GatewayError::Conflict(format!("job {number} is a cancel request itself")));
        }
        let Some(job_id) = target.ordered else {
            return Err(GatewayError::Conflict(format!("job {number} is not ordered yet; retry in a moment")));
        };
        let jobs = self.jobs.clone();
        let key = self.key.clone();
        let network = self.membership.network_id();
        let signer = key.public().to_peer_id();
        let cancel = tokio::task::spawn_blocking(move || {
            let sign = |n: u64| {
                let req = Request { gateway: signer, number: n, delivery: None, op: Operation::Cancel { job: job_id } };
                Signed::seal(req, &network, &key).bytes().to_vec()
            };
            jobs.accept_cancel(&target, now_ms(), &sign)
        })
        .await
        .map_err(|_| GatewayError::Stopped)??;
        tracing::info!("job {}: cancels job {number} ({job_id})", cancel.number);
        self.relay(&cancel).await;
        Ok(cancel.number)
    }

    /// `sub` with its ref pinned to the commit it names on the repository
    /// now, when it came unpinned (the proof of concept's `{"branch": B}`).
    /// A ref that names nothing, or a repository out of reach, leaves it
    /// unpinned: the replicas then agree on "ref not found" themselves.
    async fn pinned(&self, mut sub: Submission) -> Submission {
        let Some(cfg) = &self.pin else { return sub };
        if sub.commit.is_some() {
            return sub;
        }
        match tokio::time::timeout(PIN_TIMEOUT, resolve_remote(&sub.repo, &sub.git_ref, cfg)).await {
            Ok(Ok(Some(commit))) => sub.commit = Some(commit),
            Ok(Ok(None)) => tracing::info!("{} names nothing on {}: submitted unpinned", sub.git_ref, sub.repo),
            Ok(Err(e)) => tracing::warn!("pinning {} of {}: {e}; submitted unpinned", sub.git_ref, sub.repo),
            Err(_) => tracing::warn!(
                "pinning {} of {}: no answer within {PIN_TIMEOUT:?}; submitted unpinned",
                sub.git_ref,
                sub.repo
            ),
        }
        sub
    }

    /// Waits until job `number` has a verdict, at most `within`; the job as
    /// it is then.
    pub async fn wait(&self, number: u64, within: Duration) -> Result<Option<Job>, GatewayError> {
        let deadline = tokio::time::Instant::now() + within;
        let mut changed = self.changed.clone();
        loop {
            changed.borrow_and_update();
            let job = self.jobs.get(number)?;
            if job.as_ref().is_none_or(|j| j.decision.is_some()) {
                return Ok(job);
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => continue,
                // The deadline passed, or the relay stopped.
                _ => return Ok(self.jobs.get(number)?),
            }
        }
    }

    /// Each replica's step logs of `job` (by replica index), as many as
    /// answer `within`; `None` for the others.
    pub async fn logs(&self, job: JobId, within: Duration) -> Vec<Option<JobLogs>> {
        let n = self.membership.replicas.len();
        let mut out = vec![None; n];
        let (tx, mut rx) = mpsc::channel(n);
        if self.to_logs.try_send((job, tx)).is_err() {
            return out;
        }
        let deadline = tokio::time::Instant::now() + within;
        let mut answered = 0;
        while answered < n {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((i, logs))) if i < n && logs.job == job => {
                    if out[i].replace(logs).is_none() {
                        answered += 1;
                    }
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        out
    }

    pub fn connected_replicas(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    /// The full view of a job: votes opened and checked, certificate assembled.
    pub fn view(&self, job: &Job) -> JobView {
        let network = self.membership.network_id();
        let mut opened: BTreeMap<usize, (Vec<u8>, Reply)> = BTreeMap::new();
        if let Ok(replies) = self.jobs.replies(job.number) {
            for (i, bytes) in replies {
                // Stored only after the client checked them; checked again so
                // that nothing unverified can reach a certificate.
                if let Ok(r) = Signed::<Reply>::open(&bytes, &network, self.membership.as_ref()) {
                    opened.insert(i, (bytes, r.msg));
                }
            }
        }
        let votes = self
            .membership
            .replicas
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut vote = VoteView { replica: m.peer_id.to_string(), vote: None, result: None, detail: None };
                match opened.get(&i).map(|(_, r)| &r.body) {
                    Some(ReplyBody::Result { result, .. }) => {
                        vote.vote = Some(outcome_name(&result.outcome));
                        vote.result = Some(result.digest().to_hex());
                        vote.detail = outcome_detail(&result.outcome);
                    }
                    Some(ReplyBody::Abstain { reason, .. }) => {
                        vote.vote = Some("abstain");
                        vote.detail = Some(reason.clone());
                    }
                    _ => {}
                }
                vote
            })
            .collect();
        let certificate = job.decision.as_ref().filter(|d| !d.results.is_empty()).map(|d| {
            let sets = d
                .results
                .iter()
                .map(|digest| {
                    let replies = opened
                        .values()
                        .filter(|(_, r)| result_digest(r) == Some(*digest))
                        .map(|(bytes, _)| bytes.clone())
                        .collect();
                    (*digest, replies)
                })
                .collect();
            Certificate::new(&network, &job.request, sets)
        });
        JobView { summary: summary(job), votes, certificate }
    }
}

fn result_digest(r: &Reply) -> Option<Digest> {
    match &r.body {
        ReplyBody::Result { result, .. } => Some(result.digest()),
        _ => None,
    }
}

fn outcome_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::Passed => "passed",
        Outcome::Failed { .. } => "failed",
        Outcome::Timeout { .. } => "timeout",
        Outcome::Error { .. } => "error",
        Outcome::Cancelled => "cancelled",
    }
}

fn outcome_detail(o: &Outcome) -> Option<String> {
    match o {
        Outcome::Passed | Outcome::Cancelled => None,
        Outcome::Failed { step, exit_code } => Some(format!("step {step:?} exited with {exit_code}")),
        Outcome::Timeout { step } => Some(format!("step {step:?} timed out")),
        Outcome::Error { error, detail } => Some(format!("{error:?}: {detail}")),
    }
}

/// The HTTP id of job `number`, and where to find it.
pub fn status_url(number: u64) -> String {
    format!("/jobs/{number}")
}

pub fn summary(job: &Job) -> JobSummary {
    JobSummary {
        id: job.number.to_string(),
        status_url: status_url(job.number),
        repo: job.repo.clone(),
        git_ref: job.git_ref.clone(),
        commit: job.commit.clone(),
        delivery: job.delivery.clone(),
        verdict: job.decision.as_ref().map(|d| d.verdict),
        job: job.ordered.map(|j| j.to_string()),
        accepted_ms: job.accepted_ms,
        refused: job.refused.clone(),
        cancel_of: job.cancel_of.map(|n| n.to_string()),
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct JobSummary {
    pub id: String,
    pub status_url: String,
    pub repo: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub commit: Option<String>,
    pub delivery: Option<String>,
    /// `null` while pending.
    pub verdict: Option<Verdict>,
    /// The job id the replicas ordered it as (`seq-index`), once ordered.
    pub job: Option<String>,
    /// When the gateway accepted it (Unix milliseconds).
    pub accepted_ms: u64,
    pub refused: Option<String>,
    /// For a cancel request: the id of the job it cancels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_of: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct VoteView {
    /// The replica's PeerId.
    pub replica: String,
    /// Its outcome (`passed`, `failed`, `timeout`, `error`, `cancelled`), `abstain`, or `null`
    /// before it answered.
    pub vote: Option<&'static str>,
    /// Digest of the result it signed.
    pub result: Option<String>,
    pub detail: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct JobView {
    #[serde(flatten)]
    pub summary: JobSummary,
    pub votes: Vec<VoteView>,
    /// What `pbft-node verify` checks; `null` unless the verdict rests on results.
    pub certificate: Option<Certificate>,
}
