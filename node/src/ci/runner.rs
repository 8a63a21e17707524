//! What runs one step of a pipeline: [`local`](super::local) child processes
//! or [`docker`](super::docker) containers. The job (`super::job`) decides
//! what to run and in which order; a runner only runs one step and says how
//! it ended.
//!
//! Errors split in two, as results require (DESIGN.md, "Results and
//! verdicts"): how a step ended ([`StepExit`]) is part of the result and must
//! be the same on every correct replica; a [`Fault`] is this machine's
//! problem (no engine, image missing, disk full) and is retried, then
//! abstained on.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// One step, as a runner needs it.
#[derive(Clone, Debug)]
pub struct StepSpec<'a> {
    /// The step's name (unique within the pipeline).
    pub name: &'a str,
    /// The image to run it in (ignored by the local runner).
    pub image: &'a str,
    /// Shell commands, run in order by `sh -c`, stopping at the first that fails
    /// (its exit code is the step's).
    pub commands: &'a [String],
    /// Variables set for the commands, besides the runner's minimal set.
    pub environment: &'a BTreeMap<String, String>,
    /// Whether the step may reach the network.
    pub network: bool,
    /// The step is stopped and counted as timed out after this long.
    pub timeout: Duration,
    /// The checked-out workspace: the step's working directory, writable.
    pub workspace: &'a Path,
    /// The file the step's output (stdout and stderr) is appended to.
    pub log: &'a Path,
    /// At most this many bytes of output go to the log; past it, one line
    /// marks the truncation and the rest is dropped (the step still runs).
    pub log_bytes_max: u64,
    /// An id of the job, unique on this replica, for labels and names
    /// (e.g. `3-0` for job (3, 0)).
    pub job: &'a str,
}

/// How a step ended: part of the result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepExit {
    /// Its last command exited with this code (0: the step passed).
    Exited(i32),
    /// It ran past its timeout and was stopped.
    TimedOut,
    /// The job was cancelled while it ran; it was stopped.
    Cancelled,
}

/// A fault of this replica's machine, not of the job: retried, then abstained on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Fault(pub String);

/// Runs steps. Implementations clean up after themselves whatever happens:
/// no process or container outlives `run_step`, also when its future is
/// dropped.
pub trait StepRunner: Send + Sync + 'static {
    /// The executor kind results record: `docker` or `local`.
    fn kind(&self) -> &'static str;

    /// The id of `image` as the result records it (Docker's `sha256:…`), or
    /// `None` where images mean nothing (local). Called once per step before
    /// any step runs, so an unavailable image is a fault before work starts.
    fn image_id(&self, image: &str) -> impl Future<Output = Result<Option<String>, Fault>> + Send;

    /// Runs one step to its end, its timeout, or `cancel`.
    fn run_step(
        &self,
        step: &StepSpec<'_>,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<StepExit, Fault>> + Send;
}
