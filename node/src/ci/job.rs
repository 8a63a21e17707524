//! One job, from the ordered request to its [`JobResult`]: the allow-list,
//! the checkout, the pipeline, each step through a [`StepRunner`], logs,
//! retries of machine faults, the job queue and cancellation. [`CiExecutor`]
//! is the driver's `docker` and `local` executor.
//!
//! On disk, under the executor's directory:
//! - `cache/`: the repositories' bare caches ([`Git`]);
//! - `work/<seq>-<index>/`: a job's workspace, created fresh for every
//!   attempt and removed when the job ends;
//! - `logs/<seq>-<index>/`: one log per step (`<n>-<name>.log`, bounded) and
//!   `SHA256SUMS` over them; the newest `keep_logs` jobs are kept.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::git::{CheckoutError, Git, GitConfig};
use super::pipeline::{self, Pipeline};
use super::runner::{Fault, StepExit, StepRunner, StepSpec};
use crate::driver::{Abstain, Executor, JobFuture};
use crate::membership::Membership;
use crate::wire::{limits, JobId, JobResult, Operation, Outcome, Request, RequestError, StepResult};

/// How long a stopping node waits for its jobs to clean up.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(15);

pub struct CiConfig {
    /// Where caches, workspaces and logs live (e.g. `DATA_DIR/ci`).
    pub dir: PathBuf,
    /// URL schemes allowed besides `https` (e.g. `ssh`).
    pub schemes: Vec<String>,
    /// Allow `file://` repositories (the local testnet's).
    pub allow_file_urls: bool,
    /// The pipeline of repositories without `.pbft-ci.yml`.
    pub default_pipeline: Option<Pipeline>,
    /// Jobs running at once; the others wait in order.
    pub max_jobs: usize,
    /// A step's log is cut (with a marker) past this many bytes.
    pub log_bytes_max: u64,
    /// Attempts of a job whose failures are this machine's before it abstains.
    pub attempts: u32,
    /// Wait before the first retry; doubles per retry.
    pub retry_delay: Duration,
    /// Logs of this many jobs are kept; older ones are removed.
    pub keep_logs: usize,
}

impl CiConfig {
    pub fn new(dir: PathBuf) -> CiConfig {
        CiConfig {
            dir,
            schemes: Vec::new(),
            allow_file_urls: false,
            default_pipeline: None,
            max_jobs: 2,
            log_bytes_max: 4 << 20,
            attempts: 3,
            retry_delay: Duration::from_secs(2),
            keep_logs: 1000,
        }
    }
}

/// Runs ordered jobs with the runner `R`.
pub struct CiExecutor<R: StepRunner> {
    inner: Arc<Inner<R>>,
}

struct Inner<R> {
    cfg: CiConfig,
    git: Git,
    runner: R,
    membership: Arc<Membership>,
    slots: Semaphore,
    /// Jobs started and not ended, to cancel; registered when the driver
    /// starts them (in order), before any waits for a slot.
    tokens: Mutex<HashMap<JobId, CancellationToken>>,
}

/// How an attempt went wrong.
enum Stop {
    /// A property of the request: the job's result.
    Result(Box<JobResult>),
    /// This machine's fault: retry, then abstain.
    Fault(Fault),
}

impl<R: StepRunner> CiExecutor<R> {
    pub fn new(cfg: CiConfig, runner: R, membership: Arc<Membership>) -> std::io::Result<CiExecutor<R>> {
        // Steps of the local executor, run as an unprivileged user when the
        // node is root, reach their workspace and nothing else of ours.
        for (sub, mode) in [("", 0o711), ("cache", 0o700), ("work", 0o711), ("logs", 0o700)] {
            let dir = cfg.dir.join(sub);
            std::fs::create_dir_all(&dir)?;
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        }
        // Workspaces of jobs interrupted by a crash: they run again, afresh.
        for entry in std::fs::read_dir(cfg.dir.join("work"))? {
            let path = entry?.path();
            if let Err(e) = remove_tree(&path) {
                warn!("removing the stale workspace {}: {e}", path.display());
            }
        }
        let git = Git::new(GitConfig {
            cache_dir: cfg.dir.join("cache"),
            allow_file_urls: cfg.allow_file_urls,
            schemes: cfg.schemes.clone(),
        });
        let slots = Semaphore::new(cfg.max_jobs.max(1));
        Ok(CiExecutor {
            inner: Arc::new(Inner { cfg, git, runner, membership, slots, tokens: Mutex::new(HashMap::new()) }),
        })
    }
}

impl<R: StepRunner> Executor for CiExecutor<R> {
    fn name(&self) -> &'static str {
        self.inner.runner.kind()
    }

    fn run(&self, job: JobId, request: Request) -> JobFuture {
        let inner = self.inner.clone();
        let token = CancellationToken::new();
        inner.tokens.lock().expect("tokens").insert(job, token.clone());
        Box::pin(async move {
            let _registered = Registered { inner: &inner, job };
            let (repo, git_ref, commit) = match request.op {
                Operation::Run { repo, git_ref, commit } => (repo, git_ref, commit),
                // The cancel itself has nothing to run: the driver already
                // told the executor (see `cancel`).
                Operation::Cancel { .. } => return Ok(inner.result(None, None, Vec::new(), Outcome::Passed)),
            };
            let Ok(_slot) = inner.slots.acquire().await else {
                return Err(Abstain { reason: "the job queue is closed".into() });
            };
            inner.run_job(job, &repo, &git_ref, commit.as_deref(), &token).await
        })
    }

    fn cancel(&self, job: JobId) {
        if let Some(token) = self.inner.tokens.lock().expect("tokens").get(&job) {
            info!(%job, "cancelling");
            token.cancel();
        }
    }

    fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            self.inner.slots.close();
            for token in self.inner.tokens.lock().expect("tokens").values() {
                token.cancel();
            }
            // Each job's guard unregisters it once its runner cleaned up.
            let deadline = Instant::now() + SHUTDOWN_WAIT;
            while !self.inner.tokens.lock().expect("tokens").is_empty() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }
}

/// Unregisters a job's token however its future ends.
struct Registered<'a, R> {
    inner: &'a Inner<R>,
    job: JobId,
}

impl<R> Drop for Registered<'_, R> {
    fn drop(&mut self) {
        self.inner.tokens.lock().expect("tokens").remove(&self.job);
    }
}

impl<R: StepRunner> Inner<R> {
    fn result(
        &self,
        commit: Option<String>,
        pipeline: Option<&Pipeline>,
        steps: Vec<StepResult>,
        outcome: Outcome,
    ) -> JobResult {
        JobResult {
            commit,
            tree: None,
            pipeline: pipeline.map(Pipeline::digest),
            executor: self.runner.kind().into(),
            steps,
            outcome,
        }
    }

    fn error(&self, commit: Option<&str>, error: RequestError, detail: String) -> JobResult {
        let mut detail = detail;
        limits::truncate(&mut detail, limits::TEXT_BYTES_MAX);
        self.result(commit.map(Into::into), None, Vec::new(), Outcome::Error { error, detail })
    }

    async fn run_job(
        &self,
        job: JobId,
        repo: &str,
        git_ref: &str,
        commit: Option<&str>,
        cancel: &CancellationToken,
    ) -> Result<JobResult, Abstain> {
        if !self.membership.repo_allowed(repo) {
            return Ok(self.error(commit, RequestError::RepoNotAllowed, format!("{repo} is not on the allow-list")));
        }
        let name = format!("{}-{}", job.seq, job.index);
        let started = Instant::now();
        let mut delay = self.cfg.retry_delay;
        let mut attempt = 1;
        let outcome = loop {
            if cancel.is_cancelled() {
                break Ok(self.result(commit.map(Into::into), None, Vec::new(), Outcome::Cancelled));
            }
            let workspace = self.cfg.dir.join("work").join(&name);
            let attempted = self.attempt(&name, repo, git_ref, commit, &workspace, cancel).await;
            if let Err(e) = remove_tree(&workspace) {
                warn!(%job, "removing the workspace {}: {e}", workspace.display());
            }
            match attempted {
                Ok(result) => break Ok(result),
                Err(Stop::Result(result)) => break Ok(*result),
                Err(Stop::Fault(fault)) if attempt >= self.cfg.attempts => {
                    warn!(%job, attempt, "abstaining: {fault}");
                    break Err(Abstain { reason: fault.0 });
                }
                Err(Stop::Fault(fault)) => {
                    warn!(%job, attempt, "this machine failed the job, retrying in {delay:?}: {fault}");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = cancel.cancelled() => {}
                    }
                    delay *= 2;
                    attempt += 1;
                }
            }
        };
        match &outcome {
            Ok(r) => info!(%job, outcome = ?r.outcome, took = ?started.elapsed(), "job ended"),
            Err(a) => info!(%job, reason = %a.reason, "job abstained"),
        }
        self.retain_logs();
        outcome
    }

    /// One attempt: checkout, pipeline, steps.
    async fn attempt(
        &self,
        name: &str,
        repo: &str,
        git_ref: &str,
        commit: Option<&str>,
        workspace: &Path,
        cancel: &CancellationToken,
    ) -> Result<JobResult, Stop> {
        remove_tree(workspace).map_err(|e| fault("clearing the workspace", e))?;
        let checkout = tokio::select! {
            c = self.git.checkout(repo, git_ref, commit, workspace) => c,
            _ = cancel.cancelled() => {
                return Ok(self.result(commit.map(Into::into), None, Vec::new(), Outcome::Cancelled))
            }
        };
        let checkout = checkout.map_err(|e| {
            let (error, detail) = match e {
                CheckoutError::Fault(f) => return Stop::Fault(Fault(f)),
                CheckoutError::InvalidRef(d) => (RequestError::InvalidRef, d),
                CheckoutError::RepoNotAllowed(d) => (RequestError::RepoNotAllowed, d),
                CheckoutError::RefNotFound(d) => (RequestError::RefNotFound, d),
                CheckoutError::CommitNotOnRef(d) => (RequestError::CommitNotOnRef, d),
            };
            Stop::Result(Box::new(self.error(commit, error, detail)))
        })?;
        let done = |pipeline: Option<&Pipeline>, steps, outcome| {
            let mut r = self.result(Some(checkout.commit.clone()), pipeline, steps, outcome);
            r.tree = Some(checkout.tree.clone());
            r
        };
        let pipeline = match pipeline::load(workspace, self.cfg.default_pipeline.as_ref()) {
            Ok(p) => p,
            Err(e) if e.is_fault() => return Err(Stop::Fault(Fault(e.to_string()))),
            Err(e) => {
                let mut detail = e.to_string();
                limits::truncate(&mut detail, limits::TEXT_BYTES_MAX);
                return Ok(done(None, Vec::new(), Outcome::Error { error: RequestError::InvalidPipeline, detail }));
            }
        };
        // Images first: one that is missing is a fault before any work.
        let mut images = Vec::with_capacity(pipeline.steps.len());
        for (i, step) in pipeline.steps.iter().enumerate() {
            let image = match pipeline.step_image(i) {
                Some(image) => image.to_string(),
                None if self.runner.kind() == "local" => String::new(),
                None => {
                    let detail = format!("step {:?} names no image, and the pipeline no default image", step.name);
                    let outcome = Outcome::Error { error: RequestError::InvalidPipeline, detail };
                    return Ok(done(Some(&pipeline), Vec::new(), outcome));
                }
            };
            let id = self.runner.image_id(&image).await.map_err(Stop::Fault)?;
            images.push((image, id));
        }
        let logs = self.cfg.dir.join("logs").join(name);
        remove_tree(&logs).map_err(|e| fault("clearing the logs", e))?;
        std::fs::create_dir_all(&logs).map_err(|e| fault("creating the log directory", e))?;
        let deadline = Instant::now() + pipeline.timeout;
        let mut steps: Vec<StepResult> = pipeline
            .steps
            .iter()
            .zip(&images)
            .map(|(s, (_, id))| StepResult { name: s.name.clone(), image: id.clone(), exit_code: None })
            .collect();
        let mut outcome = Outcome::Passed;
        let mut log_files = Vec::new();
        for (i, step) in pipeline.steps.iter().enumerate() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let log = logs.join(format!("{i}-{}.log", step.name));
            let spec = StepSpec {
                name: &step.name,
                image: &images[i].0,
                commands: &step.commands,
                environment: &step.environment,
                network: pipeline.network,
                timeout: pipeline.step_timeout(i).min(remaining),
                workspace,
                log: &log,
                log_bytes_max: self.cfg.log_bytes_max,
                job: name,
            };
            let exit = self.runner.run_step(&spec, cancel).await.map_err(Stop::Fault)?;
            log_files.push(log);
            match exit {
                StepExit::Exited(0) => steps[i].exit_code = Some(0),
                StepExit::Exited(code) => {
                    steps[i].exit_code = Some(code);
                    outcome = Outcome::Failed { step: step.name.clone(), exit_code: code };
                    break;
                }
                StepExit::TimedOut => {
                    outcome = Outcome::Timeout { step: step.name.clone() };
                    break;
                }
                StepExit::Cancelled => {
                    outcome = Outcome::Cancelled;
                    break;
                }
            }
        }
        if let Err(e) = write_sums(&logs, &log_files) {
            warn!("writing the log digests of {name}: {e}");
        }
        Ok(done(Some(&pipeline), steps, outcome))
    }

    /// Keeps the newest `keep_logs` jobs' logs (by job id).
    fn retain_logs(&self) {
        let dir = self.cfg.dir.join("logs");
        let Ok(entries) = std::fs::read_dir(&dir) else { return };
        let mut jobs: Vec<((u64, u64), PathBuf)> = entries
            .filter_map(|e| {
                let path = e.ok()?.path();
                let (seq, index) = path.file_name()?.to_str()?.split_once('-')?;
                Some(((seq.parse().ok()?, index.parse().ok()?), path))
            })
            .collect();
        if jobs.len() <= self.cfg.keep_logs {
            return;
        }
        jobs.sort();
        let old = jobs.len() - self.cfg.keep_logs;
        for (_, path) in jobs.into_iter().take(old) {
            if let Err(e) = remove_tree(&path) {
                warn!("removing old logs {}: {e}", path.display());
            }
        }
    }
}

fn fault(what: &str, e: std::io::Error) -> Stop {
    Stop::Fault(Fault(format!("{what}: {e}")))
}

/// Removes a directory tree; one that does not exist is fine.
fn remove_tree(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// `SHA256SUMS` beside the logs, in `sha256sum`'s format, so a log can be
/// checked later against what the replica recorded at the end of the job.
fn write_sums(dir: &Path, files: &[PathBuf]) -> std::io::Result<()> {
    let mut sums = String::new();
    for file in files {
        let mut hasher = Sha256::new();
        std::io::copy(&mut std::fs::File::open(file)?, &mut hasher)?;
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        sums.push_str(&format!("{}  {name}\n", hex::encode(hasher.finalize())));
    }
    std::fs::write(dir.join("SHA256SUMS"), sums)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use libp2p_identity::Keypair;

    use super::*;
    use crate::ci::local::LocalRunner;
    use crate::membership::Member;

    /// A git repository on disk with `master` (passing pipeline) and
    /// `feature` (a failing test step), as the tests' upstream.
    struct Upstream {
        dir: tempfile::TempDir,
    }

    impl Upstream {
        fn new() -> Upstream {
            let up = Upstream { dir: tempfile::tempdir().unwrap() };
            up.git(&["init", "-q", "-b", "master"]);
            up.write(".pbft-ci.yml", "steps:\n  - name: build\n    commands: [\"test -f a.txt\", \"echo built > out.txt\"]\n  - name: test\n    commands: [\"grep -qx ok a.txt\"]\n");
            up.write("a.txt", "ok\n");
            up.commit("passing");
            up.git(&["checkout", "-q", "-b", "feature"]);
            up.write("a.txt", "broken\n");
            up.commit("failing");
            up.git(&["checkout", "-q", "master"]);
            up
        }

        fn url(&self) -> String {
            format!("file://{}", self.dir.path().display())
        }

        fn write(&self, file: &str, text: &str) {
            std::fs::write(self.dir.path().join(file), text).unwrap();
        }

        fn git(&self, args: &[&str]) -> String {
            let out = Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"])
                .args(args)
                .current_dir(self.dir.path())
                .output()
                .unwrap();
            assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        }

        fn commit(&self, message: &str) -> String {
            self.git(&["add", "-A"]);
            self.git(&["commit", "-q", "-m", message]);
            self.git(&["rev-parse", "HEAD"])
        }
    }

    fn membership(repos: &[&str]) -> Arc<Membership> {
        let member = |_| Member { peer_id: Keypair::generate_ed25519().public().to_peer_id(), addr: None };
        Arc::new(
            Membership::new(
                "ci-test".into(),
                (0..4).map(member).collect(),
                vec![member(0)],
                repos.iter().map(|r| r.to_string()).collect(),
            )
            .unwrap(),
        )
    }

    fn executor(dir: &Path, up: &Upstream, tune: impl FnOnce(&mut CiConfig)) -> CiExecutor<LocalRunner> {
        let mut cfg = CiConfig::new(dir.to_path_buf());
        cfg.allow_file_urls = true;
        cfg.retry_delay = Duration::from_millis(10);
        tune(&mut cfg);
        CiExecutor::new(cfg, LocalRunner::new(), membership(&[&up.url(), "file:///elsewhere/"])).unwrap()
    }

    fn run_op(repo: &str, git_ref: &str, commit: Option<&str>) -> Request {
        Request {
            gateway: Keypair::generate_ed25519().public().to_peer_id(),
            number: 1,
            delivery: None,
            op: Operation::Run { repo: repo.into(), git_ref: git_ref.into(), commit: commit.map(Into::into) },
        }
    }

    async fn run(ex: &CiExecutor<LocalRunner>, seq: u64, repo: &str, git_ref: &str, commit: Option<&str>) -> JobResult {
        ex.run(JobId { seq, index: 0 }, run_op(repo, git_ref, commit)).await.expect("a result, not an abstention")
    }

    fn error_of(r: &JobResult) -> RequestError {
        match &r.outcome {
            Outcome::Error { error, .. } => *error,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn master_passes_and_feature_fails_at_its_test_step() {
        let up = Upstream::new();
        let dir = tempfile::tempdir().unwrap();
        let ex = executor(dir.path(), &up, |_| {});
        let head = up.git(&["rev-parse", "master"]);
        let passed = run(&ex, 1, &up.url(), "master", Some(&head)).await;
        assert_eq!(passed.outcome, Outcome::Passed, "{passed:?}");
        assert_eq!(passed.commit.as_deref(), Some(head.as_str()));
        assert_eq!(passed.tree.as_deref(), Some(up.git(&["rev-parse", "master^{tree}"]).as_str()));
        assert_eq!(passed.executor, "local");
        assert!(passed.pipeline.is_some());
        let codes: Vec<_> = passed.steps.iter().map(|s| (s.name.as_str(), s.exit_code)).collect();
        assert_eq!(codes, [("build", Some(0)), ("test", Some(0))]);

        let failed = run(&ex, 2, &up.url(), "feature", None).await;
        assert_eq!(failed.outcome, Outcome::Failed { step: "test".into(), exit_code: 1 });
        assert_eq!(failed.commit.as_deref(), Some(up.git(&["rev-parse", "feature"]).as_str()));
        // Logs and their digests are kept; the workspace is gone.
        let logs = dir.path().join("logs/2-0");
        assert!(logs.join("1-test.log").exists());
        let sums = std::fs::read_to_string(logs.join("SHA256SUMS")).unwrap();
        assert!(sums.contains("0-build.log") && sums.contains("1-test.log"), "{sums}");
        assert_eq!(std::fs::read_dir(dir.path().join("work")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn request_errors_are_results() {
        let up = Upstream::new();
        let dir = tempfile::tempdir().unwrap();
        let ex = executor(dir.path(), &up, |_| {});
        let url = up.url();
        let missing = run(&ex, 1, &url, "no-such-branch", None).await;
        assert_eq!(error_of(&missing), RequestError::RefNotFound);
        let feature = up.git(&["rev-parse", "feature"]);
        assert_eq!(error_of(&run(&ex, 2, &url, "master", Some(&feature)).await), RequestError::CommitNotOnRef);
        let outside = run(&ex, 3, "file:///srv/not-listed", "master", None).await;
        assert_eq!(error_of(&outside), RequestError::RepoNotAllowed);
        up.write(".pbft-ci.yml", "steps:\n  - name: build\n    comands: [true]\n");
        up.commit("typo in the pipeline");
        let invalid = run(&ex, 4, &url, "master", None).await;
        assert_eq!(error_of(&invalid), RequestError::InvalidPipeline);
        assert!(matches!(&invalid.outcome, Outcome::Error { detail, .. } if detail.contains("line")), "{invalid:?}");
    }

    #[tokio::test]
    async fn a_pinned_commit_runs_after_the_branch_moved_on() {
        let up = Upstream::new();
        let dir = tempfile::tempdir().unwrap();
        let ex = executor(dir.path(), &up, |_| {});
        let pinned = up.git(&["rev-parse", "master"]);
        up.write("a.txt", "not any more\n");
        up.commit("master breaks later");
        let r = run(&ex, 1, &up.url(), "master", Some(&pinned)).await;
        assert_eq!(r.outcome, Outcome::Passed, "the pinned commit ran, not the branch's head: {r:?}");
        assert_eq!(r.commit.as_deref(), Some(pinned.as_str()));
        let head = run(&ex, 2, &up.url(), "master", None).await;
        assert_eq!(head.outcome, Outcome::Failed { step: "test".into(), exit_code: 1 });
    }

    #[tokio::test]
    async fn hostile_refs_run_nothing() {
        let up = Upstream::new();
        let dir = tempfile::tempdir().unwrap();
        let ex = executor(dir.path(), &up, |_| {});
        let marker = dir.path().join("pwned");
        let hostile =
            [format!("--upload-pack=touch {}", marker.display()), "-x".into(), "../../etc".into(), "a b".into()];
        for (i, r) in hostile.iter().enumerate() {
            let result = run(&ex, i as u64 + 1, &up.url(), r, None).await;
            assert_eq!(error_of(&result), RequestError::InvalidRef, "{r:?}");
        }
        assert!(!marker.exists(), "a hostile ref executed something");
        assert_eq!(std::fs::read_dir(dir.path().join("cache")).unwrap().count(), 0, "nothing was even fetched");
    }

    #[tokio::test]
    async fn a_unicode_branch_runs() {
        let up = Upstream::new();
        up.git(&["branch", "fünf-ü"]);
        let dir = tempfile::tempdir().unwrap();
        let ex = executor(dir.path(), &up, |_| {});
        assert_eq!(run(&ex, 1, &up.url(), "fünf-ü", None).await.outcome, Outcome::Passed);
    }

    #[tokio::test]
    async fn the_same_job_gives_the_same_digest_twice_and_on_another_replica() {
        let up = Upstream::new();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (ex_a, ex_b) = (executor(a.path(), &up, |_| {}), executor(b.path(), &up, |_| {}));
        for branch in ["master", "feature"] {
            let first = run(&ex_a, 1, &up.url(), branch, None).await;
            let again = run(&ex_a, 2, &up.url(), branch, None).await;
            let elsewhere = run(&ex_b, 7, &up.url(), branch, None).await;
            assert_eq!(first.digest(), again.digest(), "{branch}");
            assert_eq!(first.digest(), elsewhere.digest(), "{branch}");
        }
    }

    #[tokio::test]
    async fn a_step_past_its_timeout_is_a_timeout() {
        let up = Upstream::new();
        up.write(".pbft-ci.yml", "steps:\n  - name: slow\n    timeout: 1\n    commands: [\"sleep 30\"]\n");
        up.commit("slow");
        let dir = tempfile::tempdir().unwrap();
        let ex = executor(dir.path(), &up, |_| {});
        let r = run(&ex, 1, &up.url(), "master", None).await;
        assert_eq!(r.outcome, Outcome::Timeout { step: "slow".into() });
        assert_eq!(r.steps[0].exit_code, None);
    }

    #[tokio::test]
    async fn an_ordered_cancel_stops_a_running_job_and_a_queued_one() {
        let up = Upstream::new();
        up.write(".pbft-ci.yml", "steps:\n  - name: slow\n    commands: [\"sleep 30\"]\n");
        up.commit("slow");
        let dir = tempfile::tempdir().unwrap();
        let ex = executor(dir.path(), &up, |c| c.max_jobs = 1);
        let (running, queued) = (JobId { seq: 1, index: 0 }, JobId { seq: 2, index: 0 });
        let first = tokio::spawn(ex.run(running, run_op(&up.url(), "master", None)));
        let second = tokio::spawn(ex.run(queued, run_op(&up.url(), "master", None)));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let started = Instant::now();
        ex.cancel(queued);
        ex.cancel(running);
        assert_eq!(first.await.unwrap().unwrap().outcome, Outcome::Cancelled);
        assert_eq!(second.await.unwrap().unwrap().outcome, Outcome::Cancelled);
        assert!(started.elapsed() < Duration::from_secs(20), "the cancel did not stop the step");
        // A job that ended is not affected by a late cancel.
        ex.cancel(running);
    }

    #[tokio::test]
    async fn no_more_than_max_jobs_run_at_once() {
        let up = Upstream::new();
        // Each job records that it runs; a second one at once would find the mark.
        let shared = tempfile::tempdir().unwrap();
        // Commands run as nobody when the tests run as root.
        std::fs::set_permissions(shared.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let mark = shared.path().join("busy");
        up.write(
            ".pbft-ci.yml",
            &format!(
                "steps:\n  - name: exclusive\n    commands: [\"! test -e {m}\", \"touch {m}\", \"sleep 0.3\", \"rm {m}\"]\n",
                m = mark.display()
            ),
        );
        up.commit("exclusive");
        let dir = tempfile::tempdir().unwrap();
        let ex = executor(dir.path(), &up, |c| c.max_jobs = 1);
        let jobs: Vec<_> = (1..=4)
            .map(|seq| tokio::spawn(ex.run(JobId { seq, index: 0 }, run_op(&up.url(), "master", None))))
            .collect();
        for job in jobs {
            assert_eq!(job.await.unwrap().unwrap().outcome, Outcome::Passed);
        }
    }

    #[tokio::test]
    async fn a_machine_fault_is_retried_then_abstained_on() {
        let up = Upstream::new();
        let dir = tempfile::tempdir().unwrap();
        let ex = executor(dir.path(), &up, |c| c.attempts = 2);
        // Allowed, but nothing answers there: this machine cannot fetch it.
        let gone = "file:///elsewhere/gone";
        let outcome = ex.run(JobId { seq: 1, index: 0 }, run_op(gone, "master", None)).await;
        assert!(outcome.is_err(), "{outcome:?}");
    }

    #[tokio::test]
    async fn old_logs_are_removed_past_the_retention() {
        let up = Upstream::new();
        let dir = tempfile::tempdir().unwrap();
        let ex = executor(dir.path(), &up, |c| c.keep_logs = 2);
        for seq in 1..=4 {
            run(&ex, seq, &up.url(), "master", None).await;
        }
        let mut kept: Vec<String> = std::fs::read_dir(dir.path().join("logs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        kept.sort();
        assert_eq!(kept, ["3-0", "4-0"]);
    }

    /// The same job layer over the docker runner, against the real engine:
    /// pass, fail, the image id in the result, and one digest across runs.
    #[tokio::test]
    async fn docker_jobs_pass_fail_and_agree() {
        use crate::ci::docker::{testing, DockerLimits};
        let Some(runner) = testing::runner_or_skip("job-test", DockerLimits::default()).await else { return };
        let image = testing::busybox(&runner).await;
        let up = Upstream::new();
        let pipeline = format!("image: {image}\nsteps:\n  - name: test\n    commands: [\"grep -qx ok a.txt\"]\n");
        for branch in ["master", "feature"] {
            up.git(&["checkout", "-q", branch]);
            up.write(".pbft-ci.yml", &pipeline);
            up.commit("docker pipeline");
        }
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = CiConfig::new(dir.path().to_path_buf());
        cfg.allow_file_urls = true;
        let ex = CiExecutor::new(cfg, runner, membership(&[&up.url()])).unwrap();
        let run = |seq, branch| ex.run(JobId { seq, index: 0 }, run_op(&up.url(), branch, None));
        let passed = run(1, "master").await.unwrap();
        assert_eq!(passed.outcome, Outcome::Passed, "{passed:?}");
        assert_eq!(passed.executor, "docker");
        assert!(passed.steps[0].image.as_deref().is_some_and(|i| i.starts_with("sha256:")), "{passed:?}");
        let failed = run(2, "feature").await.unwrap();
        assert_eq!(failed.outcome, Outcome::Failed { step: "test".into(), exit_code: 1 });
        assert_eq!(run(3, "master").await.unwrap().digest(), passed.digest());
    }
}
