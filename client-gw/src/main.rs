//! `pbft-gw`, the HTTP gateway of pbft-ci: webhooks in, verdicts out.
//!
//! A placeholder: its command line is the contract of DESIGN.md, so scripts
//! and docs can rely on it, but the gateway itself is not built yet.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// The HTTP gateway of pbft-ci: relays webhooks to the replicas, collects
/// their signed results and serves verdicts with certificates.
#[derive(Parser)]
#[command(
    name = "pbft-gw",
    version,
    after_help = "Not built yet: this placeholder documents the flags and exits with status 2."
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
    /// Webhook requests accepted per second; more get 429.
    #[arg(long, value_name = "PER_SECOND")]
    rate_limit: Option<u32>,
}

fn main() -> ExitCode {
    let _ = Cli::parse();
    eprintln!("pbft-gw: the gateway is not built yet (its issue is open)");
    ExitCode::from(2)
}
