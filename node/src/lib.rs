//! pbft-ci's replica, and what the gateway shares with it.
//!
//! - [`wire`]: message types, CBOR encoding, signed envelopes, digests,
//!   certificates, size bounds. Formats only.
//! - [`membership`]: the membership file: who counts, the network id.
//! - [`keys`]: identity keys on disk (ed25519, libp2p's encoding).
//! - [`pbft`]: the consensus core, a deterministic sans-IO state machine.
//! - [`sim`]: a deterministic simulator of a whole network around the core,
//!   with fault injection and checkers (tests and the soak command use it).
//! - [`store`]: durable state on disk (redb): what the core persists, the job log, signed results.
//! - [`net`]: the libp2p swarm (gossip with validation, discovery,
//!   point-to-point exchanges) and the gateway's client API; the only module
//!   that names libp2p types.
//! - [`driver`]: the replica's event loop around the core, the store, the
//!   swarm and an executor; graceful shutdown.
//! - [`logging`]: logs to stderr and to a file, for every program.
//!
//! - [`ci`]: running a job: git checkout, the pipeline file, the docker and
//!   local executors, the job's result.

// The MSRV is 1.88 (libp2p 0.57), where clippy prefers `is_multiple_of`
// (stable since 1.87) to the `%` tests written for 1.85; until they are
// rewritten, the lint stays off.
#![allow(clippy::manual_is_multiple_of)]

pub mod ci;
pub mod driver;
pub mod keys;
pub mod logging;
pub mod membership;
pub mod net;
pub mod pbft;
pub mod sim;
pub mod store;
pub mod wire;
