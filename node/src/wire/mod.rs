//! What crosses the wire, and how it is signed.
//!
//! Every message is CBOR (`cbor4ii`) inside a signed [`Envelope`]: the
//! signature covers a domain tag, the network id, the message kind and the
//! body, so a message can never be replayed on another network or read as
//! another kind. Digests are SHA-256. Every size is bounded here ([`limits`]);
//! decoding arbitrary bytes returns an error and never panics.
//!
//! This module owns formats only: it never touches sockets, disks or clocks.

pub mod batch;
mod certificate;
mod codec;
mod digest;
mod envelope;
pub mod limits;
mod messages;
mod network;
#[cfg(test)]
pub(crate) mod testkit;

pub use certificate::{Certificate, CertificateError, ResultSet, Roster, Verified as VerifiedCertificate};
pub use codec::{decode, encode, DecodeError};
pub use digest::{Digest, Sha256};
pub use envelope::{public_key_of, Envelope, Kind, OpenError, Signed, Signer, Verifier, WireMessage};
pub use messages::*;
pub use network::NetworkId;
