//! Which connections still answer. A TCP connection whose peer vanished
//! without a word (a cable pulled, a host cut off) looks open for many
//! minutes: the kernel backs off its retransmissions and gives up only after
//! about fifteen. Meanwhile nothing sent on it arrives, and the dialer, which
//! sees a connection, does not redial. So every connection is pinged
//! (libp2p's ping, every [`PING_INTERVAL`], each answer due within
//! [`PING_TIMEOUT`]), and one that answered no ping for [`SILENCE_MAX`] is
//! closed by the event loop: the dialers on both sides then redial.
//!
//! Why successes are watched rather than failures: libp2p's ping leaves what
//! to do about a failure to the application, and keeps the first failure on
//! a connection to itself (for old peers that use a stream per ping); the
//! next one is reported only after a new stream's negotiation times out,
//! 10 s later on a dead connection. No answer for an interval plus a timeout
//! is the same as a ping that failed, seen at once.
//!
//! Pure bookkeeping with explicit times, like the dialer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::swarm::ConnectionId;
use libp2p::PeerId;

/// A ping on every connection this often. Tiny: 32 bytes each way.
pub const PING_INTERVAL: Duration = Duration::from_secs(1);
/// Long enough for a ping queued behind a large transfer (a state transfer
/// is tens of MiB) on a slow link, or for a peer whose CPU is saturated.
pub const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// A connection with no answer to a ping for this long is dead.
pub const SILENCE_MAX: Duration = PING_INTERVAL.saturating_add(PING_TIMEOUT);

#[derive(Debug)]
struct Watched {
    peer: PeerId,
    /// The last answer to a ping, or when the connection opened.
    last_answer: Instant,
}

/// The connections watched, by id.
#[derive(Debug, Default)]
pub struct Liveness {
    watched: HashMap<ConnectionId, Watched>,
}

impl Liveness {
    pub fn on_established(&mut self, id: ConnectionId, peer: PeerId, now: Instant) {
        self.watched.insert(id, Watched { peer, last_answer: now });
    }

    /// A ping on `id` was answered.
    pub fn on_answer(&mut self, id: ConnectionId, now: Instant) {
        if let Some(w) = self.watched.get_mut(&id) {
            w.last_answer = now;
        }
    }

    /// The peer does not speak ping (another implementation, an old
    /// version): its silence means nothing.
    pub fn exempt(&mut self, id: ConnectionId) {
        self.watched.remove(&id);
    }

    pub fn on_closed(&mut self, id: ConnectionId) {
        self.watched.remove(&id);
    }

    /// The connections silent for longer than [`SILENCE_MAX`] at `now`, with
    /// how long; each is named once (it is being closed).
    pub fn silent(&mut self, now: Instant) -> Vec<(ConnectionId, PeerId, Duration)> {
        let mut dead = Vec::new();
        self.watched.retain(|id, w| {
            let silence = now.saturating_duration_since(w.last_answer);
            if silence <= SILENCE_MAX {
                return true;
            }
            dead.push((*id, w.peer, silence));
            false
        });
        dead.sort_by_key(|(id, _, _)| *id);
        dead
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.watched.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        libp2p_identity::Keypair::generate_ed25519().public().to_peer_id()
    }

    #[test]
    fn a_connection_that_stops_answering_is_named_once_after_the_silence_bound() {
        let t0 = Instant::now();
        let (a, b) = (peer(), peer());
        let (ca, cb) = (ConnectionId::new_unchecked(1), ConnectionId::new_unchecked(2));
        let mut l = Liveness::default();
        l.on_established(ca, a, t0);
        l.on_established(cb, b, t0);
        // Both answer every interval; then b's cable is pulled.
        let mut now = t0;
        for _ in 0..10 {
            now += PING_INTERVAL;
            l.on_answer(ca, now);
            l.on_answer(cb, now);
            assert!(l.silent(now).is_empty());
        }
        let cut = now;
        while now < cut + SILENCE_MAX {
            now += Duration::from_millis(250);
            if (now - cut).as_millis() % 1000 == 0 {
                l.on_answer(ca, now);
            }
            if now <= cut + SILENCE_MAX {
                assert!(l.silent(now).is_empty(), "not before the bound");
            }
        }
        now += Duration::from_millis(250);
        let dead = l.silent(now);
        assert_eq!(dead.len(), 1);
        assert_eq!((dead[0].0, dead[0].1), (cb, b));
        assert!(dead[0].2 > SILENCE_MAX && dead[0].2 <= SILENCE_MAX + Duration::from_millis(500));
        assert!(l.silent(now + SILENCE_MAX).iter().all(|(id, _, _)| *id != cb), "named once");
    }

    #[test]
    fn peers_without_ping_and_closed_connections_are_not_watched() {
        let t0 = Instant::now();
        let mut l = Liveness::default();
        let (c1, c2) = (ConnectionId::new_unchecked(1), ConnectionId::new_unchecked(2));
        l.on_established(c1, peer(), t0);
        l.on_established(c2, peer(), t0);
        l.exempt(c1);
        l.on_closed(c2);
        assert_eq!(l.len(), 0);
        assert!(l.silent(t0 + SILENCE_MAX * 10).is_empty());
        // An answer on a connection no longer watched changes nothing.
        l.on_answer(c1, t0);
        assert_eq!(l.len(), 0);
    }
}
