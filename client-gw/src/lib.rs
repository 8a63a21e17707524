//! `pbft-gw`, the gateway of pbft-ci: webhooks in, verdicts out.
//!
//! - [`webhook`]: intake, what a delivery asks for (pure): the proof of
//!   concept's `{"branch": B}` and the push events of GitHub, Gitea/Forgejo
//!   and GitLab, their signatures, refs and commit ids.
//! - [`verdict`]: the verdict rule (pure): votes of the replicas in, verdict
//!   and the results its certificate carries out.
//! - [`jobs`]: durable state (redb): the request counter, accepted jobs,
//!   delivery ids, the replicas' signed replies, verdicts.

pub mod jobs;
pub mod verdict;
pub mod webhook;
