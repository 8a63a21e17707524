//! The signed envelope. The signature covers
//! `DOMAIN || network id || kind || body`: domain-separated from any other use
//! of the key (libp2p signs its own records with it too), bound to one network
//! and to one message kind. Requests and replies may instead be signed many at
//! once ([`Signed::seal_batch`], [`super::batch`]).

use std::sync::Arc;

use libp2p_identity::{Keypair, PeerId, PublicKey};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::batch::{self, BatchProof, BATCH_SIGNED_MAX};
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

    /// Checks the signature of a batch root; many envelopes of one batch
    /// come to the same check, so an implementation may remember successes.
    fn verify_root(&self, signer: &PeerId, msg: &[u8], sig: &[u8]) -> bool {
        self.verify(signer, msg, sig)
    }
}

/// An ed25519 `PeerId` embeds its public key (identity multihash), so a
/// signature can be checked against the name alone.
pub fn public_key_of(peer: &PeerId) -> Option<PublicKey> {
    // Multihash bytes: code 0x00 (identity), a one-byte length, the key.
    let bytes = peer.to_bytes();
    match bytes.as_slice() {
        [0x00, len, key @ ..] if usize::from(*len) == key.len() => PublicKey::try_decode_protobuf(key).ok(),
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
    /// Present when `signature` signs a batch root, not this body alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchProof>,
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
    pub fn open(bytes: &[u8], network: &NetworkId, verifier: &dyn Verifier) -> Result<Envelope, OpenError> {
        let env: Envelope = decode(bytes, ENVELOPE_BYTES_MAX)?;
        // The signature covers the body, not the envelope's framing: only the
        // one encoding `seal` produces is accepted, so a relay cannot turn one
        // signed message into other byte strings (other digests, and what
        // would look like a second, conflicting message from its signer).
        if encode(&env) != bytes {
            return Err(OpenError::Invalid("envelope not in canonical encoding"));
        }
        if env.network != *network {
            return Err(OpenError::WrongNetwork { got: env.network.short(), want: network.short() });
        }
        let good = match &env.batch {
            None => verifier.verify(&env.signer, &signing_input(&env.network, env.kind, &env.body), &env.signature),
            Some(proof) => {
                // Only what a replica or gateway sends in bulk; consensus
                // messages keep one form each.
                if !matches!(env.kind, Kind::Request | Kind::Reply) {
                    return Err(OpenError::Invalid("only requests and replies are signed in batches"));
                }
                let root = proof.root(batch::leaf(&env.network, env.kind, &env.body)).map_err(OpenError::Invalid)?;
                let input = batch::root_input(&env.network, env.kind, proof.count, &root);
                verifier.verify_root(&env.signer, &input, &env.signature)
            }
        };
        if !good {
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
        let env = Envelope { network: *network, kind: T::KIND, signer: signer.peer_id(), body, signature, batch: None };
        Signed { msg, signer: env.signer, bytes: encode(&env).into() }
    }

    /// Signs many messages with one signature per [`BATCH_SIGNED_MAX`] of
    /// them; each result opens alone. For requests and replies only.
    pub fn seal_batch(msgs: Vec<T>, network: &NetworkId, signer: &dyn Signer) -> Vec<Signed<T>> {
        assert!(matches!(T::KIND, Kind::Request | Kind::Reply), "{:?} is not signed in batches", T::KIND);
        if msgs.len() <= 1 {
            return msgs.into_iter().map(|m| Self::seal(m, network, signer)).collect();
        }
        let mut out = Vec::with_capacity(msgs.len());
        let mut msgs = msgs.into_iter().peekable();
        while msgs.peek().is_some() {
            let chunk: Vec<T> = msgs.by_ref().take(BATCH_SIGNED_MAX).collect();
            let bodies: Vec<Vec<u8>> = chunk.iter().map(encode).collect();
            let leaves: Vec<[u8; 32]> = bodies.iter().map(|b| batch::leaf(network, T::KIND, b)).collect();
            let (root, proofs) = batch::tree(&leaves);
            let signature = signer.sign(&batch::root_input(network, T::KIND, leaves.len() as u32, &root));
            let peer = signer.peer_id();
            for ((msg, body), proof) in chunk.into_iter().zip(bodies).zip(proofs) {
                let env = Envelope {
                    network: *network,
                    kind: T::KIND,
                    signer: peer,
                    body,
                    signature: signature.clone(),
                    batch: Some(proof),
                };
                out.push(Signed { msg, signer: peer, bytes: encode(&env).into() });
            }
        }
        out
    }

    /// Decodes, checks the signature, the kind and the bounds.
    pub fn open(bytes: &[u8], network: &NetworkId, verifier: &dyn Verifier) -> Result<Signed<T>, OpenError> {
        let env = Envelope::open(bytes, network, verifier)?;
        Self::from_envelope(env, bytes.into())
    }

    /// Decodes the body of an envelope already opened from `bytes`.
    pub fn from_envelope(env: Envelope, bytes: Arc<[u8]>) -> Result<Signed<T>, OpenError> {
        if env.kind != T::KIND {
            return Err(OpenError::WrongKind { want: T::KIND, got: env.kind });
        }
        let msg: T = decode(&env.body, T::BODY_BYTES_MAX)?;
        msg.check().map_err(OpenError::Invalid)?;
        Ok(Signed { msg, signer: env.signer, bytes })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::limits::REQUEST_BYTES_MAX;
    use crate::wire::testkit::*;
    use crate::wire::{Commit, Operation, Prepare, Request};

    fn prepare(net: &Net) -> Signed<Prepare> {
        let msg = Prepare { view: 0, seq: 1, batch: digest(1) };
        Signed::seal(msg, &net.network(), &net.replicas[1])
    }

    /// Opens `bytes` as the kind it was sealed as.
    fn open_as(kind: Kind, bytes: &[u8], net: &Net) -> Result<(), OpenError> {
        use crate::wire::*;
        let (n, v) = (&net.network(), &net.members);
        match kind {
            Kind::Request => Signed::<Request>::open(bytes, n, v).map(|_| ()),
            Kind::Reply => Signed::<Reply>::open(bytes, n, v).map(|_| ()),
            Kind::PrePrepare => Signed::<PrePrepare>::open(bytes, n, v).map(|_| ()),
            Kind::Prepare => Signed::<Prepare>::open(bytes, n, v).map(|_| ()),
            Kind::Commit => Signed::<Commit>::open(bytes, n, v).map(|_| ()),
            Kind::Checkpoint => Signed::<Checkpoint>::open(bytes, n, v).map(|_| ()),
            Kind::ViewChange => Signed::<ViewChange>::open(bytes, n, v).map(|_| ()),
            Kind::NewView => Signed::<NewView>::open(bytes, n, v).map(|_| ()),
        }
    }

    #[test]
    fn a_flipped_byte_anywhere_makes_open_fail() {
        let net = Net::new();
        let bytes = prepare(&net).bytes().to_vec();
        assert!(open_as(Kind::Prepare, &bytes, &net).is_ok());
        for i in 0..bytes.len() {
            for mask in [0x01, 0x80, 0xff] {
                let mut bad = bytes.clone();
                bad[i] ^= mask;
                assert!(
                    open_as(Kind::Prepare, &bad, &net).is_err(),
                    "byte {i} of {} xor {mask:#04x} still opens",
                    bytes.len()
                );
            }
        }
    }

    #[test]
    fn a_flipped_byte_in_any_kind_of_message_makes_open_fail() {
        let net = Net::new();
        for (kind, bytes) in sealed_samples(&net) {
            assert!(open_as(kind, &bytes, &net).is_ok(), "{kind:?} opens");
            for i in 0..bytes.len() {
                let mut bad = bytes.clone();
                bad[i] ^= 0x01;
                assert!(open_as(kind, &bad, &net).is_err(), "{kind:?}: byte {i} flipped still opens");
            }
        }
    }

    #[test]
    fn a_message_for_another_network_is_rejected() {
        let net = Net::new();
        let other = NetworkId::new("another", &net.members.replica_ids());
        let sealed = Signed::seal(Prepare { view: 0, seq: 1, batch: digest(1) }, &other, &net.replicas[1]);
        let opened = Signed::<Prepare>::open(sealed.bytes(), &net.network(), &net.members);
        assert!(matches!(opened, Err(OpenError::WrongNetwork { .. })));
    }

    #[test]
    fn a_prepare_does_not_open_as_a_commit() {
        let net = Net::new();
        let sealed = prepare(&net);
        let opened = Signed::<Commit>::open(sealed.bytes(), &net.network(), &net.members);
        assert!(matches!(opened, Err(OpenError::WrongKind { want: Kind::Commit, got: Kind::Prepare })));
    }

    #[test]
    fn a_kind_relabelled_in_the_envelope_breaks_the_signature() {
        // Same body bytes (a Prepare and a Commit encode alike), kind changed:
        // the signature covers the kind, so this is not a valid Commit.
        let net = Net::new();
        let sealed = prepare(&net);
        let mut env: Envelope = crate::wire::decode(sealed.bytes(), usize::MAX).unwrap();
        env.kind = Kind::Commit;
        let bytes = crate::wire::encode(&env);
        let opened = Signed::<Commit>::open(&bytes, &net.network(), &net.members);
        assert!(matches!(opened, Err(OpenError::BadSignature(_))));
    }

    #[test]
    fn a_non_member_signer_is_rejected() {
        let net = Net::new();
        let outsider = Keypair::generate_ed25519();
        let outsider_id = outsider.public().to_peer_id();
        // The signature itself is good: its key is inline in the PeerId.
        let sig = Keypair::sign(&outsider, b"msg").unwrap();
        assert!(public_key_of(&outsider_id).unwrap().verify(b"msg", &sig));
        // The membership's verifier still refuses it: not a member.
        assert!(!net.members.verify(&outsider_id, b"msg", &sig));
        let sealed = Signed::seal(Prepare { view: 0, seq: 1, batch: digest(1) }, &net.network(), &outsider);
        let opened = Signed::<Prepare>::open(sealed.bytes(), &net.network(), &net.members);
        assert!(matches!(opened, Err(OpenError::BadSignature(p)) if p == outsider_id));
    }

    #[test]
    fn a_member_named_as_signer_of_anothers_signature_is_rejected() {
        let net = Net::new();
        let sealed = prepare(&net);
        let mut env: Envelope = crate::wire::decode(sealed.bytes(), usize::MAX).unwrap();
        env.signer = net.replicas[2].public().to_peer_id();
        let bytes = crate::wire::encode(&env);
        let opened = Signed::<Prepare>::open(&bytes, &net.network(), &net.members);
        assert!(matches!(opened, Err(OpenError::BadSignature(_))));
    }

    #[test]
    fn an_oversize_envelope_is_rejected_as_too_large() {
        let net = Net::new();
        let huge = vec![0u8; ENVELOPE_BYTES_MAX + 1];
        let opened = Envelope::open(&huge, &net.network(), &net.members);
        assert!(matches!(
            opened,
            Err(OpenError::Decode(DecodeError::TooLarge { len, max }))
                if len == ENVELOPE_BYTES_MAX + 1 && max == ENVELOPE_BYTES_MAX
        ));
    }

    #[test]
    fn an_oversize_body_is_rejected_as_too_large() {
        let net = Net::new();
        let mut req = net.request(1);
        req.op = Operation::Run { repo: "x".repeat(REQUEST_BYTES_MAX), git_ref: "master".into(), commit: None };
        let sealed = Signed::seal(req, &net.network(), &net.gateway);
        let opened = Signed::<Request>::open(sealed.bytes(), &net.network(), &net.members);
        assert!(matches!(
            opened,
            Err(OpenError::Decode(DecodeError::TooLarge { max, .. })) if max == REQUEST_BYTES_MAX
        ));
    }

    #[test]
    fn trailing_bytes_after_an_envelope_are_rejected() {
        let net = Net::new();
        let mut bytes = prepare(&net).bytes().to_vec();
        bytes.push(0x00);
        assert!(Signed::<Prepare>::open(&bytes, &net.network(), &net.members).is_err());
    }

    #[test]
    fn a_non_canonical_envelope_encoding_is_rejected() {
        // The signature covers the body, not the envelope's framing: a relay
        // could re-encode the framing (here the kind as a two-byte integer)
        // into new bytes that still carry a valid signature. Accepting them
        // would give one signed message many byte strings (and digests).
        let net = Net::new();
        let bytes = prepare(&net).bytes().to_vec();
        let key = b"\x64kind\x04";
        let at = bytes.windows(key.len()).position(|w| w == key).expect("kind field");
        let mut recoded = bytes[..at + 5].to_vec();
        recoded.extend_from_slice(&[0x18, 0x04]);
        recoded.extend_from_slice(&bytes[at + 6..]);
        let decoded: Envelope = crate::wire::decode(&recoded, usize::MAX).unwrap();
        assert_eq!(decoded.kind, Kind::Prepare, "still a valid CBOR envelope");
        assert!(Signed::<Prepare>::open(&recoded, &net.network(), &net.members).is_err());
    }

    fn request_batch(net: &Net, n: u64) -> Vec<Signed<Request>> {
        Signed::seal_batch((1..=n).map(|i| net.request(i)).collect(), &net.network(), &net.gateway)
    }

    #[test]
    fn each_message_of_a_signed_batch_opens_alone_as_itself() {
        let net = Net::new();
        let batch = request_batch(&net, 5);
        let first: Envelope = crate::wire::decode(batch[0].bytes(), usize::MAX).unwrap();
        for (i, sealed) in batch.iter().enumerate() {
            let env: Envelope = crate::wire::decode(sealed.bytes(), usize::MAX).unwrap();
            assert_eq!(env.signature, first.signature, "one signature for the batch");
            assert_eq!(env.batch.as_ref().map(|p| (p.index, p.count)), Some((i as u32, 5)));
            let opened = Signed::<Request>::open(sealed.bytes(), &net.network(), &net.members).unwrap();
            assert_eq!(opened.msg, net.request(i as u64 + 1));
            assert_eq!(opened.signer, net.gateway.public().to_peer_id());
        }
        // A lone message is signed alone.
        let one = Signed::seal_batch(vec![net.request(9)], &net.network(), &net.gateway);
        let env: Envelope = crate::wire::decode(one[0].bytes(), usize::MAX).unwrap();
        assert!(env.batch.is_none());
        assert_eq!(one[0].bytes(), net.seal_request(9).bytes());
    }

    #[test]
    fn a_batch_proof_taken_to_another_body_or_kind_does_not_open() {
        let net = Net::new();
        let batch = request_batch(&net, 4);
        let (n, v) = (&net.network(), &net.members);
        let a: Envelope = crate::wire::decode(batch[0].bytes(), usize::MAX).unwrap();
        let b: Envelope = crate::wire::decode(batch[1].bytes(), usize::MAX).unwrap();
        // Opened once: the root's signature is now remembered.
        assert!(Signed::<Request>::open(batch[0].bytes(), n, v).is_ok());
        // b's body under a's proof: the path leads elsewhere.
        let swapped = Envelope { batch: a.batch.clone(), ..b.clone() };
        let opened = Signed::<Request>::open(&crate::wire::encode(&swapped), n, v);
        assert!(matches!(opened, Err(OpenError::BadSignature(_))), "{opened:?}");
        // Another body: not a member of the batch.
        let other = Envelope { body: crate::wire::encode(&net.request(7)), ..a.clone() };
        let opened = Signed::<Request>::open(&crate::wire::encode(&other), n, v);
        assert!(matches!(opened, Err(OpenError::BadSignature(_))), "{opened:?}");
        // The remembered root under another signer or another signature.
        let resigned = Envelope { signer: net.replicas[0].public().to_peer_id(), ..a.clone() };
        assert!(Signed::<Request>::open(&crate::wire::encode(&resigned), n, v).is_err());
        let mut forged = a.clone();
        forged.signature = net.gateway.sign(b"something else").unwrap();
        assert!(Signed::<Request>::open(&crate::wire::encode(&forged), n, v).is_err());
        // Consensus messages are never batch-signed, whatever the signature.
        let relabelled = Envelope { kind: Kind::Prepare, ..a };
        let opened = Envelope::open(&crate::wire::encode(&relabelled), n, v);
        assert!(matches!(opened, Err(OpenError::Invalid("only requests and replies are signed in batches"))));
    }

    #[test]
    fn a_batch_proof_written_out_as_null_is_not_canonical() {
        #[derive(Serialize)]
        struct Explicit<'a> {
            network: NetworkId,
            kind: Kind,
            signer: PeerId,
            #[serde(with = "serde_bytes")]
            body: &'a [u8],
            #[serde(with = "serde_bytes")]
            signature: &'a [u8],
            batch: Option<BatchProof>,
        }
        let net = Net::new();
        let sealed = net.seal_request(1);
        let env: Envelope = crate::wire::decode(sealed.bytes(), usize::MAX).unwrap();
        let explicit = Explicit {
            network: env.network,
            kind: env.kind,
            signer: env.signer,
            body: &env.body,
            signature: &env.signature,
            batch: None,
        };
        let bytes = crate::wire::encode(&explicit);
        let decoded: Envelope = crate::wire::decode(&bytes, usize::MAX).unwrap();
        assert!(decoded.batch.is_none(), "still a valid CBOR envelope");
        let opened = Signed::<Request>::open(&bytes, &net.network(), &net.members);
        assert!(matches!(opened, Err(OpenError::Invalid("envelope not in canonical encoding"))));
    }

    #[test]
    fn unknown_kinds_are_rejected() {
        for v in [0u8, 9, 255] {
            assert!(Kind::try_from(v).is_err());
        }
        for v in 1u8..=8 {
            assert_eq!(u8::from(Kind::try_from(v).unwrap()), v);
        }
    }
}
