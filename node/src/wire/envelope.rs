//! The signed envelope. The signature covers
//! `DOMAIN || network id || kind || body`: domain-separated from any other use
//! of the key (libp2p signs its own records with it too), bound to one network
//! and to one message kind.

use std::sync::Arc;

use libp2p_identity::{Keypair, PeerId, PublicKey};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::codec::{decode, encode, DecodeError};
use super::limits::ENVELOPE_BYTES_MAX;
use super::{Digest, NetworkId};

const DOMAIN: &[u8] = b"pbft-ci/signed/v1";

/// What a message is; part of what is signed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
#[repr(u8)]
pub enum Kind {
    Request = 1,
    Reply = 2,
    PrePrepare = 3,
    Prepare = 4,
    Commit = 5,
    Checkpoint = 6,
    ViewChange = 7,
    NewView = 8,
}

impl From<Kind> for u8 {
    fn from(k: Kind) -> u8 {
        k as u8
    }
}

impl TryFrom<u8> for Kind {
    type Error = &'static str;
    fn try_from(v: u8) -> Result<Kind, Self::Error> {
        Ok(match v {
            1 => Kind::Request,
            2 => Kind::Reply,
            3 => Kind::PrePrepare,
            4 => Kind::Prepare,
            5 => Kind::Commit,
            6 => Kind::Checkpoint,
            7 => Kind::ViewChange,
            8 => Kind::NewView,
            _ => return Err("unknown message kind"),
        })
    }
}

/// A message type that travels signed.
pub trait WireMessage: Serialize + DeserializeOwned {
    const KIND: Kind;
    /// Bound on the encoded body.
    const BODY_BYTES_MAX: usize;
    /// Checks the bounds serde cannot express (lengths of lists and strings).
    fn check(&self) -> Result<(), &'static str>;
}

/// Produces signatures with one identity's key.
pub trait Signer: Send + Sync {
    fn peer_id(&self) -> PeerId;
    fn sign(&self, msg: &[u8]) -> Vec<u8>;
}

impl Signer for Keypair {
    fn peer_id(&self) -> PeerId {
        self.public().to_peer_id()
    }
    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        // ed25519 signing cannot fail; other key types are refused at load time.
        Keypair::sign(self, msg).expect("ed25519 signing is infallible")
    }
}

/// Checks signatures of known identities.
pub trait Verifier: Send + Sync {
    fn verify(&self, signer: &PeerId, msg: &[u8], sig: &[u8]) -> bool;
}

/// An ed25519 `PeerId` embeds its public key (identity multihash), so a
/// signature can be checked against the name alone.
pub fn public_key_of(peer: &PeerId) -> Option<PublicKey> {
    // Multihash bytes: code 0x00 (identity), a one-byte length, the key.
    let bytes = peer.to_bytes();
    match bytes.as_slice() {
        [0x00, len, key @ ..] if usize::from(*len) == key.len() => {
            PublicKey::try_decode_protobuf(key).ok()
        }
        _ => None,
    }
}

/// The wire form.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub network: NetworkId,
    pub kind: Kind,
    pub signer: PeerId,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("message for network {got}, this is {want}")]
    WrongNetwork { got: String, want: String },
    #[error("expected a {want:?} message, got {got:?}")]
    WrongKind { want: Kind, got: Kind },
    #[error("bad signature by {0}")]
    BadSignature(PeerId),
    #[error("{0}")]
    Invalid(&'static str),
}

fn signing_input(network: &NetworkId, kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(DOMAIN.len() + 33 + body.len());
    v.extend_from_slice(DOMAIN);
    v.extend_from_slice(&network.0 .0);
    v.push(kind as u8);
    v.extend_from_slice(body);
    v
}

impl Envelope {
    /// Decodes an envelope and checks its network and signature; the body is
    /// not decoded yet.
    pub fn open(
        bytes: &[u8],
        network: &NetworkId,
        verifier: &dyn Verifier,
    ) -> Result<Envelope, OpenError> {
        let env: Envelope = decode(bytes, ENVELOPE_BYTES_MAX)?;
        if env.network != *network {
            return Err(OpenError::WrongNetwork {
                got: env.network.short(),
                want: network.short(),
            });
        }
        let input = signing_input(&env.network, env.kind, &env.body);
        if !verifier.verify(&env.signer, &input, &env.signature) {
            return Err(OpenError::BadSignature(env.signer));
        }
        Ok(env)
    }
}

/// A message together with the exact signed bytes it came in. Only
/// [`Signed::seal`] and [`Signed::open`] make one, so holding a `Signed<T>`
/// means its signature was made or checked.
#[derive(Clone, Debug)]
pub struct Signed<T> {
    pub msg: T,
    pub signer: PeerId,
    bytes: Arc<[u8]>,
}

impl<T: WireMessage> Signed<T> {
    /// Signs `msg` for `network`.
    pub fn seal(msg: T, network: &NetworkId, signer: &dyn Signer) -> Signed<T> {
        let body = encode(&msg);
        let signature = signer.sign(&signing_input(network, T::KIND, &body));
        let env = Envelope {
            network: *network,
            kind: T::KIND,
            signer: signer.peer_id(),
            body,
            signature,
        };
        Signed {
            msg,
            signer: env.signer,
            bytes: encode(&env).into(),
        }
    }

    /// Decodes, checks the signature, the kind and the bounds.
    pub fn open(
        bytes: &[u8],
        network: &NetworkId,
        verifier: &dyn Verifier,
    ) -> Result<Signed<T>, OpenError> {
        let env = Envelope::open(bytes, network, verifier)?;
        Self::from_envelope(env, bytes.into())
    }

    /// Decodes the body of an envelope already opened from `bytes`.
    pub fn from_envelope(env: Envelope, bytes: Arc<[u8]>) -> Result<Signed<T>, OpenError> {
        if env.kind != T::KIND {
            return Err(OpenError::WrongKind {
                want: T::KIND,
                got: env.kind,
            });
        }
        let msg: T = decode(&env.body, T::BODY_BYTES_MAX)?;
        msg.check().map_err(OpenError::Invalid)?;
        Ok(Signed {
            msg,
            signer: env.signer,
            bytes,
        })
    }

    /// The encoded envelope, as signed.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn shared_bytes(&self) -> Arc<[u8]> {
        self.bytes.clone()
    }

    /// Digest of the signed envelope (identifies this exact message).
    pub fn envelope_digest(&self) -> Digest {
        Digest::of_parts(b"pbft-ci/envelope", &[&self.bytes])
    }
}
