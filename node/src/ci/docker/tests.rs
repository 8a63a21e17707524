//! The docker runner against the real engine, in the busybox test image.
//! Each test owns its containers (an owner label of its own), so tests
//! running at once cannot see each other's.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bollard::models::ContainerCreateBody;

use super::testing::{busybox, runner_or_skip, BUSYBOX};
use super::*;

const MINUTE: Duration = Duration::from_secs(60);

struct Fixture {
    runner: DockerRunner,
    image: &'static str,
    _dir: tempfile::TempDir,
    workspace: PathBuf,
    log: PathBuf,
    environment: BTreeMap<String, String>,
}

impl Fixture {
    async fn new(test: &str) -> Option<Fixture> {
        Fixture::with_limits(test, DockerLimits::default()).await
    }

    async fn with_limits(test: &str, limits: DockerLimits) -> Option<Fixture> {
        let runner = runner_or_skip(&owner(test), limits).await?;
        let image = busybox(&runner).await;
        let dir = tempfile::tempdir().unwrap();
        let workspace = dir.path().join("workspace");
        std::fs::create_dir(&workspace).unwrap();
        let log = dir.path().join("step.log");
        Some(Fixture { runner, image, _dir: dir, workspace, log, environment: BTreeMap::new() })
    }

    fn spec<'a>(&'a self, commands: &'a [String], timeout: Duration) -> StepSpec<'a> {
        StepSpec {
            name: "test",
            image: self.image,
            commands,
            environment: &self.environment,
            network: false,
            timeout,
            workspace: &self.workspace,
            log: &self.log,
            log_bytes_max: 1 << 20,
            job: "7-1",
        }
    }

    async fn run(&self, commands: &[&str]) -> StepExit {
        self.run_with(commands, MINUTE, false).await
    }

    async fn run_with(&self, commands: &[&str], timeout: Duration, network: bool) -> StepExit {
        let commands: Vec<String> = commands.iter().map(|c| c.to_string()).collect();
        let mut spec = self.spec(&commands, timeout);
        spec.network = network;
        self.runner.run_step(&spec, &CancellationToken::new()).await.unwrap()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// None of this test's containers is left on the engine.
    async fn assert_no_container_left(&self) {
        assert_eq!(self.runner.containers().await.unwrap(), Vec::<String>::new(), "a container was left behind");
    }

    /// The user the runner's containers run as.
    fn step_user(&self) -> (u32, u32) {
        step_user(NOBODY).unwrap_or((Uid::effective().as_raw(), Gid::effective().as_raw()))
    }
}

fn owner(test: &str) -> String {
    format!("test-{test}-{}", std::process::id())
}

/// Waits for a step to create `path`.
async fn appears(path: &Path) {
    for _ in 0..3000 {
        if path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} never appeared", path.display());
}

#[tokio::test]
async fn steps_pass_and_their_output_is_logged() {
    let Some(f) = Fixture::new("pass").await else { return };
    assert_eq!(f.run(&["echo out", "echo err >&2", "true"]).await, StepExit::Exited(0));
    // stdout and stderr come from the engine as two streams: their order
    // relative to each other is not kept (under load, err came first).
    let text = f.log_text();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    assert_eq!((lines, text.ends_with('\n')), (vec!["err", "out"], true), "{text:?}");
    f.assert_no_container_left().await;
}

#[tokio::test]
async fn the_first_failing_command_ends_the_step_with_its_exit_code() {
    let Some(f) = Fixture::new("fail").await else { return };
    assert_eq!(f.run(&["touch first", "exit 3", "touch second"]).await, StepExit::Exited(3));
    assert!(f.workspace.join("first").exists());
    assert!(!f.workspace.join("second").exists(), "a command after the failing one ran");
    f.assert_no_container_left().await;
}

#[tokio::test]
async fn a_command_killed_by_a_signal_exits_with_128_plus_its_number() {
    let Some(f) = Fixture::new("signal").await else { return };
    assert_eq!(f.run(&["kill -9 $$"]).await, StepExit::Exited(137));
    f.assert_no_container_left().await;
}

#[tokio::test]
async fn commands_and_variables_reach_the_shell_unmangled() {
    let Some(mut f) = Fixture::new("quoting").await else { return };
    f.environment.insert("GREETING".into(), "hello 'world' $x \"q\"".into());
    let commands = [
        r#"printf '%s|%s\n' 'a  b' "c'd \$e""#,
        r#"printf 'greeting=%s\n' "$GREETING""#,
        "env",
        "echo cwd=$(pwd)",
        "echo user=$(id -u):$(id -g)",
    ];
    assert_eq!(f.run(&commands).await, StepExit::Exited(0));
    let log = f.log_text();
    assert!(log.starts_with("a  b|c'd $e\n"), "{log}");
    let env: BTreeMap<&str, &str> = log.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(env["greeting"], "hello 'world' $x \"q\"");
    assert_eq!(env["GREETING"], "hello 'world' $x \"q\"");
    assert_eq!(env["PATH"], super::super::local::STEP_PATH);
    assert_eq!(env["HOME"], "/workspace");
    assert_eq!(env["CI"], "true");
    assert_eq!(env["PBFT_CI"], "true");
    assert_eq!(env["cwd"], "/workspace");
    let (uid, gid) = f.step_user();
    assert_eq!(env["user"], format!("{uid}:{gid}"));
    f.assert_no_container_left().await;
}

#[tokio::test]
async fn what_a_step_writes_in_the_workspace_belongs_to_its_user() {
    let Some(f) = Fixture::new("owner").await else { return };
    assert_eq!(f.run(&["mkdir made && touch made/file"]).await, StepExit::Exited(0));
    let made = std::fs::metadata(f.workspace.join("made/file")).unwrap();
    assert_eq!((made.uid(), made.gid()), f.step_user());
    std::fs::remove_dir_all(f.workspace.join("made")).unwrap();
}

#[tokio::test]
async fn a_background_child_dies_with_its_command() {
    let Some(f) = Fixture::new("background").await else { return };
    let gone = r#"for i in 1 2 3 4 5; do kill -0 "$(cat bg.pid)" 2>/dev/null || exit 0; sleep 1; done; exit 1"#;
    assert_eq!(f.run(&["sleep 60 & echo $! > bg.pid", gone]).await, StepExit::Exited(0));
    f.assert_no_container_left().await;
}

#[tokio::test]
async fn a_step_past_its_timeout_is_stopped_and_removed() {
    let Some(f) = Fixture::new("timeout").await else { return };
    let started = Instant::now();
    assert_eq!(f.run_with(&["sleep 60"], Duration::from_secs(1), false).await, StepExit::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    f.assert_no_container_left().await;
}

#[tokio::test]
async fn cancelling_stops_the_step_and_removes_it() {
    let Some(f) = Fixture::new("cancel").await else { return };
    let commands = vec!["touch started; sleep 60".to_owned()];
    let spec = f.spec(&commands, MINUTE);
    let cancel = CancellationToken::new();
    let started = f.workspace.join("started");
    let canceller = async {
        appears(&started).await;
        cancel.cancel();
    };
    let (exit, ()) = tokio::join!(f.runner.run_step(&spec, &cancel), canceller);
    assert_eq!(exit.unwrap(), StepExit::Cancelled);
    f.assert_no_container_left().await;
}

#[tokio::test]
async fn dropping_the_future_removes_the_container() {
    let Some(f) = Fixture::new("drop").await else { return };
    let commands = vec!["touch started; sleep 60".to_owned()];
    let spec = f.spec(&commands, MINUTE);
    let cancel = CancellationToken::new();
    let started = f.workspace.join("started");
    tokio::select! {
        _ = f.runner.run_step(&spec, &cancel) => panic!("the step ended"),
        () = appears(&started) => {}
    }
    // The removal was spawned when the future was dropped: give it a moment.
    for _ in 0..100 {
        if f.runner.containers().await.unwrap().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f.assert_no_container_left().await;
}

#[tokio::test]
async fn the_network_is_off_unless_the_step_asks() {
    let Some(f) = Fixture::new("network").await else { return };
    assert_eq!(f.run_with(&["ls /sys/class/net"], MINUTE, false).await, StepExit::Exited(0));
    assert_eq!(f.log_text(), "lo\n");
    std::fs::remove_file(&f.log).unwrap();
    assert_eq!(f.run_with(&["ls /sys/class/net"], MINUTE, true).await, StepExit::Exited(0));
    assert!(f.log_text().lines().any(|l| l == "eth0"), "{}", f.log_text());
    f.assert_no_container_left().await;
}

#[tokio::test]
async fn a_step_over_its_memory_limit_is_killed_with_137() {
    let limits = DockerLimits { memory_bytes: 64 << 20, ..DockerLimits::default() };
    let Some(f) = Fixture::with_limits("memory", limits).await else { return };
    assert_eq!(f.run(&["head -c 300m /dev/zero | tail"]).await, StepExit::Exited(137));
    f.assert_no_container_left().await;
}

#[tokio::test]
async fn output_past_the_bound_is_cut_with_a_marker_and_the_step_goes_on() {
    let Some(f) = Fixture::new("log").await else { return };
    let commands: Vec<String> = vec!["printf 'line\\n'; yes 0123456789 | head -c 100000".into(), "touch after".into()];
    let mut spec = f.spec(&commands, MINUTE);
    spec.log_bytes_max = 100;
    assert_eq!(f.runner.run_step(&spec, &CancellationToken::new()).await.unwrap(), StepExit::Exited(0));
    assert!(f.workspace.join("after").exists(), "the step stopped at the bound");
    let log = f.log_text();
    let (kept, marker) = log.split_at(100);
    assert!(kept.starts_with("line\n0123456789\n"), "{kept:?}");
    assert_eq!(marker, "\n[pbft-ci: log truncated at 100 bytes]\n");
    f.assert_no_container_left().await;
}

#[tokio::test]
async fn reap_removes_this_replicas_leftovers_and_no_others() {
    let Some(f) = Fixture::new("reap").await else { return };
    let other = runner_or_skip(&owner("reap-other"), DockerLimits::default()).await.unwrap();
    // What a killed node leaves: one container never started, one still running.
    let leftover = |owner: &str| ContainerCreateBody {
        image: Some(BUSYBOX.to_owned()),
        entrypoint: Some(vec!["sleep".into(), "60".into()]),
        labels: Some(HashMap::from([(LABEL.to_owned(), "1".to_owned()), (LABEL_OWNER.to_owned(), owner.to_owned())])),
        ..ContainerCreateBody::default()
    };
    let docker = &f.runner.docker;
    docker
        .create_container(None::<bollard::query_parameters::CreateContainerOptions>, leftover(&f.runner.owner))
        .await
        .unwrap();
    let running = docker
        .create_container(None::<bollard::query_parameters::CreateContainerOptions>, leftover(&f.runner.owner))
        .await
        .unwrap();
    docker.start_container(&running.id, None).await.unwrap();
    let others = docker
        .create_container(None::<bollard::query_parameters::CreateContainerOptions>, leftover(&other.owner))
        .await
        .unwrap();

    assert_eq!(f.runner.reap().await.unwrap(), 2);
    f.assert_no_container_left().await;
    assert_eq!(other.containers().await.unwrap(), vec![others.id.clone()], "another replica's container was touched");
    assert_eq!(other.reap().await.unwrap(), 1);
    assert_eq!(f.runner.reap().await.unwrap(), 0);
}

#[tokio::test]
async fn image_ids_are_the_engines_and_a_missing_image_is_a_fault() {
    let Some(f) = Fixture::new("image").await else { return };
    let id = f.runner.image_id(BUSYBOX).await.unwrap().unwrap();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    // A registry on this machine's loopback that is not there: the pull fails at once, offline.
    let missing = "127.0.0.1:9/pbft-ci-test/missing:latest";
    let Fault(fault) = f.runner.image_id(missing).await.unwrap_err();
    assert!(fault.starts_with(&format!("image {missing} is not available: ")), "{fault}");
}

#[tokio::test]
async fn no_engine_is_a_clear_fault() {
    let Fault(fault) =
        DockerRunner::connect_at("unix:///nonexistent/docker.sock", "test", DockerLimits::default()).await.unwrap_err();
    assert!(fault.starts_with("no Docker engine answers at unix:///nonexistent/docker.sock: "), "{fault}");
}
