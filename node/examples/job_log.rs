//! Prints a stopped replica's job log, to compare replicas from a script
//! (`scripts/crash-storm.sh`): one line `SEQ-INDEX REQUEST_DIGEST` per job
//! it recorded, in order, then `last SEQ` (the highest slot it accounts for,
//! run or skipped by a state transfer). Correct replicas agree on every job
//! both recorded.
//!
//! ```text
//! cargo run --example job_log -- DATA_DIR
//! ```

use pbft_node::store::Store;
use pbft_node::wire::JobId;

fn main() -> anyhow::Result<()> {
    let Some(dir) = std::env::args_os().nth(1) else {
        anyhow::bail!("usage: job_log DATA_DIR (of a stopped replica)");
    };
    let dir = std::path::PathBuf::from(dir);
    anyhow::ensure!(dir.is_dir(), "{} is not a directory", dir.display());
    let store = Store::open(&dir)?;
    let last = store.last_batch()?;
    for seq in 1..=last {
        for index in 0.. {
            let Some(record) = store.job(JobId { seq, index })? else { break };
            println!("{seq}-{index} {}", record.request.to_hex());
        }
    }
    println!("last {last}");
    Ok(())
}
