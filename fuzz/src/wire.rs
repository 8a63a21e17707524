//! Every decoder a peer's bytes reach, in one target: the signed envelope,
//! the body of every message kind (Request, Reply, PrePrepare, Prepare,
//! Commit, Checkpoint, ViewChange, NewView), the request-response exchanges
//! (PeerRequest, PeerResponse), a state transfer's replicated state, the
//! gossip validation (`net::open`, `net::validate`), and certificates (JSON)
//! with their verification.
//!
//! Properties, besides never panicking:
//! - an envelope opens exactly when it is the canonical encoding of what it
//!   decodes to (`encode(decode(b)) == b`) and its batch proof, if any, is
//!   well formed and on a request or reply; and then as its own kind only;
//! - whatever decodes survives re-encoding: `decode(encode(m)) == m`, and
//!   encoding is deterministic;
//! - a real signature check never accepts what the accept-all one refuses;
//! - the gossip validation accepts exactly the canonical, correctly signed
//!   envelopes of this network whose signer has the kind's role and whose
//!   body decodes and passes its bounds (a request signed by its own gateway);
//! - a certificate that verifies states one result per set, each matching
//!   its set's digest, and verifies as well with every signature accepted.

use std::fmt::Debug;
use std::sync::Arc;

use pbft_node::net::{self, Channel, Opened};
use pbft_node::pbft::{Message, ReplicatedState};
use pbft_node::wire::{
    batch, decode, encode, limits::ENVELOPE_BYTES_MAX, Certificate, Checkpoint, Commit, Envelope, Kind, NetworkId,
    NewView, PeerRequest, PeerResponse, PrePrepare, Prepare, Reply, Request, Signed, ViewChange, WireMessage,
};
use serde::{de::DeserializeOwned, Serialize};

use crate::fixture::{fixture, resign, AcceptAll, Fixture, Lenient};

pub fn check(data: &[u8]) {
    let fx = fixture();
    peer_exchanges(data);
    bodies(data, fx);
    envelope(data, fx);
    gossip(data, fx);
    if let Some(resigned) = resign(data) {
        envelope(&resigned, fx);
        gossip(&resigned, fx);
    }
    certificate(data, fx);
}

/// `decode(encode(m)) == m`, and encoding twice gives the same bytes.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(m: &T, what: &str) {
    let bytes = encode(m);
    let back: T = decode(&bytes, usize::MAX).unwrap_or_else(|e| panic!("{what}: its encoding does not decode: {e}"));
    assert_eq!(&back, m, "{what}: decode(encode(m)) != m");
    assert_eq!(encode(&back), bytes, "{what}: encoding is not deterministic");
}

fn peer_exchanges(data: &[u8]) {
    if let Ok(r) = decode::<PeerRequest>(data, ENVELOPE_BYTES_MAX) {
        let _ = r.check();
        round_trip(&r, "PeerRequest");
    }
    if let Ok(r) = decode::<PeerResponse>(data, ENVELOPE_BYTES_MAX) {
        round_trip(&r, "PeerResponse");
    }
    if let Ok(s) = ReplicatedState::decode(data) {
        round_trip(&s, "ReplicatedState");
        let _ = s.digest();
    }
}

/// `data` as the body of every kind, past the signature.
fn bodies(data: &[u8], fx: &Fixture) {
    body::<Request>(data, fx);
    body::<Reply>(data, fx);
    body::<PrePrepare>(data, fx);
    body::<Prepare>(data, fx);
    body::<Commit>(data, fx);
    body::<Checkpoint>(data, fx);
    body::<ViewChange>(data, fx);
    body::<NewView>(data, fx);
}

fn body<T: WireMessage + PartialEq + Debug>(data: &[u8], fx: &Fixture) {
    let env = Envelope {
        network: fx.network,
        kind: T::KIND,
        signer: fx.gateway_id(),
        body: data.to_vec(),
        signature: vec![],
        batch: None,
    };
    let opened = Signed::<T>::from_envelope(env, Arc::from(&[][..]));
    let decoded = decode::<T>(data, T::BODY_BYTES_MAX);
    match (&opened, &decoded) {
        (Ok(s), Ok(m)) => {
            assert_eq!(&s.msg, m);
            assert!(m.check().is_ok(), "{:?}: from_envelope let a body past its bounds", T::KIND);
            round_trip(m, &format!("{:?} body", T::KIND));
        }
        (Err(_), Ok(m)) => {
            assert!(m.check().is_err(), "{:?}: a body that decodes and checks was refused", T::KIND);
            round_trip(m, &format!("{:?} body", T::KIND));
        }
        (Ok(_), Err(_)) => panic!("{:?}: from_envelope accepted a body that does not decode", T::KIND),
        (Err(_), Err(_)) => {}
    }
}

/// Opens `data` as a `T` with every signature accepted and, when `T` is the
/// envelope's kind, with the real membership too (a signature check costs
/// tens of microseconds); returns whether the accept-all opening succeeded.
fn open_as<T: WireMessage + PartialEq + Debug>(data: &[u8], kind: Kind, network: &NetworkId, fx: &Fixture) -> bool {
    let strict = if kind == T::KIND { Signed::<T>::open(data, network, &fx.members).ok() } else { None };
    let lenient = Signed::<T>::open(data, network, &AcceptAll);
    match lenient {
        Ok(s) => {
            assert_eq!(s.bytes(), data, "{:?}: the opened message holds other bytes", T::KIND);
            assert!(s.msg.check().is_ok());
            round_trip(&s.msg, &format!("{:?}", T::KIND));
            if let Some(t) = strict {
                assert_eq!(t.msg, s.msg);
                assert_eq!(t.signer, s.signer);
            }
            true
        }
        Err(_) => {
            assert!(strict.is_none(), "{:?}: opens with real signatures but not with any", T::KIND);
            false
        }
    }
}

fn envelope(data: &[u8], fx: &Fixture) {
    let Ok(env) = decode::<Envelope>(data, ENVELOPE_BYTES_MAX) else {
        assert!(Envelope::open(data, &fx.network, &AcceptAll).is_err(), "an envelope that does not decode opened");
        return;
    };
    let canonical = encode(&env) == data;
    let network = env.network;
    let opened = Envelope::open(data, &network, &AcceptAll);
    // A batch proof must be well formed, and on a request or reply.
    let proof_ok = env.batch.as_ref().is_none_or(|p| {
        matches!(env.kind, Kind::Request | Kind::Reply) && p.root(batch::leaf(&network, env.kind, &env.body)).is_ok()
    });
    assert_eq!(
        opened.is_ok(),
        canonical && proof_ok,
        "an envelope opens exactly when its encoding is canonical and its batch proof, if any, well formed"
    );
    let kinds: [(Kind, bool); 8] = [
        (Kind::Request, open_as::<Request>(data, env.kind, &network, fx)),
        (Kind::Reply, open_as::<Reply>(data, env.kind, &network, fx)),
        (Kind::PrePrepare, open_as::<PrePrepare>(data, env.kind, &network, fx)),
        (Kind::Prepare, open_as::<Prepare>(data, env.kind, &network, fx)),
        (Kind::Commit, open_as::<Commit>(data, env.kind, &network, fx)),
        (Kind::Checkpoint, open_as::<Checkpoint>(data, env.kind, &network, fx)),
        (Kind::ViewChange, open_as::<ViewChange>(data, env.kind, &network, fx)),
        (Kind::NewView, open_as::<NewView>(data, env.kind, &network, fx)),
    ];
    for (kind, ok) in kinds {
        assert!(!ok || (canonical && kind == env.kind), "{:?} envelope opened as a {kind:?}", env.kind);
    }
    let own_kind_opens = kinds.iter().any(|(k, ok)| *ok && *k == env.kind);
    let protocol = !matches!(env.kind, Kind::Request | Kind::Reply);
    match Message::open(data, &network, &AcceptAll) {
        Ok(m) => {
            assert!(protocol && own_kind_opens, "Message::open disagrees with Signed::open");
            assert_eq!(&*m.bytes(), data);
            assert_eq!(m.signer(), env.signer);
        }
        Err(_) => assert!(!(protocol && own_kind_opens), "Message::open refused what Signed::open accepts"),
    }
}

/// What the gossip validation must decide for `data`, from the pieces.
fn expected_open(data: &[u8], fx: &Fixture) -> bool {
    let m = &fx.members;
    let Ok(env) = Envelope::open(data, &fx.network, m) else { return false };
    let replica = m.replica_index(&env.signer).is_some();
    match env.kind {
        Kind::Request => {
            m.is_gateway_peer(&env.signer)
                && Signed::<Request>::open(data, &fx.network, m).is_ok_and(|r| r.msg.gateway == r.signer)
        }
        Kind::Reply => replica && Signed::<Reply>::open(data, &fx.network, m).is_ok(),
        _ => replica && Message::open(data, &fx.network, m).is_ok(),
    }
}

fn gossip(data: &[u8], fx: &Fixture) {
    let m = &fx.members;
    let opened = net::open(data, None, m);
    if crate::verbose() {
        eprintln!("wire: gossip validation: {:?}", opened.as_ref().map(|o| o.kind_name()));
    }
    assert_eq!(opened.is_ok(), expected_open(data, fx), "gossip validation: {:?}", opened.as_ref().err());
    if let Ok(o) = &opened {
        match o {
            Opened::Request(r) => {
                assert_eq!(r.bytes(), data);
                assert!(m.is_gateway_peer(&r.signer) && r.msg.gateway == r.signer);
            }
            Opened::Reply(r) => {
                assert_eq!(r.bytes(), data);
                assert!(m.replica_index(&r.signer).is_some());
            }
            Opened::Message(msg) => {
                assert_eq!(&*msg.bytes(), data);
                assert!(m.replica_index(&msg.signer()).is_some());
            }
        }
    }
    // On a topic: accepted only on its own one.
    let channel = Channel::ALL[data.len() % Channel::ALL.len()];
    let on_topic = net::open(data, Some(channel), m);
    match &opened {
        Ok(o) => assert_eq!(on_topic.is_ok(), o.channel() == channel),
        Err(_) => assert!(on_topic.is_err()),
    }
}

fn certificate(data: &[u8], fx: &Fixture) {
    let Ok(cert) = serde_json::from_slice::<Certificate>(data) else { return };
    let json = serde_json::to_vec(&cert).expect("a certificate encodes");
    let back: Certificate = serde_json::from_slice(&json).expect("a certificate's JSON decodes");
    assert_eq!(back, cert, "certificate JSON round trip");
    let strict = cert.verify(&fx.members);
    let lenient = cert.verify(&Lenient(&fx.members));
    if crate::verbose() {
        eprintln!(
            "wire: certificate: {:?} / with any signature: {:?}",
            strict.as_ref().map(|_| ()),
            lenient.as_ref().map(|_| ())
        );
    }
    if let Ok(v) = &strict {
        let l = lenient.as_ref().expect("verifies with real signatures but not with any");
        assert_eq!(v.request, l.request);
        assert_eq!(v.job, l.job);
        assert_eq!(v.results, l.results);
    }
    if let Ok(v) = lenient {
        assert_eq!(v.results.len(), cert.sets.len());
        for ((digest, result), set) in v.results.iter().zip(&cert.sets) {
            assert_eq!(digest.to_hex(), set.result, "a set's stated digest is not its result's");
            assert_eq!(result.digest(), *digest);
        }
        for (i, (a, _)) in v.results.iter().enumerate() {
            assert!(v.results[..i].iter().all(|(b, _)| a != b), "one result in two sets");
        }
    }
}
