//! Commit statuses posted back to the git host (`--status-token-file`):
//! `pending` when a job from a GitHub or Gitea push is accepted, then
//! `success`, `failure` or `error` at its verdict, with `context` `pbft-ci`,
//! the job's page as `target_url` and the vote count as `description`.
//!
//! A convenience, never on the verdict's path: the collector drops a note
//! (without waiting) on a queue, and a task of its own posts it, retrying a
//! few times on network errors, 5xx and 429. A job's posts go out in order
//! (its `pending` never lands after its verdict); different jobs' run
//! concurrently, a bounded number at a time.
//!
//! Verdicts map to states as: `passed` → `success`; `failed` → `failure`;
//! `error` (the request could not run: ref not found, invalid pipeline),
//! `disputed`, `undecided` and `cancelled` → `error`, since none of them
//! says the commit's tests failed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, Request, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, info, warn};

use crate::jobs::Jobs;
use crate::metrics::Metrics;
use crate::verdict::Verdict;
use crate::webhook::ForgeKind;

/// Notes waiting for the poster; past this, notes are dropped (and logged).
const QUEUE_MAX: usize = 4096;
/// Posts in flight at once.
const CONCURRENT_MAX: usize = 16;
/// One attempt's limit, connection and answer included.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// GitHub cuts descriptions at 140 characters.
const DESCRIPTION_MAX: usize = 140;

pub struct StatusConfig {
    /// Sent as `Authorization: Bearer …` (GitHub) or `token …` (Gitea).
    pub token: String,
    /// GitHub's REST API base, e.g. `https://api.github.com` (or a GitHub
    /// Enterprise `https://HOST/api/v3`).
    pub github_api: String,
    /// Gitea's or Forgejo's API base, e.g. `https://git.example.org/api/v1`;
    /// `None`: no statuses for their events.
    pub gitea_api: Option<String>,
    /// Where people reach this gateway: `target_url` is `{public_url}/jobs/ID`.
    pub public_url: String,
    /// Attempts per status, and the wait before the first retry (doubling).
    pub attempts: u32,
    pub retry_delay: Duration,
}

/// What the collector tells the poster.
#[derive(Clone, Debug)]
pub enum Note {
    /// Job `number` was accepted (the relay took it).
    Accepted { number: u64 },
    /// Job `number` got `verdict`, with this many votes for the result it
    /// rests on (none for a verdict without one), of `answered` replies
    /// from `n` replicas.
    Verdict { number: u64, verdict: Verdict, agreeing: usize, answered: usize, n: usize },
}

/// The collector's end: notes go out without ever waiting.
#[derive(Clone)]
pub struct Notes(mpsc::Sender<Note>);

impl Notes {
    pub fn send(&self, note: Note) {
        if let Err(e) = self.0.try_send(note) {
            warn!("commit status not posted: the poster is {QUEUE_MAX} notes behind ({e})");
        }
    }
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Starts the poster; must run inside a tokio runtime.
pub fn start(cfg: StatusConfig, jobs: Arc<Jobs>, metrics: Arc<Metrics>) -> Notes {
    let (tx, rx) = mpsc::channel(QUEUE_MAX);
    // rustls with Mozilla's roots compiled in (webpki-roots): the same trust
    // on every machine, no system CA bundle needed; plain http for a local
    // Gitea (and tests).
    let https = hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots().https_or_http().enable_http1().build();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(https);
    tokio::spawn(run(Arc::new(Poster { cfg, client, metrics }), jobs, rx));
    Notes(tx)
}

struct Poster {
    cfg: StatusConfig,
    client: HttpClient,
    metrics: Arc<Metrics>,
}

/// One status to post.
struct Post {
    number: u64,
    url: String,
    kind: ForgeKind,
    state: &'static str,
    body: String,
}

async fn run(poster: Arc<Poster>, jobs: Arc<Jobs>, mut notes: mpsc::Receiver<Note>) {
    let slots = Arc::new(Semaphore::new(CONCURRENT_MAX));
    // The last post of each job, which its next one waits for.
    let mut last: HashMap<u64, tokio::task::JoinHandle<()>> = HashMap::new();
    while let Some(note) = notes.recv().await {
        let Some(post) = poster.post_for(&jobs, &note) else { continue };
        if last.len() >= CONCURRENT_MAX * 4 {
            last.retain(|_, h| !h.is_finished());
        }
        let before = last.remove(&post.number);
        let (poster, slots) = (poster.clone(), slots.clone());
        let number = post.number;
        let task = tokio::spawn(async move {
            if let Some(before) = before {
                let _ = before.await;
            }
            let Ok(_slot) = slots.acquire_owned().await else { return };
            poster.deliver(post).await;
        });
        last.insert(number, task);
    }
}

impl Poster {
    /// The status a note asks for, if its job came from a host we post to.
    fn post_for(&self, jobs: &Jobs, note: &Note) -> Option<Post> {
        let number = match note {
            Note::Accepted { number } | Note::Verdict { number, .. } => *number,
        };
        let job = match jobs.get(number) {
            Ok(Some(job)) => job,
            Ok(None) => return None,
            Err(e) => {
                warn!("commit status of job {number}: reading the job: {e}");
                return None;
            }
        };
        let (forge, sha) = (job.forge?, job.commit?);
        let api = match forge.kind {
            ForgeKind::GitHub => &self.cfg.github_api,
            ForgeKind::Gitea => match &self.cfg.gitea_api {
                Some(api) => api,
                None => {
                    debug!("job {number}: a Gitea push, but no --gitea-api: no commit status");
                    return None;
                }
            },
        };
        let (state, mut description) = match *note {
            Note::Accepted { .. } => ("pending", "accepted; the replicas are running it".to_string()),
            Note::Verdict { verdict, agreeing, answered, n, .. } => {
                (state_of(verdict), describe(verdict, agreeing, answered, n))
            }
        };
        pbft_node::wire::limits::truncate(&mut description, DESCRIPTION_MAX);
        let target_url = format!("{}/jobs/{number}", self.cfg.public_url.trim_end_matches('/'));
        let body = json!({
            "state": state,
            "context": "pbft-ci",
            "target_url": target_url,
            "description": description,
        })
        .to_string();
        let url = format!("{}/repos/{}/statuses/{sha}", api.trim_end_matches('/'), forge.repo);
        Some(Post { number, url, kind: forge.kind, state, body })
    }

    /// Posts with retries; the outcome is logged and counted, never returned.
    async fn deliver(&self, post: Post) {
        let mut wait = self.cfg.retry_delay;
        for attempt in 1..=self.cfg.attempts.max(1) {
            match self.attempt(&post).await {
                Ok(()) => {
                    debug!("job {}: commit status {} posted", post.number, post.state);
                    self.metrics.commit_status(post.state, true);
                    return;
                }
                Err((retry, why)) if retry && attempt < self.cfg.attempts => {
                    info!("job {}: commit status {} (attempt {attempt}): {why}; retrying", post.number, post.state);
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err((_, why)) => {
                    warn!("job {}: commit status {} not posted to {}: {why}", post.number, post.state, post.url);
                    break;
                }
            }
        }
        self.metrics.commit_status(post.state, false);
    }

    /// One attempt; on failure, whether it is worth another and why.
    async fn attempt(&self, post: &Post) -> Result<(), (bool, String)> {
        let auth = match post.kind {
            ForgeKind::GitHub => format!("Bearer {}", self.cfg.token),
            ForgeKind::Gitea => format!("token {}", self.cfg.token),
        };
        let req = Request::post(&post.url)
            .header(header::AUTHORIZATION, auth)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/vnd.github+json, application/json")
            .header(header::USER_AGENT, concat!("pbft-gw/", env!("CARGO_PKG_VERSION")))
            .header("x-github-api-version", "2022-11-28")
            .body(Full::new(Bytes::from(post.body.clone())))
            .map_err(|e| (false, format!("bad request: {e}")))?;
        let resp = match tokio::time::timeout(ATTEMPT_TIMEOUT, self.client.request(req)).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => return Err((true, format!("{e}"))),
            Err(_) => return Err((true, format!("no answer within {ATTEMPT_TIMEOUT:?}"))),
        };
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        // A little of the answer, for the log.
        let text = match tokio::time::timeout(ATTEMPT_TIMEOUT, Limited::new(resp.into_body(), 512).collect()).await {
            Ok(Ok(body)) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
            _ => String::new(),
        };
        let retry = status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
        Err((retry, format!("{status} {}", text.trim())))
    }
}

fn state_of(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Passed => "success",
        Verdict::Failed => "failure",
        Verdict::Error | Verdict::Disputed | Verdict::Undecided | Verdict::Cancelled => "error",
    }
}

fn describe(verdict: Verdict, agreeing: usize, answered: usize, n: usize) -> String {
    let weak = (n - 1) / 3 + 1;
    match verdict {
        Verdict::Passed | Verdict::Failed => {
            format!("{}: {agreeing} of {n} replicas signed this result", verdict.as_str())
        }
        Verdict::Error => format!("error (the request could not run): {agreeing} of {n} replicas agree"),
        Verdict::Disputed => format!("disputed: two results with {weak} or more of {n} replicas each"),
        Verdict::Undecided => format!("undecided: no result reached {weak} of {n} replicas ({answered} answered)"),
        Verdict::Cancelled => "cancelled before a verdict".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_map_to_states_and_counted_descriptions() {
        assert_eq!((state_of(Verdict::Passed), state_of(Verdict::Failed)), ("success", "failure"));
        for v in [Verdict::Error, Verdict::Disputed, Verdict::Undecided, Verdict::Cancelled] {
            assert_eq!(state_of(v), "error", "{v:?}");
        }
        assert_eq!(describe(Verdict::Passed, 3, 4, 4), "passed: 3 of 4 replicas signed this result");
        assert_eq!(describe(Verdict::Undecided, 0, 2, 4), "undecided: no result reached 2 of 4 replicas (2 answered)");
        assert!(describe(Verdict::Disputed, 2, 4, 7).contains("3 or more of 7"));
    }
}
