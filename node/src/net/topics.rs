//! Gossip topics, named from the network id: two networks on one LAN (or one
//! machine) never share a topic, and a message needs the right topic as well
//! as the right network id inside its signed envelope.

use crate::wire::{Kind, NetworkId};

/// What a gossip topic carries.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Channel {
    /// PBFT protocol messages, replica to replica.
    Consensus,
    /// Gateways' requests, to the replicas.
    Requests,
    /// Replicas' replies, to the gateways.
    Replies,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::Consensus, Channel::Requests, Channel::Replies];

    /// `pbft-ci/<network id, 16 hex digits>/<channel>`.
    pub fn topic(self, network: &NetworkId) -> String {
        let name = match self {
            Channel::Consensus => "consensus",
            Channel::Requests => "requests",
            Channel::Replies => "replies",
        };
        format!("pbft-ci/{}/{name}", network.short())
    }

    /// The channel a message of `kind` travels on.
    pub fn of(kind: Kind) -> Channel {
        match kind {
            Kind::Request => Channel::Requests,
            Kind::Reply => Channel::Replies,
            Kind::PrePrepare | Kind::Prepare | Kind::Commit | Kind::Checkpoint | Kind::ViewChange | Kind::NewView => {
                Channel::Consensus
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Digest;

    #[test]
    fn topics_differ_per_network_and_per_channel() {
        let a = NetworkId(Digest([1; 32]));
        let b = NetworkId(Digest([2; 32]));
        assert_eq!(Channel::Consensus.topic(&a), "pbft-ci/0101010101010101/consensus");
        let mut all: Vec<String> = [a, b].iter().flat_map(|n| Channel::ALL.iter().map(move |c| c.topic(n))).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 6);
    }
}
