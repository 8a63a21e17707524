//! The one composed libp2p behaviour and its parameters.

use std::sync::Arc;
use std::time::Duration;

use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, ValidationMode};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{connection_limits, identify, kad, mdns, ping, StreamProtocol};
use libp2p_identity::Keypair;

use super::admission::{self, Admission};
use super::liveness::{PING_INTERVAL, PING_TIMEOUT};
use super::topics::Channel;
use crate::membership::Membership;
use crate::pbft::state::STATE_BYTES_MAX;
use crate::wire::{limits, Digest, NetworkId, PeerRequest, PeerResponse};

/// Gossipsub refuses to send (and a receiver drops the stream for good on)
/// any frame over this; our own bound on an envelope is enforced before
/// publishing and stays well below it.
pub const GOSSIP_TRANSMIT_BYTES_MAX: usize = 2 * limits::ENVELOPE_BYTES_MAX;
/// A state transfer carries the whole replicated state.
const PEER_REQUEST_BYTES_MAX: u64 = (STATE_BYTES_MAX + 2 * limits::ENVELOPE_BYTES_MAX) as u64;
const PEER_RESPONSE_BYTES_MAX: u64 = (4 * limits::ENVELOPE_BYTES_MAX) as u64;

// The limits come first: the derived behaviour asks its members in this
// order whether to admit a connection, and stops at the first refusal,
// before any other has set up anything for it.
#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    pub limits: connection_limits::Behaviour,
    pub admission: Admission,
    pub ping: ping::Behaviour,
    pub gossipsub: gossipsub::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub identify: identify::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub peers: request_response::cbor::Behaviour<PeerRequest, PeerResponse>,
}

/// Protocol names carry the network id: peers of another network fail to
/// negotiate instead of mixing in.
pub(super) fn protocol_version(network: &NetworkId) -> String {
    format!("/pbft-ci/{}/1", network.short())
}

/// Gossipsub's settings for `network`.
fn gossip_config(network: &NetworkId) -> Result<gossipsub::Config, String> {
    // Content-addressed ids: one signed envelope is one gossip message,
    // whoever publishes it. (So re-publishing the same bytes is swallowed
    // by the duplicate cache: retransmission goes point to point.)
    let message_id = |m: &gossipsub::Message| {
        gossipsub::MessageId::from(Digest::of_parts(b"pbft-ci/gossip-id", &[&m.data]).0[..20].to_vec())
    };
    let mut config = gossipsub::ConfigBuilder::default();
    // No mesh on the consensus topic: every replica keeps a connection to
    // every other, so flood publishing reaches each one directly, and a mesh
    // only forwarded copies everyone had already: each replica received
    // every message three times and verified each copy's signature (before
    // gossipsub's duplicate check). A message a replica misses (a link
    // down) is the protocol's to recover: PBFT's retransmission, fetches
    // and state transfer run point to point.
    let consensus = IdentTopic::new(Channel::Consensus.topic(network)).hash();
    config
        .mesh_n_for_topic(0, consensus.clone())
        .mesh_n_low_for_topic(0, consensus.clone())
        .mesh_n_high_for_topic(0, consensus.clone())
        .mesh_outbound_min_for_topic(0, consensus);
    config
        .validation_mode(ValidationMode::Strict)
        .validate_messages()
        .message_id_fn(message_id)
        .max_transmit_size(GOSSIP_TRANSMIT_BYTES_MAX)
        // The requests and replies topics keep a mesh, sized for a handful
        // to a few dozen peers: replicas relay a request to the primary when
        // its gateway cannot reach it (else a view change would), gateways
        // relay replies for one a replica cannot reach. A gateway publishes
        // its requests in bundles, so their copies cost little.
        .mesh_n_low(2)
        .mesh_n(3)
        .mesh_n_high(6)
        .mesh_outbound_min(1)
        // No IHAVE gossip. Without a mesh, every subscriber of a topic is
        // a gossip target, and under load one IHAVE named thousands of
        // ids: past gossipsub's 16 KiB control limit, the receiver drops
        // the whole stream, with the messages queued behind it. (With one,
        // the peers beyond the mesh, from n = 7 on, would get them.)
        .gossip_lazy(0)
        .gossip_factor(0.0)
        .heartbeat_interval(Duration::from_millis(700))
        .flood_publish(true)
        // Copies arrive within moments of the first; a minute of ids
        // (the default) is memory kept per message for nothing.
        .duplicate_cache_time(Duration::from_secs(15))
        .build()
        .map_err(|e| format!("gossipsub config: {e}"))
}

impl Behaviour {
    pub fn new(
        key: &Keypair,
        network: &NetworkId,
        membership: Arc<Membership>,
        mdns: bool,
    ) -> Result<Behaviour, String> {
        let peer_id = key.public().to_peer_id();
        let net = network.short();

        let config = gossip_config(network)?;
        // No peer scoring: the one penalty we want (for a peer that forwards
        // what our validation rejects) is `Net`'s blacklist; gossipsub's
        // scoring would keep a delivery record of every message for 120 s
        // (fixed in libp2p), ~20 MB per replica at saturation.
        let gossipsub = gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), config)?;

        let kad_protocol = StreamProtocol::try_from_owned(format!("/pbft-ci/{net}/kad/1"))
            .map_err(|e| format!("kad protocol name: {e}"))?;
        let mut kad_config = kad::Config::new(kad_protocol);
        kad_config.set_query_timeout(Duration::from_secs(10));
        let mut kad = kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
        kad.set_mode(Some(kad::Mode::Server));

        let identify = identify::Behaviour::new(
            identify::Config::new(protocol_version(network), key.public())
                .with_agent_version(format!("pbft-node/{}", env!("CARGO_PKG_VERSION")))
                .with_push_listen_addr_updates(true),
        );

        let mdns = if mdns {
            Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id).map_err(|e| format!("mDNS: {e}"))?)
        } else {
            None
        };

        let peer_protocol = StreamProtocol::try_from_owned(format!("/pbft-ci/{net}/peer/1"))
            .map_err(|e| format!("peer protocol name: {e}"))?;
        let codec = request_response::cbor::codec::Codec::default()
            .set_request_size_maximum(PEER_REQUEST_BYTES_MAX)
            .set_response_size_maximum(PEER_RESPONSE_BYTES_MAX);
        let peers = request_response::Behaviour::with_codec(
            codec,
            [(peer_protocol, ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(Duration::from_secs(30))
                .with_max_concurrent_streams(1024),
        );

        Ok(Behaviour {
            limits: admission::limits(),
            admission: Admission::new(membership),
            ping: ping::Behaviour::new(ping::Config::new().with_interval(PING_INTERVAL).with_timeout(PING_TIMEOUT)),
            gossipsub,
            kad,
            identify,
            mdns: mdns.into(),
            peers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consensus_floods_without_a_mesh_requests_and_replies_are_relayed_and_nothing_gossips_ihave() {
        let network = NetworkId(Digest([7; 32]));
        let config = gossip_config(&network).unwrap();
        let consensus = IdentTopic::new(Channel::Consensus.topic(&network)).hash();
        assert_eq!(config.mesh_n_for_topic(&consensus), 0);
        assert_eq!(config.mesh_n_high_for_topic(&consensus), 0);
        for channel in [Channel::Requests, Channel::Replies] {
            let topic = IdentTopic::new(channel.topic(&network)).hash();
            assert!(config.mesh_n_for_topic(&topic) > 0, "{channel:?}: relayed through the mesh");
        }
        assert!(config.flood_publish());
        assert_eq!((config.gossip_lazy(), config.gossip_factor()), (0, 0.0));
    }
}
