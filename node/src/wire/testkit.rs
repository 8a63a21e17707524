//! Shared fixtures for the wire tests: a 4-replica network with one gateway,
//! and one sample of every message kind.

use libp2p_identity::Keypair;

use super::*;
use crate::membership::{Member, Membership};

/// Four replica keys, a gateway key, and the membership that lists them.
pub struct Net {
    pub replicas: Vec<Keypair>,
    pub gateway: Keypair,
    pub members: Membership,
}

impl Net {
    pub fn new() -> Net {
        let replicas: Vec<Keypair> = (0..4).map(|_| Keypair::generate_ed25519()).collect();
        let gateway = Keypair::generate_ed25519();
        let member = |k: &Keypair| Member { peer_id: k.public().to_peer_id(), addr: None };
        let members = Membership::new(
            "wire-tests".into(),
            replicas.iter().map(member).collect(),
            vec![member(&gateway)],
            vec!["https://git.example.org/team/".into()],
        )
        .expect("a valid membership");
        Net { replicas, gateway, members }
    }

    pub fn network(&self) -> NetworkId {
        self.members.network_id()
    }

    pub fn request(&self, number: u64) -> Request {
        Request {
            gateway: self.gateway.public().to_peer_id(),
            number,
            delivery: Some(format!("delivery-{number}")),
            op: Operation::Run {
                repo: "https://git.example.org/team/app.git".into(),
                git_ref: "refs/heads/master".into(),
                commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            },
        }
    }

    pub fn seal_request(&self, number: u64) -> Signed<Request> {
        Signed::seal(self.request(number), &self.network(), &self.gateway)
    }

    /// A result reply to `request` signed by replica `i`.
    pub fn result_reply(&self, i: usize, request: &Request, result: &JobResult) -> Signed<Reply> {
        let reply = Reply {
            view: 0,
            gateway: request.gateway,
            number: request.number,
            request: request.digest(),
            body: ReplyBody::Result { job: JobId { seq: 1, index: 0 }, result: result.clone() },
        };
        Signed::seal(reply, &self.network(), &self.replicas[i])
    }
}

/// An unsigned "accepted" reply to `request`.
pub fn accepted_reply(request: &Request) -> Reply {
    Reply {
        view: 0,
        gateway: request.gateway,
        number: request.number,
        request: request.digest(),
        body: ReplyBody::Accepted { job: JobId { seq: 1, index: request.number as u32 } },
    }
}

pub fn digest(n: u8) -> Digest {
    Digest([n; 32])
}

pub fn passed() -> JobResult {
    JobResult {
        commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
        tree: Some("89abcdef0123456789abcdef0123456789abcdef".into()),
        pipeline: Some(digest(9)),
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

/// One of every reply body.
pub fn reply_bodies() -> Vec<ReplyBody> {
    let job = JobId { seq: 3, index: 1 };
    vec![
        ReplyBody::Accepted { job },
        ReplyBody::Duplicate { job },
        ReplyBody::Rejected { reason: Rejection::Stale },
        ReplyBody::Rejected { reason: Rejection::TooFarAhead },
        ReplyBody::Rejected { reason: Rejection::Busy },
        ReplyBody::Rejected { reason: Rejection::Conflict },
        ReplyBody::Result { job, result: passed() },
        ReplyBody::Result { job, result: failed() },
        ReplyBody::Result { job, result: JobResult { outcome: Outcome::Timeout { step: "test".into() }, ..passed() } },
        ReplyBody::Result {
            job,
            result: JobResult {
                commit: None,
                tree: None,
                pipeline: None,
                steps: vec![],
                outcome: Outcome::Error { error: RequestError::RefNotFound, detail: "no ref refs/heads/nope".into() },
                ..passed()
            },
        },
        ReplyBody::Result { job, result: JobResult { outcome: Outcome::Cancelled, ..passed() } },
        ReplyBody::Abstain { job, reason: "docker engine unavailable".into() },
    ]
}

/// The sealed envelope of one message of every kind, each with the kind it
/// was sealed as.
pub fn sealed_samples(net: &Net) -> Vec<(Kind, Vec<u8>)> {
    let network = net.network();
    let r0 = &net.replicas[0];
    let req = net.seal_request(1);
    let reply = net.result_reply(1, &req.msg, &passed());
    let pp = Signed::seal(PrePrepare { view: 0, seq: 1, requests: vec![req.msg.digest()] }, &network, r0);
    let prepare = Signed::seal(Prepare { view: 0, seq: 1, batch: pp.msg.batch_digest() }, &network, &net.replicas[1]);
    let commit = Signed::seal(Commit { view: 0, seq: 1, batch: pp.msg.batch_digest() }, &network, &net.replicas[2]);
    let checkpoint = Signed::seal(Checkpoint { seq: 64, state: digest(5) }, &network, &net.replicas[3]);
    let view_change = Signed::seal(
        ViewChange {
            view: 1,
            checkpoint_seq: 64,
            checkpoint_state: digest(5),
            checkpoint_proof: vec![SignedBytes(checkpoint.bytes().to_vec())],
            prepared: vec![PreparedProof {
                pre_prepare: SignedBytes(pp.bytes().to_vec()),
                prepares: vec![SignedBytes(prepare.bytes().to_vec())],
            }],
        },
        &network,
        &net.replicas[1],
    );
    let new_view = Signed::seal(
        NewView {
            view: 1,
            view_changes: vec![SignedBytes(view_change.bytes().to_vec())],
            pre_prepares: vec![SignedBytes(pp.bytes().to_vec())],
        },
        &network,
        &net.replicas[1],
    );
    let requests = Signed::seal_batch(vec![net.request(2), net.request(3), net.request(4)], &network, &net.gateway);
    let replies =
        Signed::seal_batch(requests.iter().map(|r| accepted_reply(&r.msg)).collect(), &network, &net.replicas[2]);
    vec![
        (Kind::Request, req.bytes().to_vec()),
        (Kind::Reply, reply.bytes().to_vec()),
        (Kind::Request, requests[2].bytes().to_vec()),
        (Kind::Reply, replies[1].bytes().to_vec()),
        (Kind::PrePrepare, pp.bytes().to_vec()),
        (Kind::Prepare, prepare.bytes().to_vec()),
        (Kind::Commit, commit.bytes().to_vec()),
        (Kind::Checkpoint, checkpoint.bytes().to_vec()),
        (Kind::ViewChange, view_change.bytes().to_vec()),
        (Kind::NewView, new_view.bytes().to_vec()),
    ]
}

/// A small deterministic xorshift64* generator: the tests draw their
/// pseudo-random inputs from a fixed seed so a failure always reproduces.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}
