//! `pbft-node`, the replica's command line: run a replica, identity keys and
//! offline certificate checks.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use pbft_node::ci::docker::{DockerLimits, DockerRunner};
use pbft_node::ci::job::{CiConfig, CiExecutor};
use pbft_node::ci::local::LocalRunner;
use pbft_node::ci::pipeline::Pipeline;
use pbft_node::driver::{self, Executor, NodeConfig, NoneExecutor, Shutdown};
use pbft_node::membership::Membership;
use pbft_node::wire::{Certificate, JobResult, Operation, Outcome, VerifiedCertificate};
use pbft_node::{keys, logging};

/// A replica of pbft-ci: CI jobs ordered by PBFT, results signed by each
/// replica.
#[derive(Parser)]
#[command(
    name = "pbft-node",
    version,
    after_help = "Every replica and gateway is named by the PeerId of its ed25519 key. A membership\n\
                  file (TOML) lists the replicas in order, the gateways and the allowed\n\
                  repositories; README.md documents its format."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a replica: join the network, order jobs with PBFT, run them, sign results.
    #[command(after_help = "The key must be one of the replicas listed in the membership file. Everything the\n\
                            replica must not forget (what it sent and accepted, the job log, its signed\n\
                            results) is kept under --data-dir, so a restart resumes where it stopped\n\
                            without contradicting anything it said. Logs go to stderr and to\n\
                            LOG_DIR/pbft-node-<PeerId>.log; RUST_LOG filters them (default: info).\n\
                            SIGTERM or ctrl-c stops it gracefully.\n\n\
                            Example (replica 1 of a loopback testnet, finding the others through replica 0):\n  \
                            pbft-node run --key testnet/keys/replica1.key --members testnet/members.toml \\\n    \
                            --listen /ip4/127.0.0.1/tcp/7001 --bootstrap /ip4/127.0.0.1/tcp/7000 \\\n    \
                            --data-dir testnet/data/replica1 --executor none")]
    Run(RunArgs),
    /// Generate an ed25519 identity key and print its PeerId.
    #[command(after_help = "The key is written in libp2p's protobuf encoding, readable by its owner only\n\
                            (mode 0600). The PeerId printed on stdout is the name to put in a\n\
                            membership file.")]
    Keygen {
        /// File to write the key to.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Replace FILE if it already exists (its old identity is lost).
        #[arg(long)]
        force: bool,
    },
    /// Print the PeerId of a key file.
    Id {
        /// Key file written by `pbft-node keygen`.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// Check a verdict's certificate offline against a membership file.
    #[command(after_help = "Exits 0 and prints a one-line summary on stdout when every signature and every\n\
                            agreement in the certificate holds; exits 1 with the reason on stderr\n\
                            otherwise.")]
    Verify {
        /// Membership file (TOML) of the network that signed the certificate.
        #[arg(long, value_name = "FILE")]
        members: PathBuf,
        /// Certificate (JSON, as the gateway's `GET /jobs/ID` serves it).
        #[arg(value_name = "CERT.json")]
        cert: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// This replica's key file (written by `pbft-node keygen`).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Membership file (TOML): the replicas in order, the gateways, the allowed repositories.
    #[arg(long, value_name = "FILE")]
    members: PathBuf,
    /// Address to listen on, repeatable [default: this replica's `addr` in the membership
    /// file, else /ip4/0.0.0.0/tcp/0].
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<String>,
    /// Address of a peer to find the network through (e.g. /ip4/192.0.2.7/tcp/7000), repeatable.
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<String>,
    /// Discover peers on the LAN with mDNS [default: on when listening beyond loopback].
    #[arg(long, overrides_with = "no_mdns")]
    mdns: bool,
    /// Never use mDNS.
    #[arg(long)]
    no_mdns: bool,
    /// Directory of the replica's durable state.
    #[arg(long, value_name = "DIR", default_value = "data")]
    data_dir: PathBuf,
    /// How jobs run: `none` completes each at once with a deterministic no-op result (tests, benchmarks).
    #[arg(long, value_enum, default_value_t = ExecutorKind::Docker)]
    executor: ExecutorKind,
    /// Directory of the log file.
    #[arg(long, value_name = "DIR", default_value = "log")]
    log_dir: PathBuf,
    /// Jobs that run at once; the others wait in order.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    max_jobs: u16,
    /// Pipeline file for repositories without .pbft-ci.yml [default: none; their jobs are an
    /// `invalid pipeline` error]. Every replica of a network needs the same one.
    #[arg(long, value_name = "FILE")]
    default_pipeline: Option<PathBuf>,
    /// Allow file:// repositories (the local testnet's): they read this machine's disk.
    #[arg(long)]
    allow_file_urls: bool,
    /// A URL scheme allowed besides https, repeatable (e.g. ssh, http, git).
    #[arg(long = "git-scheme", value_name = "SCHEME")]
    git_schemes: Vec<String>,
    /// Attempts at a job this machine fails (engine or image unavailable, fetch failed) before it
    /// signs an abstention.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    job_attempts: u32,
    /// Logs of this many jobs are kept under DATA_DIR/ci/logs; older ones are removed.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    keep_logs: usize,
    /// A step's log is cut, with a marker, past this many bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20)]
    log_bytes_max: u64,
    /// docker: memory of a step's container, in MiB (swap included).
    #[arg(long, value_name = "MIB", default_value_t = 2048)]
    step_memory_mb: i64,
    /// docker: CPUs of a step's container.
    #[arg(long, value_name = "CPUS", default_value_t = 2.0)]
    step_cpus: f64,
    /// docker: processes a step's container may hold.
    #[arg(long, value_name = "N", default_value_t = 512)]
    step_pids: i64,
    /// Misbehave on purpose, for tests (built with the `fault-injection` feature only): `lie`,
    /// `equivocate`, `silent`, `wrong-checkpoint` or `replay`.
    #[cfg(feature = "fault-injection")]
    #[arg(long, value_name = "KIND")]
    fault: Option<driver::fault::Fault>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ExecutorKind {
    /// A container per step (bollard).
    Docker,
    /// The steps as local child processes.
    Local,
    /// No-op: every job passes at once (fails with "ref not found" when no commit is pinned).
    None,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Run(args) => return run(args),
        Command::Keygen { out, force } => keygen(&out, force),
        Command::Id { key } => id(&key),
        Command::Verify { members, cert } => verify(&members, &cert),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pbft-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> ExitCode {
    match run_replica(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pbft-node: {e:#}");
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_replica(args: RunArgs) -> anyhow::Result<()> {
    let key = keys::load(&args.key)?;
    let membership = Arc::new(Membership::load(&args.members)?);
    let me = key.public().to_peer_id();
    let index = membership.replica_index(&me).with_context(|| {
        format!("{me} (the key in {}) is not a replica of {}", args.key.display(), args.members.display())
    })?;
    let default_pipeline = args
        .default_pipeline
        .as_ref()
        .map(|path| {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            Pipeline::parse(&text).with_context(|| format!("{} is not a valid pipeline", path.display()))
        })
        .transpose()?;
    let _guard = logging::init(&args.log_dir, &format!("pbft-node-{me}"))
        .with_context(|| format!("logging to {}", args.log_dir.display()))?;
    let listen = if !args.listen.is_empty() {
        args.listen.clone()
    } else if let Some(addr) = &membership.replicas[index].addr {
        vec![addr.clone()]
    } else {
        vec!["/ip4/0.0.0.0/tcp/0".into()]
    };
    let mdns = match (args.mdns, args.no_mdns) {
        (_, true) => Some(false),
        (true, false) => Some(true),
        (false, false) => None,
    };
    private_dir(&args.data_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async {
        let shutdown = Shutdown::on_signals().context("installing signal handlers")?;
        let executor = executor(&args, &me, membership.clone(), default_pipeline).await?;
        let cfg = NodeConfig {
            key,
            membership,
            listen,
            bootstrap: args.bootstrap,
            mdns,
            data_dir: args.data_dir,
            executor,
            #[cfg(feature = "fault-injection")]
            fault: args.fault,
        };
        driver::run(cfg, shutdown).await.map_err(anyhow::Error::from)
    })
}

/// The data dir holds the store and the job runner's files. Others may only
/// pass through it: as root, the local executor runs steps as an
/// unprivileged user in workspaces under it.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
        .with_context(|| format!("restricting {}", dir.display()))
}

async fn executor(
    args: &RunArgs,
    me: &libp2p_identity::PeerId,
    membership: Arc<Membership>,
    default_pipeline: Option<Pipeline>,
) -> anyhow::Result<Arc<dyn Executor>> {
    let mut cfg = CiConfig::new(args.data_dir.join("ci"));
    cfg.schemes = args.git_schemes.clone();
    cfg.allow_file_urls = args.allow_file_urls;
    cfg.default_pipeline = default_pipeline;
    cfg.max_jobs = usize::from(args.max_jobs);
    cfg.attempts = args.job_attempts;
    cfg.keep_logs = args.keep_logs;
    cfg.log_bytes_max = args.log_bytes_max;
    let at = cfg.dir.display().to_string();
    Ok(match args.executor {
        ExecutorKind::None => Arc::new(NoneExecutor),
        ExecutorKind::Local => {
            tracing::warn!("the local executor runs steps unisolated on this machine: trusted repositories only");
            Arc::new(CiExecutor::new(cfg, LocalRunner::new(), membership).with_context(|| format!("preparing {at}"))?)
        }
        ExecutorKind::Docker => {
            let limits = DockerLimits {
                memory_bytes: args.step_memory_mb.saturating_mul(1 << 20),
                nano_cpus: (args.step_cpus * 1e9) as i64,
                pids_limit: args.step_pids,
            };
            let runner = DockerRunner::connect(&me.to_string(), limits)
                .await
                .map_err(|e| anyhow::anyhow!("{e} (choose --executor local to run steps without Docker)"))?;
            match runner.reap().await {
                Ok(0) => {}
                Ok(n) => tracing::info!("removed {n} containers a previous run left behind"),
                Err(e) => tracing::warn!("reaping containers of a previous run: {e}"),
            }
            Arc::new(CiExecutor::new(cfg, runner, membership).with_context(|| format!("preparing {at}"))?)
        }
    })
}

fn keygen(out: &Path, force: bool) -> anyhow::Result<()> {
    let key = keys::generate();
    keys::save(out, &key, force).map_err(|e| match e {
        keys::KeyError::Exists { .. } => anyhow::anyhow!("{e} (pass --force to replace it)"),
        e => e.into(),
    })?;
    println!("{}", key.public().to_peer_id());
    Ok(())
}

fn id(key: &Path) -> anyhow::Result<()> {
    println!("{}", keys::load(key)?.public().to_peer_id());
    Ok(())
}

fn verify(members: &Path, cert: &Path) -> anyhow::Result<()> {
    let members = Membership::load(members)?;
    let text = std::fs::read_to_string(cert).with_context(|| format!("reading {}", cert.display()))?;
    let certificate: Certificate =
        serde_json::from_str(&text).with_context(|| format!("{} is not a certificate", cert.display()))?;
    let verified = certificate.verify(&members).context("invalid certificate")?;
    let signers: Vec<usize> = certificate.sets.iter().map(|s| s.replies.len()).collect();
    println!("{}", summary(&members, &verified, &signers));
    Ok(())
}

/// One line: what ran, the verdict, and how many replicas signed it.
fn summary(members: &Membership, v: &VerifiedCertificate, signers: &[usize]) -> String {
    let what = match &v.request.op {
        Operation::Run { repo, git_ref, commit } => {
            format!("{repo} {git_ref} at {}", commit.as_deref().unwrap_or("(unresolved)"))
        }
        Operation::Cancel { job } => format!("cancel of job {job}"),
    };
    let n = members.replicas.len();
    let results: Vec<String> = v
        .results
        .iter()
        .zip(signers)
        .map(|((digest, result), k)| {
            format!("{} (result {}, signed by {k} of {n} replicas)", outcome(result), &digest.to_hex()[..16])
        })
        .collect();
    let verdict = match results.as_slice() {
        [one] => one.clone(),
        many => format!("disputed: {}", many.join(" vs ")),
    };
    format!("valid: job {} on network {}: {what}: {verdict}", v.job, members.name)
}

fn outcome(r: &JobResult) -> String {
    match &r.outcome {
        Outcome::Passed => "passed".into(),
        Outcome::Failed { step, exit_code } => format!("failed at step {step:?} with exit code {exit_code}"),
        Outcome::Timeout { step } => format!("timeout at step {step:?}"),
        Outcome::Error { error, detail } => format!("error {error:?}: {detail}"),
        Outcome::Cancelled => "cancelled".into(),
    }
}
