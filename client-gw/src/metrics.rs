//! The gateway's metrics, served as Prometheus (OpenMetrics) text at
//! `GET /metrics`. Everything is counted where it happens (the HTTP intake,
//! the collector, the status poster); this module only names and encodes.
//!
//! - `pbft_gw_webhooks_total{outcome, status}`: deliveries by what became of
//!   them (`accepted`, `redelivery`, `skipped`, `rejected`) and the HTTP
//!   status answered;
//! - `pbft_gw_verdicts_total{verdict}`: verdicts given (a `disputed` that
//!   follows a decided verdict counts as one more);
//! - `pbft_gw_webhook_to_verdict_seconds`: from durable acceptance to a job's
//!   first verdict;
//! - `pbft_gw_replies_total{replica, kind}`: signed replies taken, by replica
//!   index (membership order) and kind;
//! - `pbft_gw_replicas_connected`, `pbft_gw_replicas`: connected replicas, and
//!   how many the membership lists;
//! - `pbft_gw_evidence_total{replica}`: replicas caught signing two
//!   different results for one job (the two signed replies are logged);
//! - `pbft_gw_commit_statuses_total{state, result}`: commit statuses posted
//!   to the git host (`sent`, or `failed` after the last retry).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::verdict::Verdict;

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the latency buckets: milliseconds for jobs the
/// `none` executor completes at once, up to an hour for real pipelines.
const LATENCY_BUCKETS: [f64; 20] = [
    0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0,
    1800.0, 3600.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    outcome: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplyLabels {
    replica: u32,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    replica: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    state: &'static str,
    result: &'static str,
}

/// What became of a webhook delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookOutcome {
    Accepted,
    Redelivery,
    Skipped,
    Rejected,
}

impl WebhookOutcome {
    fn as_str(self) -> &'static str {
        match self {
            WebhookOutcome::Accepted => "accepted",
            WebhookOutcome::Redelivery => "redelivery",
            WebhookOutcome::Skipped => "skipped",
            WebhookOutcome::Rejected => "rejected",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    webhooks: Family<WebhookLabels, Counter>,
    verdicts: Family<VerdictLabels, Counter>,
    latency: Histogram,
    replies: Family<ReplyLabels, Counter>,
    connected: Gauge,
    statuses: Family<StatusLabels, Counter>,
    evidence: Family<ReplicaLabels, Counter>,
}

impl Metrics {
    /// The metrics of a network of `replicas` replicas.
    pub fn new(replicas: usize) -> Metrics {
        let mut registry = Registry::with_prefix("pbft_gw");
        let webhooks = Family::<WebhookLabels, Counter>::default();
        registry.register("webhooks", "Webhook deliveries by outcome and HTTP status", webhooks.clone());
        let verdicts = Family::<VerdictLabels, Counter>::default();
        registry.register("verdicts", "Verdicts given, by kind", verdicts.clone());
        let latency = Histogram::new(LATENCY_BUCKETS);
        registry.register_with_unit(
            "webhook_to_verdict",
            "From a job's durable acceptance to its first verdict",
            Unit::Seconds,
            latency.clone(),
        );
        let replies = Family::<ReplyLabels, Counter>::default();
        registry.register("replies", "Signed replies taken, by replica index and kind", replies.clone());
        let connected = Gauge::default();
        registry.register("replicas_connected", "Replicas the gateway is connected to", connected.clone());
        let total = Gauge::<u64, AtomicU64>::default();
        total.set(replicas as u64);
        registry.register("replicas", "Replicas in the membership", total);
        let statuses = Family::<StatusLabels, Counter>::default();
        registry.register("commit_statuses", "Commit statuses posted to the git host", statuses.clone());
        let evidence = Family::<ReplicaLabels, Counter>::default();
        registry.register("evidence", "Replicas caught signing two different results for one job", evidence.clone());
        Metrics { registry, webhooks, verdicts, latency, replies, connected, statuses, evidence }
    }

    pub fn webhook(&self, outcome: WebhookOutcome, status: u16) {
        self.webhooks.get_or_create(&WebhookLabels { outcome: outcome.as_str(), status }).inc();
    }

    /// A verdict given; `latency` for a job's first one.
    pub fn verdict(&self, verdict: Verdict, latency: Option<Duration>) {
        self.verdicts.get_or_create(&VerdictLabels { verdict: verdict.as_str() }).inc();
        if let Some(l) = latency {
            self.latency.observe(l.as_secs_f64());
        }
    }

    pub fn reply(&self, replica: usize, kind: &'static str) {
        self.replies.get_or_create(&ReplyLabels { replica: replica as u32, kind }).inc();
    }

    /// Replica `replica` was caught signing two different results for one job.
    pub fn evidence(&self, replica: usize) {
        self.evidence.get_or_create(&ReplicaLabels { replica: replica as u32 }).inc();
    }

    pub fn set_connected(&self, replicas: usize) {
        self.connected.set(replicas as i64);
    }

    /// A commit status posted (`sent`) or given up on (`failed`).
    pub fn commit_status(&self, state: &'static str, sent: bool) {
        let result = if sent { "sent" } else { "failed" };
        self.statuses.get_or_create(&StatusLabels { state, result }).inc();
    }

    /// The text exposition, OpenMetrics flavour (Prometheus reads it).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String never fails");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_named_as_documented() {
        let m = Metrics::new(4);
        m.webhook(WebhookOutcome::Rejected, 401);
        m.webhook(WebhookOutcome::Accepted, 202);
        m.webhook(WebhookOutcome::Accepted, 202);
        m.verdict(Verdict::Passed, Some(Duration::from_millis(15)));
        m.reply(2, "result");
        m.set_connected(3);
        m.commit_status("pending", true);
        m.evidence(1);
        let text = m.encode();
        for line in [
            "pbft_gw_webhooks_total{outcome=\"rejected\",status=\"401\"} 1",
            "pbft_gw_webhooks_total{outcome=\"accepted\",status=\"202\"} 2",
            "pbft_gw_verdicts_total{verdict=\"passed\"} 1",
            "pbft_gw_webhook_to_verdict_seconds_bucket{le=\"0.02\"} 1",
            "pbft_gw_webhook_to_verdict_seconds_bucket{le=\"0.01\"} 0",
            "pbft_gw_webhook_to_verdict_seconds_count 1",
            "pbft_gw_replies_total{replica=\"2\",kind=\"result\"} 1",
            "pbft_gw_replicas_connected 3",
            "pbft_gw_replicas 4",
            "pbft_gw_commit_statuses_total{state=\"pending\",result=\"sent\"} 1",
            "pbft_gw_evidence_total{replica=\"1\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
