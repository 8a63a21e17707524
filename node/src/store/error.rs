//! What can go wrong with the store. Every message names the database file,
//! so an operator knows which `--data-dir` to look at.

use std::path::PathBuf;

use crate::wire::{Digest, JobId};

/// What an operator can do about a damaged file.
const NEVER_RESET: &str = "It is never reset automatically: restore it from a backup, or move it aside and accept \
                           that this replica forgets what it signed";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {action}: {source}")]
    Io { path: PathBuf, action: &'static str, source: std::io::Error },

    #[error("{path}: not a readable replica database ({source}). {NEVER_RESET}")]
    Unreadable { path: PathBuf, source: redb::DatabaseError },

    #[error("{path}: not a readable replica database, the file is truncated or corrupted ({detail}). {NEVER_RESET}")]
    OpenPanicked { path: PathBuf, detail: String },

    #[error("{path} is in use by another process (another replica with the same --data-dir?)")]
    Locked { path: PathBuf },

    #[error("{path} is a redb database but not a pbft-ci replica store (it has no schema version)")]
    NotAStore { path: PathBuf },

    #[error("{path}: schema version {found}, this build reads version {expected}")]
    Schema { path: PathBuf, found: u64, expected: u64 },

    #[error("{path}: {source}")]
    Database { path: PathBuf, source: Box<redb::Error> },

    #[error("{path}: corrupted {what}: {detail}")]
    Corrupted { path: PathBuf, what: &'static str, detail: String },

    #[error("{path}: refusing to store {what}: {detail}")]
    Invalid { path: PathBuf, what: &'static str, detail: String },

    #[error(
        "{path}: the job log holds batch {recorded} at seq {seq}, and batch {offered} arrived for the same seq: two \
         different batches committed at one sequence number. That is a bug in the consensus core or its driver"
    )]
    BatchMismatch { path: PathBuf, seq: u64, recorded: Digest, offered: Digest },

    #[error("{path}: a reply for job {job} names request {offered}, but the job log holds request {recorded} for it")]
    ReplyMismatch { path: PathBuf, job: JobId, recorded: Digest, offered: Digest },
}

/// Attaches the file name to redb's errors.
pub(super) trait Context<T> {
    fn at(self, path: &std::path::Path) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> Context<T> for Result<T, E> {
    fn at(self, path: &std::path::Path) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Database { path: path.to_path_buf(), source: Box::new(e.into()) })
    }
}
