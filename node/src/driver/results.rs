//! Signed results are stored off the event loop. Each `put_reply` is a
//! transaction of its own, committed with fsync; a few hundred jobs finishing
//! together would otherwise hold the loop (and so the ordering of everything
//! else) for as many commits. A blocking worker stores them in the order they
//! come and hands each one back once it is durable; only then is it sent.

use std::sync::Arc;

use libp2p_identity::PeerId;
use tokio::sync::mpsc;
use tracing::error;

use crate::store::{Store, StoreError};
use crate::wire::{Digest, JobId};

/// Results waiting to be stored, and stored results waiting to be sent.
const QUEUE_MAX: usize = 4096;

/// A signed result reply, for the store and then for its gateway.
pub struct SignedResult {
    pub gateway: PeerId,
    pub request: Digest,
    pub job: JobId,
    pub bytes: Vec<u8>,
}

pub struct Writer {
    pub to_store: mpsc::Sender<SignedResult>,
    pub stored: mpsc::Receiver<Result<SignedResult, StoreError>>,
}

impl Writer {
    /// Starts the worker. Must run inside a tokio runtime.
    pub fn start(store: Arc<Store>) -> Writer {
        let (to_store, mut rx) = mpsc::channel::<SignedResult>(QUEUE_MAX);
        let (tx, stored) = mpsc::channel(QUEUE_MAX);
        tokio::task::spawn_blocking(move || {
            while let Some(r) = rx.blocking_recv() {
                let outcome = store.put_reply(r.request, r.job, &r.bytes).map(|()| r);
                if let Err(e) = &outcome {
                    error!("storing a result: {e}");
                }
                if tx.blocking_send(outcome).is_err() {
                    return;
                }
            }
        });
        Writer { to_store, stored }
    }
}
