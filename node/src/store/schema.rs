//! The layout of `replica.redb`: its tables, their keys, and how values are
//! encoded. Changing any of it means bumping [`SCHEMA_VERSION`]: a store of
//! another version is refused at open, never read as this one.
//!
//! Everything in the file is either a byte string the core handed over as is
//! (signed envelopes, the checkpointed state), or a small CBOR row of our own
//! made with the wire codec (bounded, never panicking decoding).

use libp2p_identity::PeerId;
use redb::TableDefinition;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::pbft::state::STATE_BYTES_MAX;
use crate::wire::limits::ENVELOPE_BYTES_MAX;
use crate::wire::{
    decode, encode, Checkpoint, Commit, Digest, Envelope, Kind, NewView, PrePrepare, Prepare, Request, SignedBytes,
    ViewChange, WireMessage,
};

pub const SCHEMA_VERSION: u64 = 1;
pub const FILE_NAME: &str = "replica.redb";

/// Small values by name: the keys below.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// u64, big-endian: [`SCHEMA_VERSION`] of the file.
pub const KEY_SCHEMA: &str = "schema_version";
/// u64, big-endian: the next persist-order number (orders records across tables).
pub const KEY_NEXT_ORDER: &str = "next_order";
/// u64, big-endian: seq of the latest stable checkpoint (0: none yet).
pub const KEY_STABLE_SEQ: &str = "stable_seq";
/// A [`StableRow`]: the latest stable checkpoint's state and proof.
pub const KEY_STABLE: &str = "stable";
/// Present while every message the replica sent is in the store: written
/// by a clean stop (and with a new store), removed at start.
pub const KEY_STOPPED_CLEANLY: &str = "stopped_cleanly";

/// Requests accepted for ordering: request digest → (persist order, signed
/// request). Keyed by digest so executed ones are deleted without a scan.
pub const REQUESTS: TableDefinition<[u8; 32], (u64, &[u8])> = TableDefinition::new("requests");
/// PRE-PREPARE, PREPARE, COMMIT and CHECKPOINT messages: persist order →
/// (kind, view, seq, signed message); view and seq are copied out of the
/// body so garbage collection never decodes a message.
pub const MESSAGES: TableDefinition<u64, (u8, u64, u64, &[u8])> = TableDefinition::new("messages");
/// VIEW-CHANGE and NEW-VIEW messages: persist order → (kind, view, signed
/// message). Few, pruned by view rather than by seq.
pub const VIEW_MESSAGES: TableDefinition<u64, (u8, u64, &[u8])> = TableDefinition::new("view_messages");

/// The job log, one row per committed batch: seq → [`BatchRow`].
pub const BATCHES: TableDefinition<u64, &[u8]> = TableDefinition::new("batches");
/// Seqs a state transfer jumped over: first seq → last seq (inclusive).
pub const SKIPPED: TableDefinition<u64, u64> = TableDefinition::new("skipped");
/// Jobs: (seq, index in batch) → [`JobRow`].
pub const JOBS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("jobs");
/// Jobs without a final reply yet, so a restart finds them without a scan.
pub const UNFINISHED: TableDefinition<(u64, u32), ()> = TableDefinition::new("unfinished");
/// Signed final replies: (request digest, persist order) → signed reply.
pub const REPLIES: TableDefinition<([u8; 32], u64), &[u8]> = TableDefinition::new("replies");

/// Creates every table, so readers never meet a missing one.
pub fn create_tables(tx: &redb::WriteTransaction) -> Result<(), redb::TableError> {
    tx.open_table(META)?;
    tx.open_table(REQUESTS)?;
    tx.open_table(MESSAGES)?;
    tx.open_table(VIEW_MESSAGES)?;
    tx.open_table(BATCHES)?;
    tx.open_table(SKIPPED)?;
    tx.open_table(JOBS)?;
    tx.open_table(UNFINISHED)?;
    tx.open_table(REPLIES)?;
    Ok(())
}

/// Bound on a row of ours holding at most a couple of envelopes.
const ROW_BYTES_MAX: usize = 2 * ENVELOPE_BYTES_MAX;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StableRow {
    pub seq: u64,
    #[serde(with = "serde_bytes")]
    pub state: Vec<u8>,
    pub proof: Vec<SignedBytes>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRow {
    pub view: u64,
    pub batch: Digest,
    pub requests: Vec<Digest>,
    pub jobs: u32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRow {
    pub request: Digest,
    pub signed: SignedBytes,
    pub result: Option<SignedBytes>,
}

pub fn encode_row<T: Serialize>(row: &T) -> Vec<u8> {
    encode(row)
}

pub fn decode_row<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    decode(bytes, ROW_BYTES_MAX).map_err(|e| e.to_string())
}

pub fn decode_stable(bytes: &[u8]) -> Result<StableRow, String> {
    decode(bytes, STATE_BYTES_MAX + ROW_BYTES_MAX).map_err(|e| e.to_string())
}

pub fn encode_u64(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

pub fn decode_u64(bytes: &[u8]) -> Result<u64, String> {
    <[u8; 8]>::try_from(bytes).map(u64::from_be_bytes).map_err(|_| format!("{} bytes where a u64 belongs", bytes.len()))
}

/// Where a protocol message sits: its kind and the view and seq its body names
/// (0 where it names none: CHECKPOINT has no view, view changes no seq).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub kind: Kind,
    pub view: u64,
    pub seq: u64,
}

fn envelope(bytes: &[u8]) -> Result<Envelope, String> {
    decode(bytes, ENVELOPE_BYTES_MAX).map_err(|e| format!("not a signed envelope: {e}"))
}

fn body<T: WireMessage>(env: &Envelope) -> Result<T, String> {
    decode(&env.body, T::BODY_BYTES_MAX).map_err(|e| format!("{:?} body: {e}", env.kind))
}

/// Reads a protocol message's slot. Signatures are not checked: the core
/// made or verified every message it asks to persist.
pub fn slot_of(bytes: &[u8]) -> Result<Slot, String> {
    let env = envelope(bytes)?;
    let (view, seq) = match env.kind {
        Kind::PrePrepare => body::<PrePrepare>(&env).map(|m| (m.view, m.seq))?,
        Kind::Prepare => body::<Prepare>(&env).map(|m| (m.view, m.seq))?,
        Kind::Commit => body::<Commit>(&env).map(|m| (m.view, m.seq))?,
        Kind::Checkpoint => body::<Checkpoint>(&env).map(|m| (0, m.seq))?,
        Kind::ViewChange => body::<ViewChange>(&env).map(|m| (m.view, 0))?,
        Kind::NewView => body::<NewView>(&env).map(|m| (m.view, 0))?,
        Kind::Request | Kind::Reply => return Err(format!("a {:?} is not a protocol message", env.kind)),
    };
    Ok(Slot { kind: env.kind, view, seq })
}

/// The digest the core keys a signed request by.
pub fn request_digest(bytes: &[u8]) -> Result<Digest, String> {
    let env = envelope(bytes)?;
    if env.kind != Kind::Request {
        return Err(format!("a {:?} is not a request", env.kind));
    }
    Ok(body::<Request>(&env)?.digest())
}

pub fn signer_of(bytes: &[u8]) -> Result<PeerId, String> {
    envelope(bytes).map(|env| env.signer)
}

pub fn kind_of(byte: u8) -> Result<Kind, String> {
    Kind::try_from(byte).map_err(|e| format!("{e}: {byte}"))
}
