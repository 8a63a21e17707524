//! `pbft-node`, the replica's command line: identity keys and offline
//! certificate checks. Running a replica (`run`) arrives with the libp2p
//! driver.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use pbft_node::keys;
use pbft_node::membership::Membership;
use pbft_node::wire::{Certificate, JobResult, Operation, Outcome, VerifiedCertificate};

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
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
