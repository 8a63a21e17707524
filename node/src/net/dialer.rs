//! Who to be connected to, and when to try again. The replicas to reach are
//! fixed by the membership; addresses come from the membership file,
//! `--bootstrap`, identify, Kademlia and mDNS. A replica that drops is dialled
//! again with a doubling backoff, so a restarted peer is found within seconds
//! and a dead one costs a dial every few seconds at most.
//!
//! Pure bookkeeping with explicit times: the event loop asks it what to dial.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};

/// First retry after a failed or dropped connection; doubles up to the max.
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
pub const BACKOFF_MAX: Duration = Duration::from_secs(8);
/// Addresses remembered per peer (the newest win).
const ADDRESSES_MAX: usize = 16;

#[derive(Debug)]
struct Target {
    addresses: BTreeSet<Multiaddr>,
    /// From the membership file: never forgotten.
    pinned: Option<Multiaddr>,
    connected: bool,
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
                    connected: false,
                    next_dial: now,
                    backoff: BACKOFF_MIN,
                };
                (p, t)
            })
            .collect();
        Dialer { targets, bootstrap, bootstrap_next: now, bootstrap_backoff: BACKOFF_MIN }
    }

    pub fn connected(&self) -> usize {
        self.targets.values().filter(|t| t.connected).count()
    }

    pub fn missing(&self) -> usize {
        self.targets.len() - self.connected()
    }

    /// The wanted peers with no connection, in a stable order.
    pub fn missing_peers(&self) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = self.targets.iter().filter(|(_, t)| !t.connected).map(|(p, _)| *p).collect();
        v.sort();
        v
    }

    /// Remembers an address of a wanted peer; returns whether it is new.
    pub fn learn(&mut self, peer: &PeerId, addr: Multiaddr) -> bool {
        let Some(t) = self.targets.get_mut(peer) else { return false };
        if t.addresses.len() >= ADDRESSES_MAX && !t.addresses.contains(&addr) {
            let first = t.addresses.iter().next().cloned().expect("non-empty");
            t.addresses.remove(&first);
        }
        let new = t.addresses.insert(addr);
        if new && !t.connected {
            // A fresh address is worth trying now.
            t.next_dial = t.next_dial.min(Instant::now());
        }
        new
    }

    /// Forgets an address a dial to `peer` failed on: a restarted peer may
    /// listen elsewhere now, and a lookup finds where (a membership address
    /// stays).
    pub fn forget(&mut self, peer: &PeerId, addr: &Multiaddr) {
        if let Some(t) = self.targets.get_mut(peer) {
            if t.pinned.as_ref() != Some(addr) {
                t.addresses.remove(addr);
            }
        }
    }

    pub fn on_connected(&mut self, peer: &PeerId) {
        if let Some(t) = self.targets.get_mut(peer) {
            t.connected = true;
            t.backoff = BACKOFF_MIN;
        }
        self.bootstrap_backoff = BACKOFF_MIN;
    }

    /// The last connection to `peer` closed (or a dial failed).
    pub fn on_disconnected(&mut self, peer: &PeerId, now: Instant) {
        if let Some(t) = self.targets.get_mut(peer) {
            t.connected = false;
            t.next_dial = t.next_dial.max(now + BACKOFF_MIN);
        }
    }

    /// What to dial at `now`; schedules the next try of each with backoff.
    pub fn plan(&mut self, now: Instant) -> Plan {
        let mut plan = Plan::default();
        for (peer, t) in &mut self.targets {
            if t.connected || now < t.next_dial {
                continue;
            }
            t.next_dial = now + t.backoff;
            t.backoff = (t.backoff * 2).min(BACKOFF_MAX);
            if t.addresses.is_empty() {
                plan.look_up.push(*peer);
            } else {
                plan.dial.push((*peer, t.addresses.iter().cloned().collect()));
            }
        }
        let alone = self.targets.values().all(|t| !t.connected);
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

    #[test]
    fn a_dropped_peer_is_redialled_with_doubling_backoff() {
        let t0 = Instant::now();
        let (a, b) = (peer(), peer());
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/7000".parse().unwrap();
        let mut d = Dialer::new([(a, Some(addr.clone())), (b, None)], vec![], t0);
        let p = d.plan(t0);
        assert_eq!(p.dial, vec![(a, vec![addr.clone()])]);
        assert_eq!(p.look_up, vec![b]);
        // Nothing again before the backoff ran out.
        assert_eq!(d.plan(t0 + Duration::from_millis(100)), Plan::default());
        assert_eq!(d.plan(t0 + BACKOFF_MIN).dial.len(), 1);
        // Second retry waits twice as long.
        assert!(d.plan(t0 + BACKOFF_MIN + BACKOFF_MIN).dial.is_empty());
        assert_eq!(d.plan(t0 + BACKOFF_MIN * 3).dial.len(), 1);
        d.on_connected(&a);
        assert!(d.plan(t0 + Duration::from_secs(60)).dial.is_empty());
        assert_eq!(d.connected(), 1);
        d.on_disconnected(&a, t0 + Duration::from_secs(60));
        assert_eq!(d.plan(t0 + Duration::from_secs(61)).dial.len(), 1, "after a drop, backoff starts small");
    }

    #[test]
    fn bootstrap_addresses_are_dialled_only_while_alone() {
        let t0 = Instant::now();
        let a = peer();
        let boot: Multiaddr = "/ip4/127.0.0.1/tcp/7001".parse().unwrap();
        let mut d = Dialer::new([(a, None)], vec![boot.clone()], t0);
        assert_eq!(d.plan(t0).bootstrap, vec![boot]);
        d.on_connected(&a);
        assert!(d.plan(t0 + Duration::from_secs(30)).bootstrap.is_empty());
        assert!(!d.learn(&peer(), "/ip4/127.0.0.1/tcp/1".parse().unwrap()), "unwanted peers are not remembered");
    }

    #[test]
    fn a_failed_address_is_forgotten_unless_the_membership_names_it() {
        let t0 = Instant::now();
        let (a, b) = (peer(), peer());
        let pinned: Multiaddr = "/ip4/127.0.0.1/tcp/7000".parse().unwrap();
        let stale: Multiaddr = "/ip4/127.0.0.1/tcp/7001".parse().unwrap();
        let mut d = Dialer::new([(a, Some(pinned.clone())), (b, None)], vec![], t0);
        d.learn(&b, stale.clone());
        d.forget(&a, &pinned);
        d.forget(&b, &stale);
        let p = d.plan(t0 + Duration::from_secs(1));
        assert_eq!(p.dial, vec![(a, vec![pinned])]);
        assert_eq!(p.look_up, vec![b], "no address left: look it up");
    }
}
