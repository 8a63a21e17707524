//! Who may hold a connection. Members (the replicas and gateways the
//! membership names) always may. Anyone else gets a connection only while
//! fewer than [`NON_MEMBERS_MAX`] are open with non-members in all: what they
//! send is refused at validation anyway, so they can use a connection for
//! nothing but to occupy it. A few are still let in: peers of another
//! network on the same LAN (found by mDNS, turned away by the protocol
//! names), and tools and tests that watch or probe the network.
//!
//! The check runs once the Noise handshake has named the peer; before that,
//! libp2p's connection limits bound the handshakes under way (see
//! [`limits`]).

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::swarm::{
    dummy, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent,
    ToSwarm,
};
use libp2p::{Multiaddr, PeerId};
use tracing::debug;

use crate::membership::Membership;

/// Connections open with non-members, all of them together.
pub const NON_MEMBERS_MAX: usize = 8;
/// Inbound connections still in their handshake (peer not yet known).
/// Each lasts at most the transport's handshake timeout.
const PENDING_INBOUND_MAX: u32 = 32;
/// Connections to one peer: one, and a second while two dials cross, with
/// room to spare. Bounds what one member, even a faulty one, can open.
const PER_PEER_MAX: u32 = 4;

/// libp2p's own limits, for what is known before the peer is: handshakes
/// under way, and connections per peer.
pub(super) fn limits() -> connection_limits::Behaviour {
    connection_limits::Behaviour::new(
        ConnectionLimits::default()
            .with_max_pending_incoming(Some(PENDING_INBOUND_MAX))
            .with_max_established_per_peer(Some(PER_PEER_MAX)),
    )
}

#[derive(Debug, thiserror::Error)]
#[error("{open} connections with non-members are open already (at most {NON_MEMBERS_MAX})")]
pub struct NonMembersFull {
    open: usize,
}

/// Refuses a non-member's connection once [`NON_MEMBERS_MAX`] are open.
pub struct Admission {
    membership: Arc<Membership>,
    non_members: HashSet<ConnectionId>,
}

impl Admission {
    pub fn new(membership: Arc<Membership>) -> Admission {
        Admission { membership, non_members: HashSet::new() }
    }

    fn is_member(&self, peer: &PeerId) -> bool {
        self.membership.replica_index(peer).is_some() || self.membership.is_gateway_peer(peer)
    }

    fn admit(&self, peer: &PeerId) -> Result<dummy::ConnectionHandler, ConnectionDenied> {
        if self.is_member(peer) || self.non_members.len() < NON_MEMBERS_MAX {
            return Ok(dummy::ConnectionHandler);
        }
        debug!(%peer, "refusing a non-member's connection: {NON_MEMBERS_MAX} open already");
        Err(ConnectionDenied::new(NonMembersFull { open: self.non_members.len() }))
    }
}

impl NetworkBehaviour for Admission {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _id: ConnectionId,
        peer: PeerId,
        _local_addr: &Multiaddr,
        _remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admit(&peer)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _id: ConnectionId,
        peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admit(&peer)
    }

    // Counted once established: another behaviour may still refuse a
    // connection this one admitted.
    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) if !self.is_member(&e.peer_id) => {
                self.non_members.insert(e.connection_id);
            }
            FromSwarm::ConnectionClosed(e) => {
                self.non_members.remove(&e.connection_id);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(&mut self, _peer: PeerId, _id: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(&mut self, _cx: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}
