//! Executors run a job and compute its result. The driver calls one per
//! ordered job, on a task of its own, and signs what it returns: a
//! [`JobResult`] (what every correct replica computes the same), or an
//! [`Abstain`] when this replica's own machine could not run the job.
//!
//! `none` is here; `docker` and `local` arrive with the `ci` module.

use std::future::Future;
use std::pin::Pin;

use crate::wire::{JobId, JobResult, Operation, Outcome, Request, RequestError};

/// Why this replica could not run a job (never counted towards a verdict).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Abstain {
    pub reason: String,
}

pub type JobFuture = Pin<Box<dyn Future<Output = Result<JobResult, Abstain>> + Send>>;

pub trait Executor: Send + Sync {
    /// The executor's name, as results record it.
    fn name(&self) -> &'static str;
    /// Runs job `job` of `request`. Called in the order jobs were ordered.
    fn run(&self, job: JobId, request: Request) -> JobFuture;
    /// An ordered cancel of `job`: stop it if it is queued or running (its
    /// result is then `cancelled`); nothing if it has ended.
    fn cancel(&self, _job: JobId) {}
    /// The node stops: stop every job (their outcomes are not results; they
    /// run again at the next start) and return once nothing runs any more.
    fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
}

/// Completes every job at once with a deterministic no-op result: for tests
/// and benchmarks of the ordering path.
pub struct NoneExecutor;

impl NoneExecutor {
    pub fn result(request: &Request) -> JobResult {
        let (commit, outcome) = match &request.op {
            Operation::Run { commit: Some(c), .. } => (Some(c.clone()), Outcome::Passed),
            Operation::Run { commit: None, git_ref, .. } => (
                None,
                Outcome::Error { error: RequestError::RefNotFound, detail: format!("{git_ref} did not resolve") },
            ),
            // Cancelling is the driver's business; the cancel job itself has
            // nothing to run.
            Operation::Cancel { .. } => (None, Outcome::Passed),
        };
        JobResult { commit, tree: None, pipeline: None, executor: "none".into(), steps: Vec::new(), outcome }
    }
}

impl Executor for NoneExecutor {
    fn name(&self) -> &'static str {
        "none"
    }

    fn run(&self, _job: JobId, request: Request) -> JobFuture {
        let result = NoneExecutor::result(&request);
        Box::pin(async move { Ok(result) })
    }
}

#[cfg(test)]
mod tests {
    use libp2p_identity::Keypair;

    use super::*;

    fn request(commit: Option<&str>) -> Request {
        Request {
            gateway: Keypair::generate_ed25519().public().to_peer_id(),
            number: 1,
            delivery: None,
            op: Operation::Run { repo: "file:///r".into(), git_ref: "master".into(), commit: commit.map(Into::into) },
        }
    }

    #[tokio::test]
    async fn none_passes_a_pinned_commit_and_errs_on_an_unpinned_ref() {
        let job = JobId { seq: 1, index: 0 };
        let pinned = NoneExecutor.run(job, request(Some("abc"))).await.unwrap();
        assert_eq!(pinned.outcome, Outcome::Passed);
        assert_eq!(pinned.commit.as_deref(), Some("abc"));
        assert_eq!(pinned.executor, "none");
        assert!(pinned.steps.is_empty());
        let unpinned = NoneExecutor.run(job, request(None)).await.unwrap();
        assert!(matches!(unpinned.outcome, Outcome::Error { error: RequestError::RefNotFound, .. }));
        // Deterministic: same request, same digest.
        let again = NoneExecutor.run(job, request(Some("abc"))).await.unwrap();
        assert_eq!(again.digest(), pinned.digest());
    }
}
