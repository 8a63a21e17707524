//! The `docker` step runner: a container per step, through the engine's API
//! (bollard) on the local socket.
//!
//! A step's container runs the step's image with the workspace bind-mounted
//! at `/workspace`, as an unprivileged user, with no capabilities, no new
//! privileges, memory, CPU and PID limits, and no network unless the step
//! asks. Its output is attached before it starts and appended to the step's
//! log; the engine keeps no log of its own (log driver `none`).
//!
//! Every container carries the labels `pbft-ci=1` and `pbft-ci.owner=<the
//! replica's PeerId>`. Several replicas may share one engine (the local
//! testnet does): a runner only ever lists, reaps or removes containers with
//! its own owner label, and never touches another replica's.
//!
//! A container is removed (forcibly) when its step ends, on every error path,
//! and when `run_step`'s future is dropped (a guard spawns the removal onto
//! the runtime). What a crash leaves behind, [`DockerRunner::reap`] removes at
//! start-up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bollard::errors::Error as EngineError;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, BuildImageOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use nix::unistd::{Gid, Uid};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::local::{hand_over, step_environment, step_user, StepLog, NOBODY};
use super::runner::{Fault, StepExit, StepRunner, StepSpec};

/// Where the runner finds the engine.
pub const ENGINE_SOCKET: &str = "unix:///var/run/docker.sock";

/// Label on every container of pbft-ci.
pub const LABEL: &str = "pbft-ci";
/// Label naming the replica (its PeerId) a container belongs to.
pub const LABEL_OWNER: &str = "pbft-ci.owner";
/// Label naming the job a container runs a step of.
pub const LABEL_JOB: &str = "pbft-ci.job";
/// Label naming the step a container runs.
pub const LABEL_STEP: &str = "pbft-ci.step";

/// Where the workspace is mounted in a step's container: its working directory and `HOME`.
const WORKSPACE: &str = "/workspace";

/// Runs a step's commands (the container's arguments) with the semantics of
/// the local runner: each through `sh -c` in turn, stopping at the first that
/// fails, whose exit code ends the container. Commands travel as arguments,
/// never pasted into the script, so nothing in them needs quoting. After each
/// command, `kill -9 -1` from the container's init kills whatever the command
/// left running, as the local runner kills a command's process group.
const STEP_SCRIPT: &str =
    r#"for c do /bin/sh -c "$c"; s=$?; kill -9 -1 2>/dev/null; [ "$s" -eq 0 ] || exit "$s"; done"#;

/// bollard's timeout of a request's answer (its default).
const REQUEST_TIMEOUT_SECS: u64 = 120;
/// How long connecting and the first answer of the engine may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long pulling a missing image may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How long the output of a container that has exited is still read.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(5);
/// Added to a step's timeout for the requests that last as long as the step
/// (attach, wait), so that bollard's own request timeout never ends them first.
const STREAM_SLACK: Duration = Duration::from_secs(60);

/// Limits of every step's container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DockerLimits {
    /// Memory, and memory plus swap (no swap): past it, the kernel's OOM
    /// killer ends the step with 137.
    pub memory_bytes: i64,
    /// CPU time, in billionths of a CPU.
    pub nano_cpus: i64,
    /// Processes and threads at once.
    pub pids_limit: i64,
}

impl Default for DockerLimits {
    /// 2 GiB, 2 CPUs, 512 processes.
    fn default() -> DockerLimits {
        DockerLimits { memory_bytes: 2 << 30, nano_cpus: 2_000_000_000, pids_limit: 512 }
    }
}

/// Runs steps in containers of the local Docker engine (see the module doc).
#[derive(Clone, Debug)]
pub struct DockerRunner {
    docker: Docker,
    owner: String,
    limits: DockerLimits,
}

impl DockerRunner {
    /// Connects to the local engine at [`ENGINE_SOCKET`], agreeing on an API
    /// version both speak, and checks that it answers. `owner` names this
    /// replica (its PeerId) on every container it creates.
    pub async fn connect(owner: &str, limits: DockerLimits) -> Result<DockerRunner, Fault> {
        DockerRunner::connect_at(ENGINE_SOCKET, owner, limits).await
    }

    async fn connect_at(socket: &str, owner: &str, limits: DockerLimits) -> Result<DockerRunner, Fault> {
        if owner.is_empty() {
            return Err(Fault("a docker runner needs an owner".to_owned()));
        }
        let no_engine = |e: EngineError| Fault(format!("no Docker engine answers at {socket}: {e}"));
        let docker = Docker::connect_with_socket(socket, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
            .map_err(no_engine)?;
        let answered = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let docker = docker.negotiate_version().await?;
            docker.ping().await?;
            Ok(docker)
        })
        .await;
        let docker = match answered {
            Ok(answered) => answered.map_err(no_engine)?,
            Err(_) => return Err(no_engine(EngineError::RequestTimeoutError)),
        };
        Ok(DockerRunner { docker, owner: owner.to_owned(), limits })
    }

    /// Removes (forcibly) every container of this replica: those a crash left
    /// behind. Called at start-up, before any step runs. Returns how many.
    pub async fn reap(&self) -> Result<usize, Fault> {
        let mut reaped = 0;
        for id in self.containers().await? {
            remove(&self.docker, &id).await.map_err(|e| Fault(format!("cannot remove container {id}: {e}")))?;
            reaped += 1;
        }
        Ok(reaped)
    }

    /// The ids of this replica's containers, running or not.
    async fn containers(&self) -> Result<Vec<String>, Fault> {
        let filters = HashMap::from([("label", vec![format!("{LABEL}=1"), format!("{LABEL_OWNER}={}", self.owner)])]);
        let options = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
        let listed =
            self.docker.list_containers(Some(options)).await.map_err(|e| engine_fault("cannot list containers", e))?;
        // Checked again here: never remove another replica's container, whatever the filter did.
        let ours = |labels: &HashMap<String, String>| labels.get(LABEL_OWNER) == Some(&self.owner);
        Ok(listed.into_iter().filter(|c| c.labels.as_ref().is_some_and(ours)).filter_map(|c| c.id).collect())
    }

    /// Builds a minimal image from local files only, tags it `tag` and
    /// returns its id; an image already tagged `tag` is reused. For tests and
    /// the local testnet, where no registry is reachable.
    ///
    /// The image holds Debian's static busybox (`/bin/busybox`, from the
    /// `busybox-static` package), its applets linked into `/bin`, and `/tmp`.
    /// The same with the CLI, beside a copy of `/bin/busybox`:
    ///
    /// ```text
    /// FROM scratch
    /// COPY busybox /bin/busybox
    /// RUN ["/bin/busybox", "sh", "-c", "/bin/busybox --install -s /bin && mkdir -m 1777 /tmp"]
    /// ```
    pub async fn build_busybox_image(&self, tag: &str) -> Result<String, Fault> {
        if let Some(id) = self.inspect_image(tag).await? {
            return Ok(id);
        }
        let busybox = tokio::fs::read("/bin/busybox")
            .await
            .map_err(|e| Fault(format!("cannot read /bin/busybox (apt-get install busybox-static): {e}")))?;
        let context = busybox_context(&busybox).map_err(|e| Fault(format!("cannot pack the build context: {e}")))?;
        let options = BuildImageOptionsBuilder::new().t(tag).rm(true).forcerm(true).networkmode("none").build();
        let mut progress = self.docker.build_image(options, None, Some(bollard::body_full(context.into())));
        while let Some(item) = progress.next().await {
            let item = item.map_err(|e| Fault(format!("building {tag} failed: {e}")))?;
            if let Some(detail) = item.error_detail {
                let message = detail.message.unwrap_or_default();
                return Err(Fault(format!("building {tag} failed: {message} (is /bin/busybox static?)")));
            }
        }
        self.inspect_image(tag).await?.ok_or_else(|| Fault(format!("building {tag} left no image")))
    }

    /// The id of a local image, or `None` when the engine has none by that name.
    async fn inspect_image(&self, image: &str) -> Result<Option<String>, Fault> {
        match self.docker.inspect_image(image).await {
            Ok(inspect) => inspect.id.map(Some).ok_or_else(|| Fault(format!("the engine gave image {image} no id"))),
            Err(EngineError::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
            Err(e) => Err(engine_fault(&format!("cannot inspect image {image}"), e)),
        }
    }

    /// Pulls `image` once, bounded in time.
    async fn pull(&self, image: &str) -> Result<(), String> {
        let mut options = CreateImageOptionsBuilder::new().from_image(image);
        // Without a tag or digest the engine would pull every tag.
        let name = image.rsplit('/').next().unwrap_or(image);
        if !image.contains('@') && !name.contains(':') {
            options = options.tag("latest");
        }
        let pull = async {
            let mut progress = self.docker.create_image(Some(options.build()), None, None);
            while let Some(item) = progress.next().await {
                let item = item.map_err(|e| e.to_string())?;
                if let Some(detail) = item.error_detail {
                    return Err(detail.message.unwrap_or_else(|| "pull failed".to_owned()));
                }
            }
            Ok(())
        };
        tokio::time::timeout(PULL_TIMEOUT, pull).await.map_err(|_| format!("no pull within {PULL_TIMEOUT:?}"))?
    }

    fn container_config(&self, step: &StepSpec<'_>, workspace: &str, (uid, gid): (u32, u32)) -> ContainerCreateBody {
        let env = step_environment(WORKSPACE, step.environment);
        let labels = HashMap::from([
            (LABEL.to_owned(), "1".to_owned()),
            (LABEL_OWNER.to_owned(), self.owner.clone()),
            (LABEL_JOB.to_owned(), step.job.to_owned()),
            (LABEL_STEP.to_owned(), step.name.to_owned()),
        ]);
        let workspace = Mount {
            target: Some(WORKSPACE.to_owned()),
            source: Some(workspace.to_owned()),
            typ: Some(MountType::BIND),
            read_only: Some(false),
            ..Mount::default()
        };
        let host = HostConfig {
            mounts: Some(vec![workspace]),
            memory: Some(self.limits.memory_bytes),
            memory_swap: Some(self.limits.memory_bytes),
            nano_cpus: Some(self.limits.nano_cpus),
            pids_limit: Some(self.limits.pids_limit),
            cap_drop: Some(vec!["ALL".to_owned()]),
            security_opt: Some(vec!["no-new-privileges".to_owned()]),
            network_mode: Some(if step.network { "bridge" } else { "none" }.to_owned()),
            // The output is attached and written to the step's log: no second copy on the engine's disk.
            log_config: Some(HostConfigLogConfig { typ: Some("none".to_owned()), config: None }),
            ..HostConfig::default()
        };
        ContainerCreateBody {
            image: Some(step.image.to_owned()),
            // Our own entrypoint: an image's entrypoint would swallow the script.
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into(), STEP_SCRIPT.into(), "pbft-ci-step".into()]),
            cmd: Some(step.commands.to_vec()),
            env: Some(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: Some(WORKSPACE.to_owned()),
            // Numeric: the image needs no passwd entry for it.
            user: Some(format!("{uid}:{gid}")),
            labels: Some(labels),
            attach_stdin: Some(false),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            open_stdin: Some(false),
            tty: Some(false),
            host_config: Some(host),
            ..ContainerCreateBody::default()
        }
    }

    /// Creates, starts and follows one step's container to its end.
    async fn run_container(
        &self,
        name: &str,
        step: &StepSpec<'_>,
        cancel: &CancellationToken,
        log: &mut StepLog,
    ) -> Result<StepExit, Fault> {
        let deadline = Instant::now() + step.timeout;
        let workspace = std::path::absolute(step.workspace)
            .map_err(|e| Fault(format!("no absolute path for {}: {e}", step.workspace.display())))?;
        let workspace = workspace
            .to_str()
            .ok_or_else(|| Fault(format!("the workspace path is not UTF-8: {}", workspace.display())))?
            .to_owned();
        // As the local runner: under root an unprivileged user that owns the
        // workspace; otherwise the node's own user, so that what the step
        // writes in the workspace stays the node's to remove.
        let user = match step_user(NOBODY) {
            Some(user) => {
                hand_over(step.workspace, user).await?;
                user
            }
            None => (Uid::effective().as_raw(), Gid::effective().as_raw()),
        };
        let config = self.container_config(step, &workspace, user);
        let options = CreateContainerOptionsBuilder::new().name(name).build();
        self.docker
            .create_container(Some(options), config)
            .await
            .map_err(|e| engine_fault("cannot create a container", e))?;
        let streaming = self.docker.clone().with_timeout(step.timeout + STREAM_SLACK);
        // Attached before the start, so no output is missed.
        let attach = AttachContainerOptionsBuilder::new().stream(true).stdout(true).stderr(true).build();
        let attached = streaming
            .attach_container(name, Some(attach))
            .await
            .map_err(|e| engine_fault("cannot attach to the container", e))?;
        let mut output = attached.output;
        self.docker.start_container(name, None).await.map_err(|e| engine_fault("cannot start the container", e))?;

        let mut wait = streaming.wait_container(name, None);
        let mut code = None;
        let mut output_ended = false;
        let mut drain_deadline = deadline;
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(StepExit::Cancelled),
                _ = tokio::time::sleep_until(deadline), if code.is_none() => return Ok(StepExit::TimedOut),
                _ = tokio::time::sleep_until(drain_deadline), if code.is_some() => break,
                waited = wait.next(), if code.is_none() => {
                    code = Some(exit_code(waited)?);
                    drain_deadline = Instant::now() + DRAIN_AFTER_EXIT;
                }
                chunk = output.next(), if !output_ended => match chunk {
                    Some(Ok(chunk)) => log.write(chunk.as_ref()).await?,
                    Some(Err(e)) => {
                        // Only the log suffers: the exit code still comes from the wait.
                        tracing::warn!(container = name, "reading the step's output failed: {e}");
                        output_ended = true;
                    }
                    None => output_ended = true,
                },
            }
            if code.is_some() && output_ended {
                break;
            }
        }
        let code = code.ok_or_else(|| Fault("the container ended without an exit code".to_owned()))?;
        Ok(StepExit::Exited(code))
    }
}

impl StepRunner for DockerRunner {
    fn kind(&self) -> &'static str {
        "docker"
    }

    /// The image's id (`sha256:…`); an image the engine lacks is pulled once.
    async fn image_id(&self, image: &str) -> Result<Option<String>, Fault> {
        if let Some(id) = self.inspect_image(image).await? {
            return Ok(Some(id));
        }
        self.pull(image).await.map_err(|e| Fault(format!("image {image} is not available: {e}")))?;
        match self.inspect_image(image).await? {
            Some(id) => Ok(Some(id)),
            None => Err(Fault(format!("image {image} is not available: pulled, but the engine has no such image"))),
        }
    }

    async fn run_step(&self, step: &StepSpec<'_>, cancel: &CancellationToken) -> Result<StepExit, Fault> {
        if cancel.is_cancelled() {
            return Ok(StepExit::Cancelled);
        }
        let mut log = StepLog::open(step.log, step.log_bytes_max).await?;
        let name = container_name(step.job);
        // Armed before the container exists: a future dropped mid-create
        // still removes it, by the name chosen here.
        let container = Container { docker: self.docker.clone(), name: Some(name.clone()) };
        let exit = self.run_container(&name, step, cancel, &mut log).await;
        // Timed out, cancelled, failed or done: killed (a stop's grace would
        // buy nothing, as the script, the container's init, ignores SIGTERM)
        // and removed.
        container.remove().await;
        let exit = exit?;
        log.finish().await?;
        Ok(exit)
    }
}

/// A step's container, removed when this is dropped: no container outlives
/// `run_step`, also when its future is dropped mid-run.
struct Container {
    docker: Docker,
    /// `None` once removed.
    name: Option<String>,
}

impl Container {
    /// Removes the container now; a failure is only logged: the next start's
    /// reap removes what is left.
    async fn remove(mut self) {
        if let Some(name) = self.name.take() {
            if let Err(e) = remove(&self.docker, &name).await {
                tracing::warn!(container = name, "cannot remove the container: {e}");
            }
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let Some(name) = self.name.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let docker = self.docker.clone();
                runtime.spawn(async move {
                    if let Err(e) = remove(&docker, &name).await {
                        tracing::warn!(container = name, "cannot remove the container: {e}");
                    }
                });
            }
            Err(_) => tracing::warn!(container = name, "no runtime to remove the container: reaped at the next start"),
        }
    }
}

/// Kills and removes a container and its anonymous volumes; one already gone is fine.
async fn remove(docker: &Docker, container: &str) -> Result<(), EngineError> {
    let options = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
    match docker.remove_container(container, Some(options)).await {
        Err(EngineError::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
        removed => removed,
    }
}

/// The exit code in what the engine's wait answered. bollard reports a
/// non-zero code as an error.
fn exit_code(waited: Option<Result<bollard::models::ContainerWaitResponse, EngineError>>) -> Result<i32, Fault> {
    let code = match waited {
        Some(Ok(response)) => response.status_code,
        Some(Err(EngineError::DockerContainerWaitError { code, .. })) => code,
        Some(Err(e)) => return Err(engine_fault("waiting for the container failed", e)),
        None => return Err(Fault("the engine ended the wait without an exit code".to_owned())),
    };
    i32::try_from(code).map_err(|_| Fault(format!("the engine reported exit code {code}")))
}

/// A name for a step's container, unique on the engine even across replicas
/// sharing it and restarts: the job, the process and a per-process counter.
fn container_name(job: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let job: String = job.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' }).collect();
    let started = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    let next = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("pbft-ci-{job}-{}-{started:x}-{next}", std::process::id())
}

fn engine_fault(what: &str, e: EngineError) -> Fault {
    Fault(format!("{what}: {e}"))
}

/// The build context of [`DockerRunner::build_busybox_image`]: a tar archive
/// of its Dockerfile and busybox.
fn busybox_context(busybox: &[u8]) -> std::io::Result<Vec<u8>> {
    const DOCKERFILE: &str = "FROM scratch\n\
        COPY busybox /bin/busybox\n\
        RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox --install -s /bin && mkdir -m 1777 /tmp\"]\n";
    let mut archive = tar::Builder::new(Vec::new());
    for (path, mode, data) in [("Dockerfile", 0o644, DOCKERFILE.as_bytes()), ("busybox", 0o755, busybox)] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        archive.append_data(&mut header, path, data)?;
    }
    archive.into_inner()
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests;
