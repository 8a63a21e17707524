//! Who to be connected to, and when to try again. The replicas to reach are
//! fixed by the membership; addresses come from the membership file,
//! `--bootstrap`, identify, Kademlia and mDNS. A replica that drops is dialled
//! again with a doubling backoff capped at [`BACKOFF_MAX`]: a restarted peer,
//! or one whose cable is back, is reached within a second or two, and a dead
//! one costs a dial every few seconds at most.
//!
//! Pure bookkeeping with explicit times: the event loop asks it what to dial.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};

/// First retry after a failed or dropped connection; doubles up to the max.
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// Low, so that while a peer is unreachable a dial is nearly always under
/// way and the first one after the link is back succeeds (a dial that finds
/// no host fails after the few seconds ARP takes to give up).
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A connection that lasted this long was a working one: once it drops,
/// retry from [`BACKOFF_MIN`]. One refused or dropped at once (a peer that
/// does not want us) keeps backing off instead of being redialled in a loop.
pub const STABLE_AFTER: Duration = Duration::from_secs(5);
/// Addresses remembered per peer (the newest win).
const ADDRESSES_MAX: usize = 16;

#[derive(Debug)]
struct Target {
    /// Oldest first.
    addresses: VecDeque<Multiaddr>,
    /// From the membership file: never forgotten.
    pinned: Option<Multiaddr>,
    /// Since when a connection is open, if one is.
    connected_since: Option<Instant>,
    next_dial: Instant,
    backoff: Duration,
}

#[derive(Debug)]
pub struct Dialer {
    targets: HashMap<PeerId, Target>,
    bootstrap: Vec<Multiaddr>,
    bootstrap_next: Instant,
    bootstrap_backoff: Duration,
}

/// What to do now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Dial these peers at these addresses.
    pub dial: Vec<(PeerId, Vec<Multiaddr>)>,
    /// These peers have no known address: look them up (Kademlia).
    pub look_up: Vec<PeerId>,
    /// Dial these bootstrap addresses (no peer known yet).
    pub bootstrap: Vec<Multiaddr>,
}

impl Dialer {
    pub fn new(
        wanted: impl IntoIterator<Item = (PeerId, Option<Multiaddr>)>,
        bootstrap: Vec<Multiaddr>,
        now: Instant,
    ) -> Dialer {
        let targets = wanted
            .into_iter()
            .map(|(p, a)| {
                let t = Target {
                    addresses: a.iter().cloned().collect(),
                    pinned: a,
                    connected_since: None,
                    next_dial: now,
                    backoff: BACKOFF_MIN,
                };
                (p, t)
            })
            .collect();
        Dialer { targets, bootstrap, bootstrap_next: now, bootstrap_backoff: BACKOFF_MIN }
    }

    pub fn connected(&self) -> usize {
        self.targets.values().filter(|t| t.connected_since.is_some()).count()
    }

    pub fn missing(&self) -> usize {
        self.targets.len() - self.connected()
    }

    /// The wanted peers with no connection, in a stable order.
    pub fn missing_peers(&self) -> Vec<PeerId> {
        let mut v: Vec<PeerId> =
            self.targets.iter().filter(|(_, t)| t.connected_since.is_none()).map(|(p, _)| *p).collect();
        v.sort();
        v
    }

    /// Remembers an address of a wanted peer; returns whether it is new.
    pub fn learn(&mut self, peer: &PeerId, addr: Multiaddr, now: Instant) -> bool {
        let Some(t) = self.targets.get_mut(peer) else { return false };
        if t.addresses.contains(&addr) {
            return false;
        }
        if t.addresses.len() >= ADDRESSES_MAX {
            let oldest = t.addresses.iter().position(|a| Some(a) != t.pinned.as_ref()).unwrap_or(0);
            t.addresses.remove(oldest);
        }
        t.addresses.push_back(addr);
        if t.connected_since.is_none() {
            // A fresh address is worth trying now.
            t.next_dial = t.next_dial.min(now);
        }
        true
    }

    /// Forgets an address a dial to `peer` failed on: a restarted peer may
    /// listen elsewhere now, and a lookup finds where. The membership's
    /// address stays, and so does the last one known: a host cut off the
    /// network fails every dial until it is back, at the same address.
    pub fn forget(&mut self, peer: &PeerId, addr: &Multiaddr) {
        if let Some(t) = self.targets.get_mut(peer) {
            if t.pinned.as_ref() != Some(addr) && t.addresses.len() > 1 {
                t.addresses.retain(|a| a != addr);
            }
        }
    }

    pub fn on_connected(&mut self, peer: &PeerId, now: Instant) {
        if let Some(t) = self.targets.get_mut(peer) {
            t.connected_since.get_or_insert(now);
        }
        self.bootstrap_backoff = BACKOFF_MIN;
    }

    /// The last connection to `peer` closed (or a dial failed).
    pub fn on_disconnected(&mut self, peer: &PeerId, now: Instant) {
        if let Some(t) = self.targets.get_mut(peer) {
            if t.connected_since.take().is_some_and(|since| now >= since + STABLE_AFTER) {
                t.backoff = BACKOFF_MIN;
            }
            t.next_dial = t.next_dial.max(now + BACKOFF_MIN);
        }
    }

    /// What to dial at `now`; schedules the next try of each with backoff.
    pub fn plan(&mut self, now: Instant) -> Plan {
        let mut plan = Plan::default();
        for (peer, t) in &mut self.targets {
            if t.connected_since.is_some() || now < t.next_dial {
                continue;
            }
            t.next_dial = now + t.backoff;
            t.backoff = (t.backoff * 2).min(BACKOFF_MAX);
            if t.addresses.is_empty() {
                plan.look_up.push(*peer);
            } else {
                // Newest first: the likeliest to be where the peer listens now.
                plan.dial.push((*peer, t.addresses.iter().rev().cloned().collect()));
            }
        }
        let alone = self.targets.values().all(|t| t.connected_since.is_none());
        if alone && !self.bootstrap.is_empty() && now >= self.bootstrap_next {
            self.bootstrap_next = now + self.bootstrap_backoff;
            self.bootstrap_backoff = (self.bootstrap_backoff * 2).min(BACKOFF_MAX);
            plan.bootstrap = self.bootstrap.clone();
        }
        plan.dial.sort();
        plan.look_up.sort();
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        libp2p_identity::Keypair::generate_ed25519().public().to_peer_id()
    }

    fn addr(port: u16) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()
    }

    #[test]
    fn a_dropped_peer_is_redialled_with_doubling_backoff() {
        let t0 = Instant::now();
        let (a, b) = (peer(), peer());
        let mut d = Dialer::new([(a, Some(addr(7000))), (b, None)], vec![], t0);
        let p = d.plan(t0);
        assert_eq!(p.dial, vec![(a, vec![addr(7000)])]);
        assert_eq!(p.look_up, vec![b]);
        // Nothing again before the backoff ran out.
        assert_eq!(d.plan(t0 + Duration::from_millis(100)), Plan::default());
        assert_eq!(d.plan(t0 + BACKOFF_MIN).dial.len(), 1);
        // Second retry waits twice as long.
        assert!(d.plan(t0 + BACKOFF_MIN + BACKOFF_MIN).dial.is_empty());
        assert_eq!(d.plan(t0 + BACKOFF_MIN * 3).dial.len(), 1);
        d.on_connected(&a, t0 + BACKOFF_MIN * 3);
        assert!(d.plan(t0 + Duration::from_secs(60)).dial.is_empty());
        assert_eq!(d.connected(), 1);
        d.on_disconnected(&a, t0 + Duration::from_secs(60));
        let p = d.plan(t0 + Duration::from_secs(60) + BACKOFF_MIN);
        assert_eq!(p.dial.len(), 1, "after a working connection drops, it is redialled at once");
        let p = d.plan(t0 + Duration::from_secs(60) + BACKOFF_MIN * 3);
        assert_eq!(p.dial.len(), 1, "and its backoff starts small again");
    }

    #[test]
    fn an_unreachable_peer_is_tried_every_few_seconds_at_most_and_at_least() {
        let t0 = Instant::now();
        let a = peer();
        let mut d = Dialer::new([(a, Some(addr(7000)))], vec![], t0);
        let mut dials = Vec::new();
        let mut now = t0;
        while now < t0 + Duration::from_secs(60) {
            if !d.plan(now).dial.is_empty() {
                dials.push(now);
                // Each dial fails at once (nothing listens).
                d.on_disconnected(&a, now);
            }
            now += Duration::from_millis(50);
        }
        let gaps: Vec<Duration> = dials.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|g| *g <= BACKOFF_MAX + Duration::from_millis(50)), "{gaps:?}");
        assert!(gaps[gaps.len() - 5..].iter().all(|g| *g >= BACKOFF_MAX), "backed off to the cap: {gaps:?}");
    }

    #[test]
    fn a_connection_dropped_at_once_does_not_reset_the_backoff() {
        // A peer that closes every connection as soon as it is up (one that
        // does not admit us) is not redialled in a loop.
        let t0 = Instant::now();
        let a = peer();
        let mut d = Dialer::new([(a, Some(addr(7000)))], vec![], t0);
        let mut dials = Vec::new();
        let mut now = t0;
        while now < t0 + Duration::from_secs(20) {
            if !d.plan(now).dial.is_empty() {
                dials.push(now);
                d.on_connected(&a, now);
                d.on_disconnected(&a, now + Duration::from_millis(10));
            }
            now += Duration::from_millis(50);
        }
        assert!(dials.len() <= 16, "{} dials in 20 s", dials.len());
    }

    #[test]
    fn bootstrap_addresses_are_dialled_only_while_alone() {
        let t0 = Instant::now();
        let a = peer();
        let boot = addr(7001);
        let mut d = Dialer::new([(a, None)], vec![boot.clone()], t0);
        assert_eq!(d.plan(t0).bootstrap, vec![boot]);
        d.on_connected(&a, t0);
        assert!(d.plan(t0 + Duration::from_secs(30)).bootstrap.is_empty());
        assert!(!d.learn(&peer(), addr(1), t0), "unwanted peers are not remembered");
    }

    #[test]
    fn a_failed_address_is_forgotten_while_another_one_is_known() {
        let t0 = Instant::now();
        let (a, b) = (peer(), peer());
        let pinned = addr(7000);
        let mut d = Dialer::new([(a, Some(pinned.clone())), (b, None)], vec![], t0);
        let dialled = |p: Plan, who: PeerId| p.dial.into_iter().find(|(peer, _)| *peer == who).map(|(_, a)| a);
        d.forget(&a, &pinned);
        assert_eq!(dialled(d.plan(t0), a), Some(vec![pinned.clone()]), "the membership's address stays");
        // A host cut off fails every dial: its one address stays, to dial
        // again once it is back.
        let t1 = t0 + Duration::from_secs(1);
        assert!(d.learn(&b, addr(7001), t1));
        d.forget(&b, &addr(7001));
        assert_eq!(dialled(d.plan(t1), b), Some(vec![addr(7001)]));
        // A restarted peer listens elsewhere: once the new address is
        // known, the stale one goes.
        let t2 = t1 + Duration::from_secs(1);
        assert!(d.learn(&b, addr(7002), t2));
        assert!(!d.learn(&b, addr(7002), t2), "known already");
        d.forget(&b, &addr(7001));
        assert_eq!(dialled(d.plan(t2), b), Some(vec![addr(7002)]), "a fresh address is dialled at once");
    }

    #[test]
    fn the_newest_addresses_are_kept_and_dialled_first() {
        let t0 = Instant::now();
        let a = peer();
        let mut d = Dialer::new([(a, Some(addr(7000)))], vec![], t0);
        for port in 8000..8000 + ADDRESSES_MAX as u16 {
            d.learn(&a, addr(port), t0);
        }
        let dial = d.plan(t0).dial.remove(0).1;
        assert_eq!(dial.len(), ADDRESSES_MAX);
        assert_eq!(dial[0], addr(8000 + ADDRESSES_MAX as u16 - 1), "newest first");
        assert!(dial.contains(&addr(7000)), "the membership's address is never evicted");
        assert!(!dial.contains(&addr(8000)), "the oldest learnt one is");
    }
}
