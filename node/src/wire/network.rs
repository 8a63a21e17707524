//! The network id: a digest over a canonical encoding of the network's name
//! and its ordered replica list. Reformatting the membership file or adding a
//! gateway leaves it unchanged; renaming, reordering or changing a replica
//! forks the network.

use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};

use super::Digest;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NetworkId(pub Digest);

impl NetworkId {
    pub fn new(name: &str, replicas: &[PeerId]) -> NetworkId {
        let ids: Vec<Vec<u8>> = replicas.iter().map(|p| p.to_bytes()).collect();
        let mut parts: Vec<&[u8]> = vec![name.as_bytes()];
        parts.extend(ids.iter().map(|v| v.as_slice()));
        NetworkId(Digest::of_parts(b"pbft-ci/network-id/v1", &parts))
    }

    /// Short form for topic names and logs.
    pub fn short(&self) -> String {
        self.0.to_hex()[..16].to_string()
    }
}
