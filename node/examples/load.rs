//! A load generator for a running network: a member gateway that submits
//! requests through the library client, either keeping `--in-flight`
//! requests outstanding (closed loop, for throughput at saturation) or at a
//! fixed `--rate` (open loop, for latency below saturation). A request's
//! latency runs from its submission to f + 1 replicas answering that it is
//! ordered.
//!
//! ```text
//! cargo run --release --example load -- --members M.toml --key gw.key \
//!     --bootstrap /ip4/127.0.0.1/tcp/7000 --in-flight 512 --duration 10
//! ```
//!
//! The last line is `LOAD ordered=N secs=S rps=R p50_ms=P p99_ms=Q`.
//! Request numbers start at `--first-number`: a gateway's numbers must stay
//! fresh, so a second run with the same key starts above the first's.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use pbft_node::membership::Membership;
use pbft_node::net::client::{Client, ClientConfig, ClientEvent};
use pbft_node::wire::{Digest, Operation, Request};

/// How long to wait, after the run, for requests still outstanding.
const DRAIN_SECS: u64 = 30;

#[derive(Parser)]
struct Args {
    /// Membership file; the key must be one of its gateways.
    #[arg(long)]
    members: PathBuf,
    /// The gateway's key file.
    #[arg(long)]
    key: PathBuf,
    /// Where to find the network, repeatable.
    #[arg(long)]
    bootstrap: Vec<String>,
    /// Requests kept outstanding (closed loop).
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Submit at this many requests per second instead (open loop).
    #[arg(long)]
    rate: Option<f64>,
    /// How long to submit, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    #[arg(long, default_value_t = 1)]
    first_number: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let key = pbft_node::keys::load(&args.key)?;
    let membership = Arc::new(Membership::load(&args.members)?);
    let mut cfg = ClientConfig::new(key, membership.clone());
    cfg.bootstrap = args.bootstrap.clone();
    let mut client = Client::start(cfg).context("joining the network")?;
    let n = membership.replicas.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.connected_replicas().await < n {
        anyhow::ensure!(Instant::now() < deadline, "not connected to all {n} replicas within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let gossipsub learn who subscribes to what.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut number = args.first_number;
    let mut sent: HashMap<Digest, Instant> = HashMap::new();
    let mut latencies: Vec<Duration> = Vec::new();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.duration);
    let interval = args.rate.map(|r| Duration::from_secs_f64(1.0 / r));
    let mut next_at = start;

    let submit = |client: &Client, number: &mut u64| {
        let op = Operation::Run {
            repo: "file:///bench".into(),
            git_ref: "master".into(),
            commit: Some(format!("{:040x}", *number)),
        };
        let req = Request { gateway: client.peer_id(), number: *number, delivery: None, op };
        *number += 1;
        req
    };
    loop {
        let now = Instant::now();
        if now < end {
            match interval {
                None => {
                    while sent.len() < args.in_flight {
                        let req = submit(&client, &mut number);
                        sent.insert(req.digest(), Instant::now());
                        client.submit_unsigned(req).await;
                    }
                }
                Some(every) => {
                    while next_at <= now {
                        let req = submit(&client, &mut number);
                        sent.insert(req.digest(), Instant::now());
                        client.submit_unsigned(req).await;
                        next_at += every;
                    }
                }
            }
        } else if sent.is_empty() || now > end + Duration::from_secs(DRAIN_SECS) {
            // What is still outstanding is not counted; waiting for it
            // leaves a quiet network to whoever measures next.
            break;
        }
        let wait = match interval {
            Some(_) if now < end => next_at.saturating_duration_since(now).max(Duration::from_micros(100)),
            _ => Duration::from_millis(50),
        };
        match tokio::time::timeout(wait, client.next_event()).await {
            Ok(Some(ClientEvent::Ordered { request, .. })) => {
                if let Some(at) = sent.remove(&request) {
                    // Closed loop: what was ordered within the run; open
                    // loop: what was submitted within it.
                    let counted = if interval.is_none() { Instant::now() <= end } else { at < end };
                    if counted {
                        latencies.push(at.elapsed());
                    }
                }
            }
            Ok(Some(ClientEvent::Refused { number, reason, .. })) => {
                anyhow::bail!("request {number} refused: {reason:?}")
            }
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => anyhow::bail!("client stopped"),
        }
    }
    let secs = args.duration;
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(f64::NAN)
    };
    let ordered = latencies.len();
    let rps = ordered as f64 / secs;
    println!(
        "ordered {ordered} requests in {secs} s ({rps:.0}/s), {} never ordered; latency p50 {:.1} ms, p99 {:.1} ms; next number {number}",
        sent.len(),
        pct(0.5),
        pct(0.99)
    );
    println!(
        "LOAD ordered={ordered} secs={secs} rps={rps:.1} p50_ms={:.2} p99_ms={:.2} next={number}",
        pct(0.5),
        pct(0.99)
    );
    client.shutdown().await;
    Ok(())
}
