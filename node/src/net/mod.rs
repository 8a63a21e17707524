//! The libp2p swarm: the only module that names libp2p types beyond `PeerId`
//! and `Keypair`. Replicas and gateways (and test observers) run the same
//! swarm in different [`Role`]s.
//!
//! - Transport: TCP + Noise + Yamux ([`transport`]), dials and handshakes
//!   bounded in time.
//! - Broadcast: gossipsub, signed by the publisher's libp2p key
//!   (`MessageAuthenticity::Signed`, strict validation) and, before anything
//!   is accepted or forwarded, opened by [`validate`]: right network, within
//!   bounds, a valid application signature by a member in the right role.
//!   Topics are named from the network id ([`Channel`]).
//! - Point to point: request-response (CBOR) for retransmission, fetching
//!   requests, status, state transfer and replies ([`PeerRequest`]).
//! - Discovery: `--bootstrap` addresses and the membership's `addr`s dialled
//!   at start, Kademlia (server mode) fed by identify, mDNS when listening
//!   beyond loopback. Who counts is never decided here: only the membership
//!   names replicas and gateways. Replicas that drop are dialled again with
//!   backoff ([`dialer`]).
//! - Liveness: every connection is pinged each second, and one that stops
//!   answering is closed within seconds ([`liveness`]), so the dialers
//!   reconnect once the path is back instead of waiting out TCP's
//!   retransmissions.
//! - Admission: members always connect; non-members get a few connections
//!   in all ([`admission`]).
//!
//! It never touches the consensus core or the store: the driver
//! ([`crate::driver`]) and the gateway client ([`client`]) turn its
//! [`NetEvent`]s into calls.

mod admission;
mod behaviour;
pub mod client;
mod dialer;
mod liveness;
mod topics;
mod transport;
mod validate;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::futures::StreamExt as _;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, TopicHash};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{identify, kad, mdns, ping, Multiaddr, Swarm, SwarmBuilder};
use libp2p_identity::{Keypair, PeerId};
use tracing::{debug, info, warn};

pub use admission::NON_MEMBERS_MAX;
use behaviour::{Behaviour, BehaviourEvent};
use dialer::Dialer;
use liveness::Liveness;
pub use topics::Channel;
use validate::Recent;
pub use validate::{open, Invalid, Opened};

use crate::membership::Membership;
use crate::wire::{self, limits, Digest, Envelope, JobId, JobLogs, PeerRequest, PeerResponse, SignedBytes};

/// What this peer is in the network.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    /// Orders and runs jobs: subscribes to consensus and requests, keeps a
    /// connection to every other replica.
    Replica,
    /// Submits requests and collects replies: subscribes to replies, keeps a
    /// connection to every replica.
    Gateway,
}

pub struct NetConfig {
    pub key: Keypair,
    pub membership: Arc<Membership>,
    pub role: Role,
    /// Multiaddrs to listen on.
    pub listen: Vec<String>,
    /// Multiaddrs to dial first to find the network.
    pub bootstrap: Vec<String>,
    /// mDNS on or off; `None`: on when listening beyond loopback.
    pub mdns: Option<bool>,
    /// Also subscribe to the consensus topic (observers, tests).
    pub observe_consensus: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{addr:?} is not a multiaddr: {reason}")]
    Addr { addr: String, reason: String },
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("setting up the swarm: {0}")]
    Setup(String),
    #[error("message of {len} bytes is over the bound of {max}")]
    Oversized { len: usize, max: usize },
    #[error("not a signed envelope: {0}")]
    NotEnvelope(String),
}

/// The right to answer one peer request; hand it back to [`Net::respond`].
pub struct Responder(ResponseChannel<PeerResponse>);

/// What the network brought. (Moved once each, never stored in bulk: the
/// size of the signed variant does not matter.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum NetEvent {
    /// Now listening on this address.
    Listening {
        addr: String,
    },
    /// A signed message that passed validation, by gossip or point to point.
    Signed {
        from: PeerId,
        opened: Opened,
    },
    /// A point-to-point request from a replica (already acknowledged).
    /// Deliveries arrive as [`NetEvent::Signed`] instead.
    Peer {
        from: PeerId,
        request: PeerRequest,
    },
    /// A peer asks for the signed replies this node holds for a request.
    RepliesWanted {
        from: PeerId,
        request: Digest,
        responder: Responder,
    },
    /// A member asks for the step logs this node kept for a job.
    LogsWanted {
        from: PeerId,
        job: JobId,
        responder: Responder,
    },
    /// A replica's answer to our [`PeerRequest::Logs`], within bounds.
    Logs {
        from: PeerId,
        logs: JobLogs,
    },
    Connected {
        peer: PeerId,
    },
    Disconnected {
        peer: PeerId,
    },
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Responder")
    }
}

/// Signed messages remembered as opened (each one a few hundred bytes, ~1 KB
/// with its map entry): seconds of traffic at saturation, enough for the
/// copies and retransmissions that follow a message closely.
const RECENT_MAX: usize = 4096;
/// How long gossip from a peer that forwarded a message our validation
/// rejected is ignored. A correct peer validates before it forwards, so only
/// a faulty one earns it.
pub const REJECT_PENALTY: Duration = Duration::from_secs(10);
/// How often the dialer and Kademlia are looked after.
const MAINTENANCE_INTERVAL: Duration = Duration::from_millis(250);
/// Kademlia bootstrap while some wanted peer is missing, and otherwise.
const KAD_BOOTSTRAP_MISSING: Duration = Duration::from_secs(3);
const KAD_BOOTSTRAP_IDLE: Duration = Duration::from_secs(120);

pub struct Net {
    swarm: Swarm<Behaviour>,
    membership: Arc<Membership>,
    role: Role,
    topics: HashMap<TopicHash, Channel>,
    idents: HashMap<Channel, IdentTopic>,
    dialer: Dialer,
    pending: VecDeque<NetEvent>,
    maintenance: tokio::time::Interval,
    last_kad_bootstrap: Option<Instant>,
    protocol_version: String,
    recent: Recent,
    liveness: Liveness,
    /// Peers whose gossip is ignored (gossipsub's blacklist), until when.
    penalised: HashMap<PeerId, Instant>,
}

fn parse_addr(addr: &str) -> Result<Multiaddr, NetError> {
    addr.parse().map_err(|e: libp2p::multiaddr::Error| NetError::Addr { addr: addr.into(), reason: e.to_string() })
}

/// Whether an address is reachable only from this machine.
fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

impl Net {
    /// Builds the swarm, starts listening and dials the known addresses.
    /// Must run inside a tokio runtime.
    pub fn new(cfg: NetConfig) -> Result<Net, NetError> {
        let listen = cfg.listen.iter().map(|a| parse_addr(a)).collect::<Result<Vec<_>, _>>()?;
        let bootstrap = cfg.bootstrap.iter().map(|a| parse_addr(a)).collect::<Result<Vec<_>, _>>()?;
        let mdns = cfg.mdns.unwrap_or_else(|| listen.iter().any(|a| !is_loopback(a)));
        let network = cfg.membership.network_id();
        let me = cfg.key.public().to_peer_id();
        let setup = |e: &dyn std::fmt::Display| NetError::Setup(e.to_string());
        let behaviour = Behaviour::new(&cfg.key, &network, cfg.membership.clone(), mdns).map_err(NetError::Setup)?;
        let transport = transport::tcp_noise_yamux(&cfg.key).map_err(|e| setup(&e))?;
        let mut swarm = SwarmBuilder::with_existing_identity(cfg.key.clone())
            .with_tokio()
            .with_other_transport(|_| transport)
            .map_err(|e| setup(&e))?
            .with_behaviour(|_| behaviour)
            .map_err(|e| setup(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
            .build();

        let mut topics = HashMap::new();
        let mut idents = HashMap::new();
        for channel in Channel::ALL {
            let topic = IdentTopic::new(channel.topic(&network));
            topics.insert(topic.hash(), channel);
            idents.insert(channel, topic);
        }
        let subscribe: Vec<Channel> = match cfg.role {
            Role::Replica => vec![Channel::Consensus, Channel::Requests],
            Role::Gateway if cfg.observe_consensus => vec![Channel::Replies, Channel::Consensus],
            Role::Gateway => vec![Channel::Replies],
        };
        for c in subscribe {
            swarm.behaviour_mut().gossipsub.subscribe(&idents[&c]).map_err(|e| setup(&e))?;
        }
        for addr in &listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NetError::Listen { addr: addr.to_string(), reason: e.to_string() })?;
        }

        // Every replica (but us) is wanted, at its membership address if any.
        let wanted: Vec<(PeerId, Option<Multiaddr>)> = cfg
            .membership
            .replicas
            .iter()
            .filter(|m| m.peer_id != me)
            .map(|m| (m.peer_id, m.addr.as_deref().and_then(|a| parse_addr(a).ok())))
            .collect();
        for (peer, addr) in &wanted {
            if let Some(a) = addr {
                swarm.behaviour_mut().kad.add_address(peer, a.clone());
            }
        }
        info!(peer_id = %me, network = %network.short(), role = ?cfg.role, mdns, "swarm up");
        let mut maintenance = tokio::time::interval(MAINTENANCE_INTERVAL);
        maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Net {
            swarm,
            role: cfg.role,
            topics,
            idents,
            dialer: Dialer::new(wanted, bootstrap, Instant::now()),
            pending: VecDeque::new(),
            maintenance,
            last_kad_bootstrap: None,
            protocol_version: behaviour::protocol_version(&network),
            recent: Recent::new(RECENT_MAX),
            membership: cfg.membership,
            liveness: Liveness::default(),
            penalised: HashMap::new(),
        })
    }

    pub fn local_peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// Replicas (other than this node) with an open connection.
    pub fn connected_replicas(&self) -> usize {
        self.dialer.connected()
    }

    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.swarm.is_connected(peer)
    }

    /// Publishes a signed envelope on the topic of its kind. Our bound is
    /// checked first: gossipsub would refuse a frame over its own limit, and a
    /// receiver drops the stream of a peer that sends one.
    pub fn publish(&mut self, bytes: &[u8]) -> Result<(), NetError> {
        if bytes.len() > limits::ENVELOPE_BYTES_MAX {
            return Err(NetError::Oversized { len: bytes.len(), max: limits::ENVELOPE_BYTES_MAX });
        }
        let env: Envelope =
            wire::decode(bytes, limits::ENVELOPE_BYTES_MAX).map_err(|e| NetError::NotEnvelope(e.to_string()))?;
        self.publish_raw(Channel::of(env.kind), bytes.to_vec());
        Ok(())
    }

    /// Publishes signed requests (this gateway's, so not checked again):
    /// bundled, so that gossipsub signs and checks one message for many.
    pub fn publish_requests(&mut self, requests: &[&[u8]]) {
        for bytes in wire::RequestBundle::pack(requests) {
            self.publish_raw(Channel::Requests, bytes);
        }
    }

    /// Publishes bytes as they are, unchecked (tools and tests: this is how
    /// a faulty peer would publish). Failures are logged, not returned: gossip
    /// is best effort, retransmission covers losses.
    pub fn publish_raw(&mut self, channel: Channel, bytes: Vec<u8>) {
        let topic = self.idents[&channel].clone();
        if let Err(e) = self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
            debug!(?channel, "gossip publish: {e}");
        }
    }

    /// Sends a point-to-point request; its answer, if any carries messages,
    /// comes back as [`NetEvent::Signed`].
    pub fn send(&mut self, peer: &PeerId, request: PeerRequest) {
        if *peer == self.local_peer_id() {
            return;
        }
        self.swarm.behaviour_mut().peers.send_request(peer, request);
    }

    pub fn respond(&mut self, responder: Responder, response: PeerResponse) {
        if self.swarm.behaviour_mut().peers.send_response(responder.0, response).is_err() {
            debug!("peer went away before its answer");
        }
    }

    /// The next event. Cancel-safe: use it in `select!`.
    pub async fn next_event(&mut self) -> NetEvent {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return e;
            }
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = self.maintenance.tick() => self.maintain(),
            }
        }
    }

    /// Ignores `peer`'s gossip for [`REJECT_PENALTY`] (from now).
    fn penalise(&mut self, peer: PeerId) {
        if self.penalised.insert(peer, Instant::now() + REJECT_PENALTY).is_none() {
            self.swarm.behaviour_mut().gossipsub.blacklist_peer(&peer);
        }
    }

    fn maintain(&mut self) {
        let now = Instant::now();
        let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
        self.penalised.retain(|peer, until| {
            let over = *until <= now;
            if over {
                gossipsub.remove_blacklisted_peer(peer);
            }
            !over
        });
        for (id, peer, silence) in self.liveness.silent(now) {
            self.close_dead(id, peer, &format!("no answer to a ping for {:.1} s", silence.as_secs_f64()));
        }
        let plan = self.dialer.plan(now);
        for (peer, addresses) in plan.dial {
            let opts = DialOpts::peer_id(peer)
                .addresses(addresses)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            match self.swarm.dial(opts) {
                // A dial to it is under way already (a silent host takes
                // seconds to fail one).
                Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => {}
                Err(e) => debug!(%peer, "dial: {e}"),
            }
        }
        for peer in plan.look_up {
            self.swarm.behaviour_mut().kad.get_closest_peers(peer);
        }
        for addr in plan.bootstrap {
            debug!(%addr, "dialling bootstrap address");
            if let Err(e) = self.swarm.dial(addr.clone()) {
                debug!(%addr, "dial: {e}");
            }
        }
        let every = if self.dialer.missing() > 0 { KAD_BOOTSTRAP_MISSING } else { KAD_BOOTSTRAP_IDLE };
        if self.last_kad_bootstrap.is_none_or(|t| now >= t + every) {
            self.last_kad_bootstrap = Some(now);
            // Fails only while the routing table is empty.
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
            // A replica that restarted may listen elsewhere now: ask the
            // network where each missing one is, even if we know an address.
            // Its entry in our own routing table goes first: Kademlia keeps
            // a peer's last address however often dials to it fail, and a
            // lookup seeded with that entry tries the dead address, marks
            // the peer failed and never contacts it at the new address the
            // other replicas answer with (seen: a gateway that never found
            // a restarted replica). Our dialer keeps the old address.
            for peer in self.dialer.missing_peers() {
                let kad = &mut self.swarm.behaviour_mut().kad;
                kad.remove_peer(&peer);
                kad.get_closest_peers(peer);
            }
        }
    }

    /// Closes a connection that stopped carrying anything; once it is gone
    /// the dialer (ours, or the peer's) connects again.
    fn close_dead(&mut self, id: ConnectionId, peer: PeerId, why: &str) {
        if self.swarm.close_connection(id) {
            info!(%peer, "closing a dead connection: {why}");
        }
    }

    fn is_member(&self, peer: &PeerId) -> bool {
        self.membership.replica_index(peer).is_some() || self.membership.is_gateway_peer(peer)
    }

    /// An address for `peer` from discovery: into Kademlia, and into the
    /// dialer if the peer is one we want.
    fn learn(&mut self, peer: PeerId, addr: Multiaddr) {
        if peer == self.local_peer_id() {
            return;
        }
        // Only members: Kademlia is there to find them, and would otherwise
        // dial whatever mDNS heard of on the LAN during its queries.
        if self.is_member(&peer) {
            self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
        }
        self.dialer.learn(&peer, addr, Instant::now());
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let addr = address.with(Protocol::P2p(self.local_peer_id())).to_string();
                info!(%addr, "listening");
                self.pending.push_back(NetEvent::Listening { addr });
            }
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, num_established, endpoint, .. } => {
                self.liveness.on_established(connection_id, peer_id, Instant::now());
                if num_established.get() == 1 {
                    debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connected");
                    self.dialer.on_connected(&peer_id, Instant::now());
                    self.pending.push_back(NetEvent::Connected { peer: peer_id });
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established, cause, .. } => {
                self.liveness.on_closed(connection_id);
                if num_established == 0 {
                    debug!(peer = %peer_id, "disconnected: {}", cause.map_or("closed".into(), |e| e.to_string()));
                    self.dialer.on_disconnected(&peer_id, Instant::now());
                    self.pending.push_back(NetEvent::Disconnected { peer: peer_id });
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. } => {
                debug!(%peer, "dial failed: {error}");
                if let DialError::Transport(failed) = &error {
                    for (addr, _) in failed {
                        self.dialer.forget(&peer, addr);
                    }
                }
                if !self.swarm.is_connected(&peer) {
                    self.dialer.on_disconnected(&peer, Instant::now());
                }
            }
            SwarmEvent::Behaviour(b) => self.on_behaviour_event(b),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Limits(never) | BehaviourEvent::Admission(never) => match never {},
            BehaviourEvent::Ping(ping::Event { peer, connection, result }) => match result {
                Ok(_rtt) => self.liveness.on_answer(connection, Instant::now()),
                Err(ping::Failure::Unsupported) => {
                    debug!(%peer, "peer does not answer pings: its connection is not watched");
                    self.liveness.exempt(connection);
                }
                Err(e) => {
                    self.liveness.on_closed(connection);
                    self.close_dead(connection, peer, &e.to_string());
                }
            },
            BehaviourEvent::Gossipsub(gossipsub::Event::Message { propagation_source, message_id, message }) => {
                let channel = self.topics.get(&message.topic).copied();
                let verdict = match channel {
                    Some(c) => self.recent.open_gossip(&message.data, c, &self.membership).map_err(|e| e.to_string()),
                    None => Err("unknown topic".to_string()),
                };
                let acceptance = match verdict {
                    Ok(opened) => {
                        let from = propagation_source;
                        self.pending.extend(opened.into_iter().map(|opened| NetEvent::Signed { from, opened }));
                        MessageAcceptance::Accept
                    }
                    Err(reason) => {
                        warn!(from = %propagation_source, topic = %message.topic, len = message.data.len(), "rejected gossip message: {reason}");
                        self.penalise(propagation_source);
                        MessageAcceptance::Reject
                    }
                };
                self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                    &message_id,
                    &propagation_source,
                    acceptance,
                );
            }
            BehaviourEvent::Gossipsub(_) => {}
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                if info.protocol_version != self.protocol_version {
                    debug!(peer = %peer_id, version = %info.protocol_version, "peer of another network");
                    return;
                }
                for addr in info.listen_addrs {
                    self.learn(peer_id, addr);
                }
            }
            BehaviourEvent::Identify(_) => {}
            BehaviourEvent::Kad(kad::Event::RoutingUpdated { peer, addresses, .. }) => {
                for addr in addresses.iter() {
                    self.dialer.learn(&peer, addr.clone(), Instant::now());
                }
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed { result, .. }) => {
                let peers = match result {
                    kad::QueryResult::GetClosestPeers(Ok(ok)) => ok.peers,
                    kad::QueryResult::GetClosestPeers(Err(kad::GetClosestPeersError::Timeout { peers, .. })) => peers,
                    _ => Vec::new(),
                };
                for info in peers {
                    for addr in info.addrs {
                        self.dialer.learn(&info.peer_id, addr, Instant::now());
                    }
                }
            }
            BehaviourEvent::Kad(_) => {}
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    self.learn(peer, addr);
                }
            }
            BehaviourEvent::Mdns(_) => {}
            BehaviourEvent::Peers(event) => self.on_peer_event(event),
        }
    }

    fn on_peer_event(&mut self, event: request_response::Event<PeerRequest, PeerResponse>) {
        use request_response::{Event, Message};
        match event {
            Event::Message { peer, message: Message::Request { request, channel, .. }, .. } => {
                if let Some(response) = self.on_peer_request(peer, request, channel) {
                    let (channel, response) = response;
                    let _ = self.swarm.behaviour_mut().peers.send_response(channel, response);
                }
            }
            Event::Message { peer, message: Message::Response { response, .. }, .. } => match response {
                PeerResponse::Replies(items) => self.deliver(peer, items),
                PeerResponse::Logs(logs) => match logs.check() {
                    Ok(()) => self.pending.push_back(NetEvent::Logs { from: peer, logs }),
                    Err(e) => warn!(%peer, "rejected logs: {e}"),
                },
                PeerResponse::Refused(reason) => debug!(%peer, "refused our request: {reason}"),
                PeerResponse::Ack => {}
            },
            Event::OutboundFailure { peer, error, .. } => debug!(%peer, "peer request failed: {error}"),
            Event::InboundFailure { peer, error, .. } => debug!(%peer, "inbound peer request failed: {error}"),
            Event::ResponseSent { .. } => {}
        }
    }

    /// Handles one inbound request; returns the immediate answer, if any.
    fn on_peer_request(
        &mut self,
        peer: PeerId,
        request: PeerRequest,
        channel: ResponseChannel<PeerResponse>,
    ) -> Option<(ResponseChannel<PeerResponse>, PeerResponse)> {
        if !self.is_member(&peer) {
            return Some((channel, PeerResponse::Refused("not a member".into())));
        }
        if let Err(e) = request.check() {
            return Some((channel, PeerResponse::Refused(e.into())));
        }
        let from_replica = self.membership.replica_index(&peer).is_some();
        match request {
            PeerRequest::Deliver(items) => {
                self.deliver(peer, items);
                Some((channel, PeerResponse::Ack))
            }
            PeerRequest::Replies { request } if self.role == Role::Replica => {
                self.pending.push_back(NetEvent::RepliesWanted { from: peer, request, responder: Responder(channel) });
                None
            }
            PeerRequest::Replies { .. } => Some((channel, PeerResponse::Refused("not a replica".into()))),
            PeerRequest::Logs { job } if self.role == Role::Replica => {
                self.pending.push_back(NetEvent::LogsWanted { from: peer, job, responder: Responder(channel) });
                None
            }
            PeerRequest::Logs { .. } => Some((channel, PeerResponse::Refused("not a replica".into()))),
            request if from_replica && self.role == Role::Replica => {
                self.pending.push_back(NetEvent::Peer { from: peer, request });
                Some((channel, PeerResponse::Ack))
            }
            _ => Some((channel, PeerResponse::Refused("only replicas exchange that".into()))),
        }
    }

    /// Opens each delivered message; the valid ones become events.
    fn deliver(&mut self, peer: PeerId, items: Vec<SignedBytes>) {
        for item in items {
            match self.recent.open(&item.0, None, &self.membership) {
                Ok(opened) => self.pending.push_back(NetEvent::Signed { from: peer, opened }),
                Err(e) => warn!(%peer, "rejected delivered message: {e}"),
            }
        }
    }
}
