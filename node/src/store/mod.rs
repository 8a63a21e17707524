//! The replica's durable state: one embedded database, `replica.redb` in
//! `--data-dir` ([redb]: pure Rust, ACID, every commit fsync'd before it
//! returns).
//!
//! It owns:
//! - what the core asks to persist ([`Record`]s of each [`Ready`]), written
//!   in one durable transaction **before** the driver sends anything of that
//!   `Ready`, and handed back to [`Replica::restore`] at start. At each stable
//!   checkpoint it drops what restore no longer needs, so this part stays
//!   within the watermark window however long the replica runs;
//! - the job log: every committed batch and its jobs, the seqs a state
//!   transfer skipped, and each job's signed final reply (result or abstain),
//!   served to gateways later. It only grows; it is read by key or in bounded
//!   pieces, never loaded whole, and the database's page cache is bounded
//!   ([`CACHE_BYTES`]), so memory stays flat however long it gets.
//!
//! A file that is truncated, corrupted, of another schema version, or not a
//! store at all is an error at [`Store::open`] naming the file, never a panic
//! and never a silent fresh start: a replica that forgot what it signed could
//! contradict itself.
//!
//! It never signs, verifies, sends or decides anything: it reads the view and
//! seq out of a message body to know when the message may go, and nothing
//! else. It never touches the consensus core's state, the network, or job
//! workspaces and logs (those live beside it in the data dir, owned by `ci`).
//!
//! [`Ready`]: crate::pbft::Ready
//! [`Replica::restore`]: crate::pbft::Replica::restore

mod error;
#[cfg(test)]
mod restart_tests;
mod schema;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use redb::{Database, Durability, ReadableTable, Table, WriteTransaction};

use error::Context as _;
pub use error::StoreError;
use schema::*;

use crate::pbft::{Batch, Record};
use crate::wire::{Digest, JobId, Kind, SignedBytes};

/// Page cache of the database, whatever the size of the file. redb fills it
/// (written pages go in too) and keeps it full: it is a fixed share of a
/// replica's memory. Reads are by key and the hot pages are few (the
/// metadata, the tails of the tables written in order).
pub const CACHE_BYTES: usize = 8 * 1024 * 1024;

/// A job of the job log, as [`Store::job`] returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRecord {
    pub job: JobId,
    /// Digest of the request that ordered the job.
    pub request: Digest,
    /// The gateway's signed request.
    pub request_bytes: Vec<u8>,
    /// This replica's signed final reply (result or abstain), once there is one.
    pub result: Option<Vec<u8>>,
}

pub struct Store {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens or creates `dir/replica.redb`. A corrupted/truncated file is Err
    /// with a clear message.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join(FILE_NAME);
        let io = |action, source| StoreError::Io { path: path.clone(), action, source };
        std::fs::create_dir_all(dir).map_err(|e| io("creating the data directory", e))?;
        let warned = Arc::new(AtomicBool::new(false));
        let shown = path.display().to_string();
        let mut builder = Database::builder();
        builder.set_cache_size(CACHE_BYTES).set_repair_callback(move |_| {
            if !warned.swap(true, Ordering::Relaxed) {
                tracing::warn!("{shown} was not closed cleanly; recovering its last committed transaction");
            }
        });
        let db = match quietly(|| builder.create(&path)) {
            Ok(Ok(db)) => db,
            Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => return Err(StoreError::Locked { path }),
            Ok(Err(source)) => return Err(StoreError::Unreadable { path, source }),
            Err(detail) => return Err(StoreError::OpenPanicked { path, detail }),
        };
        // Private whatever the umask: steps may run on this machine.
        restrict(&path).map_err(|e| io("restricting the database file", e))?;
        // Every page's checksum, now rather than at some later read: damage
        // is an error at start. Commits are two-phase, so a damaged latest
        // commit is reported here, never silently replaced by the one before.
        let db = match quietly(move || {
            let mut db = db;
            let checked = db.check_integrity();
            (db, checked)
        }) {
            Ok((db, Ok(true))) => db,
            Ok((db, Ok(false))) => {
                tracing::warn!("{}: rebuilt its free-space map (the data checked out)", path.display());
                db
            }
            Ok((db, Err(source))) => {
                // Closing the database writes to the file: leave a damaged
                // file exactly as it was found (the process is about to stop).
                std::mem::forget(db);
                return Err(StoreError::Unreadable { path, source });
            }
            Err(detail) => return Err(StoreError::OpenPanicked { path, detail }),
        };
        let store = Store { db, path };
        if store.initialise()? {
            // The file's directory entry must be durable too, or a crash could
            // lose the whole file after its first commit.
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|source| StoreError::Io {
                path: store.path.clone(),
                action: "syncing the data directory",
                source,
            })?;
        }
        store.check()?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the tables and the schema version in a new, empty database;
    /// returns whether it did.
    fn initialise(&self) -> Result<bool, StoreError> {
        let rx = self.db.begin_read().at(&self.path)?;
        if rx.list_tables().at(&self.path)?.next().is_some()
            || rx.list_multimap_tables().at(&self.path)?.next().is_some()
        {
            return Ok(false);
        }
        drop(rx);
        let tx = self.begin_write()?;
        create_tables(&tx).at(&self.path)?;
        {
            let mut meta = tx.open_table(META).at(&self.path)?;
            meta.insert(KEY_SCHEMA, &encode_u64(SCHEMA_VERSION)[..]).at(&self.path)?;
            meta.insert(KEY_NEXT_ORDER, &encode_u64(0)[..]).at(&self.path)?;
            meta.insert(KEY_STABLE_SEQ, &encode_u64(0)[..]).at(&self.path)?;
            // A new store: nothing was sent that it could lack.
            meta.insert(KEY_STOPPED_CLEANLY, &[1u8][..]).at(&self.path)?;
        }
        tx.commit().at(&self.path)?;
        Ok(true)
    }

    /// Refuses a file that is not a store of this schema version.
    fn check(&self) -> Result<(), StoreError> {
        let rx = self.db.begin_read().at(&self.path)?;
        let meta = match rx.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => {
                return Err(StoreError::NotAStore { path: self.path.clone() })
            }
            Err(e) => return Err(e).at(&self.path),
        };
        let Some(version) = meta.get(KEY_SCHEMA).at(&self.path)? else {
            return Err(StoreError::NotAStore { path: self.path.clone() });
        };
        let found = decode_u64(version.value()).map_err(|d| self.corrupted("schema version", d))?;
        if found != SCHEMA_VERSION {
            return Err(StoreError::Schema { path: self.path.clone(), found, expected: SCHEMA_VERSION });
        }
        drop(version);
        self.meta_u64(&meta, KEY_NEXT_ORDER)?;
        self.meta_u64(&meta, KEY_STABLE_SEQ)?;
        Ok(())
    }

    /// Durably writes one Ready's records in ONE transaction committed with
    /// durability (fsync) before returning.
    ///
    /// On `Record::Stable { seq, .. }` (a newer one than held) it becomes the
    /// latest stable checkpoint, and what restore no longer needs goes:
    /// PRE-PREPAREs, PREPAREs, COMMITs and CHECKPOINTs at or below `seq`, and
    /// requests that a batch at or below `seq` named (as far as the job log
    /// knows: [`Store::record_batch`] drops those of batches recorded later).
    /// VIEW-CHANGEs and NEW-VIEWs are pruned by view whenever one is written
    /// or a checkpoint becomes stable (see `prune_views`).
    pub fn persist(&self, records: &[Record]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        self.commit_ready(records, &[]).map(|_| ())
    }

    /// [`Store::persist`] of `records`, then [`Store::record_batch`] of each
    /// of `batches`, all in ONE transaction committed with durability (fsync)
    /// before returning: the driver's group commit of a whole `Ready`. One
    /// `bool` per batch: whether it was new to the job log. On an error
    /// nothing of it is written.
    pub fn commit_ready(&self, records: &[Record], batches: &[Batch]) -> Result<Vec<bool>, StoreError> {
        if records.is_empty() && batches.is_empty() {
            return Ok(Vec::new());
        }
        let tx = self.begin_write()?;
        if !records.is_empty() {
            self.persist_in(&tx, records)?;
        }
        let mut new = Vec::with_capacity(batches.len());
        for batch in batches {
            new.push(self.record_batch_in(&tx, batch)?);
        }
        tx.commit().at(&self.path)?;
        Ok(new)
    }

    /// The last write of a clean stop: `records` (what was left to
    /// persist) and a mark that every message this replica sent is in the
    /// store, in one durable transaction.
    pub fn close_cleanly(&self, records: &[Record]) -> Result<(), StoreError> {
        let tx = self.begin_write()?;
        if !records.is_empty() {
            self.persist_in(&tx, records)?;
        }
        tx.open_table(META).at(&self.path)?.insert(KEY_STOPPED_CLEANLY, &[1u8][..]).at(&self.path)?;
        tx.commit().at(&self.path)
    }

    /// Whether the last run ended with [`Store::close_cleanly`] rather than
    /// a crash. The mark is removed, durably, before this returns: a crash
    /// of the run starting now must not pass for a clean stop.
    pub fn take_clean_stop(&self) -> Result<bool, StoreError> {
        let tx = self.begin_write()?;
        let clean = tx.open_table(META).at(&self.path)?.remove(KEY_STOPPED_CLEANLY).at(&self.path)?.is_some();
        tx.commit().at(&self.path)?;
        Ok(clean)
    }

    fn persist_in(&self, tx: &WriteTransaction, records: &[Record]) -> Result<(), StoreError> {
        {
            let p = &self.path;
            let mut meta = tx.open_table(META).at(p)?;
            let mut requests = tx.open_table(REQUESTS).at(p)?;
            let mut messages = tx.open_table(MESSAGES).at(p)?;
            let mut views = tx.open_table(VIEW_MESSAGES).at(p)?;
            let mut order = self.meta_u64(&meta, KEY_NEXT_ORDER)?;
            let old_stable = self.meta_u64(&meta, KEY_STABLE_SEQ)?;
            let mut stable = old_stable;
            let mut views_written = false;
            for record in records {
                match record {
                    Record::Request(bytes) => {
                        let digest = request_digest(bytes).map_err(|d| self.invalid("a request record", d))?;
                        if requests.get(digest.0).at(p)?.is_none() {
                            requests.insert(digest.0, (order, &bytes[..])).at(p)?;
                            order += 1;
                        }
                    }
                    Record::Message(bytes) => {
                        let slot = slot_of(bytes).map_err(|d| self.invalid("a message record", d))?;
                        let kind = u8::from(slot.kind);
                        if matches!(slot.kind, Kind::ViewChange | Kind::NewView) {
                            views.insert(order, (kind, slot.view, &bytes[..])).at(p)?;
                            views_written = true;
                        } else {
                            messages.insert(order, (kind, slot.view, slot.seq, &bytes[..])).at(p)?;
                        }
                        order += 1;
                    }
                    Record::Stable { seq, state, proof } if *seq > stable => {
                        let proof = proof.iter().map(|b| SignedBytes(b.to_vec())).collect();
                        let row = encode_row(&StableRow { seq: *seq, state: state.to_vec(), proof });
                        meta.insert(KEY_STABLE, &row[..]).at(p)?;
                        meta.insert(KEY_STABLE_SEQ, &encode_u64(*seq)[..]).at(p)?;
                        stable = *seq;
                    }
                    // An older checkpoint than the one held changes nothing.
                    Record::Stable { .. } => {}
                }
            }
            meta.insert(KEY_NEXT_ORDER, &encode_u64(order)[..]).at(p)?;
            if stable > old_stable {
                messages.retain(|_, (_, _, seq, _)| seq > stable).at(p)?;
                let batches = tx.open_table(BATCHES).at(p)?;
                for row in batches.range(old_stable + 1..=stable).at(p)? {
                    let (_, row) = row.at(p)?;
                    let row: BatchRow = decode_row(row.value()).map_err(|d| self.corrupted("job log row", d))?;
                    for d in &row.requests {
                        requests.remove(d.0).at(p)?;
                    }
                }
            }
            if views_written || stable > old_stable {
                self.prune_views(&mut views)?;
            }
        }
        Ok(())
    }

    /// Keeps of the VIEW-CHANGEs and NEW-VIEWs only what restore needs to
    /// rejoin its view: the NEW-VIEW of the highest view any NEW-VIEW names
    /// (it carries the VIEW-CHANGEs that made it), and VIEW-CHANGEs for views
    /// above it, the highest of each signer only (the core keeps no more of
    /// a replica; ours among them says which view we were moving to).
    fn prune_views(&self, views: &mut Table<'_, u64, (u8, u64, &'static [u8])>) -> Result<(), StoreError> {
        let p = &self.path;
        let mut new_view = 0;
        let mut highest_by_signer = BTreeMap::new();
        let mut view_changes = Vec::new();
        for entry in views.iter().at(p)? {
            let (order, value) = entry.at(p)?;
            let (kind, view, bytes) = value.value();
            match kind_of(kind).map_err(|d| self.corrupted("view-change record", d))? {
                Kind::NewView => new_view = new_view.max(view),
                _ => {
                    let signer = signer_of(bytes).map_err(|d| self.corrupted("view-change record", d))?;
                    let top = highest_by_signer.entry(signer).or_insert(view);
                    *top = (*top).max(view);
                    view_changes.push((order.value(), signer, view));
                }
            }
        }
        let stale: Vec<u64> = view_changes
            .into_iter()
            .filter(|(_, signer, view)| *view <= new_view || *view < highest_by_signer[signer])
            .map(|(order, _, _)| order)
            .collect();
        for order in stale {
            views.remove(order).at(p)?;
        }
        views.retain(|_, (kind, view, _)| kind != u8::from(Kind::NewView) || view >= new_view).at(p)?;
        Ok(())
    }

    /// What [`Replica::restore`](crate::pbft::Replica::restore) needs: the
    /// stable checkpoint if any, then the requests in the order they were
    /// persisted, then the protocol messages in the order they were persisted
    /// (restore handles requests before messages whatever the order).
    pub fn records(&self) -> Result<Vec<Record>, StoreError> {
        let p = &self.path;
        let rx = self.db.begin_read().at(p)?;
        let meta = rx.open_table(META).at(p)?;
        let mut out = Vec::new();
        if let Some(row) = meta.get(KEY_STABLE).at(p)? {
            let row = decode_stable(row.value()).map_err(|d| self.corrupted("stable checkpoint", d))?;
            let proof = row.proof.into_iter().map(|b| b.0.into()).collect();
            out.push(Record::Stable { seq: row.seq, state: row.state.into(), proof });
        }
        let mut requests = Vec::new();
        for entry in rx.open_table(REQUESTS).at(p)?.iter().at(p)? {
            let (_, value) = entry.at(p)?;
            let (order, bytes) = value.value();
            requests.push((order, Record::Request(bytes.into())));
        }
        let mut messages = Vec::new();
        for entry in rx.open_table(MESSAGES).at(p)?.iter().at(p)? {
            let (order, value) = entry.at(p)?;
            messages.push((order.value(), Record::Message(value.value().3.into())));
        }
        for entry in rx.open_table(VIEW_MESSAGES).at(p)?.iter().at(p)? {
            let (order, value) = entry.at(p)?;
            messages.push((order.value(), Record::Message(value.value().2.into())));
        }
        requests.sort_by_key(|(order, _)| *order);
        messages.sort_by_key(|(order, _)| *order);
        out.extend(requests.into_iter().chain(messages).map(|(_, r)| r));
        Ok(out)
    }

    /// The job log: records a committed batch (seq, view, batch digest, the
    /// request digests, and per job its id and the signed request). Returns
    /// `Ok(false)` if `seq` was recorded already with the same batch digest (a
    /// replica re-executes after a restart), and an error if with another.
    pub fn record_batch(&self, batch: &Batch) -> Result<bool, StoreError> {
        let tx = self.begin_write()?;
        if !self.record_batch_in(&tx, batch)? {
            // Dropping the transaction aborts it: nothing to write.
            return Ok(false);
        }
        tx.commit().at(&self.path)?;
        Ok(true)
    }

    fn record_batch_in(&self, tx: &WriteTransaction, batch: &Batch) -> Result<bool, StoreError> {
        let p = &self.path;
        {
            let mut batches = tx.open_table(BATCHES).at(p)?;
            let recorded = batches.get(batch.seq).at(p)?.map(|row| decode_row::<BatchRow>(row.value()));
            if let Some(row) = recorded {
                let row = row.map_err(|d| self.corrupted("job log row", d))?;
                if row.batch != batch.batch {
                    let (seq, recorded, offered) = (batch.seq, row.batch, batch.batch);
                    return Err(StoreError::BatchMismatch { path: p.clone(), seq, recorded, offered });
                }
                return Ok(false);
            }
            let row = BatchRow {
                view: batch.view,
                batch: batch.batch,
                requests: batch.requests.clone(),
                jobs: batch.jobs.len() as u32,
            };
            batches.insert(batch.seq, &encode_row(&row)[..]).at(p)?;
            let mut jobs = tx.open_table(JOBS).at(p)?;
            let mut unfinished = tx.open_table(UNFINISHED).at(p)?;
            for (job, request) in &batch.jobs {
                let row = JobRow {
                    request: request.msg.digest(),
                    signed: SignedBytes(request.bytes().to_vec()),
                    result: None,
                };
                jobs.insert((job.seq, job.index), &encode_row(&row)[..]).at(p)?;
                unfinished.insert((job.seq, job.index), ()).at(p)?;
            }
            // Recorded after its checkpoint became stable (the driver persists
            // a Ready before it records the Ready's batches): its requests
            // are not needed for restore any more.
            let stable = self.meta_u64(&tx.open_table(META).at(p)?, KEY_STABLE_SEQ)?;
            if batch.seq <= stable {
                let mut requests = tx.open_table(REQUESTS).at(p)?;
                for d in &batch.requests {
                    requests.remove(d.0).at(p)?;
                }
            }
        }
        Ok(true)
    }

    /// Highest seq the job log accounts for, run here or skipped (0 if none).
    pub fn last_batch(&self) -> Result<u64, StoreError> {
        let p = &self.path;
        let rx = self.db.begin_read().at(p)?;
        let batch = rx.open_table(BATCHES).at(p)?.last().at(p)?.map_or(0, |(seq, _)| seq.value());
        let skipped = rx.open_table(SKIPPED).at(p)?.last().at(p)?.map_or(0, |(_, to)| to.value());
        Ok(batch.max(skipped))
    }

    /// A state transfer skipped `from_seq..=to_seq`: the job log shows they
    /// were not run here.
    pub fn record_skipped(&self, from_seq: u64, to_seq: u64) -> Result<(), StoreError> {
        if from_seq == 0 || from_seq > to_seq {
            return Err(self.invalid("a skipped range", format!("{from_seq}..={to_seq} is empty or starts at 0")));
        }
        let p = &self.path;
        let tx = self.begin_write()?;
        {
            let mut skipped = tx.open_table(SKIPPED).at(p)?;
            let to = skipped.get(from_seq).at(p)?.map_or(to_seq, |old| old.value().max(to_seq));
            skipped.insert(from_seq, to).at(p)?;
        }
        tx.commit().at(p)
    }

    /// Up to `limit` jobs with no final reply yet, oldest first, with their
    /// signed requests: what to run again after a restart.
    pub fn unfinished_jobs(&self, limit: usize) -> Result<Vec<(JobId, Vec<u8>)>, StoreError> {
        let p = &self.path;
        let rx = self.db.begin_read().at(p)?;
        let jobs = rx.open_table(JOBS).at(p)?;
        let mut out = Vec::new();
        for entry in rx.open_table(UNFINISHED).at(p)?.iter().at(p)?.take(limit) {
            let (key, _) = entry.at(p)?;
            let (seq, index) = key.value();
            let job = JobId { seq, index };
            let row = self.job_row(&jobs, job)?.ok_or_else(|| self.corrupted("job log", format!("no job {job}")))?;
            out.push((job, row.signed.0));
        }
        Ok(out)
    }

    /// One job of the job log.
    pub fn job(&self, job: JobId) -> Result<Option<JobRecord>, StoreError> {
        let p = &self.path;
        let rx = self.db.begin_read().at(p)?;
        let row = self.job_row(&rx.open_table(JOBS).at(p)?, job)?;
        Ok(row.map(|r| JobRecord { job, request: r.request, request_bytes: r.signed.0, result: r.result.map(|b| b.0) }))
    }

    /// Keeps a signed final reply (result or abstain) for `request`, served
    /// to gateways later, and marks `job` finished. Storing the same bytes
    /// twice keeps one copy.
    pub fn put_reply(&self, request: Digest, job: JobId, reply_bytes: &[u8]) -> Result<(), StoreError> {
        let tx = self.begin_write()?;
        self.put_reply_in(&tx, request, job, reply_bytes)?;
        tx.commit().at(&self.path)
    }

    /// [`Store::put_reply`] of each `(request, job, reply)` in ONE durable
    /// transaction (group commit). On an error nothing of it is written.
    pub fn put_replies(&self, replies: &[(Digest, JobId, &[u8])]) -> Result<(), StoreError> {
        if replies.is_empty() {
            return Ok(());
        }
        let tx = self.begin_write()?;
        for (request, job, bytes) in replies {
            self.put_reply_in(&tx, *request, *job, bytes)?;
        }
        tx.commit().at(&self.path)
    }

    fn put_reply_in(
        &self,
        tx: &WriteTransaction,
        request: Digest,
        job: JobId,
        reply_bytes: &[u8],
    ) -> Result<(), StoreError> {
        let p = &self.path;
        {
            let mut jobs = tx.open_table(JOBS).at(p)?;
            if let Some(mut row) = self.job_row(&jobs, job)? {
                if row.request != request {
                    let (recorded, offered) = (row.request, request);
                    return Err(StoreError::ReplyMismatch { path: p.clone(), job, recorded, offered });
                }
                row.result = Some(SignedBytes(reply_bytes.to_vec()));
                jobs.insert((job.seq, job.index), &encode_row(&row)[..]).at(p)?;
                tx.open_table(UNFINISHED).at(p)?.remove((job.seq, job.index)).at(p)?;
            }
            let mut replies = tx.open_table(REPLIES).at(p)?;
            let mut known = false;
            for entry in replies.range((request.0, 0)..=(request.0, u64::MAX)).at(p)? {
                known |= entry.at(p)?.1.value() == reply_bytes;
            }
            if !known {
                let mut meta = tx.open_table(META).at(p)?;
                let order = self.meta_u64(&meta, KEY_NEXT_ORDER)?;
                meta.insert(KEY_NEXT_ORDER, &encode_u64(order + 1)[..]).at(p)?;
                replies.insert((request.0, order), reply_bytes).at(p)?;
            }
        }
        Ok(())
    }

    /// The signed final replies kept for `request`, in the order they came.
    pub fn replies(&self, request: Digest) -> Result<Vec<Vec<u8>>, StoreError> {
        let p = &self.path;
        let rx = self.db.begin_read().at(p)?;
        let replies = rx.open_table(REPLIES).at(p)?;
        let mut out = Vec::new();
        for entry in replies.range((request.0, 0)..=(request.0, u64::MAX)).at(p)? {
            out.push(entry.at(p)?.1.value().to_vec());
        }
        Ok(out)
    }

    // --- helpers ---

    fn begin_write(&self) -> Result<WriteTransaction, StoreError> {
        let mut tx = self.db.begin_write().at(&self.path)?;
        // redb's default, spelled out: commit returns once the data is on disk.
        tx.set_durability(Durability::Immediate);
        // One more fsync per commit buys this: at recovery, a latest commit
        // that fails its checksums can only be damage, and redb reports it
        // instead of rolling back to the commit before (which would make
        // this replica forget what it may already have sent).
        tx.set_two_phase_commit(true);
        Ok(tx)
    }

    fn meta_u64(&self, meta: &impl ReadableTable<&'static str, &'static [u8]>, key: &str) -> Result<u64, StoreError> {
        let value =
            meta.get(key).at(&self.path)?.ok_or_else(|| self.corrupted("metadata", format!("{key} missing")))?;
        decode_u64(value.value()).map_err(|d| self.corrupted("metadata", format!("{key}: {d}")))
    }

    fn job_row(
        &self,
        jobs: &impl ReadableTable<(u64, u32), &'static [u8]>,
        job: JobId,
    ) -> Result<Option<JobRow>, StoreError> {
        let Some(row) = jobs.get((job.seq, job.index)).at(&self.path)? else {
            return Ok(None);
        };
        decode_row(row.value()).map(Some).map_err(|d| self.corrupted("job log row", format!("job {job}: {d}")))
    }

    fn corrupted(&self, what: &'static str, detail: String) -> StoreError {
        StoreError::Corrupted { path: self.path.clone(), what, detail }
    }

    fn invalid(&self, what: &'static str, detail: String) -> StoreError {
        StoreError::Invalid { path: self.path.clone(), what, detail }
    }
}

/// Runs `f`, returning a panic inside it as `Err` with its message, and
/// without printing it: redb asserts on some damaged files, and such a file is
/// an error to report, not a crash. Other threads' panics print as usual.
fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    type Hook = Box<dyn Fn(&panic::PanicHookInfo<'_>) + Send + Sync>;
    // One swap of the process's panic hook at a time.
    static HOOK: Mutex<()> = Mutex::new(());
    let _one = HOOK.lock().unwrap_or_else(|e| e.into_inner());
    let here = std::thread::current().id();
    let previous: Arc<Hook> = Arc::new(panic::take_hook());
    let forward = previous.clone();
    panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() != here {
            forward(info)
        }
    }));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    drop(panic::take_hook());
    match Arc::try_unwrap(previous) {
        Ok(hook) => panic::set_hook(hook),
        Err(shared) => panic::set_hook(Box::new(move |info| shared(info))),
    }
    result.map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Store>();
}

fn restrict(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}
