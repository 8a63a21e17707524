//! `pbft-gw`, the gateway of pbft-ci: webhooks in, verdicts out.
//!
//! - [`webhook`]: intake, what a delivery asks for (pure): the proof of
//!   concept's `{"branch": B}` and the push events of GitHub, Gitea/Forgejo
//!   and GitLab, their signatures, refs and commit ids.
//! - [`verdict`]: the verdict rule (pure): votes of the replicas in, verdict
//!   and the results its certificate carries out.
//! - [`jobs`]: durable state (redb): the request counter, accepted jobs,
//!   delivery ids, the replicas' signed replies, verdicts.
//! - [`gateway`]: what the HTTP side asks: accept durably, hand over to the
//!   relay, job views with votes and certificates, waiting for a verdict.
//! - [`http`]: the routes and JSON of DESIGN.md's "Gateway HTTP" (axum).
//! - [`metrics`]: the Prometheus counters of `GET /metrics`.
//! - [`ui`]: the pages for people (the job list, a job's votes,
//!   certificate and logs), pure HTML with everything escaped.
//! - [`relay`]: the gateway's side of the swarm: submit, collect signed
//!   replies, apply the verdict rule, resubmit and refetch after a restart.
//! - [`status`]: commit statuses posted back to GitHub or Gitea, retried,
//!   never in the verdict's way.

pub mod gateway;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod relay;
pub mod status;
pub mod ui;
pub mod verdict;
pub mod webhook;
