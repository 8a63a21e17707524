//! Running a job: the only module that names git or Docker.
//!
//! - [`git`]: ref and URL validation, the per-replica repository cache, the
//!   checkout of an exact commit into a fresh workspace.
//! - [`pipeline`]: the `.pbft-ci.yml` file (and the node's default), its
//!   validation and digest.
//! - [`runner`]: the seam between a job and what runs its steps, with
//!   [`local`] (child processes) and [`docker`] (bollard) behind it.
//! - [`job`]: one job from request to [`JobResult`](crate::wire::JobResult):
//!   allow-list, checkout, pipeline, steps, logs, retries of machine faults,
//!   the job queue and cancellation; the driver's `docker` and `local`
//!   executors.

pub mod docker;
pub mod git;
pub mod job;
pub mod local;
pub mod pipeline;
pub mod runner;
