//! Fault injection, for end-to-end tests of Byzantine replicas: `pbft-node
//! run --fault KIND` makes this replica misbehave on purpose. Compiled only
//! with the `fault-injection` feature of the node crate, never into a default
//! build.
//!
//! The consensus core stays correct and untouched: a fault rewrites what the
//! driver sends (the messages and replies of each [`Ready`]) and the results
//! it signs, at the driver's outbound seam, with the replica's real key. What
//! the core persisted is what a correct replica would have persisted; the
//! wrappers of the simulator (`sim::Byzantine`) do the same in memory.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use libp2p_identity::Keypair;

use super::Abstain;
use crate::pbft::{Message, Outbound, Ready, Target};
use crate::wire::{limits, Digest, Envelope, JobResult, NetworkId, Outcome, Signed};

/// Own signed messages kept for `replay`.
const REPLAY_POOL_MAX: usize = 512;

/// How a replica misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Signs the opposite of every result: passed becomes failed (at the last
    /// step, exit code 1) and failed or timed out becomes passed, well-formed
    /// and signed. Errors of the request and cancellations stay as they are.
    Lie,
    /// As primary, sends one pre-prepare to f backups and a different one for
    /// the same slot (its requests reversed, or none) to the other 2f, so
    /// that neither commits and a view change must follow.
    Equivocate,
    /// Sends nothing: no protocol message, no reply, no result.
    Silent,
    /// Signs its checkpoints with a wrong state digest.
    WrongCheckpoint,
    /// With every message it sends, re-sends an old one of its own to one
    /// replica, from an earlier view when it has one.
    Replay,
}

impl Fault {
    pub const ALL: [Fault; 5] = [Fault::Lie, Fault::Equivocate, Fault::Silent, Fault::WrongCheckpoint, Fault::Replay];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Lie => "lie",
            Fault::Equivocate => "equivocate",
            Fault::Silent => "silent",
            Fault::WrongCheckpoint => "wrong-checkpoint",
            Fault::Replay => "replay",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Fault, String> {
        Fault::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
            format!("unknown fault {s:?}; one of {}", names.join(", "))
        })
    }
}

/// The driver's faulty half: rewrites what it sends and signs.
pub(super) struct Injector {
    fault: Option<Fault>,
    key: Arc<Keypair>,
    network: NetworkId,
    me: usize,
    n: usize,
    /// `replay`: own messages sent so far, with the view they were sent in.
    sent: VecDeque<(u64, Arc<[u8]>)>,
    /// `replay`: turns through the pool and the replicas, deterministically.
    replays: usize,
}

impl Injector {
    pub(super) fn new(fault: Option<Fault>, key: Arc<Keypair>, network: NetworkId, me: usize, n: usize) -> Injector {
        if let Some(fault) = fault {
            tracing::warn!(%fault, "FAULT INJECTION: this replica misbehaves on purpose ({fault})");
        }
        Injector { fault, key, network, me, n, sent: VecDeque::new(), replays: 0 }
    }

    pub(super) fn silent(&self) -> bool {
        self.fault == Some(Fault::Silent)
    }

    /// The result this replica signs for a job.
    pub(super) fn result(&self, outcome: Result<JobResult, Abstain>) -> Result<JobResult, Abstain> {
        match (self.fault, outcome) {
            (Some(Fault::Lie), Ok(result)) => Ok(lie(result)),
            (_, outcome) => outcome,
        }
    }

    /// What of `ready` goes out, in `view`; its records are untouched.
    pub(super) fn ready(&mut self, view: u64, mut ready: Ready) -> Ready {
        let Some(fault) = self.fault else { return ready };
        if fault == Fault::Silent {
            ready.messages.clear();
            ready.replies.clear();
            return ready;
        }
        let mut out = Vec::with_capacity(ready.messages.len());
        for message in std::mem::take(&mut ready.messages) {
            let Outbound::Signed { to, bytes } = message else {
                out.push(message);
                continue;
            };
            match fault {
                Fault::Equivocate => self.equivocate(to, bytes, &mut out),
                Fault::WrongCheckpoint => out.push(Outbound::Signed { to, bytes: self.wrong_checkpoint(bytes) }),
                Fault::Replay => {
                    out.extend(self.replay(view));
                    self.remember(view, bytes.clone());
                    out.push(Outbound::Signed { to, bytes });
                }
                Fault::Lie | Fault::Silent => out.push(Outbound::Signed { to, bytes }),
            }
        }
        ready.messages = out;
        ready
    }

    /// A protocol message this replica signed, decoded (no signature check:
    /// it is ours).
    fn own_message(&self, bytes: &Arc<[u8]>) -> Option<Message> {
        let env: Envelope = crate::wire::decode(bytes, limits::ENVELOPE_BYTES_MAX).ok()?;
        if env.signer != self.key.public().to_peer_id() {
            return None;
        }
        Message::from_envelope(env, bytes.clone()).ok()
    }

    /// The first f backups (in index order) get the core's pre-prepare, the
    /// other 2f a variant: the original cannot gather 2f prepares, and the
    /// variant, prepared by 2f backups only, cannot gather 2f + 1 commits.
    fn equivocate(&self, to: Target, bytes: Arc<[u8]>, out: &mut Vec<Outbound>) {
        let Some(Message::PrePrepare(pp)) = self.own_message(&bytes) else {
            out.push(Outbound::Signed { to, bytes });
            return;
        };
        let mut variant = pp.msg.clone();
        if variant.requests.len() >= 2 {
            variant.requests.reverse();
        } else {
            variant.requests.clear();
        }
        let variant = Signed::seal(variant, &self.network, self.key.as_ref()).shared_bytes();
        let backups: Vec<usize> = (0..self.n).filter(|&i| i != self.me).collect();
        let f = (self.n - 1) / 3;
        let targets = match to {
            Target::All => backups.clone(),
            Target::Replica(i) => vec![i],
        };
        for t in targets {
            let first_half = backups.iter().position(|&b| b == t).is_some_and(|k| k < f);
            let bytes = if first_half { bytes.clone() } else { variant.clone() };
            out.push(Outbound::Signed { to: Target::Replica(t), bytes });
        }
    }

    /// Own checkpoints re-signed over a digest no correct replica computes.
    fn wrong_checkpoint(&self, bytes: Arc<[u8]>) -> Arc<[u8]> {
        let Some(Message::Checkpoint(c)) = self.own_message(&bytes) else { return bytes };
        let mut msg = c.msg.clone();
        msg.state = Digest::of_parts(b"pbft-ci/fault/wrong-checkpoint", &[&msg.state.0]);
        Signed::seal(msg, &self.network, self.key.as_ref()).shared_bytes()
    }

    fn remember(&mut self, view: u64, bytes: Arc<[u8]>) {
        if self.own_message(&bytes).is_none() {
            return;
        }
        if self.sent.len() == REPLAY_POOL_MAX {
            self.sent.pop_front();
        }
        self.sent.push_back((view, bytes));
    }

    /// One old message to one other replica: of an earlier view if any.
    fn replay(&mut self, view: u64) -> Option<Outbound> {
        let older: Vec<&Arc<[u8]>> = self.sent.iter().filter(|(v, _)| *v < view).map(|(_, b)| b).collect();
        let pool: Vec<&Arc<[u8]>> = if older.is_empty() { self.sent.iter().map(|(_, b)| b).collect() } else { older };
        if pool.is_empty() || self.n < 2 {
            return None;
        }
        self.replays += 1;
        let bytes = pool[self.replays % pool.len()].clone();
        let to = (self.me + 1 + self.replays % (self.n - 1)) % self.n;
        Some(Outbound::Signed { to: Target::Replica(to), bytes })
    }
}

/// The opposite result, as well-formed as a true one.
fn lie(mut result: JobResult) -> JobResult {
    result.outcome = match result.outcome {
        Outcome::Passed => {
            let step = match result.steps.last_mut() {
                Some(last) => {
                    last.exit_code = Some(1);
                    last.name.clone()
                }
                None => "build".into(),
            };
            Outcome::Failed { step, exit_code: 1 }
        }
        Outcome::Failed { .. } | Outcome::Timeout { .. } => {
            for step in &mut result.steps {
                step.exit_code = Some(0);
            }
            Outcome::Passed
        }
        other @ (Outcome::Error { .. } | Outcome::Cancelled) => other,
    };
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::{Member, Membership};
    use crate::pbft::Message;
    use crate::wire::{Checkpoint, PrePrepare, StepResult};

    fn result(outcome: Outcome, codes: &[Option<i32>]) -> JobResult {
        let steps = codes
            .iter()
            .enumerate()
            .map(|(i, c)| StepResult { name: format!("s{i}"), image: None, exit_code: *c })
            .collect();
        JobResult { commit: Some("c".into()), tree: None, pipeline: None, executor: "local".into(), steps, outcome }
    }

    struct Net {
        keys: Vec<Arc<Keypair>>,
        membership: Membership,
    }

    fn net() -> Net {
        let keys: Vec<Arc<Keypair>> = (0..4).map(|_| Arc::new(Keypair::generate_ed25519())).collect();
        let member = |k: &Arc<Keypair>| Member { peer_id: k.public().to_peer_id(), addr: None };
        let membership = Membership::new("fault".into(), keys.iter().map(member).collect(), vec![], vec![]).unwrap();
        Net { keys, membership }
    }

    fn injector(net: &Net, fault: Fault, me: usize) -> Injector {
        Injector::new(Some(fault), net.keys[me].clone(), net.membership.network_id(), me, 4)
    }

    fn open(net: &Net, bytes: &[u8]) -> Message {
        Message::open(bytes, &net.membership.network_id(), &net.membership).expect("signed by a member")
    }

    #[test]
    fn a_lie_flips_passed_and_failed_and_keeps_errors() {
        let i = injector(&net(), Fault::Lie, 0);
        let passed = result(Outcome::Passed, &[Some(0), Some(0)]);
        let lied = i.result(Ok(passed.clone())).unwrap();
        assert_eq!(lied.outcome, Outcome::Failed { step: "s1".into(), exit_code: 1 });
        assert_eq!(lied.steps[1].exit_code, Some(1));
        let failed = result(Outcome::Failed { step: "s0".into(), exit_code: 2 }, &[Some(2), None]);
        let lied = i.result(Ok(failed)).unwrap();
        assert_eq!(lied.outcome, Outcome::Passed);
        assert!(lied.steps.iter().all(|s| s.exit_code == Some(0)));
        // Two liars tell the same lie: their digests match.
        assert_eq!(i.result(Ok(passed.clone())).unwrap().digest(), i.result(Ok(passed)).unwrap().digest());
        let error = Outcome::Error { error: crate::wire::RequestError::RefNotFound, detail: "x".into() };
        assert_eq!(i.result(Ok(result(error.clone(), &[]))).unwrap().outcome, error);
        let abstain = Abstain { reason: "disk".into() };
        assert_eq!(i.result(Err(abstain.clone())), Err(abstain));
    }

    #[test]
    fn an_equivocating_primary_sends_the_original_to_f_backups_and_a_signed_variant_to_the_others() {
        let net = net();
        let mut i = injector(&net, Fault::Equivocate, 0);
        let pp = PrePrepare { view: 0, seq: 1, requests: vec![Digest::of_parts(b"r", &[b"1"])] };
        let bytes = Signed::seal(pp.clone(), &net.membership.network_id(), net.keys[0].as_ref()).shared_bytes();
        let mut ready = Ready::default();
        ready.messages.push(Outbound::Signed { to: Target::All, bytes: bytes.clone() });
        let sent = i.ready(0, ready).messages;
        let to: Vec<(usize, Arc<[u8]>)> = sent
            .into_iter()
            .map(|o| match o {
                Outbound::Signed { to: Target::Replica(t), bytes } => (t, bytes),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(to.iter().map(|(t, _)| *t).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(to[0].1, bytes);
        assert_eq!(to[1].1, to[2].1);
        assert_ne!(to[1].1, bytes);
        let Message::PrePrepare(variant) = open(&net, &to[1].1) else { panic!("a pre-prepare") };
        assert_eq!((variant.msg.view, variant.msg.seq, variant.msg.requests.len()), (0, 1, 0));
        // Other messages go out as they are.
        let mut ready = Ready::default();
        let network = net.membership.network_id();
        let c = Signed::seal(Checkpoint { seq: 64, state: Digest::default() }, &network, net.keys[0].as_ref());
        ready.messages.push(Outbound::Signed { to: Target::All, bytes: c.shared_bytes() });
        assert!(matches!(&i.ready(0, ready).messages[..], [Outbound::Signed { to: Target::All, .. }]));
    }

    #[test]
    fn wrong_checkpoints_are_signed_and_relayed_ones_untouched() {
        let net = net();
        let mut i = injector(&net, Fault::WrongCheckpoint, 0);
        let network = net.membership.network_id();
        let right = Digest::of_parts(b"state", &[]);
        let own = Signed::seal(Checkpoint { seq: 64, state: right }, &network, net.keys[0].as_ref()).shared_bytes();
        let theirs = Signed::seal(Checkpoint { seq: 64, state: right }, &network, net.keys[1].as_ref()).shared_bytes();
        let mut ready = Ready::default();
        for bytes in [own, theirs.clone()] {
            ready.messages.push(Outbound::Signed { to: Target::All, bytes });
        }
        let sent = i.ready(0, ready).messages;
        let Outbound::Signed { bytes, .. } = &sent[0] else { panic!() };
        let Message::Checkpoint(c) = open(&net, bytes) else { panic!("a checkpoint") };
        assert_ne!(c.msg.state, right);
        let Outbound::Signed { bytes, .. } = &sent[1] else { panic!() };
        assert_eq!(*bytes, theirs);
    }

    #[test]
    fn a_replayer_resends_messages_of_earlier_views_and_a_silent_one_nothing() {
        let net = net();
        let network = net.membership.network_id();
        let mut i = injector(&net, Fault::Replay, 2);
        let pp = |view| {
            let msg = PrePrepare { view, seq: view + 1, requests: vec![] };
            Signed::seal(msg, &network, net.keys[2].as_ref()).shared_bytes()
        };
        let step = |i: &mut Injector, view| {
            let mut ready = Ready::default();
            ready.messages.push(Outbound::Signed { to: Target::All, bytes: pp(view) });
            i.ready(view, ready).messages
        };
        assert_eq!(step(&mut i, 0).len(), 1, "nothing to replay yet");
        let sent = step(&mut i, 1);
        assert_eq!(sent.len(), 2);
        let Outbound::Signed { to: Target::Replica(to), bytes } = &sent[0] else { panic!("{sent:?}") };
        assert_ne!(*to, 2);
        assert_eq!(*bytes, pp(0));

        let mut silent = injector(&net, Fault::Silent, 2);
        let mut ready = Ready::default();
        ready.messages.push(Outbound::Signed { to: Target::All, bytes: pp(0) });
        let ready = silent.ready(0, ready);
        assert!(ready.messages.is_empty() && ready.replies.is_empty());
    }

    #[test]
    fn fault_names_parse_back() {
        for f in Fault::ALL {
            assert_eq!(f.name().parse::<Fault>(), Ok(f));
        }
        assert!("liar".parse::<Fault>().unwrap_err().contains("wrong-checkpoint"));
    }
}
