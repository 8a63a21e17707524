//! The `local` step runner: a step's commands as child processes of the
//! node, in the workspace, with a clean environment.
//!
//! Each command is `/bin/sh -c COMMAND` in a process group of its own, and
//! the whole group is killed (SIGKILL) when the command ends, so background
//! children it left behind cannot outlive it; also on timeout, on
//! cancellation, and when `run_step`'s future is dropped. A process that
//! leaves its group (`setsid`, a double-forking daemon) escapes that.
//!
//! When the node runs as root, the commands run as an unprivileged user
//! (`nobody`, 65534:65534, unless configured) and the workspace is handed to
//! that user first, so a step cannot read the replica's key or data dir
//! (keep those unreadable by others, and the workspace's parent directories
//! searchable). Otherwise the commands run as the node's own user and can do
//! whatever it can: `local` is **unisolated**, for trusted repositories and
//! machines without Docker only (DESIGN.md, "Running a job").
//!
//! What both runners must do alike lives here too, so they cannot drift: the
//! clean environment, the bounded log, the unprivileged user.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::{Pid, Uid};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Child;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::runner::{Fault, StepExit, StepRunner, StepSpec};

/// `PATH` of every step, whichever runner runs it.
pub(crate) const STEP_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The user (uid, gid) steps run as by default when the node runs as root.
pub const NOBODY: (u32, u32) = (65534, 65534);

/// How long the output of a command that has exited is still read. Its group
/// is dead by then: only a process that left the group can hold the pipe
/// open, and it is not waited for.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Runs steps as child processes of the node (see the module doc).
#[derive(Clone, Debug)]
pub struct LocalRunner {
    /// Who the commands run as when the node runs as root.
    user: (u32, u32),
}

impl LocalRunner {
    /// A runner whose steps run as `nobody` (65534:65534) when the node runs
    /// as root, and as the node's user otherwise.
    pub fn new() -> LocalRunner {
        LocalRunner { user: NOBODY }
    }

    /// A runner whose steps run as `uid:gid` when the node runs as root. A
    /// node that is not root cannot switch users: its steps run as itself.
    pub fn with_user(uid: u32, gid: u32) -> LocalRunner {
        LocalRunner { user: (uid, gid) }
    }
}

impl Default for LocalRunner {
    fn default() -> LocalRunner {
        LocalRunner::new()
    }
}

impl StepRunner for LocalRunner {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn image_id(&self, _image: &str) -> Result<Option<String>, Fault> {
        Ok(None)
    }

    async fn run_step(&self, step: &StepSpec<'_>, cancel: &CancellationToken) -> Result<StepExit, Fault> {
        if cancel.is_cancelled() {
            return Ok(StepExit::Cancelled);
        }
        let deadline = Instant::now() + step.timeout;
        let home = step
            .workspace
            .to_str()
            .ok_or_else(|| Fault(format!("the workspace path is not UTF-8: {}", step.workspace.display())))?;
        let env = step_environment(home, step.environment);
        let user = step_user(self.user);
        if let Some(user) = user {
            hand_over(step.workspace, user).await?;
        }
        let mut log = StepLog::open(step.log, step.log_bytes_max).await?;
        let mut exit = StepExit::Exited(0);
        for command in step.commands {
            let run = Command { line: command, workspace: step.workspace, env: &env, user };
            exit = run.run(deadline, cancel, &mut log).await?;
            if exit != StepExit::Exited(0) {
                break;
            }
        }
        log.finish().await?;
        Ok(exit)
    }
}

/// One command of a step, as `/bin/sh -c LINE`.
struct Command<'a> {
    line: &'a str,
    workspace: &'a Path,
    env: &'a BTreeMap<String, String>,
    user: Option<(u32, u32)>,
}

impl Command<'_> {
    async fn run(&self, deadline: Instant, cancel: &CancellationToken, log: &mut StepLog) -> Result<StepExit, Fault> {
        // One pipe for stdout and stderr keeps their interleaving in the log.
        let (writer, mut reader) = tokio::net::unix::pipe::pipe().map_err(|e| fault("cannot create a pipe", e))?;
        let stdout: OwnedFd = writer.into_blocking_fd().map_err(|e| fault("cannot create a pipe", e))?;
        let stderr = stdout.try_clone().map_err(|e| fault("cannot create a pipe", e))?;
        let mut command = tokio::process::Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(self.line)
            .current_dir(self.workspace)
            .env_clear()
            .envs(self.env)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(true);
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        let spawned = command.spawn();
        // Our copies of the pipe's write end must close, or the read end never ends.
        drop(command);
        let mut child = spawned.map_err(|e| {
            let user = self.user.map(|(uid, gid)| format!(" as {uid}:{gid}")).unwrap_or_default();
            Fault(format!("cannot start /bin/sh in {}{user}: {e}", self.workspace.display()))
        })?;
        let mut group = ProcessGroup::of(&child);

        let mut buf = vec![0; READ_CHUNK_BYTES];
        let mut status = None;
        let mut output_ended = false;
        let mut drain_deadline = deadline;
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(stop(&mut group, &mut child, StepExit::Cancelled).await),
                _ = tokio::time::sleep_until(deadline), if status.is_none() => {
                    return Ok(stop(&mut group, &mut child, StepExit::TimedOut).await);
                }
                _ = tokio::time::sleep_until(drain_deadline), if status.is_some() => break,
                waited = child.wait(), if status.is_none() => {
                    let waited = waited.map_err(|e| fault("cannot wait for /bin/sh", e))?;
                    // What the command left running in the background dies with it.
                    group.kill();
                    status = Some(waited);
                    drain_deadline = Instant::now() + DRAIN_AFTER_EXIT;
                }
                read = reader.read(&mut buf), if !output_ended => match read {
                    Ok(0) => output_ended = true,
                    Ok(n) => log.write(&buf[..n]).await?,
                    Err(e) => return Err(fault("cannot read the step's output", e)),
                },
            }
            if output_ended && status.is_some() {
                break;
            }
        }
        let status = status.ok_or_else(|| Fault("/bin/sh ended without a status".to_owned()))?;
        Ok(StepExit::Exited(exit_code(status)))
    }
}

/// Stops a command: its whole group dies and the shell is reaped.
async fn stop(group: &mut ProcessGroup, child: &mut Child, exit: StepExit) -> StepExit {
    group.kill();
    // The group is dead: this returns at once (or with the status already reaped).
    let _ = child.wait().await;
    exit
}

/// A command's process group, killed when dropped: nothing a command started
/// outlives it, also when `run_step`'s future is dropped mid-run.
struct ProcessGroup {
    /// `None` once killed: never signal a group id that may since be reused.
    pgid: Option<Pid>,
}

impl ProcessGroup {
    fn of(child: &Child) -> ProcessGroup {
        // `process_group(0)`: the shell leads a group whose id is its pid.
        let pgid = child.id().and_then(|pid| i32::try_from(pid).ok()).map(Pid::from_raw);
        ProcessGroup { pgid }
    }

    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // ESRCH (nothing left in the group) is what we want anyway.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

fn fault(what: &str, e: std::io::Error) -> Fault {
    Fault(format!("{what}: {e}"))
}

/// The exit code a shell reports for `status`: its own, or 128 + the number
/// of the signal that killed it.
pub(crate) fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        // Neither: only for a stopped or continued child, which wait never reports.
        (None, None) => 255,
    }
}

/// The whole environment of a step: the runners' minimal set, then the
/// step's own variables (which may override it).
pub(crate) fn step_environment(home: &str, step: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::from([
        ("PATH".to_owned(), STEP_PATH.to_owned()),
        ("HOME".to_owned(), home.to_owned()),
        ("CI".to_owned(), "true".to_owned()),
        ("PBFT_CI".to_owned(), "true".to_owned()),
    ]);
    env.extend(step.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// The user steps run as, if not the node's own: `configured` when the node
/// runs as root, so that steps hold none of its rights; none otherwise, as a
/// node that is not root cannot switch users.
pub(crate) fn step_user(configured: (u32, u32)) -> Option<(u32, u32)> {
    Uid::effective().is_root().then_some(configured)
}

/// Hands the workspace over to `user`, recursively, so its steps can write
/// there. Symbolic links are not followed: a link in a repository must not
/// hand its target over.
pub(crate) async fn hand_over(workspace: &Path, user: (u32, u32)) -> Result<(), Fault> {
    let root = workspace.to_path_buf();
    tokio::task::spawn_blocking(move || chown_tree(&root, user))
        .await
        .map_err(|e| Fault(format!("handing over the workspace failed: {e}")))?
}

fn chown_tree(root: &Path, (uid, gid): (u32, u32)) -> Result<(), Fault> {
    use std::os::unix::fs::MetadataExt;
    let failed = |path: &Path, e: std::io::Error| Fault(format!("cannot hand {} to {uid}:{gid}: {e}", path.display()));
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).map_err(|e| failed(&path, e))?;
        if meta.uid() != uid || meta.gid() != gid {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).map_err(|e| failed(&path, e))?;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(|e| failed(&path, e))? {
                pending.push(entry.map_err(|e| failed(&path, e))?.path());
            }
        }
    }
    Ok(())
}

/// A step's log: output appended to a file, at most `max` bytes of it, then
/// one line that marks the cut; the rest is read and dropped.
pub(crate) struct StepLog {
    file: tokio::fs::File,
    path: PathBuf,
    written: u64,
    max: u64,
    truncated: bool,
    at_line_start: bool,
}

impl StepLog {
    pub(crate) async fn open(path: &Path, max: u64) -> Result<StepLog, Fault> {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(|e| Fault(format!("cannot open the log {}: {e}", path.display())))?;
        Ok(StepLog { file, path: path.to_path_buf(), written: 0, max, truncated: false, at_line_start: true })
    }

    pub(crate) async fn write(&mut self, bytes: &[u8]) -> Result<(), Fault> {
        if self.truncated || bytes.is_empty() {
            return Ok(());
        }
        let room = self.max - self.written;
        let keep = bytes.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        self.append(&bytes[..keep]).await?;
        self.written += keep as u64;
        if keep < bytes.len() {
            let newline = if self.at_line_start { "" } else { "\n" };
            let marker = format!("{newline}[pbft-ci: log truncated at {} bytes]\n", self.max);
            self.append(marker.as_bytes()).await?;
            self.truncated = true;
        }
        Ok(())
    }

    async fn append(&mut self, bytes: &[u8]) -> Result<(), Fault> {
        let Some(&last) = bytes.last() else { return Ok(()) };
        self.file.write_all(bytes).await.map_err(|e| self.failed(e))?;
        self.at_line_start = last == b'\n';
        Ok(())
    }

    /// Flushes what was written: call once the step has ended.
    pub(crate) async fn finish(mut self) -> Result<(), Fault> {
        self.file.flush().await.map_err(|e| self.failed(e))
    }

    fn failed(&self, e: std::io::Error) -> Fault {
        Fault(format!("cannot write the log {}: {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::fs::PermissionsExt;

    /// A workspace and a log in a fresh directory, and what a step needs around them.
    struct Fixture {
        dir: tempfile::TempDir,
        workspace: PathBuf,
        log: PathBuf,
        environment: BTreeMap<String, String>,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            // Searchable by the unprivileged user steps run as under root.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            let workspace = dir.path().join("workspace");
            std::fs::create_dir(&workspace).unwrap();
            let log = dir.path().join("step.log");
            Fixture { dir, workspace, log, environment: BTreeMap::new() }
        }

        fn spec<'a>(&'a self, commands: &'a [String], timeout: Duration) -> StepSpec<'a> {
            StepSpec {
                name: "test",
                image: "",
                commands,
                environment: &self.environment,
                network: false,
                timeout,
                workspace: &self.workspace,
                log: &self.log,
                log_bytes_max: 1 << 20,
                job: "1-0",
            }
        }

        async fn run(&self, commands: &[&str], timeout: Duration) -> StepExit {
            let commands: Vec<String> = commands.iter().map(|c| c.to_string()).collect();
            LocalRunner::new().run_step(&self.spec(&commands, timeout), &CancellationToken::new()).await.unwrap()
        }

        fn log_text(&self) -> String {
            std::fs::read_to_string(&self.log).unwrap_or_default()
        }

        fn pid(&self, file: &str) -> i32 {
            std::fs::read_to_string(self.workspace.join(file)).unwrap().trim().parse().unwrap()
        }
    }

    const MINUTE: Duration = Duration::from_secs(60);

    /// Whether `pid` is a live process (a zombie waiting to be reaped is dead).
    fn alive(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => {
                !matches!(stat.rsplit_once(')').map(|(_, rest)| rest.trim_start()), Some(s) if s.starts_with('Z'))
            }
            Err(_) => false,
        }
    }

    /// Waits a little for `pid` to die: SIGKILL is delivered asynchronously.
    async fn dies(pid: i32) -> bool {
        for _ in 0..100 {
            if !alive(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Waits for a command to write `file` into the workspace.
    async fn appears(path: &Path) {
        for _ in 0..500 {
            if std::fs::read_to_string(path).is_ok_and(|s| s.ends_with('\n')) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} never appeared", path.display());
    }

    #[tokio::test]
    async fn passing_commands_pass_and_log_their_output() {
        let f = Fixture::new();
        assert_eq!(f.run(&["echo out", "echo err >&2", "true"], MINUTE).await, StepExit::Exited(0));
        assert_eq!(f.log_text(), "out\nerr\n");
    }

    #[tokio::test]
    async fn the_first_failing_command_ends_the_step_with_its_exit_code() {
        let f = Fixture::new();
        let exit = f.run(&["touch first", "exit 3", "touch second"], MINUTE).await;
        assert_eq!(exit, StepExit::Exited(3));
        assert!(f.workspace.join("first").exists());
        assert!(!f.workspace.join("second").exists(), "a command after the failing one ran");
    }

    #[tokio::test]
    async fn a_command_killed_by_a_signal_exits_with_128_plus_its_number() {
        let f = Fixture::new();
        assert_eq!(f.run(&["kill -9 $$"], MINUTE).await, StepExit::Exited(137));
    }

    #[tokio::test]
    async fn the_environment_is_clean_but_for_the_steps_variables() {
        // Edition 2021: a safe call. No other test reads SECRET_X.
        std::env::set_var("SECRET_X", "leaked");
        let mut f = Fixture::new();
        f.environment.insert("GREETING".into(), "hello 'world' $x".into());
        assert_eq!(f.run(&["env", "echo \"cwd=$(pwd)\""], MINUTE).await, StepExit::Exited(0));
        let log = f.log_text();
        let env: BTreeMap<&str, &str> = log.lines().filter_map(|l| l.split_once('=')).collect();
        assert_eq!(env.get("SECRET_X"), None);
        assert_eq!(env.get("CARGO_MANIFEST_DIR"), None, "cargo's variables reached the step");
        assert_eq!(env["PATH"], STEP_PATH);
        assert_eq!(env["HOME"], f.workspace.to_str().unwrap());
        assert_eq!(env["CI"], "true");
        assert_eq!(env["PBFT_CI"], "true");
        assert_eq!(env["GREETING"], "hello 'world' $x");
        assert_eq!(env["cwd"], f.workspace.to_str().unwrap());
    }

    #[tokio::test]
    async fn a_background_child_dies_with_its_command() {
        let f = Fixture::new();
        let exit = f.run(&["sleep 60 & echo $! > bg.pid", "sleep 0.2"], MINUTE).await;
        assert_eq!(exit, StepExit::Exited(0));
        assert!(dies(f.pid("bg.pid")).await, "a background child outlived its command");
    }

    #[tokio::test]
    async fn a_step_past_its_timeout_is_stopped_with_its_children() {
        let f = Fixture::new();
        let started = Instant::now();
        let exit =
            f.run(&["sleep 60 & echo $! > bg.pid; echo $$ > sh.pid; sleep 60"], Duration::from_millis(500)).await;
        assert_eq!(exit, StepExit::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        assert!(dies(f.pid("sh.pid")).await, "the shell outlived the timeout");
        assert!(dies(f.pid("bg.pid")).await, "its background child outlived the timeout");
    }

    #[tokio::test]
    async fn cancelling_stops_the_step() {
        let f = Fixture::new();
        let commands = vec!["echo $$ > sh.pid; sleep 60".to_owned()];
        let cancel = CancellationToken::new();
        let spec = f.spec(&commands, MINUTE);
        let runner = LocalRunner::new();
        let step = runner.run_step(&spec, &cancel);
        let pid_file = f.workspace.join("sh.pid");
        let canceller = async {
            appears(&pid_file).await;
            cancel.cancel();
        };
        let (exit, ()) = tokio::join!(step, canceller);
        assert_eq!(exit.unwrap(), StepExit::Cancelled);
        assert!(dies(f.pid("sh.pid")).await, "the shell outlived the cancellation");
        // A step cancelled before it starts runs nothing.
        let marker = vec!["touch ran".to_owned()];
        assert_eq!(runner.run_step(&f.spec(&marker, MINUTE), &cancel).await.unwrap(), StepExit::Cancelled);
        assert!(!f.workspace.join("ran").exists());
    }

    #[tokio::test]
    async fn dropping_the_future_kills_the_group() {
        let f = Fixture::new();
        let commands = vec!["sleep 60 & echo $! > bg.pid; sleep 60".to_owned()];
        let spec = f.spec(&commands, MINUTE);
        let runner = LocalRunner::new();
        let cancel = CancellationToken::new();
        let step = runner.run_step(&spec, &cancel);
        let pid_file = f.workspace.join("bg.pid");
        tokio::select! {
            _ = step => panic!("the step ended"),
            () = appears(&pid_file) => {}
        }
        // The step's future is dropped here, mid-run.
        assert!(dies(f.pid("bg.pid")).await, "a child outlived its dropped step");
    }

    #[tokio::test]
    async fn output_past_the_bound_is_cut_with_a_marker_and_the_step_goes_on() {
        let f = Fixture::new();
        let commands: Vec<String> =
            vec!["printf 'line\\n'; yes 0123456789 | head -c 100000".into(), "touch after".into()];
        let mut spec = f.spec(&commands, MINUTE);
        spec.log_bytes_max = 100;
        let exit = LocalRunner::new().run_step(&spec, &CancellationToken::new()).await.unwrap();
        assert_eq!(exit, StepExit::Exited(0));
        assert!(f.workspace.join("after").exists(), "the step stopped at the bound");
        let log = f.log_text();
        let (kept, marker) = log.split_at(100);
        assert!(kept.starts_with("line\n0123456789\n"), "{kept:?}");
        assert_eq!(marker, "\n[pbft-ci: log truncated at 100 bytes]\n");
    }

    #[tokio::test]
    async fn under_root_steps_run_unprivileged_and_cannot_read_the_nodes_files() {
        if !Uid::effective().is_root() {
            eprintln!("skipping: the node does not run as root here");
            return;
        }
        let f = Fixture::new();
        let secret = f.dir.path().join("secret.key");
        std::fs::write(&secret, "the-replica-key").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(f.workspace.join("checked-out"), "").unwrap();
        let read_secret = format!("cat {}", secret.display());
        let exit = f.run(&["id -u; id -g", "touch checked-out written", &read_secret], MINUTE).await;
        assert_eq!(exit, StepExit::Exited(1), "the step read a 0600 root file");
        let log = f.log_text();
        assert!(log.starts_with("65534\n65534\n"), "{log}");
        assert!(!log.contains("the-replica-key"), "{log}");
        assert!(f.workspace.join("written").exists(), "the workspace was not handed over");
    }

    #[test]
    fn hand_over_does_not_follow_symbolic_links() {
        if !Uid::effective().is_root() {
            eprintln!("skipping: only root can hand files over");
            return;
        }
        use std::os::unix::fs::MetadataExt;
        let f = Fixture::new();
        let outside = f.dir.path().join("outside");
        std::fs::write(&outside, "").unwrap();
        std::fs::create_dir(f.workspace.join("sub")).unwrap();
        std::os::unix::fs::symlink(&outside, f.workspace.join("sub/link")).unwrap();
        chown_tree(&f.workspace, NOBODY).unwrap();
        assert_eq!(std::fs::metadata(f.workspace.join("sub")).unwrap().uid(), NOBODY.0);
        assert_eq!(std::fs::symlink_metadata(f.workspace.join("sub/link")).unwrap().uid(), NOBODY.0);
        assert_eq!(std::fs::metadata(&outside).unwrap().uid(), 0, "a link's target was handed over");
    }
}
