//! Results are signed and stored off the event loop: a few hundred jobs
//! finishing together would otherwise hold the loop (and so the ordering of
//! everything else) for their signatures and commits. A blocking worker takes
//! them in the order they come, all those queued at once under one signature
//! (a signed batch) and in one transaction committed with fsync (group
//! commit), and hands each one back once it is durable; only then is it sent.

use std::sync::Arc;

use libp2p_identity::{Keypair, PeerId};
use tokio::sync::mpsc;
use tracing::error;

use crate::store::{Store, StoreError};
use crate::wire::{Digest, JobId, NetworkId, Reply, Signed};

/// Results waiting to be stored, and stored results waiting to be sent.
const QUEUE_MAX: usize = 4096;
/// Results stored in one transaction at most.
const GROUP_MAX: usize = 1024;

/// A result (or abstention) reply to sign.
pub struct JobReply {
    pub job: JobId,
    pub reply: Reply,
}

/// A signed result reply, for the store and then for its gateway.
pub struct SignedResult {
    pub gateway: PeerId,
    pub request: Digest,
    pub job: JobId,
    pub bytes: Vec<u8>,
}

pub struct Writer {
    pub to_store: mpsc::Sender<JobReply>,
    pub stored: mpsc::Receiver<Result<SignedResult, StoreError>>,
}

impl Writer {
    /// Starts the worker. Must run inside a tokio runtime.
    pub fn start(store: Arc<Store>, key: Arc<Keypair>, network: NetworkId) -> Writer {
        let (to_store, mut rx) = mpsc::channel::<JobReply>(QUEUE_MAX);
        let (tx, stored) = mpsc::channel(QUEUE_MAX);
        tokio::task::spawn_blocking(move || {
            while let Some(first) = rx.blocking_recv() {
                // Group commit: whatever else is queued goes in the same
                // transaction, one fsync for all of it.
                let mut group = vec![first];
                while group.len() < GROUP_MAX {
                    match rx.try_recv() {
                        Ok(r) => group.push(r),
                        Err(_) => break,
                    }
                }
                let (jobs, replies): (Vec<JobId>, Vec<Reply>) = group.into_iter().map(|r| (r.job, r.reply)).unzip();
                let group: Vec<SignedResult> = Signed::seal_batch(replies, &network, key.as_ref())
                    .into_iter()
                    .zip(jobs)
                    .map(|(s, job)| SignedResult {
                        gateway: s.msg.gateway,
                        request: s.msg.request,
                        job,
                        bytes: s.bytes().to_vec(),
                    })
                    .collect();
                let rows: Vec<_> = group.iter().map(|r| (r.request, r.job, &r.bytes[..])).collect();
                let outcomes: Vec<Result<SignedResult, StoreError>> = match store.put_replies(&rows) {
                    Ok(()) => group.into_iter().map(Ok).collect(),
                    // Nothing of the group was written: one at a time, so
                    // that only the one at fault fails.
                    Err(_) => {
                        group.into_iter().map(|r| store.put_reply(r.request, r.job, &r.bytes).map(|()| r)).collect()
                    }
                };
                for outcome in outcomes {
                    if let Err(e) = &outcome {
                        error!("storing a result: {e}");
                    }
                    if tx.blocking_send(outcome).is_err() {
                        return;
                    }
                }
            }
        });
        Writer { to_store, stored }
    }
}
