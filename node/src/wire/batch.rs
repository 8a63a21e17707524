//! One signature for many messages. The signer signs the root of a Merkle
//! tree (rs_merkle) over the messages' leaves; each envelope carries its
//! leaf's index, the leaf count and the path to the root, so it still opens
//! alone (a certificate checked offline needs nothing else). Whoever opens
//! many envelopes of one batch checks the signature once: the membership
//! remembers the roots it verified ([`super::Verifier::verify_root`]).
//!
//! Leaves and inner nodes hash under different domains, so an inner node can
//! never pass for a leaf; the path must have exactly the length the index and
//! count give, so a relay cannot pad it into other bytes that still open.

use rs_merkle::{MerkleProof, MerkleTree};
use serde::{Deserialize, Serialize};

use super::{Digest, Kind, NetworkId};

/// Messages under one signature at most (a path of at most 12 hashes).
pub const BATCH_SIGNED_MAX: usize = 4096;

const ROOT_DOMAIN: &[u8] = b"pbft-ci/batch-root/v1";

/// Where one message sits in a signed batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchProof {
    pub index: u32,
    pub count: u32,
    /// Sibling hashes from the leaf up to the root.
    pub path: Vec<Digest>,
}

#[derive(Clone)]
struct NodeHasher;

impl rs_merkle::Hasher for NodeHasher {
    type Hash = [u8; 32];
    fn hash(data: &[u8]) -> [u8; 32] {
        Digest::of_parts(b"pbft-ci/batch-node", &[data]).0
    }
}

/// The leaf of one message: bound to its network and kind like a signature.
pub fn leaf(network: &NetworkId, kind: Kind, body: &[u8]) -> [u8; 32] {
    Digest::of_parts(b"pbft-ci/batch-leaf", &[&network.0 .0, &[kind as u8], body]).0
}

/// What the signer signs for a batch of `count` messages of `kind`.
pub fn root_input(network: &NetworkId, kind: Kind, count: u32, root: &[u8; 32]) -> Vec<u8> {
    let mut v = Vec::with_capacity(ROOT_DOMAIN.len() + 32 + 1 + 4 + 32);
    v.extend_from_slice(ROOT_DOMAIN);
    v.extend_from_slice(&network.0 .0);
    v.push(kind as u8);
    v.extend_from_slice(&count.to_be_bytes());
    v.extend_from_slice(root);
    v
}

/// The root over `leaves` (1 ..= [`BATCH_SIGNED_MAX`] of them) and each
/// leaf's proof.
pub fn tree(leaves: &[[u8; 32]]) -> ([u8; 32], Vec<BatchProof>) {
    assert!(!leaves.is_empty() && leaves.len() <= BATCH_SIGNED_MAX, "batch of {} messages", leaves.len());
    let tree = MerkleTree::<NodeHasher>::from_leaves(leaves);
    let root = tree.root().expect("a tree with leaves has a root");
    let count = leaves.len() as u32;
    let proofs = (0..leaves.len())
        .map(|i| BatchProof {
            index: i as u32,
            count,
            path: tree.proof(&[i]).proof_hashes().iter().map(|h| Digest(*h)).collect(),
        })
        .collect();
    (root, proofs)
}

impl BatchProof {
    /// The root `leaf` leads to along this path, if the proof is well formed.
    pub fn root(&self, leaf: [u8; 32]) -> Result<[u8; 32], &'static str> {
        let (index, count) = (self.index as usize, self.count as usize);
        if count == 0 || count > BATCH_SIGNED_MAX || index >= count {
            return Err("batch index or count out of range");
        }
        if self.path.len() != path_len(index, count) {
            return Err("batch path of the wrong length");
        }
        let path = self.path.iter().map(|d| d.0).collect();
        MerkleProof::<NodeHasher>::new(path).root(&[index], &[leaf], count).map_err(|_| "malformed batch path")
    }
}

/// Siblings on the way up: a node without one (the last of an odd layer) is
/// promoted as it is.
fn path_len(mut index: usize, mut count: usize) -> usize {
    let mut len = 0;
    while count > 1 {
        if index ^ 1 < count {
            len += 1;
        }
        index /= 2;
        count = count.div_ceil(2);
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<[u8; 32]> {
        (0..n).map(|i| Digest::of_parts(b"test", &[&(i as u64).to_be_bytes()]).0).collect()
    }

    #[test]
    fn every_leaf_of_every_size_leads_to_the_root() {
        for n in 1..=70 {
            let ls = leaves(n);
            let (root, proofs) = tree(&ls);
            for (i, p) in proofs.iter().enumerate() {
                assert_eq!(p.path.len(), path_len(i, n), "path length of leaf {i} of {n}");
                assert_eq!(p.root(ls[i]), Ok(root), "leaf {i} of {n}");
            }
        }
    }

    #[test]
    fn a_wrong_leaf_index_count_or_path_does_not_lead_to_the_root() {
        let ls = leaves(13);
        let (root, proofs) = tree(&ls);
        let p = &proofs[5];
        assert_ne!(p.root(ls[6]), Ok(root), "another leaf");
        for index in [4, 6] {
            let moved = BatchProof { index, ..p.clone() };
            assert!(moved.root(ls[5]) != Ok(root), "index {index}");
        }
        // Leaf 5's path is the same in trees of 12 to 16 leaves: the count
        // is bound by the signed input, not by the path.
        let network = NetworkId(Digest([3; 32]));
        for count in [12, 14] {
            let other = BatchProof { count, ..p.clone() };
            assert_eq!(other.root(ls[5]), Ok(root), "count {count}");
            assert_ne!(root_input(&network, Kind::Reply, count, &root), root_input(&network, Kind::Reply, 13, &root));
        }
        for i in 0..p.path.len() {
            let mut bent = p.clone();
            bent.path[i].0[0] ^= 1;
            assert_ne!(bent.root(ls[5]), Ok(root), "hash {i} of the path changed");
        }
    }

    #[test]
    fn a_padded_truncated_or_out_of_range_proof_is_refused() {
        let ls = leaves(9);
        let (_, proofs) = tree(&ls);
        let mut padded = proofs[2].clone();
        padded.path.push(Digest::default());
        assert_eq!(padded.root(ls[2]), Err("batch path of the wrong length"));
        let mut short = proofs[2].clone();
        short.path.pop();
        assert_eq!(short.root(ls[2]), Err("batch path of the wrong length"));
        for (index, count) in [(9, 9), (0, 0), (u32::MAX, u32::MAX), (0, BATCH_SIGNED_MAX as u32 + 1)] {
            let p = BatchProof { index, count, path: Vec::new() };
            assert_eq!(p.root(ls[0]), Err("batch index or count out of range"));
        }
    }
}
