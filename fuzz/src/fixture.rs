//! A fixed network for the wire target: four replicas and a gateway with keys
//! derived from constants (so the committed seeds stay valid), verifiers that
//! let mutated bodies past the signature, and re-signing of envelopes.

use std::sync::OnceLock;

use libp2p_identity::{Keypair, PeerId};
use pbft_node::membership::{Member, Membership};
use pbft_node::wire::{
    batch, decode, encode, limits::ENVELOPE_BYTES_MAX, Checkpoint, Commit, Envelope, JobId, JobResult, Kind, NetworkId,
    NewView, Operation, Outcome, PrePrepare, Prepare, PreparedProof, Reply, ReplyBody, Request, RequestError, Roster,
    Signed, SignedBytes, StepResult, Verifier, ViewChange,
};

/// The name in the membership; part of the network id.
pub const NETWORK_NAME: &str = "fuzz";
pub const ALLOWED_REPO: &str = "https://git.example.org/team/";

pub struct Fixture {
    pub replicas: Vec<Keypair>,
    pub gateway: Keypair,
    pub members: Membership,
    pub network: NetworkId,
}

impl Fixture {
    /// The key of a member of the fixture, if `peer` is one.
    pub fn key_of(&self, peer: &PeerId) -> Option<&Keypair> {
        self.replicas.iter().chain([&self.gateway]).find(|k| k.public().to_peer_id() == *peer)
    }

    pub fn gateway_id(&self) -> PeerId {
        self.gateway.public().to_peer_id()
    }
}

fn key(seed: u8) -> Keypair {
    Keypair::ed25519_from_bytes([seed; 32]).expect("32 bytes are an ed25519 secret key")
}

/// The fixture, built once; panics if the harness's copy of the signing
/// input no longer matches `wire/envelope.rs` (re-signing a sealed message
/// must give its bytes back: ed25519 signatures are deterministic).
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let replicas: Vec<Keypair> = (1..=4).map(key).collect();
        let gateway = key(9);
        let member = |k: &Keypair| Member { peer_id: k.public().to_peer_id(), addr: None };
        let members = Membership::new(
            NETWORK_NAME.into(),
            replicas.iter().map(member).collect(),
            vec![member(&gateway)],
            vec![ALLOWED_REPO.into()],
        )
        .expect("a valid membership");
        let network = members.network_id();
        let fx = Fixture { replicas, gateway, members, network };
        for (kind, bytes) in sealed(&fx) {
            assert_eq!(
                resign_with(&fx, &bytes).as_deref(),
                Some(&bytes[..]),
                "re-signing a sealed {kind:?} changed it"
            );
        }
        fx
    })
}

/// Accepts every signature: lets mutated envelopes reach the body decoders.
pub struct AcceptAll;

impl Verifier for AcceptAll {
    fn verify(&self, _: &PeerId, _: &[u8], _: &[u8]) -> bool {
        true
    }
}

/// The fixture's roster with every signature accepted: lets mutated
/// certificates reach the checks behind the signatures.
pub struct Lenient<'a>(pub &'a Membership);

impl Verifier for Lenient<'_> {
    fn verify(&self, _: &PeerId, _: &[u8], _: &[u8]) -> bool {
        true
    }
}

impl Roster for Lenient<'_> {
    fn network_id(&self) -> NetworkId {
        self.0.network_id()
    }
    fn is_replica(&self, peer: &PeerId) -> bool {
        self.0.is_replica(peer)
    }
    fn is_gateway(&self, peer: &PeerId) -> bool {
        self.0.is_gateway(peer)
    }
    fn f(&self) -> usize {
        self.0.f()
    }
}

/// What `wire/envelope.rs` signs: `DOMAIN || network id || kind || body`.
/// A copy, checked against the real thing by [`fixture`].
fn signing_input(network: &NetworkId, kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut v = b"pbft-ci/signed/v1".to_vec();
    v.extend_from_slice(&network.0 .0);
    v.push(u8::from(kind));
    v.extend_from_slice(body);
    v
}

/// `bytes` with a valid signature, when they decode as an envelope whose
/// signer is a member of the fixture: lets a mutated message get past the
/// signature into the gossip validation's role and body checks.
pub fn resign(bytes: &[u8]) -> Option<Vec<u8>> {
    resign_with(fixture(), bytes)
}

fn resign_with(fx: &Fixture, bytes: &[u8]) -> Option<Vec<u8>> {
    let mut env: Envelope = decode(bytes, ENVELOPE_BYTES_MAX).ok()?;
    let key = fx.key_of(&env.signer)?;
    let input = match &env.batch {
        None => signing_input(&env.network, env.kind, &env.body),
        // A well-formed proof: sign the root it leads to.
        Some(proof) => {
            let root = proof.root(batch::leaf(&env.network, env.kind, &env.body)).ok()?;
            batch::root_input(&env.network, env.kind, proof.count, &root)
        }
    };
    env.signature = key.sign(&input).ok()?;
    Some(encode(&env))
}

pub fn request(fx: &Fixture, number: u64) -> Request {
    Request {
        gateway: fx.gateway_id(),
        number,
        delivery: Some(format!("72d3162e-cc78-11e3-81ab-4c9367dc09{number:02}")),
        op: Operation::Run {
            repo: format!("{ALLOWED_REPO}app.git"),
            git_ref: "refs/heads/master".into(),
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
        },
    }
}

pub fn passed() -> JobResult {
    JobResult {
        commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
        tree: Some("89abcdef0123456789abcdef0123456789abcdef".into()),
        pipeline: Some(pbft_node::wire::Digest([9; 32])),
        executor: "docker".into(),
        steps: vec![StepResult { name: "test".into(), image: Some("sha256:feed".into()), exit_code: Some(0) }],
        outcome: Outcome::Passed,
    }
}

pub fn failed() -> JobResult {
    JobResult {
        steps: vec![StepResult { name: "test".into(), image: Some("sha256:feed".into()), exit_code: Some(1) }],
        outcome: Outcome::Failed { step: "test".into(), exit_code: 1 },
        ..passed()
    }
}

pub fn result_reply(fx: &Fixture, i: usize, req: &Request, result: &JobResult) -> Signed<Reply> {
    let reply = Reply {
        view: 0,
        gateway: req.gateway,
        number: req.number,
        request: req.digest(),
        body: ReplyBody::Result { job: JobId { seq: 1, index: 0 }, result: result.clone() },
    };
    Signed::seal(reply, &fx.network, &fx.replicas[i])
}

/// One sealed message of every kind, and of every reply body and operation.
pub fn sealed(fx: &Fixture) -> Vec<(Kind, Vec<u8>)> {
    let net = &fx.network;
    let r = &fx.replicas;
    let req = Signed::seal(request(fx, 1), net, &fx.gateway);
    let cancel =
        Request { op: Operation::Cancel { job: JobId { seq: 3, index: 1 } }, delivery: None, ..request(fx, 2) };
    let unpinned = Request {
        op: Operation::Run { repo: format!("{ALLOWED_REPO}app.git"), git_ref: "feature".into(), commit: None },
        ..request(fx, 3)
    };
    let job = JobId { seq: 1, index: 0 };
    let error = JobResult {
        commit: None,
        tree: None,
        pipeline: None,
        steps: vec![],
        outcome: Outcome::Error { error: RequestError::RefNotFound, detail: "no ref refs/heads/nope".into() },
        ..passed()
    };
    let bodies = [
        ReplyBody::Accepted { job },
        ReplyBody::Duplicate { job },
        ReplyBody::Prepared { job },
        ReplyBody::Rejected { reason: pbft_node::wire::Rejection::Stale },
        ReplyBody::Result { job, result: passed() },
        ReplyBody::Result { job, result: failed() },
        ReplyBody::Result { job, result: JobResult { outcome: Outcome::Timeout { step: "test".into() }, ..passed() } },
        ReplyBody::Result { job, result: error },
        ReplyBody::Result { job, result: JobResult { outcome: Outcome::Cancelled, ..passed() } },
        ReplyBody::Abstain { job, reason: "docker engine unavailable".into() },
    ];
    let pp = Signed::seal(PrePrepare { view: 0, seq: 1, requests: vec![req.msg.digest()] }, net, &r[0]);
    let prepare = Signed::seal(Prepare { view: 0, seq: 1, batch: pp.msg.batch_digest() }, net, &r[1]);
    let commit = Signed::seal(Commit { view: 0, seq: 1, batch: pp.msg.batch_digest() }, net, &r[2]);
    let checkpoint = Signed::seal(Checkpoint { seq: 64, state: pbft_node::wire::Digest([5; 32]) }, net, &r[3]);
    let view_change = Signed::seal(
        ViewChange {
            view: 1,
            checkpoint_seq: 64,
            checkpoint_state: pbft_node::wire::Digest([5; 32]),
            checkpoint_proof: vec![SignedBytes(checkpoint.bytes().to_vec())],
            prepared: vec![PreparedProof {
                pre_prepare: SignedBytes(pp.bytes().to_vec()),
                prepares: vec![SignedBytes(prepare.bytes().to_vec())],
            }],
        },
        net,
        &r[1],
    );
    let new_view = Signed::seal(
        NewView {
            view: 1,
            view_changes: vec![SignedBytes(view_change.bytes().to_vec())],
            pre_prepares: vec![SignedBytes(pp.bytes().to_vec())],
        },
        net,
        &r[1],
    );
    let mut out = vec![
        (Kind::Request, req.bytes().to_vec()),
        (Kind::Request, Signed::seal(cancel, net, &fx.gateway).bytes().to_vec()),
        (Kind::Request, Signed::seal(unpinned, net, &fx.gateway).bytes().to_vec()),
    ];
    let replies: Vec<Reply> = bodies
        .into_iter()
        .map(|body| Reply { view: 0, gateway: req.msg.gateway, number: 1, request: req.msg.digest(), body })
        .collect();
    for reply in &replies {
        out.push((Kind::Reply, Signed::seal(reply.clone(), net, &r[1]).bytes().to_vec()));
    }
    // Signed in batches: each carries its place and path under one signature.
    for sealed in Signed::seal_batch(replies, net, &r[2]).iter().step_by(4) {
        out.push((Kind::Reply, sealed.bytes().to_vec()));
    }
    let requests = (4..=6).map(|n| request(fx, n)).collect();
    for sealed in Signed::seal_batch(requests, net, &fx.gateway) {
        out.push((Kind::Request, sealed.bytes().to_vec()));
    }
    out.extend([
        (Kind::PrePrepare, pp.bytes().to_vec()),
        (Kind::Prepare, prepare.bytes().to_vec()),
        (Kind::Commit, commit.bytes().to_vec()),
        (Kind::Checkpoint, checkpoint.bytes().to_vec()),
        (Kind::ViewChange, view_change.bytes().to_vec()),
        (Kind::NewView, new_view.bytes().to_vec()),
    ]);
    out
}
