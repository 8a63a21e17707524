//! The PBFT core, sans-IO: a deterministic state machine.
//!
//! [`Replica::step`] takes the current time and one [`Input`] (a verified
//! message, a request, a fetch, a status, "batch executed", a tick);
//! [`Replica::take_ready`] hands back a [`Ready`]: records to persist, then
//! messages and replies to send, batches to execute, and when to wake it.
//! There are no sockets, clocks, threads or random numbers in here; the
//! libp2p driver, the store and the simulator are callers. A reader can learn
//! the protocol from this folder alone:
//!
//! - [`quorum`]: n = 3f + 1 and the sizes that follow from it;
//! - [`state`]: the replicated state (de-duplication, job log chain);
//! - [`io`]: inputs, outputs and the persist-before-send contract;
//! - [`replica`]: the protocol itself.
//!
//! It must never touch I/O, clocks or randomness: that is what lets the
//! simulator replay any schedule from a seed.

pub mod config;
pub mod io;
pub mod quorum;
pub mod replica;
pub mod state;

pub use config::Config;
pub use io::*;
pub use quorum::Quorum;
pub use replica::{Replica, RestoreError};
pub use state::ReplicatedState;
