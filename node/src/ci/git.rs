//! Refs, URLs, the repository cache and checkouts, through the `git` CLI.
//!
//! Why the CLI and not gix: every machine that runs jobs has git; its refname
//! rules and its transports are the reference the repositories were made
//! with, and its security switches (`protocol.allow`, `GIT_ALLOW_PROTOCOL`,
//! `--end-of-options`, `GIT_CONFIG_NOSYSTEM`) are documented and maintained
//! upstream.
//!
//! Owns: validating refs, commit ids and URLs before any command runs; one
//! bare cache repository per URL under [`GitConfig::cache_dir`], fetched
//! incrementally, one fetch at a time per repository; the checkout of an exact
//! commit into a fresh workspace.
//!
//! The workspace holds the commit's tree and nothing else, no `.git`: git
//! writes it from a throwaway index (`read-tree --reset -u`), so git's own
//! path checks apply, a step can neither reach the cache (no alternates, no
//! hard links into it) nor see anything but the tree whose id the result
//! records, and a container needs no host path to make sense of it.
//!
//! Never: user input in an option's place (it comes after `--end-of-options`
//! or as an argument that cannot start with `-`); the user's or system's git
//! configuration, hooks, credential helpers or prompts; a transport the
//! operator did not allow (`ext::` and `fd::` never). The texts of
//! [`CheckoutError`]s other than `Fault` become results, so they are built
//! from the request alone: no path, no stderr, nothing of this machine.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::process::Command;

use crate::wire::limits::{REF_BYTES_MAX, REPO_BYTES_MAX, TEXT_BYTES_MAX};
use crate::wire::RequestError;

/// A fetch that takes longer is stopped (a fault). Stalled transfers end
/// sooner, through `http.lowSpeedTime`.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Every other command works on the local cache or lists refs.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// How much of git's stderr a fault quotes.
const STDERR_BYTES_MAX: usize = 600;
/// How much of a user's string an error quotes.
const QUOTE_CHARS_MAX: usize = 80;

/// What the operator allows. The job layer checks the membership's
/// allow-list before calling [`Git::checkout`].
#[derive(Clone, Debug)]
pub struct GitConfig {
    /// Where the bare caches live, one directory per repository URL.
    pub cache_dir: PathBuf,
    /// Whether `file:///…` repositories may be fetched (tests, the local testnet).
    pub allow_file_urls: bool,
    /// URL schemes allowed besides `https` (e.g. `ssh`, `http`, `git`).
    /// `file` counts only through `allow_file_urls`; `ext` and `fd` never.
    pub schemes: Vec<String>,
}

/// A checked-out job: what the result records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkout {
    pub commit: String,
    pub tree: String,
}

/// Why a checkout did not happen. All but `Fault` are properties of the
/// request (every correct replica finds the same); a `Fault` is this
/// machine's (network, disk) and is retried.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckoutError {
    #[error("{0}")]
    InvalidRef(String),
    /// The URL's scheme (or form) is not one this replica fetches.
    #[error("{0}")]
    RepoNotAllowed(String),
    #[error("{0}")]
    RefNotFound(String),
    #[error("{0}")]
    CommitNotOnRef(String),
    #[error("{0}")]
    Fault(String),
}

impl CheckoutError {
    /// The request error a result records, `None` for a fault.
    pub fn request_error(&self) -> Option<RequestError> {
        match self {
            CheckoutError::InvalidRef(_) => Some(RequestError::InvalidRef),
            CheckoutError::RepoNotAllowed(_) => Some(RequestError::RepoNotAllowed),
            CheckoutError::RefNotFound(_) => Some(RequestError::RefNotFound),
            CheckoutError::CommitNotOnRef(_) => Some(RequestError::CommitNotOnRef),
            CheckoutError::Fault(_) => None,
        }
    }
}

/// `s` in quotes, cut to a bounded length so error texts stay small.
fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_CHARS_MAX) {
        Some((at, _)) => format!("{:?}…", &s[..at]),
        None => format!("{s:?}"),
    }
}

/// Checks a ref name by git's rules (`git check-ref-format`, as for a
/// branch) and ours: not empty, no leading `-`, no whitespace or control
/// character of any kind (git takes non-ASCII ones such as U+0085 or U+2028,
/// which break or hide lines where a ref is quoted), at most
/// [`REF_BYTES_MAX`] bytes, and a full `refs/…` name has a namespace and a
/// name.
pub fn check_ref(r: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("invalid ref {}: {why}", quote(r)));
    if r.is_empty() {
        return bad("empty");
    }
    if r.len() > REF_BYTES_MAX {
        return bad(&format!("longer than {REF_BYTES_MAX} bytes"));
    }
    if r.starts_with('-') {
        return bad("starts with '-'");
    }
    if r == "@" {
        return bad("is '@'");
    }
    if let Some(c) = r.chars().find(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(*c)) {
        return bad(&format!("contains {c:?}"));
    }
    if r.contains("..") {
        return bad("contains '..'");
    }
    if r.contains("@{") {
        return bad("contains '@{'");
    }
    if r.ends_with('.') {
        return bad("ends with '.'");
    }
    for component in r.split('/') {
        if component.is_empty() {
            return bad("has an empty component ('/' at an end, or '//')");
        }
        if component.starts_with('.') {
            return bad("has a component starting with '.'");
        }
        if component.ends_with(".lock") {
            return bad("has a component ending with '.lock'");
        }
    }
    if r.starts_with("refs/") && r.split('/').count() < 3 {
        return bad("a full ref needs a namespace and a name (refs/heads/NAME)");
    }
    Ok(())
}

/// Checks a full commit id: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
pub fn check_commit(c: &str) -> Result<(), String> {
    let hex = c.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if (c.len() == 40 || c.len() == 64) && hex {
        Ok(())
    } else {
        Err(format!("invalid commit id {}: expected 40 or 64 lowercase hex digits", quote(c)))
    }
}

/// The git protocol name of an allowed URL scheme.
fn protocol_of(scheme: &str) -> &str {
    match scheme {
        "git+ssh" | "ssh+git" => "ssh",
        s => s,
    }
}

fn scheme_chars_ok(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+.-".contains(&b))
}

/// Checks a repository URL: `scheme://…` with an allowed scheme (`https`
/// always, `cfg.schemes`, `file` only with `cfg.allow_file_urls`, never
/// `ext` or `fd`), no leading `-`, no whitespace or control characters, at
/// most [`REPO_BYTES_MAX`] bytes; a `file://` URL has an absolute path, any
/// other a host that cannot be taken for an option.
pub fn check_url(url: &str, cfg: &GitConfig) -> Result<(), String> {
    let bad = |why: &str| Err(format!("repository URL not allowed: {why}"));
    if url.is_empty() {
        return bad("empty");
    }
    if url.len() > REPO_BYTES_MAX {
        return bad(&format!("longer than {REPO_BYTES_MAX} bytes"));
    }
    if url.starts_with('-') {
        return bad("starts with '-'");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("contains whitespace or a control character");
    }
    // scp-like `host:path` and git's `transport::address` have no `://`.
    let Some((scheme, rest)) = url.split_once("://") else {
        return bad("not of the form scheme://…");
    };
    if !scheme_chars_ok(scheme) {
        return bad(&format!("malformed scheme {}", quote(scheme)));
    }
    match scheme {
        "ext" | "fd" => return bad(&format!("scheme {scheme:?} is never allowed")),
        "file" if !cfg.allow_file_urls => return bad("file:// URLs are not allowed on this replica"),
        "file" if !rest.starts_with('/') => return bad("a file:// URL needs an absolute path (file:///…)"),
        "file" | "https" => {}
        s if cfg.schemes.iter().any(|allowed| allowed == s) => {}
        s => return bad(&format!("scheme {} is not allowed on this replica", quote(s))),
    }
    if scheme != "file" {
        let authority = rest.split('/').next().unwrap_or_default();
        let host = authority.rsplit('@').next().unwrap_or_default();
        if host.is_empty() {
            return bad("no host");
        }
        if authority.starts_with('-') || host.starts_with('-') {
            return bad("a host or user starting with '-'");
        }
    }
    Ok(())
}

/// The full ref names `r` may mean, in the order they are tried.
fn candidates(r: &str) -> Vec<String> {
    if r.starts_with("refs/") {
        vec![r.to_string()]
    } else {
        vec![format!("refs/heads/{r}"), format!("refs/tags/{r}")]
    }
}

/// How git commands run: a clean environment, no configuration but ours,
/// only the allowed transports.
#[derive(Clone, Debug)]
struct GitEnv {
    /// `GIT_ALLOW_PROTOCOL`'s value, e.g. `https:file`.
    protocols: String,
    path: OsString,
}

impl GitEnv {
    fn new(cfg: &GitConfig) -> GitEnv {
        let mut protocols = vec!["https".to_string()];
        for s in &cfg.schemes {
            let p = protocol_of(s);
            if scheme_chars_ok(s) && !["ext", "fd", "file"].contains(&p) && !protocols.iter().any(|q| q == p) {
                protocols.push(p.to_string());
            }
        }
        if cfg.allow_file_urls {
            protocols.push("file".to_string());
        }
        let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        GitEnv { protocols: protocols.join(":"), path }
    }

    /// `git` with our environment and configuration, working on `git_dir`
    /// when given (never discovering a repository from the working
    /// directory, whose configuration could name commands).
    fn command(&self, git_dir: Option<&Path>) -> Command {
        let mut c = Command::new("git");
        c.env_clear()
            .env("PATH", &self.path)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_ATTR_NOSYSTEM", "1")
            .env("GIT_NO_REPLACE_OBJECTS", "1")
            .env("GIT_ALLOW_PROTOCOL", &self.protocols)
            .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
            .env("LC_ALL", "C");
        // The same allow-list as configuration too, for any git that reads only that.
        c.args(["-c", "protocol.allow=never"]);
        for p in self.protocols.split(':') {
            c.arg("-c").arg(format!("protocol.{p}.allow=always"));
        }
        c.args([
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "core.fsmonitor=false",
            "-c",
            "core.autocrlf=false",
            "-c",
            "credential.helper=",
            "-c",
            "http.lowSpeedLimit=1000",
            "-c",
            "http.lowSpeedTime=60",
            // Housekeeping in the foreground, inside our lock, never a
            // detached process that outlives the fetch.
            "-c",
            "gc.autoDetach=false",
            "-c",
            "maintenance.autoDetach=false",
        ]);
        match git_dir {
            Some(dir) => {
                c.arg("--git-dir").arg(dir).current_dir(dir);
            }
            None => {
                c.current_dir("/");
            }
        }
        c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        c
    }
}

/// Runs `c` to its end within `timeout`; a timeout kills it (kill_on_drop).
async fn run(mut c: Command, what: &str, timeout: Duration) -> Result<Output, CheckoutError> {
    match tokio::time::timeout(timeout, c.output()).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(CheckoutError::Fault(format!("{what}: running git: {e}"))),
        Err(_) => Err(CheckoutError::Fault(format!("{what}: git took longer than {}s", timeout.as_secs()))),
    }
}

/// Runs `c`, which must succeed; its trimmed stdout.
async fn run_ok(c: Command, what: &str) -> Result<String, CheckoutError> {
    let out = run(c, what, COMMAND_TIMEOUT).await?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(failed(what, &out))
    }
}

fn failed(what: &str, out: &Output) -> CheckoutError {
    let mut err = String::from_utf8_lossy(&out.stderr).trim().replace('\n', " | ");
    if err.len() > STDERR_BYTES_MAX {
        let mut at = STDERR_BYTES_MAX;
        while !err.is_char_boundary(at) {
            at -= 1;
        }
        err.truncate(at);
        err.push('…');
    }
    CheckoutError::Fault(format!("{what}: git exited with {}: {err}", out.status))
}

/// Fetches, resolves and checks out jobs' commits, with one bare cache per
/// repository.
pub struct Git {
    cfg: GitConfig,
    env: GitEnv,
    /// One lock per cache directory: fetches into one cache never overlap.
    locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

impl Git {
    pub fn new(mut cfg: GitConfig) -> Git {
        // Commands run in other directories than ours: relative paths would move.
        cfg.cache_dir = std::path::absolute(&cfg.cache_dir).unwrap_or(cfg.cache_dir);
        let env = GitEnv::new(&cfg);
        Git { cfg, env, locks: Mutex::new(HashMap::new()) }
    }

    pub fn config(&self) -> &GitConfig {
        &self.cfg
    }

    /// The cache of `url`: named by the URL's SHA-256, so no URL can name a
    /// path.
    fn cache_path(&self, url: &str) -> PathBuf {
        self.cfg.cache_dir.join(hex::encode(Sha256::digest(url.as_bytes())))
    }

    fn lock_for(&self, cache: &Path) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().expect("git cache locks");
        // Forget the locks nobody holds or waits for, so the map stays small.
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(cache.to_path_buf()).or_default().clone()
    }

    /// Checks out `commit` (or, unpinned, what `git_ref` names now) of
    /// `repo` into `workspace`, which must not exist or be empty.
    ///
    /// Pinned, the commit must be reachable from the ref. The ref is
    /// `refs/…` as given, otherwise `refs/heads/REF`, then `refs/tags/REF`.
    /// Dropping the future leaves the cache sound: a fetch under way goes on
    /// to its end in a task of its own, and every other command only reads
    /// the cache.
    pub async fn checkout(
        &self,
        repo: &str,
        git_ref: &str,
        commit: Option<&str>,
        workspace: &Path,
    ) -> Result<Checkout, CheckoutError> {
        check_ref(git_ref).map_err(CheckoutError::InvalidRef)?;
        if let Some(c) = commit {
            check_commit(c).map_err(CheckoutError::InvalidRef)?;
        }
        check_url(repo, &self.cfg).map_err(CheckoutError::RepoNotAllowed)?;
        let cache = self.cache_path(repo);
        let candidates = candidates(git_ref);
        let commit = self.resolve(repo, &cache, git_ref, &candidates, commit).await?;
        self.materialize(&cache, &commit, workspace).await?;
        let mut c = self.env.command(Some(&cache));
        c.args(["rev-parse", "--verify"]).arg(format!("{commit}^{{tree}}"));
        let tree = run_ok(c, "reading the tree id").await?;
        Ok(Checkout { commit, tree })
    }

    /// The commit to run, fetching first unless a pinned commit is already
    /// known to be on the cached ref (fewer faults when the network is down).
    async fn resolve(
        &self,
        repo: &str,
        cache: &Path,
        git_ref: &str,
        candidates: &[String],
        pinned: Option<&str>,
    ) -> Result<String, CheckoutError> {
        if let Some(c) = pinned {
            if cache.join("HEAD").is_file() {
                if let Ok(Some(tip)) = self.local_ref(cache, candidates).await {
                    if self.is_ancestor(cache, c, &tip).await == Ok(true) {
                        return Ok(c.to_string());
                    }
                }
            }
        }
        self.fetch(repo, cache, git_ref, candidates).await?;
        let not_found = || CheckoutError::RefNotFound(format!("ref {} not found", quote(git_ref)));
        let tip = self.local_ref(cache, candidates).await?.ok_or_else(not_found)?;
        let Some(c) = pinned else { return Ok(tip) };
        let mut exists = self.env.command(Some(cache));
        exists.args(["rev-parse", "--verify", "--quiet"]).arg(format!("{c}^{{commit}}"));
        let out = run(exists, "looking up the commit", COMMAND_TIMEOUT).await?;
        match out.status.code() {
            Some(0) => {}
            Some(1) => return Err(CheckoutError::CommitNotOnRef(format!("commit {c} is not in the repository"))),
            _ => return Err(failed("looking up the commit", &out)),
        }
        if self.is_ancestor(cache, c, &tip).await? {
            Ok(c.to_string())
        } else {
            Err(CheckoutError::CommitNotOnRef(format!("commit {c} is not on ref {}", quote(git_ref))))
        }
    }

    /// The commit the first of `candidates` that exists in the cache points
    /// at (annotated tags peeled); `None` when none exists.
    async fn local_ref(&self, cache: &Path, candidates: &[String]) -> Result<Option<String>, CheckoutError> {
        let mut c = self.env.command(Some(cache));
        c.args(["for-each-ref", "--format=%(refname)%00%(objectname)", "--end-of-options"]).args(candidates);
        let listed = run_ok(c, "listing the cached refs").await?;
        // Patterns match prefixes too (refs/heads/a matches refs/heads/a/b): keep exact names.
        let found: HashMap<&str, &str> = listed.lines().filter_map(|l| l.split_once('\0')).collect();
        let Some(oid) = candidates.iter().find_map(|name| found.get(name.as_str())) else {
            return Ok(None);
        };
        let mut peel = self.env.command(Some(cache));
        peel.args(["rev-parse", "--verify", "--quiet"]).arg(format!("{oid}^{{commit}}"));
        let out = run(peel, "peeling the ref", COMMAND_TIMEOUT).await?;
        match out.status.code() {
            Some(0) => Ok(Some(String::from_utf8_lossy(&out.stdout).trim().to_string())),
            // A ref to a tree or a blob names no commit to run.
            Some(1) => Ok(None),
            _ => Err(failed("peeling the ref", &out)),
        }
    }

    async fn is_ancestor(&self, cache: &Path, commit: &str, tip: &str) -> Result<bool, CheckoutError> {
        let mut c = self.env.command(Some(cache));
        c.args(["merge-base", "--is-ancestor", commit, tip]);
        let out = run(c, "checking the commit is on the ref", COMMAND_TIMEOUT).await?;
        match out.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(failed("checking the commit is on the ref", &out)),
        }
    }

    /// Fetches every branch and tag of `repo` into its cache (and `git_ref`
    /// too when it lies elsewhere under `refs/`), creating the cache first.
    ///
    /// The fetch runs in a task of its own holding the repository's lock, so
    /// a job dropped meanwhile does not kill git halfway. Were git killed all
    /// the same (timeout, crash), what it leaves is harmless: packs are
    /// renamed into place only when complete, refs are updated through lock
    /// files and renames, and stale lock files, which would block every
    /// later fetch, are removed before the next one (under our lock nothing
    /// else works on the cache).
    async fn fetch(&self, repo: &str, cache: &Path, git_ref: &str, candidates: &[String]) -> Result<(), CheckoutError> {
        let extra =
            (git_ref.starts_with("refs/") && !git_ref.starts_with("refs/heads/") && !git_ref.starts_with("refs/tags/"))
                .then(|| git_ref.to_string());
        if let Some(r) = &extra {
            // Other refs are fetched one by one, and fetching a missing one
            // fails like an unreachable repository would: ask first.
            if ls_remote(&self.env, repo, candidates).await?.is_empty() {
                return Err(CheckoutError::RefNotFound(format!("ref {} not found", quote(r))));
            }
        }
        let guard = self.lock_for(cache).lock_owned().await;
        let (env, repo, cache, cache_dir) =
            (self.env.clone(), repo.to_string(), cache.to_path_buf(), self.cfg.cache_dir.clone());
        let task = tokio::spawn(async move {
            let _guard = guard;
            init_cache(&env, &cache_dir, &cache).await?;
            remove_stale_locks(&cache);
            let mut c = env.command(Some(&cache));
            c.args(["fetch", "--quiet", "--prune", "--no-write-fetch-head", "--no-recurse-submodules"]).args([
                "--end-of-options",
                &repo,
                "+refs/heads/*:refs/heads/*",
                "+refs/tags/*:refs/tags/*",
            ]);
            if let Some(r) = extra {
                c.arg(format!("+{r}:{r}"));
            }
            let what = format!("fetching {repo}");
            let out = run(c, &what, FETCH_TIMEOUT).await?;
            if out.status.success() {
                Ok(())
            } else {
                Err(failed(&what, &out))
            }
        });
        task.await.map_err(|e| CheckoutError::Fault(format!("the fetch task failed: {e}")))?
    }

    /// Writes `commit`'s tree into `workspace` through a throwaway index.
    async fn materialize(&self, cache: &Path, commit: &str, workspace: &Path) -> Result<(), CheckoutError> {
        let fault =
            |what: &str, e: std::io::Error| CheckoutError::Fault(format!("{what} {}: {e}", workspace.display()));
        let workspace = &std::path::absolute(workspace).map_err(|e| fault("locating the workspace", e))?;
        std::fs::create_dir_all(workspace).map_err(|e| fault("creating the workspace", e))?;
        let mut entries = std::fs::read_dir(workspace).map_err(|e| fault("reading the workspace", e))?;
        if entries.next().is_some() {
            return Err(CheckoutError::Fault(format!("the workspace {} is not empty", workspace.display())));
        }
        let index = TempFile(unique_path(&self.cfg.cache_dir, "index"));
        let mut c = self.env.command(Some(cache));
        c.env("GIT_INDEX_FILE", &index.0).arg("--work-tree").arg(workspace).args([
            "read-tree",
            "--reset",
            "-u",
            commit,
        ]);
        run_ok(c, "checking out the commit").await?;
        Ok(())
    }
}

/// A path for a temporary file or directory next to the caches, unique in
/// this process.
fn unique_path(dir: &Path, what: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{what}-{}-{n}", std::process::id()))
}

/// Removed when dropped, also when the future that made it is.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Creates the bare cache `cache` unless it exists: in a temporary
/// directory renamed into place, so a half-made cache is never taken for one.
async fn init_cache(env: &GitEnv, cache_dir: &Path, cache: &Path) -> Result<(), CheckoutError> {
    if cache.join("HEAD").is_file() {
        return Ok(());
    }
    let fault = |what: &str, e: std::io::Error| CheckoutError::Fault(format!("{what}: {e}"));
    std::fs::create_dir_all(cache_dir).map_err(|e| fault("creating the cache directory", e))?;
    let tmp = unique_path(cache_dir, "init");
    let mut c = env.command(None);
    // No templates: no sample hooks, nothing we did not ask for.
    c.args(["-c", "init.defaultBranch=main", "init", "--quiet", "--bare", "--template="]).arg(&tmp);
    let made = run_ok(c, "creating the cache").await;
    let renamed = made.and_then(|_| std::fs::rename(&tmp, cache).map_err(|e| fault("creating the cache", e)));
    if renamed.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    renamed
}

/// Removes the lock files a killed git left in `cache`.
fn remove_stale_locks(cache: &Path) {
    let refs = cache.join("refs");
    let mut dirs = vec![cache.to_path_buf(), cache.join("objects").join("info")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() && path.starts_with(&refs) {
                dirs.push(path);
            } else if kind.is_file() && path.extension().is_some_and(|e| e == "lock") {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// `git ls-remote` of `names` (and their peeled `^{}` forms): (name, id)
/// pairs with exactly those names.
async fn ls_remote(env: &GitEnv, url: &str, names: &[String]) -> Result<Vec<(String, String)>, CheckoutError> {
    let mut c = env.command(None);
    c.args(["ls-remote", "--end-of-options", url]);
    for n in names {
        c.arg(n).arg(format!("{n}^{{}}"));
    }
    let listed = run_ok(c, &format!("listing the refs of {url}")).await?;
    let wanted = |name: &str| names.iter().any(|n| name == n || name.strip_suffix("^{}") == Some(n));
    Ok(listed
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, name)| wanted(name))
        .map(|(id, name)| (name.to_string(), id.to_string()))
        .collect())
}

/// The commit `git_ref` names on the repository at `url` now (branches
/// first, then tags, annotated tags peeled), or `None` when it names
/// nothing: how the gateway pins `{"branch": B}`. Errors are invalid input
/// or an unreachable repository.
pub async fn resolve_remote(url: &str, git_ref: &str, cfg: &GitConfig) -> Result<Option<String>, String> {
    check_url(url, cfg)?;
    check_ref(git_ref)?;
    let names = candidates(git_ref);
    let listed = ls_remote(&GitEnv::new(cfg), url, &names).await.map_err(|e| e.to_string())?;
    let find = |name: &str| listed.iter().find(|(n, _)| n == name).map(|(_, id)| id.clone());
    Ok(names.iter().find_map(|n| find(&format!("{n}^{{}}")).or_else(|| find(n))))
}

/// Error texts of requests end up in results, bounded by TEXT_BYTES_MAX.
const _: () = assert!(QUOTE_CHARS_MAX * 4 + 200 < TEXT_BYTES_MAX);

#[cfg(test)]
mod tests {
    use std::process::Command as StdCommand;

    use tempfile::TempDir;

    use super::*;

    /// Runs the real git in `dir` for a fixture, isolated from the machine's
    /// configuration; its trimmed stdout.
    fn git(dir: &Path, args: &[&str]) -> String {
        let out = StdCommand::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.org")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.org")
            .output()
            .expect("git runs");
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn git_ok(dir: &Path, args: &[&str]) -> bool {
        let out = StdCommand::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .expect("git runs");
        out.status.success()
    }

    /// An origin repository made with the git CLI, and a `Git` whose cache
    /// lives in the same temporary directory.
    struct Fixture {
        tmp: TempDir,
        origin: PathBuf,
        url: String,
        git: Git,
    }

    impl Fixture {
        fn new() -> Fixture {
            let tmp = TempDir::new().unwrap();
            let origin = tmp.path().join("origin");
            std::fs::create_dir(&origin).unwrap();
            git(&origin, &["init", "-q", "-b", "master"]);
            let url = format!("file://{}", origin.display());
            let git = Git::new(Fixture::config(&tmp, true, &[]));
            let f = Fixture { tmp, origin, url, git };
            f.commit("master", "file.txt", "one");
            f
        }

        fn config(tmp: &TempDir, allow_file_urls: bool, schemes: &[&str]) -> GitConfig {
            GitConfig {
                cache_dir: tmp.path().join("cache"),
                allow_file_urls,
                schemes: schemes.iter().map(|s| s.to_string()).collect(),
            }
        }

        /// Commits `path` = `content` on `branch` (created from the current
        /// HEAD if new); the new commit's id.
        fn commit(&self, branch: &str, path: &str, content: &str) -> String {
            let exists = git_ok(&self.origin, &["rev-parse", "--verify", "--quiet", &format!("refs/heads/{branch}")]);
            let born = git_ok(&self.origin, &["rev-parse", "--verify", "--quiet", "HEAD"]);
            if exists {
                git(&self.origin, &["checkout", "-q", branch]);
            } else if born {
                git(&self.origin, &["checkout", "-q", "-b", branch]);
            } else {
                git(&self.origin, &["symbolic-ref", "HEAD", &format!("refs/heads/{branch}")]);
            }
            std::fs::write(self.origin.join(path), content).unwrap();
            git(&self.origin, &["add", "--", path]);
            git(&self.origin, &["commit", "-q", "-m", content]);
            git(&self.origin, &["rev-parse", "HEAD"])
        }

        fn workspace(&self, name: &str) -> PathBuf {
            self.tmp.path().join("work").join(name)
        }

        fn cache_dir(&self) -> PathBuf {
            self.tmp.path().join("cache")
        }

        async fn checkout(&self, git_ref: &str, commit: Option<&str>, ws: &str) -> Result<Checkout, CheckoutError> {
            self.git.checkout(&self.url, git_ref, commit, &self.workspace(ws)).await
        }

        fn read(&self, ws: &str, path: &str) -> String {
            std::fs::read_to_string(self.workspace(ws).join(path)).unwrap()
        }
    }

    #[test]
    fn ref_names_follow_gits_rules() {
        for ok in ["master", "feature/x", "refs/heads/x", "refs/tags/v1", "fünf-ü", "v1.0", "a@b", "x/y.z/w"] {
            assert_eq!(check_ref(ok), Ok(()), "{ok}");
        }
        let long = "a".repeat(REF_BYTES_MAX + 1);
        for bad in [
            "",
            "-x",
            "--upload-pack=touch /tmp/x",
            "../../etc",
            "a b",
            "a..b",
            "a~1",
            "a^",
            "a:b",
            "a?",
            "a*",
            "a[b",
            "a\\b",
            ".a",
            "a/.b",
            "a.lock",
            "a.lock/b",
            "a@{1}",
            "@",
            "a/",
            "/a",
            "a//b",
            "a.",
            "a\tb",
            "a\u{7f}",
            "refs/heads",
            &long,
        ] {
            assert!(check_ref(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(check_ref(&"a".repeat(REF_BYTES_MAX)).is_ok());
    }

    /// Found by the `refs` fuzz target (fuzz/regressions/refs/): git takes
    /// these, we must not.
    #[test]
    fn refs_with_unicode_whitespace_or_control_characters_are_refused() {
        for bad in
            ["refs\u{85}/he", "r\u{a0}efs/he", "git\u{2028}{}v", "s\u{3000}ar", "a\u{9f}b", "a\u{2029}", "\u{1680}x"]
        {
            assert!(check_ref(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(check_ref("fünf-ü/émoji-✓"), Ok(()), "other non-ASCII characters stay allowed");
    }

    /// Our rules against the real `git check-ref-format --branch`, on names
    /// where git's rules alone decide.
    #[test]
    fn ref_rules_agree_with_git_check_ref_format() {
        let tmp = TempDir::new().unwrap();
        let names = [
            "master",
            "feature/x",
            "refs/heads/x",
            "refs/tags/v1",
            "fünf-ü",
            "v1.0",
            "a@b",
            "x/y.z/w",
            "a_b-c",
            "-x",
            "a b",
            "a..b",
            "a~1",
            "a^",
            "a:b",
            "a?",
            "a*",
            "a[b",
            "a\\b",
            ".a",
            "a/.b",
            "a.lock",
            "a.lock/b",
            "a@{1}",
            "a/",
            "/a",
            "a//b",
            "a.",
            "a\tb",
            "a\u{1}b",
            "a\u{7f}",
            "../../etc",
            "a/..",
            "émoji/✓",
            "--upload-pack=touch /tmp/x",
            "a/b.lock/c",
            "ab.locks",
            ".lock",
            "a/.",
            "@a",
            "a@",
            "{a}",
            "a{@",
        ];
        // Left out: "@" (git --branch reads it as HEAD) and names over our length bound.
        for name in names {
            let git_says = StdCommand::new("git")
                .args(["check-ref-format", "--branch", name])
                .current_dir(tmp.path())
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .output()
                .unwrap()
                .status
                .success();
            assert_eq!(check_ref(name).is_ok(), git_says, "{name:?}: git says {git_says}");
        }
    }

    #[test]
    fn commit_ids_are_full_lowercase_hex() {
        assert!(check_commit(&"a".repeat(40)).is_ok());
        assert!(check_commit(&"0123456789abcdef".repeat(4)).is_ok());
        for bad in ["", "abc123", &"A".repeat(40), &"g".repeat(40), &"a".repeat(41), &"a".repeat(39), "-a"] {
            assert!(check_commit(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn url_schemes_follow_the_operators_allow_list() {
        let tmp = TempDir::new().unwrap();
        let strict = Fixture::config(&tmp, false, &[]);
        let open = Fixture::config(&tmp, true, &["ssh", "http", "git", "ext", "fd", "file"]);
        assert!(check_url("https://git.example.org/a.git", &strict).is_ok());
        assert!(check_url("http://git.example.org/a.git", &strict).is_err());
        assert!(check_url("http://git.example.org/a.git", &open).is_ok());
        assert!(check_url("ssh://git@git.example.org/a.git", &strict).is_err());
        assert!(check_url("ssh://git@git.example.org/a.git", &open).is_ok());
        assert!(check_url("file:///srv/a.git", &strict).is_err());
        assert!(check_url("file:///srv/a.git", &open).is_ok());
        // `file` in the schemes does not stand in for allow_file_urls.
        assert!(check_url("file:///srv/a.git", &Fixture::config(&tmp, false, &["file"])).is_err());
        for bad in [
            "file://srv/a.git",
            "file://relative",
            "ext::sh -c touch% /tmp/x",
            "ext://sh",
            "fd::0",
            "fd://0",
            "git@github.com:a/b.git",
            "-https://x",
            "https://",
            "https://-oProxyCommand=x/a",
            "ssh://-oProxyCommand=x/a",
            "ssh://u@-oProxyCommand=x/a",
            "https://x/a b",
            "https://x/a\nb",
            "HTTPS://x/a",
            "",
        ] {
            assert!(check_url(bad, &open).is_err(), "{bad:?}");
        }
        let long = format!("https://x/{}", "a".repeat(REPO_BYTES_MAX));
        assert!(check_url(&long, &open).is_err());
        // ext and fd never reach git's allow-list either.
        assert_eq!(GitEnv::new(&open).protocols, "https:ssh:http:git:file");
        assert_eq!(GitEnv::new(&strict).protocols, "https");
    }

    #[tokio::test]
    async fn checks_out_a_branch() {
        let f = Fixture::new();
        let head = git(&f.origin, &["rev-parse", "HEAD"]);
        let tree = git(&f.origin, &["rev-parse", "HEAD^{tree}"]);
        let c = f.checkout("master", None, "ws").await.unwrap();
        assert_eq!(c, Checkout { commit: head, tree });
        assert_eq!(f.read("ws", "file.txt"), "one");
        // The tree and nothing else: no .git, no leftover index.
        let names: Vec<_> = std::fs::read_dir(f.workspace("ws")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["file.txt"]);
        let cache: Vec<_> = std::fs::read_dir(f.cache_dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(cache.len(), 1, "one cache, no temporary files: {cache:?}");
        // Named by the URL's SHA-256, bare, without sample hooks.
        let cache = f.cache_dir().join(hex::encode(Sha256::digest(f.url.as_bytes())));
        assert!(cache.join("HEAD").is_file());
        assert!(!cache.join("hooks").exists());
    }

    #[tokio::test]
    async fn a_missing_branch_is_ref_not_found() {
        let f = Fixture::new();
        let e = f.checkout("nope", None, "ws").await.unwrap_err();
        assert_eq!(e, CheckoutError::RefNotFound("ref \"nope\" not found".into()));
        assert_eq!(e.request_error(), Some(RequestError::RefNotFound));
        let pinned = f.checkout("nope", Some(&"a".repeat(40)), "ws2").await.unwrap_err();
        assert!(matches!(pinned, CheckoutError::RefNotFound(_)), "{pinned:?}");
    }

    #[tokio::test]
    async fn a_pinned_commit_runs_after_its_branch_moved_on() {
        let f = Fixture::new();
        let first = git(&f.origin, &["rev-parse", "HEAD"]);
        let second = f.commit("master", "file.txt", "two");
        let c = f.checkout("master", Some(&first), "ws").await.unwrap();
        assert_eq!(c.commit, first);
        assert_eq!(f.read("ws", "file.txt"), "one");
        let c = f.checkout("master", None, "ws2").await.unwrap();
        assert_eq!(c.commit, second);
        assert_eq!(f.read("ws2", "file.txt"), "two");
    }

    #[tokio::test]
    async fn a_pinned_commit_not_on_the_branch_is_refused() {
        let f = Fixture::new();
        let elsewhere = f.commit("feature", "file.txt", "feature");
        let e = f.checkout("master", Some(&elsewhere), "ws").await.unwrap_err();
        assert_eq!(e, CheckoutError::CommitNotOnRef(format!("commit {elsewhere} is not on ref \"master\"")));
        // Though it is on its own branch.
        assert_eq!(f.checkout("feature", Some(&elsewhere), "ws2").await.unwrap().commit, elsewhere);
        assert!(!f.workspace("ws").join("file.txt").exists());
    }

    #[tokio::test]
    async fn an_unknown_commit_is_not_on_the_ref() {
        let f = Fixture::new();
        let unknown = "0123456789abcdef0123456789abcdef01234567";
        let e = f.checkout("master", Some(unknown), "ws").await.unwrap_err();
        assert_eq!(e, CheckoutError::CommitNotOnRef(format!("commit {unknown} is not in the repository")));
        assert_eq!(e.request_error(), Some(RequestError::CommitNotOnRef));
    }

    #[tokio::test]
    async fn file_urls_need_the_operators_consent() {
        let f = Fixture::new();
        let strict = Git::new(Fixture::config(&f.tmp, false, &[]));
        let e = strict.checkout(&f.url, "master", None, &f.workspace("ws")).await.unwrap_err();
        assert!(matches!(&e, CheckoutError::RepoNotAllowed(m) if m.contains("file://")), "{e:?}");
        assert_eq!(e.request_error(), Some(RequestError::RepoNotAllowed));
        assert!(!f.cache_dir().exists(), "nothing ran");
        assert!(f.checkout("master", None, "ws").await.is_ok());
    }

    #[tokio::test]
    async fn http_needs_the_operators_consent() {
        let tmp = TempDir::new().unwrap();
        let strict = Git::new(Fixture::config(&tmp, false, &[]));
        let url = "http://127.0.0.1:9/repo.git";
        let e = strict.checkout(url, "master", None, &tmp.path().join("ws")).await.unwrap_err();
        assert!(matches!(&e, CheckoutError::RepoNotAllowed(m) if m.contains("\"http\"")), "{e:?}");
        assert!(!tmp.path().join("cache").exists() && !tmp.path().join("ws").exists());
        assert!(resolve_remote(url, "master", strict.config()).await.is_err());
        // Allowed, it is tried: nothing listens there, so that is a fault.
        let open = Git::new(Fixture::config(&tmp, false, &["http"]));
        let e = open.checkout(url, "master", None, &tmp.path().join("ws")).await.unwrap_err();
        assert!(matches!(e, CheckoutError::Fault(_)), "{e:?}");
    }

    #[tokio::test]
    async fn hostile_refs_are_refused_before_anything_runs() {
        let f = Fixture::new();
        let marker = f.tmp.path().join("marker");
        let upload_pack = format!("--upload-pack=touch {}", marker.display());
        let hostile = [upload_pack.as_str(), "-x", "../../etc", "a b", "--end-of-options", "x;$(touch${IFS}pwned)"];
        for (i, r) in hostile.iter().enumerate() {
            let ws = format!("ws{i}");
            let e = f.checkout(r, None, &ws).await;
            if r.starts_with("x;") {
                // A valid ref name, just not one the repository has: still nothing executed.
                assert!(matches!(e, Err(CheckoutError::RefNotFound(_))), "{r:?}: {e:?}");
                continue;
            }
            assert!(matches!(&e, Err(CheckoutError::InvalidRef(_))), "{r:?}: {e:?}");
            assert_eq!(e.unwrap_err().request_error(), Some(RequestError::InvalidRef));
            assert!(!f.workspace(&ws).exists());
            assert!(!f.cache_dir().exists(), "{r:?}: the cache was not even created");
            assert!(resolve_remote(&f.url, r, f.git.config()).await.is_err());
        }
        let e = f.checkout("master", Some("--upload-pack=x"), "wsc").await.unwrap_err();
        assert!(matches!(e, CheckoutError::InvalidRef(_)), "{e:?}");
        assert!(!marker.exists(), "nothing was executed");
        assert!(!Path::new("/pwned").exists() && !f.cache_dir().join("pwned").exists());
        // As a URL, an option is refused too.
        let e = f.git.checkout(&upload_pack, "master", None, &f.workspace("wsu")).await.unwrap_err();
        assert!(matches!(e, CheckoutError::RepoNotAllowed(_)), "{e:?}");
        assert!(!marker.exists(), "nothing was executed");
    }

    #[tokio::test]
    async fn a_unicode_branch_runs() {
        let f = Fixture::new();
        let id = f.commit("fünf-ü", "file.txt", "fünf");
        let c = f.checkout("fünf-ü", None, "ws").await.unwrap();
        assert_eq!(c.commit, id);
        assert_eq!(f.read("ws", "file.txt"), "fünf");
    }

    #[tokio::test]
    async fn the_same_job_twice_gives_the_same_commit_tree_and_files() {
        let f = Fixture::new();
        std::fs::create_dir(f.origin.join("dir")).unwrap();
        f.commit("master", "dir/nested.txt", "nested");
        let a = f.checkout("master", None, "a").await.unwrap();
        let b = f.checkout("master", Some(&a.commit), "b").await.unwrap();
        assert_eq!(a, b);
        for path in ["file.txt", "dir/nested.txt"] {
            assert_eq!(f.read("a", path), f.read("b", path));
        }
    }

    #[tokio::test]
    async fn a_second_checkout_fetches_what_is_new() {
        let f = Fixture::new();
        let first = f.checkout("master", None, "ws").await.unwrap();
        let second = f.commit("master", "file.txt", "two");
        f.commit("newbranch", "new.txt", "new");
        let c = f.checkout("master", None, "ws2").await.unwrap();
        assert_ne!(c.commit, first.commit);
        assert_eq!(c.commit, second);
        assert_eq!(f.read("ws2", "file.txt"), "two");
        assert!(f.checkout("newbranch", None, "ws3").await.is_ok());
        // A deleted branch is pruned from the cache.
        git(&f.origin, &["checkout", "-q", "master"]);
        git(&f.origin, &["branch", "-q", "-D", "newbranch"]);
        assert!(matches!(f.checkout("newbranch", None, "ws4").await, Err(CheckoutError::RefNotFound(_))));
    }

    #[tokio::test]
    async fn tags_and_other_full_refs_resolve() {
        let f = Fixture::new();
        let first = git(&f.origin, &["rev-parse", "HEAD"]);
        git(&f.origin, &["tag", "-a", "v1", "-m", "v1"]);
        git(&f.origin, &["tag", "light"]);
        let second = f.commit("master", "file.txt", "two");
        git(&f.origin, &["update-ref", "refs/pull/1/head", &first]);
        for r in ["v1", "refs/tags/v1", "light", "refs/pull/1/head"] {
            let c = f.checkout(r, None, &r.replace('/', "-")).await.unwrap();
            assert_eq!(c.commit, first, "{r}");
        }
        assert_eq!(f.checkout("refs/heads/master", None, "full").await.unwrap().commit, second);
        let e = f.checkout("refs/pull/2/head", None, "pr2").await.unwrap_err();
        assert_eq!(e, CheckoutError::RefNotFound("ref \"refs/pull/2/head\" not found".into()));
        // A branch wins over a tag of the same name.
        f.commit("v1", "file.txt", "branch v1");
        assert_ne!(f.checkout("v1", None, "branch-v1").await.unwrap().commit, first);
    }

    #[tokio::test]
    async fn an_unreachable_repository_is_a_fault() {
        let f = Fixture::new();
        let url = format!("file://{}/missing", f.tmp.path().display());
        let e = f.git.checkout(&url, "master", None, &f.workspace("ws")).await.unwrap_err();
        assert!(matches!(&e, CheckoutError::Fault(m) if m.contains("fetching")), "{e:?}");
        assert_eq!(e.request_error(), None);
        assert!(resolve_remote(&url, "master", f.git.config()).await.is_err());
    }

    #[tokio::test]
    async fn a_workspace_that_is_not_empty_is_a_fault() {
        let f = Fixture::new();
        std::fs::create_dir_all(f.workspace("ws")).unwrap();
        std::fs::write(f.workspace("ws").join("old"), "x").unwrap();
        assert!(matches!(f.checkout("master", None, "ws").await, Err(CheckoutError::Fault(_))));
        // An empty one is fine.
        std::fs::create_dir_all(f.workspace("empty")).unwrap();
        assert!(f.checkout("master", None, "empty").await.is_ok());
    }

    #[tokio::test]
    async fn concurrent_checkouts_of_one_repository_share_its_cache() {
        let f = Fixture::new();
        let (a, b, c) = tokio::join!(
            f.checkout("master", None, "a"),
            f.checkout("master", None, "b"),
            f.checkout("master", None, "c")
        );
        assert_eq!(a.unwrap(), b.unwrap());
        assert!(c.is_ok());
    }

    #[tokio::test]
    async fn a_dropped_checkout_or_a_killed_fetch_leaves_the_cache_usable() {
        let f = Fixture::new();
        for delay_ms in [0, 1, 5, 20] {
            let ws = f.workspace(&format!("dropped{delay_ms}"));
            let _ = tokio::time::timeout(Duration::from_millis(delay_ms), f.git.checkout(&f.url, "master", None, &ws))
                .await;
        }
        assert!(f.checkout("master", None, "after").await.is_ok());
        // What a git killed while updating refs leaves behind.
        let cache = f.cache_dir().join(hex::encode(Sha256::digest(f.url.as_bytes())));
        std::fs::write(cache.join("refs/heads/master.lock"), "").unwrap();
        std::fs::write(cache.join("packed-refs.lock"), "").unwrap();
        let next = f.commit("master", "file.txt", "after the kill");
        assert_eq!(f.checkout("master", None, "later").await.unwrap().commit, next);
    }

    #[tokio::test]
    async fn resolve_remote_names_heads_then_tags() {
        let f = Fixture::new();
        let first = git(&f.origin, &["rev-parse", "HEAD"]);
        git(&f.origin, &["tag", "-a", "v1", "-m", "annotated"]);
        git(&f.origin, &["tag", "light"]);
        let second = f.commit("master", "file.txt", "two");
        let cfg = f.git.config();
        assert_eq!(resolve_remote(&f.url, "master", cfg).await, Ok(Some(second.clone())));
        assert_eq!(resolve_remote(&f.url, "refs/heads/master", cfg).await, Ok(Some(second)));
        assert_eq!(resolve_remote(&f.url, "v1", cfg).await, Ok(Some(first.clone())), "peeled");
        assert_eq!(resolve_remote(&f.url, "light", cfg).await, Ok(Some(first)));
        assert_eq!(resolve_remote(&f.url, "missing", cfg).await, Ok(None));
        assert_eq!(resolve_remote(&f.url, "mast", cfg).await, Ok(None), "names match exactly");
        assert!(!f.cache_dir().exists(), "resolving writes nothing");
    }
}
