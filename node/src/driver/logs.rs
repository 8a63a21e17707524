//! Serving a job's step logs to a gateway that asks ([`PeerRequest::Logs`]):
//! the end of each log the executor kept under `logs/<seq>-<index>/`, with
//! the digest `SHA256SUMS` recorded for it, within the wire's bounds.
//!
//! [`PeerRequest::Logs`]: crate::wire::PeerRequest::Logs

use std::collections::HashMap;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::Path;

use crate::wire::limits::{LOGS_BYTES_MAX, LOG_TAIL_BYTES_MAX, STEPS_MAX, TEXT_BYTES_MAX};
use crate::wire::{JobId, JobLogs, StepLog};

/// The logs of `job` under `root` (the executor's `logs/`); no steps when it
/// kept none. Reads at most [`LOGS_BYTES_MAX`] in all, from the last step
/// backwards, since the step that failed is the last one that ran.
pub(super) fn read(root: &Path, job: JobId) -> JobLogs {
    let dir = root.join(job.to_string());
    let mut files: Vec<(u64, String, u64)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else { continue };
            let Some(n) = name.strip_suffix(".log").and_then(|s| s.split_once('-')).and_then(|(n, _)| n.parse().ok())
            else {
                continue;
            };
            // Regular files only: never follow a link out of the directory.
            let Ok(meta) = entry.path().symlink_metadata() else { continue };
            if meta.is_file() && name.len() <= TEXT_BYTES_MAX {
                files.push((n, name, meta.len()));
            }
        }
    }
    files.sort();
    files.truncate(STEPS_MAX);
    let sums = sums(&dir);
    let mut budget = LOGS_BYTES_MAX;
    let mut steps: Vec<StepLog> = files
        .into_iter()
        .rev()
        .map(|(_, file, bytes)| {
            let want = (bytes as usize).min(LOG_TAIL_BYTES_MAX).min(budget);
            let tail = tail(&dir.join(&file), bytes, want).unwrap_or_default();
            budget -= tail.len();
            let sha256 = sums.get(&file).cloned();
            StepLog { file, bytes, tail, sha256 }
        })
        .collect();
    steps.reverse();
    JobLogs { job, steps }
}

/// The last `want` of the first `len` bytes of `path` (a log still being
/// written grows past `len`; what is sent stays consistent with it).
fn tail(path: &Path, len: u64, want: usize) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(len - want as u64))?;
    let mut out = Vec::with_capacity(want);
    file.take(want as u64).read_to_end(&mut out)?;
    Ok(out)
}

/// `SHA256SUMS` (`sha256sum`'s format): file name → hex digest.
fn sums(dir: &Path) -> HashMap<String, String> {
    let Ok(text) = std::fs::read_to_string(dir.join("SHA256SUMS")) else { return HashMap::new() };
    text.lines()
        .filter_map(|l| l.split_once("  "))
        .filter(|(hex, _)| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|(hex, name)| (name.to_string(), hex.to_ascii_lowercase()))
        .collect()
}

#[cfg(test)]
mod tests {
    use sha2::{Digest as _, Sha256};

    use super::*;

    #[test]
    fn logs_are_served_in_step_order_as_tails_with_their_digests() {
        let root = tempfile::tempdir().unwrap();
        let job = JobId { seq: 3, index: 1 };
        let dir = root.path().join("3-1");
        std::fs::create_dir_all(&dir).unwrap();
        let long: Vec<u8> = (0..LOG_TAIL_BYTES_MAX + 1000).map(|i| b'a' + (i % 26) as u8).collect();
        let logs = [("0-build.log", b"compiled\n".to_vec()), ("1-test.log", long.clone()), ("10-late.log", vec![])];
        let mut sums = String::new();
        for (name, content) in &logs[..2] {
            std::fs::write(dir.join(name), content).unwrap();
            sums.push_str(&format!("{}  {name}\n", hex::encode(Sha256::digest(content))));
        }
        std::fs::write(dir.join("10-late.log"), b"").unwrap();
        std::fs::write(dir.join("SHA256SUMS"), sums).unwrap();
        std::fs::write(dir.join("notes.txt"), b"not a log").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.join("2-link.log")).unwrap();

        let got = read(root.path(), job);
        assert_eq!(got.job, job);
        let files: Vec<&str> = got.steps.iter().map(|s| s.file.as_str()).collect();
        assert_eq!(files, ["0-build.log", "1-test.log", "10-late.log"]);
        assert_eq!(got.steps[0].tail, b"compiled\n");
        assert_eq!(got.steps[0].sha256.as_deref(), Some(hex::encode(Sha256::digest(b"compiled\n")).as_str()));
        assert_eq!(got.steps[1].bytes, long.len() as u64);
        assert_eq!(got.steps[1].tail, long[1000..]);
        assert_eq!(got.steps[2].sha256, None);
        assert!(got.check().is_ok());

        assert!(read(root.path(), JobId { seq: 9, index: 0 }).steps.is_empty());
    }

    #[test]
    fn many_long_logs_stay_within_the_answer_bound() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("1-0");
        std::fs::create_dir_all(&dir).unwrap();
        let big = vec![b'x'; LOG_TAIL_BYTES_MAX * 2];
        let n = LOGS_BYTES_MAX / LOG_TAIL_BYTES_MAX + 4;
        for i in 0..n {
            std::fs::write(dir.join(format!("{i}-s{i}.log")), &big).unwrap();
        }
        let got = read(root.path(), JobId { seq: 1, index: 0 });
        assert_eq!(got.steps.len(), n);
        assert!(got.check().is_ok());
        // The last steps get their tails; the first ones are listed, empty.
        assert_eq!(got.steps[n - 1].tail.len(), LOG_TAIL_BYTES_MAX);
        assert!(got.steps[0].tail.is_empty());
    }
}
