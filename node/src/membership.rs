//! The membership file: who counts. Discovery only finds addresses; the
//! replicas (in their fixed order), the gateways allowed to submit jobs and
//! the repositories the network may fetch are fixed here.
//!
//! ```toml
//! name = "testnet"                     # part of the network id
//! repos = ["file:///srv/git/", "https://git.example.org/team/"]  # URL prefixes
//!
//! [[replicas]]                          # order matters: primary of view v is v mod n
//! peer_id = "12D3KooW..."
//! addr = "/ip4/127.0.0.1/tcp/7000"      # optional, a first address to dial
//!
//! [[gateways]]
//! peer_id = "12D3KooW..."
//! ```

use std::collections::HashMap;
use std::path::Path;

use libp2p_identity::{PeerId, PublicKey};
use serde::{Deserialize, Serialize};

use crate::pbft::quorum::Quorum;
use crate::wire::public_key_of;
use crate::wire::{limits, NetworkId, Roster, Verifier};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub peer_id: PeerId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: String,
    #[serde(default)]
    repos: Vec<String>,
    replicas: Vec<Member>,
    #[serde(default)]
    gateways: Vec<Member>,
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing the membership file: {0}")]
    Parse(String),
    #[error("{0}")]
    Invalid(String),
}

/// A parsed, checked membership with the members' public keys decoded once.
#[derive(Clone, Debug)]
pub struct Membership {
    pub name: String,
    pub replicas: Vec<Member>,
    pub gateways: Vec<Member>,
    pub repos: Vec<String>,
    network: NetworkId,
    quorum: Quorum,
    keys: HashMap<PeerId, PublicKey>,
    index: HashMap<PeerId, usize>,
}

impl Membership {
    pub fn load(path: &Path) -> Result<Membership, MembershipError> {
        let text = std::fs::read_to_string(path).map_err(|source| MembershipError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Membership, MembershipError> {
        let file: File = toml::from_str(text).map_err(|e| MembershipError::Parse(e.to_string()))?;
        Self::new(file.name, file.replicas, file.gateways, file.repos)
    }

    pub fn new(
        name: String,
        replicas: Vec<Member>,
        gateways: Vec<Member>,
        repos: Vec<String>,
    ) -> Result<Membership, MembershipError> {
        let n = replicas.len();
        if !(4..=limits::REPLICAS_MAX).contains(&n) || (n - 1) % 3 != 0 {
            return Err(MembershipError::Invalid(format!(
                "a network has n = 3f + 1 replicas (4, 7, 10, … up to {}); this file lists {n}",
                limits::REPLICAS_MAX
            )));
        }
        if gateways.len() > limits::GATEWAYS_MAX {
            return Err(MembershipError::Invalid(format!(
                "at most {} gateways",
                limits::GATEWAYS_MAX
            )));
        }
        let mut keys = HashMap::new();
        let mut index = HashMap::new();
        for (i, m) in replicas.iter().chain(gateways.iter()).enumerate() {
            let key = public_key_of(&m.peer_id).ok_or_else(|| {
                MembershipError::Invalid(format!(
                    "{} is not an ed25519 peer id (its key must be inline)",
                    m.peer_id
                ))
            })?;
            if keys.insert(m.peer_id, key).is_some() {
                return Err(MembershipError::Invalid(format!(
                    "{} is listed twice",
                    m.peer_id
                )));
            }
            if i < n {
                index.insert(m.peer_id, i);
            }
        }
        let ids: Vec<PeerId> = replicas.iter().map(|m| m.peer_id).collect();
        let network = NetworkId::new(&name, &ids);
        Ok(Membership {
            name,
            replicas,
            gateways,
            repos,
            network,
            quorum: Quorum::new(n),
            keys,
            index,
        })
    }

    pub fn to_toml(&self) -> String {
        let file = File {
            name: self.name.clone(),
            repos: self.repos.clone(),
            replicas: self.replicas.clone(),
            gateways: self.gateways.clone(),
        };
        toml::to_string_pretty(&file).expect("membership encodes")
    }

    pub fn network_id(&self) -> NetworkId {
        self.network
    }

    pub fn quorum(&self) -> Quorum {
        self.quorum
    }

    pub fn replica_ids(&self) -> Vec<PeerId> {
        self.replicas.iter().map(|m| m.peer_id).collect()
    }

    /// The replica's index in the fixed order.
    pub fn replica_index(&self, peer: &PeerId) -> Option<usize> {
        self.index.get(peer).copied()
    }

    pub fn is_gateway_peer(&self, peer: &PeerId) -> bool {
        self.gateways.iter().any(|g| g.peer_id == *peer)
    }

    /// Whether `url` is on the repository allow-list (exact or by prefix).
    pub fn repo_allowed(&self, url: &str) -> bool {
        self.repos
            .iter()
            .any(|p| url == p || (p.ends_with('/') && url.starts_with(p.as_str())))
    }
}

impl Verifier for Membership {
    fn verify(&self, signer: &PeerId, msg: &[u8], sig: &[u8]) -> bool {
        self.keys.get(signer).is_some_and(|k| k.verify(msg, sig))
    }
}

impl Roster for Membership {
    fn network_id(&self) -> NetworkId {
        self.network
    }
    fn is_replica(&self, peer: &PeerId) -> bool {
        self.index.contains_key(peer)
    }
    fn is_gateway(&self, peer: &PeerId) -> bool {
        self.is_gateway_peer(peer)
    }
    fn f(&self) -> usize {
        self.quorum.f
    }
}
