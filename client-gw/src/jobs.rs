//! The gateway's durable state: `gateway.redb` in `--data-dir` (redb: ACID,
//! an fsync'd commit before `accept` returns).
//!
//! It owns:
//! - the request counter. A number is persisted in the same transaction as
//!   the job it numbers, so no number is ever handed out twice, even across
//!   a crash, and none is skipped (the replicas refuse numbers too far ahead
//!   of the last they ordered);
//! - every accepted job: what was asked, the signed request, when it was
//!   accepted, the job id it was ordered as, its verdict. A job is durable
//!   before its 202 is sent;
//! - delivery ids, so a redelivered webhook names the job it already made;
//! - each replica's final reply (result or abstain) per job, as signed bytes;
//! - the jobs without a verdict, so a restart resubmits them without a scan.
//!
//! Replies and ordering notices are committed without fsync: the replicas
//! keep their signed results and serve them again, so losing the last few in
//! a crash only means fetching them again. Nothing here signs, verifies or
//! decides.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pbft_node::wire::{self, JobId};
use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::verdict::Decision;
use crate::webhook::{Forge, Submission};

pub const FILE_NAME: &str = "gateway.redb";
const SCHEMA_VERSION: u64 = 1;

/// Small values by name.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const KEY_SCHEMA: &str = "schema_version";
/// The next request number to hand out.
const KEY_NEXT_NUMBER: &str = "next_number";
/// Request number → [`Job`] (CBOR).
const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");
/// Delivery id → request number.
const DELIVERIES: TableDefinition<&str, u64> = TableDefinition::new("deliveries");
/// (request number, replica index) → the replica's signed final reply.
const REPLIES: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("replies");
/// Request numbers of jobs without a verdict.
const PENDING: TableDefinition<u64, ()> = TableDefinition::new("pending");

/// Bound on a stored job row: a signed request and a few strings.
const ROW_BYTES_MAX: usize = 64 * 1024;

/// An accepted job, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub number: u64,
    pub repo: String,
    pub git_ref: String,
    pub commit: Option<String>,
    pub delivery: Option<String>,
    /// The signed request, as submitted.
    #[serde(with = "serde_bytes")]
    pub request: Vec<u8>,
    /// Unix time of acceptance, in milliseconds.
    pub accepted_ms: u64,
    /// The job id the replicas ordered it as.
    pub ordered: Option<JobId>,
    pub decision: Option<Decision>,
    /// Why it will never run (the replicas refused it), when that happened.
    pub refused: Option<String>,
    /// For a cancel request: the job it cancels (repository, ref and commit
    /// are that job's).
    #[serde(default)]
    pub cancel_of: Option<u64>,
    /// Where its commit statuses go (a GitHub or Gitea push).
    #[serde(default)]
    pub forge: Option<Forge>,
}

/// What `accept` did with one submission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// A new job, durable now.
    New(Box<Job>),
    /// A redelivery: the job its delivery id already made.
    Existing(u64),
}

#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("{path}: {source}")]
    Database { path: PathBuf, source: Box<redb::Error> },
    #[error("{path}: {detail}")]
    Corrupted { path: PathBuf, detail: String },
    #[error("{path} is in use by another process (another gateway with the same --data-dir?)")]
    Locked { path: PathBuf },
}

pub struct Jobs {
    db: Database,
    path: PathBuf,
}

trait At<T> {
    fn at(self, path: &Path) -> Result<T, JobsError>;
}

impl<T, E: Into<redb::Error>> At<T> for Result<T, E> {
    fn at(self, path: &Path) -> Result<T, JobsError> {
        self.map_err(|e| JobsError::Database { path: path.to_path_buf(), source: Box::new(e.into()) })
    }
}

impl Jobs {
    /// Opens or creates `dir/gateway.redb`.
    pub fn open(dir: &Path) -> Result<Jobs, JobsError> {
        let path = dir.join(FILE_NAME);
        std::fs::create_dir_all(dir).map_err(|e| JobsError::Corrupted {
            path: path.clone(),
            detail: format!("creating the data directory: {e}"),
        })?;
        let db = match Database::create(&path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(JobsError::Locked { path }),
            Err(e) => return Err(e).at(&path),
        };
        let jobs = Jobs { db, path };
        jobs.initialise()?;
        Ok(jobs)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn initialise(&self) -> Result<(), JobsError> {
        let p = &self.path;
        let tx = self.db.begin_write().at(p)?;
        {
            let mut meta = tx.open_table(META).at(p)?;
            let version = meta.get(KEY_SCHEMA).at(p)?.map(|v| v.value());
            match version {
                None => {
                    meta.insert(KEY_SCHEMA, SCHEMA_VERSION).at(p)?;
                    meta.insert(KEY_NEXT_NUMBER, 1).at(p)?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(other) => {
                    return Err(JobsError::Corrupted {
                        path: p.clone(),
                        detail: format!("schema version {other}, this build reads {SCHEMA_VERSION}"),
                    })
                }
            }
            tx.open_table(JOBS).at(p)?;
            tx.open_table(DELIVERIES).at(p)?;
            tx.open_table(REPLIES).at(p)?;
            tx.open_table(PENDING).at(p)?;
        }
        tx.commit().at(p)
    }

    fn decode(&self, bytes: &[u8]) -> Result<Job, JobsError> {
        wire::decode(bytes, ROW_BYTES_MAX)
            .map_err(|e| JobsError::Corrupted { path: self.path.clone(), detail: format!("a job row: {e}") })
    }

    /// Numbers and stores `submissions` in one durable transaction; a
    /// submission whose delivery id is known (stored, or earlier in the same
    /// batch) names the existing job instead. `sign` makes the signed request
    /// of a new job from its number.
    pub fn accept(
        &self,
        submissions: &[Submission],
        accepted_ms: u64,
        sign: &dyn Fn(u64, &Submission) -> Vec<u8>,
    ) -> Result<Vec<Accepted>, JobsError> {
        let p = &self.path;
        let mut tx = self.db.begin_write().at(p)?;
        tx.set_durability(Durability::Immediate);
        let mut out = Vec::with_capacity(submissions.len());
        {
            let mut meta = tx.open_table(META).at(p)?;
            let mut jobs = tx.open_table(JOBS).at(p)?;
            let mut deliveries = tx.open_table(DELIVERIES).at(p)?;
            let mut pending = tx.open_table(PENDING).at(p)?;
            let mut next = meta.get(KEY_NEXT_NUMBER).at(p)?.map(|v| v.value()).unwrap_or(1);
            for sub in submissions {
                if let Some(d) = &sub.delivery {
                    if let Some(existing) = deliveries.get(d.as_str()).at(p)? {
                        out.push(Accepted::Existing(existing.value()));
                        continue;
                    }
                }
                let number = next;
                next += 1;
                let job = Job {
                    number,
                    repo: sub.repo.clone(),
                    git_ref: sub.git_ref.clone(),
                    commit: sub.commit.clone(),
                    delivery: sub.delivery.clone(),
                    request: sign(number, sub),
                    accepted_ms,
                    ordered: None,
                    decision: None,
                    refused: None,
                    cancel_of: None,
                    forge: sub.forge.clone(),
                };
                jobs.insert(number, wire::encode(&job).as_slice()).at(p)?;
                pending.insert(number, ()).at(p)?;
                if let Some(d) = &sub.delivery {
                    deliveries.insert(d.as_str(), number).at(p)?;
                }
                out.push(Accepted::New(Box::new(job)));
            }
            meta.insert(KEY_NEXT_NUMBER, next).at(p)?;
        }
        tx.commit().at(p)?;
        Ok(out)
    }

    /// Numbers and stores, durably, a request to cancel job `target`.
    /// `sign` makes the signed request from its number.
    pub fn accept_cancel(
        &self,
        target: &Job,
        accepted_ms: u64,
        sign: &dyn Fn(u64) -> Vec<u8>,
    ) -> Result<Job, JobsError> {
        let p = &self.path;
        let mut tx = self.db.begin_write().at(p)?;
        tx.set_durability(Durability::Immediate);
        let job = {
            let mut meta = tx.open_table(META).at(p)?;
            let number = meta.get(KEY_NEXT_NUMBER).at(p)?.map(|v| v.value()).unwrap_or(1);
            meta.insert(KEY_NEXT_NUMBER, number + 1).at(p)?;
            let job = Job {
                number,
                repo: target.repo.clone(),
                git_ref: target.git_ref.clone(),
                commit: target.commit.clone(),
                delivery: None,
                request: sign(number),
                accepted_ms,
                ordered: None,
                decision: None,
                refused: None,
                cancel_of: Some(target.number),
                forge: None,
            };
            tx.open_table(JOBS).at(p)?.insert(number, wire::encode(&job).as_slice()).at(p)?;
            tx.open_table(PENDING).at(p)?.insert(number, ()).at(p)?;
            job
        };
        tx.commit().at(p)?;
        Ok(job)
    }

    pub fn get(&self, number: u64) -> Result<Option<Job>, JobsError> {
        let p = &self.path;
        let tx = self.db.begin_read().at(p)?;
        let jobs = tx.open_table(JOBS).at(p)?;
        let row = jobs.get(number).at(p)?;
        row.map(|r| self.decode(r.value())).transpose()
    }

    pub fn by_delivery(&self, delivery: &str) -> Result<Option<u64>, JobsError> {
        let p = &self.path;
        let tx = self.db.begin_read().at(p)?;
        let table = tx.open_table(DELIVERIES).at(p)?;
        let found = table.get(delivery).at(p)?.map(|v| v.value());
        Ok(found)
    }

    /// Up to `limit` jobs numbered below `before` (all when `None`), newest first.
    pub fn list(&self, before: Option<u64>, limit: usize) -> Result<Vec<Job>, JobsError> {
        let p = &self.path;
        let tx = self.db.begin_read().at(p)?;
        let jobs = tx.open_table(JOBS).at(p)?;
        let range = jobs.range(..before.unwrap_or(u64::MAX)).at(p)?;
        let mut out = Vec::new();
        for row in range.rev().take(limit) {
            let (_, v) = row.at(p)?;
            out.push(self.decode(v.value())?);
        }
        Ok(out)
    }

    /// Numbers of the jobs without a verdict, oldest first.
    pub fn pending(&self) -> Result<Vec<u64>, JobsError> {
        let p = &self.path;
        let tx = self.db.begin_read().at(p)?;
        let table = tx.open_table(PENDING).at(p)?;
        let mut out = Vec::new();
        for row in table.iter().at(p)? {
            out.push(row.at(p)?.0.value());
        }
        Ok(out)
    }

    /// The replicas' final replies to job `number`, by replica index.
    pub fn replies(&self, number: u64) -> Result<BTreeMap<usize, Vec<u8>>, JobsError> {
        let p = &self.path;
        let tx = self.db.begin_read().at(p)?;
        let table = tx.open_table(REPLIES).at(p)?;
        let mut out = BTreeMap::new();
        for row in table.range((number, 0)..=(number, u32::MAX)).at(p)? {
            let (k, v) = row.at(p)?;
            out.insert(k.value().1 as usize, v.value().to_vec());
        }
        Ok(out)
    }

    /// Replica `replica`'s final reply to job `number`, if one is stored.
    pub fn reply(&self, number: u64, replica: usize) -> Result<Option<Vec<u8>>, JobsError> {
        let p = &self.path;
        let tx = self.db.begin_read().at(p)?;
        let table = tx.open_table(REPLIES).at(p)?;
        let row = table.get((number, replica as u32)).at(p)?;
        Ok(row.map(|v| v.value().to_vec()))
    }

    /// Stores replica `replica`'s final reply to job `number` unless it gave
    /// one already (a replica's first word counts); returns whether it was new.
    pub fn record_reply(&self, number: u64, replica: usize, bytes: &[u8]) -> Result<bool, JobsError> {
        let p = &self.path;
        let mut tx = self.db.begin_write().at(p)?;
        tx.set_durability(Durability::Eventual);
        let new = {
            let mut table = tx.open_table(REPLIES).at(p)?;
            let key = (number, replica as u32);
            if table.get(key).at(p)?.is_some() {
                false
            } else {
                table.insert(key, bytes).at(p)?;
                true
            }
        };
        tx.commit().at(p)?;
        Ok(new)
    }

    /// Rewrites job `number` with `change` applied; a decision takes it out
    /// of the pending set. Decisions are fsync'd; other changes are not.
    pub fn update(&self, number: u64, change: impl FnOnce(&mut Job)) -> Result<Option<Job>, JobsError> {
        let p = &self.path;
        let mut tx = self.db.begin_write().at(p)?;
        let current = {
            let jobs = tx.open_table(JOBS).at(p)?;
            let row = jobs.get(number).at(p)?;
            row.map(|r| self.decode(r.value())).transpose()?
        };
        let Some(mut job) = current else { return Ok(None) };
        let before = job.decision.clone();
        change(&mut job);
        if job.decision == before {
            tx.set_durability(Durability::Eventual);
        }
        {
            tx.open_table(JOBS).at(p)?.insert(number, wire::encode(&job).as_slice()).at(p)?;
            if job.decision.is_some() {
                tx.open_table(PENDING).at(p)?.remove(number).at(p)?;
            }
        }
        tx.commit().at(p)?;
        Ok(Some(job))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::Verdict;

    fn sub(branch: &str, delivery: Option<&str>) -> Submission {
        Submission {
            repo: "file:///srv/git/app".into(),
            git_ref: branch.into(),
            commit: None,
            delivery: delivery.map(Into::into),
            forge: None,
        }
    }

    fn sign(number: u64, s: &Submission) -> Vec<u8> {
        format!("signed {number} {}", s.git_ref).into_bytes()
    }

    fn numbers(accepted: &[Accepted]) -> Vec<Result<u64, u64>> {
        accepted
            .iter()
            .map(|a| match a {
                Accepted::New(j) => Ok(j.number),
                Accepted::Existing(n) => Err(*n),
            })
            .collect()
    }

    #[test]
    fn numbers_are_never_reused_across_restarts_and_redeliveries_name_their_job() {
        let dir = tempfile::tempdir().unwrap();
        {
            let jobs = Jobs::open(dir.path()).unwrap();
            let got = jobs.accept(&[sub("a", Some("d1")), sub("b", None), sub("c", Some("d1"))], 7, &sign).unwrap();
            assert_eq!(numbers(&got), vec![Ok(1), Ok(2), Err(1)]);
            let Accepted::New(first) = &got[0] else { panic!() };
            assert_eq!(first.request, b"signed 1 a");
            assert_eq!(first.accepted_ms, 7);
        }
        let jobs = Jobs::open(dir.path()).unwrap();
        let got = jobs.accept(&[sub("d", Some("d1")), sub("e", Some("d2"))], 8, &sign).unwrap();
        assert_eq!(numbers(&got), vec![Err(1), Ok(3)]);
        assert_eq!(jobs.by_delivery("d2").unwrap(), Some(3));
        assert_eq!(jobs.get(2).unwrap().unwrap().git_ref, "b");
        assert_eq!(jobs.get(4).unwrap(), None);
        assert_eq!(jobs.pending().unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn a_decision_leaves_the_pending_set_and_replies_count_once_per_replica() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::open(dir.path()).unwrap();
        jobs.accept(&[sub("a", None), sub("b", None)], 0, &sign).unwrap();
        assert!(jobs.record_reply(1, 2, b"first").unwrap());
        assert!(!jobs.record_reply(1, 2, b"second").unwrap());
        assert!(jobs.record_reply(1, 0, b"other").unwrap());
        assert_eq!(jobs.reply(1, 2).unwrap().as_deref(), Some(&b"first"[..]));
        assert_eq!(jobs.reply(1, 1).unwrap(), None);
        let replies = jobs.replies(1).unwrap();
        assert_eq!(replies, BTreeMap::from([(0, b"other".to_vec()), (2, b"first".to_vec())]));
        assert!(jobs.replies(2).unwrap().is_empty());
        let job = JobId { seq: 3, index: 1 };
        jobs.update(1, |j| j.ordered = Some(job)).unwrap();
        assert_eq!(jobs.pending().unwrap(), vec![1, 2]);
        let decision = Decision { verdict: Verdict::Undecided, results: vec![] };
        jobs.update(1, |j| j.decision = Some(decision.clone())).unwrap();
        assert_eq!(jobs.pending().unwrap(), vec![2]);
        drop(jobs);
        let jobs = Jobs::open(dir.path()).unwrap();
        let stored = jobs.get(1).unwrap().unwrap();
        assert_eq!((stored.ordered, stored.decision), (Some(job), Some(decision)));
        assert_eq!(jobs.update(9, |_| {}).unwrap(), None);
    }

    #[test]
    fn listing_is_newest_first_and_paged() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::open(dir.path()).unwrap();
        let subs: Vec<Submission> = (0..5).map(|i| sub(&format!("b{i}"), None)).collect();
        jobs.accept(&subs, 0, &sign).unwrap();
        let page =
            |before, limit| -> Vec<u64> { jobs.list(before, limit).unwrap().into_iter().map(|j| j.number).collect() };
        assert_eq!(page(None, 2), vec![5, 4]);
        assert_eq!(page(Some(4), 2), vec![3, 2]);
        assert_eq!(page(Some(2), 2), vec![1]);
        assert_eq!(page(Some(1), 2), Vec::<u64>::new());
    }

    #[test]
    fn a_second_gateway_on_the_same_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Jobs::open(dir.path()).unwrap();
        assert!(matches!(Jobs::open(dir.path()), Err(JobsError::Locked { .. })));
    }
}
