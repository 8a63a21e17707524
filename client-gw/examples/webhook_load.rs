//! A load client for a running gateway, as a git host would drive it:
//! GitHub push events, each a new commit and delivery id, signed with the
//! webhook secret (HMAC-SHA256), over keep-alive HTTP/1.1 connections.
//!
//! - `--mode intake`: `--concurrency` clients post back to back for
//!   `--duration` seconds (closed loop); a request's latency runs from
//!   sending it to its `202` (the job durable). Then it waits for the last
//!   job's verdict, so the figure of how long the replicas took to decide
//!   the whole backlog follows.
//! - `--mode verdict`: posts at `--rate` per second (open loop) with
//!   `?wait=`, so a request's latency runs from sending the webhook to the
//!   answer that carries its verdict.
//!
//! ```text
//! cargo run --release -p pbft-gw --example webhook_load -- --url http://127.0.0.1:8080 \
//!     --secret-file testnet/webhook.secret --mode intake --concurrency 64 --duration 10
//! ```
//!
//! The last line is `LOAD mode=M sent=N ok=K secs=S rps=R p50_ms=P p99_ms=Q errors=E`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::body::Bytes;
use axum::http::{Request, StatusCode};
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pbft_gw::webhook::signature::hmac_sha256_hex;
use serde_json::Value;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Intake,
    Verdict,
}

#[derive(Parser)]
struct Args {
    /// The gateway's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The webhook secret (surrounding whitespace trimmed).
    #[arg(long)]
    secret_file: PathBuf,
    #[arg(long, value_enum, default_value = "intake")]
    mode: Mode,
    /// Clients posting back to back (intake).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Webhooks per second (verdict).
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// The repository the events name (on the membership's allow-list).
    #[arg(long, default_value = "https://github.com/bench/app.git")]
    repo: String,
    /// Distinguishes this run's commits and delivery ids from another's.
    #[arg(long, default_value_t = 0)]
    run: u64,
    /// Intake: do not wait for the last job's verdict (a gateway alone).
    #[arg(long)]
    no_drain: bool,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Load {
    client: HttpClient,
    url: String,
    secret: Vec<u8>,
    repo: String,
    run: u64,
    next: AtomicU64,
}

/// What one webhook got: its status, latency and the answer's job id.
struct Answer {
    status: StatusCode,
    latency: Duration,
    id: Option<String>,
    verdict: Option<String>,
}

impl Load {
    /// A push event for a new commit, signed; its delivery id is unique too.
    async fn post(&self, wait: Option<u64>) -> anyhow::Result<Answer> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let commit = format!("{:020x}{:020x}", self.run, i);
        let body = serde_json::json!({
            "ref": "refs/heads/main",
            "before": "0000000000000000000000000000000000000000",
            "after": commit,
            "repository": { "clone_url": self.repo, "full_name": "bench/app" },
            "head_commit": { "id": commit, "message": "bench" },
        })
        .to_string();
        let sig = format!("sha256={}", hmac_sha256_hex(&self.secret, body.as_bytes()));
        let uri = match wait {
            Some(s) => format!("{}/webhook?wait={s}", self.url),
            None => format!("{}/webhook", self.url),
        };
        let req = Request::post(uri)
            .header("content-type", "application/json")
            .header("x-github-event", "push")
            .header("x-github-delivery", format!("bench-{}-{i}", self.run))
            .header("x-hub-signature-256", sig)
            .body(Full::new(Bytes::from(body)))?;
        let started = Instant::now();
        let resp = self.client.request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let latency = started.elapsed();
        let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let id = json["id"].as_str().map(str::to_string);
        let verdict = json["verdict"].as_str().map(str::to_string);
        Ok(Answer { status, latency, id, verdict })
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let req = Request::get(format!("{}{path}", self.url)).body(Full::new(Bytes::new()))?;
        let resp = self.client.request(req).await?;
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok(serde_json::from_slice(&bytes)?)
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

#[derive(Default)]
struct Tally {
    ok: Vec<Duration>,
    errors: BTreeMap<String, u64>,
    last_id: Option<u64>,
    verdicts: BTreeMap<String, u64>,
}

impl Tally {
    fn take(&mut self, answer: anyhow::Result<Answer>, want: StatusCode) {
        match answer {
            Ok(a) if a.status == want => {
                self.ok.push(a.latency);
                if let Some(n) = a.id.as_deref().and_then(|id| id.parse().ok()) {
                    self.last_id = self.last_id.max(Some(n));
                }
                if let Some(v) = a.verdict {
                    *self.verdicts.entry(v).or_default() += 1;
                }
            }
            Ok(a) => *self.errors.entry(a.status.as_u16().to_string()).or_default() += 1,
            Err(e) => *self.errors.entry(format!("{e}")).or_default() += 1,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.ok.extend(other.ok);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in other.verdicts {
            *self.verdicts.entry(k).or_default() += v;
        }
        self.last_id = self.last_id.max(other.last_id);
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let secret = std::fs::read_to_string(&args.secret_file)
        .with_context(|| format!("reading {}", args.secret_file.display()))?
        .trim()
        .as_bytes()
        .to_vec();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(1024).build(connector);
    let load = Arc::new(Load {
        client,
        url: args.url.trim_end_matches('/').to_string(),
        secret,
        repo: args.repo,
        run: args.run,
        next: AtomicU64::new(0),
    });
    let duration = Duration::from_secs_f64(args.duration);
    let started = Instant::now();
    let mut tally = Tally::default();
    let mode = match args.mode {
        Mode::Intake => {
            let mut workers = Vec::new();
            for _ in 0..args.concurrency.max(1) {
                let load = load.clone();
                workers.push(tokio::spawn(async move {
                    let mut t = Tally::default();
                    while started.elapsed() < duration {
                        t.take(load.post(None).await, StatusCode::ACCEPTED);
                    }
                    t
                }));
            }
            for w in workers {
                tally.merge(w.await?);
            }
            "intake"
        }
        Mode::Verdict => {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate.max(0.01)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut waiting = Vec::new();
            while started.elapsed() < duration {
                tick.tick().await;
                let load = load.clone();
                waiting.push(tokio::spawn(async move { load.post(Some(60)).await }));
            }
            for w in waiting {
                tally.take(w.await?, StatusCode::OK);
            }
            "verdict"
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let sent = load.next.load(Ordering::Relaxed);
    tally.ok.sort_unstable();
    let (p50, p99) = (percentile(&tally.ok, 0.50), percentile(&tally.ok, 0.99));
    let rps = tally.ok.len() as f64 / secs;
    eprintln!(
        "{mode}: {sent} sent, {} answered as expected in {secs:.1} s ({rps:.0}/s); p50 {p50:.2} ms, p99 {p99:.2} ms, max {:.2} ms",
        tally.ok.len(),
        tally.ok.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    );
    if !tally.verdicts.is_empty() {
        eprintln!("verdicts: {:?}", tally.verdicts);
    }
    if !tally.errors.is_empty() {
        eprintln!("errors: {:?}", tally.errors);
    }
    if args.mode == Mode::Intake && !args.no_drain {
        if let Some(last) = tally.last_id {
            // The backlog: how long until the replicas decided the last job.
            let t = Instant::now();
            let job = load.get(&format!("/jobs/{last}?wait=300")).await?;
            eprintln!(
                "the last job ({last}) got its verdict ({}) {:.1} s after the load stopped",
                job["verdict"].as_str().unwrap_or("none yet"),
                t.elapsed().as_secs_f64()
            );
        }
    }
    let errors: u64 = tally.errors.values().sum();
    println!(
        "LOAD mode={mode} sent={sent} ok={} secs={secs:.2} rps={rps:.0} p50_ms={p50:.2} p99_ms={p99:.2} errors={errors}",
        tally.ok.len()
    );
    Ok(())
}
