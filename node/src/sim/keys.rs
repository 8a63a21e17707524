//! Signatures for the simulator: cheap, but checked like real ones.
//!
//! Every identity keeps its real ed25519 `PeerId` (so the membership, the
//! network id and every signer field are as in production), but the
//! simulator signs with a keyed SHA-256 over a secret only that identity and
//! the simulator's verifier know, instead of ed25519. The core sees the same
//! [`Signer`] and [`Verifier`] traits as with real keys, so everything it
//! checks stays checked: a flipped byte, a message claiming another signer, a
//! signer outside the membership, a forged nested proof all fail to verify.
//! What this does not exercise is ed25519 itself, which the wire tests and
//! the end-to-end tests of the gateway do; here it cost most of a run's time
//! (a sign and a verify per message, and every record again at a restart).

use std::collections::HashMap;

use libp2p_identity::{Keypair, PeerId};

use crate::membership::Membership;
use crate::wire::{Digest, Signer, Verifier};

/// One identity's key: its real `PeerId`, a secret for the keyed hash.
pub struct SimKey {
    peer: PeerId,
    secret: [u8; 32],
}

impl SimKey {
    /// The simulator key for the identity of an ed25519 keypair, signing
    /// with `secret`.
    pub fn new(key: &Keypair, secret: [u8; 32]) -> SimKey {
        SimKey { peer: key.public().to_peer_id(), secret }
    }

    fn mac(&self, msg: &[u8]) -> Vec<u8> {
        mac(&self.secret, msg)
    }
}

/// 64 bytes (as long as an ed25519 signature): SHA-256 of the secret and the
/// message, then SHA-256 of the secret and that.
fn mac(secret: &[u8; 32], msg: &[u8]) -> Vec<u8> {
    let first = Digest::of_parts(b"pbft-ci/sim-signature/1", &[secret, msg]);
    let second = Digest::of_parts(b"pbft-ci/sim-signature/2", &[secret, &first.0]);
    let mut sig = Vec::with_capacity(64);
    sig.extend_from_slice(&first.0);
    sig.extend_from_slice(&second.0);
    sig
}

impl Signer for SimKey {
    fn peer_id(&self) -> PeerId {
        self.peer
    }
    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.mac(msg)
    }
}

/// Verifies simulator signatures of the members of one network, and of
/// nobody else (as [`Membership`]'s verifier does).
pub struct SimVerifier {
    secrets: HashMap<PeerId, [u8; 32]>,
}

impl SimVerifier {
    pub fn new(membership: &Membership, keys: &[&SimKey]) -> SimVerifier {
        let secrets = keys
            .iter()
            .filter(|k| membership.replica_index(&k.peer).is_some() || membership.is_gateway_peer(&k.peer))
            .map(|k| (k.peer, k.secret))
            .collect();
        SimVerifier { secrets }
    }
}

impl Verifier for SimVerifier {
    fn verify(&self, signer: &PeerId, msg: &[u8], sig: &[u8]) -> bool {
        self.secrets.get(signer).is_some_and(|s| mac(s, msg) == sig)
    }
}
