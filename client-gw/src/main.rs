//! `pbft-gw`, the HTTP gateway of pbft-ci: webhooks in, verdicts out. The
//! command line of DESIGN.md's contract, plus the gateway's own p2p and
//! storage flags; the work is in the library (`pbft_gw`).

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use pbft_gw::gateway::Gateway;
use pbft_gw::jobs::Jobs;
use pbft_gw::relay::{self, Collector, RelayConfig};
use pbft_gw::status::{self, StatusConfig};
use pbft_gw::webhook::IntakeConfig;
use pbft_node::ci::git::GitConfig;
use pbft_node::driver::Shutdown;
use pbft_node::membership::Membership;
use pbft_node::net::client::{Client, ClientConfig};
use pbft_node::{keys, logging};

/// The HTTP gateway of pbft-ci: relays webhooks to the replicas, collects
/// their signed results and serves verdicts with certificates.
#[derive(Parser)]
#[command(
    name = "pbft-gw",
    version,
    after_help = "Routes: POST /webHook (or /webhook) with {\"branch\": \"B\"} or a GitHub, Gitea/Forgejo or\n\
                  GitLab push event answers 202 {\"id\", \"status_url\"} (?wait=SECONDS waits for the verdict);\n\
                  GET /jobs, /jobs/ID, /jobs/ID/certificate (what `pbft-node verify` checks), /healthz, /metrics;\n\
                  POST /jobs/ID/rerun and /jobs/ID/cancel (through consensus); GET / and a job's page for people.\n\
                  With --status-token-file, GitHub and Gitea pushes get commit statuses (context pbft-ci).\n\
                  Logs go to stderr and to LOG_DIR/pbft-gw-<PeerId>.log; RUST_LOG filters them.\n\
                  SIGTERM or ctrl-c stops it; accepted jobs are kept in --data-dir and resumed at start.\n\n\
                  Example (a loopback testnet whose replica 0 listens on port 7000):\n  \
                  pbft-gw --key testnet/keys/gateway.key --members testnet/members.toml \\\n    \
                  --repo file:///srv/git/app --webhook-secret-file testnet/webhook.secret \\\n    \
                  --bootstrap /ip4/127.0.0.1/tcp/7000"
)]
struct Cli {
    /// The gateway's ed25519 key (written by `pbft-node keygen`).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Membership file (TOML) of the network; it must list this gateway.
    #[arg(long, value_name = "FILE")]
    members: PathBuf,
    /// HTTP address to listen on.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The repository that the proof-of-concept call `{"branch": ...}` refers to.
    #[arg(long, value_name = "URL")]
    repo: Option<String>,
    /// File holding the git host's webhook secret (surrounding whitespace is
    /// trimmed); when set, provider events must carry a valid signature.
    #[arg(long, value_name = "FILE")]
    webhook_secret_file: Option<PathBuf>,
    /// Webhook requests accepted per second and source IP (burst the same); more get 429.
    #[arg(long, value_name = "PER_SECOND")]
    rate_limit: Option<NonZeroU32>,
    /// Address of a replica or peer to find the network through, repeatable.
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<String>,
    /// p2p address to listen on, repeatable [default: none; the gateway dials out].
    #[arg(long, value_name = "MULTIADDR")]
    p2p_listen: Vec<String>,
    /// Discover peers on the LAN with mDNS [default: on when listening beyond loopback].
    #[arg(long, overrides_with = "no_mdns")]
    mdns: bool,
    /// Never use mDNS.
    #[arg(long)]
    no_mdns: bool,
    /// Directory of the gateway's durable state (accepted jobs, replies, verdicts).
    #[arg(long, value_name = "DIR", default_value = "gw-data")]
    data_dir: PathBuf,
    /// Directory of the log file.
    #[arg(long, value_name = "DIR", default_value = "log")]
    log_dir: PathBuf,
    /// Seconds after acceptance at which a job is decided on the results it has
    /// (the one result with f + 1 votes, or `undecided`).
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    verdict_deadline: u64,
    /// Acknowledge tag pushes without running them [default: tags run].
    #[arg(long)]
    skip_tags: bool,
    /// Allow file:// repositories when pinning `{"branch": B}` (the local testnet's).
    #[arg(long)]
    allow_file_urls: bool,
    /// A URL scheme allowed besides https when pinning, repeatable (e.g. ssh, http, git).
    #[arg(long = "git-scheme", value_name = "SCHEME")]
    git_schemes: Vec<String>,
    /// File holding a git host token (surrounding whitespace trimmed); when
    /// set, GitHub and Gitea pushes get commit statuses (context `pbft-ci`):
    /// pending at acceptance, then success, failure or error at the verdict.
    #[arg(long, value_name = "FILE")]
    status_token_file: Option<PathBuf>,
    /// GitHub's REST API base for commit statuses (GitHub Enterprise: https://HOST/api/v3).
    #[arg(long, value_name = "URL", default_value = "https://api.github.com")]
    github_api: String,
    /// Gitea's or Forgejo's API base for commit statuses, e.g. https://git.example.org/api/v1
    /// [default: none; their pushes get no status].
    #[arg(long, value_name = "URL")]
    gitea_api: Option<String>,
    /// The gateway's address as people reach it, for the statuses' links to job pages
    /// [default: http://<--listen>].
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pbft-gw: {e:#}");
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let key = keys::load(&cli.key)?;
    let membership = Arc::new(Membership::load(&cli.members)?);
    let me = key.public().to_peer_id();
    anyhow::ensure!(
        membership.is_gateway_peer(&me),
        "{me} (the key in {}) is not a gateway of {}",
        cli.key.display(),
        cli.members.display()
    );
    let secret = match &cli.webhook_secret_file {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let trimmed = text.trim();
            anyhow::ensure!(!trimmed.is_empty(), "{} is empty: no webhook secret", path.display());
            Some(trimmed.as_bytes().to_vec())
        }
    };
    if let Some(repo) = &cli.repo {
        pbft_gw::webhook::check_repo(repo).map_err(|e| anyhow::anyhow!("--repo: {e}"))?;
        if !membership.repo_allowed(repo) {
            eprintln!("pbft-gw: warning: --repo {repo} is not on the membership's allow-list");
        }
    }
    let status_token = match &cli.status_token_file {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let trimmed = text.trim();
            anyhow::ensure!(!trimmed.is_empty(), "{} is empty: no status token", path.display());
            Some(trimmed.to_string())
        }
    };
    for (flag, url) in [("--github-api", Some(&cli.github_api)), ("--gitea-api", cli.gitea_api.as_ref())] {
        if let Some(url) = url {
            anyhow::ensure!(
                url.starts_with("https://") || url.starts_with("http://"),
                "{flag} {url}: an http(s) URL is needed"
            );
        }
    }
    let public_url = cli.public_url.clone().unwrap_or_else(|| format!("http://{}", cli.listen));
    let _guard = logging::init(&cli.log_dir, &format!("pbft-gw-{me}"))
        .with_context(|| format!("logging to {}", cli.log_dir.display()))?;
    let jobs = Arc::new(Jobs::open(&cli.data_dir)?);
    let intake = IntakeConfig { repo: cli.repo.clone(), secret, run_tags: !cli.skip_tags };
    let mdns = match (cli.mdns, cli.no_mdns) {
        (_, true) => Some(false),
        (true, false) => Some(true),
        (false, false) => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async move {
        let shutdown = Shutdown::on_signals().context("installing signal handlers")?;
        let mut collector =
            Collector::new(jobs.clone(), membership.clone(), Duration::from_secs(cli.verdict_deadline))?;
        let pending = collector.pending_requests().len();
        let mut cfg = ClientConfig::new(key.clone(), membership.clone());
        cfg.bootstrap = cli.bootstrap;
        cfg.listen = cli.p2p_listen;
        cfg.mdns = mdns;
        let client = Client::start(cfg).context("joining the network")?;
        // Pinning only lists refs (`git ls-remote`): the cache directory stays unused.
        let pin = GitConfig {
            cache_dir: cli.data_dir.join("git-cache"),
            allow_file_urls: cli.allow_file_urls,
            schemes: cli.git_schemes,
        };
        let (gateway, links) = Gateway::new(jobs.clone(), membership, key, intake, Some(pin));
        if let Some(token) = status_token {
            let cfg = StatusConfig {
                token,
                github_api: cli.github_api,
                gitea_api: cli.gitea_api,
                public_url,
                attempts: 5,
                retry_delay: Duration::from_secs(2),
            };
            collector.post_statuses(status::start(cfg, jobs, links.metrics.clone()));
        }
        let listener =
            tokio::net::TcpListener::bind(cli.listen).await.with_context(|| format!("listening on {}", cli.listen))?;
        tracing::info!(
            "gateway {me} listening on http://{}; {pending} job(s) without a verdict resumed",
            listener.local_addr()?
        );
        let relay_cfg = RelayConfig { fetch_every: Duration::from_secs(15) };
        let mut stop = shutdown.clone();
        let relay = tokio::spawn(relay::run(client, collector, links, relay_cfg, async move { stop.fired().await }));
        let router = pbft_gw::http::router(gateway, cli.rate_limit);
        let mut stop = shutdown.clone();
        pbft_gw::http::serve(listener, router, async move { stop.fired().await }).await.context("serving HTTP")?;
        let _ = relay.await;
        Ok(())
    })
}
