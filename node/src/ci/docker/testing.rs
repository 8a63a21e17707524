//! Test support around a real Docker engine, for this crate's tests (the
//! runner's and the job layer's): a runner or a clear skip, and the busybox
//! image, built at most once per test process.

use tokio::sync::OnceCell;

use super::{DockerLimits, DockerRunner};

/// The tag of the test image (see [`DockerRunner::build_busybox_image`]).
pub(crate) const BUSYBOX: &str = "pbft-ci-test/busybox:latest";

/// A runner owned by `owner`, or `None` once it printed why the test skips:
/// no engine answers. With `CI` set nothing skips, as CI must have Docker:
/// the test fails instead.
pub(crate) async fn runner_or_skip(owner: &str, limits: DockerLimits) -> Option<DockerRunner> {
    match DockerRunner::connect(owner, limits).await {
        Ok(runner) => Some(runner),
        Err(fault) if std::env::var_os("CI").is_some() => panic!("CI must have a Docker engine: {fault}"),
        Err(fault) => {
            eprintln!("skipping: no Docker engine ({fault})");
            None
        }
    }
}

/// The busybox test image's tag, once the image exists.
pub(crate) async fn busybox(runner: &DockerRunner) -> &'static str {
    // Each test has its own runtime, and so its own runner; only the outcome is shared.
    static BUILT: OnceCell<String> = OnceCell::const_new();
    BUILT
        .get_or_init(|| async { runner.build_busybox_image(BUSYBOX).await.unwrap_or_else(|fault| panic!("{fault}")) })
        .await;
    BUSYBOX
}
