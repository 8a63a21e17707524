//! The messages of pbft-ci: requests and replies between gateways and
//! replicas, the PBFT protocol messages between replicas, results, and the
//! request-response exchanges (fetch by digest, state transfer).
//!
//! Replicas are named in protocol messages by their signer's `PeerId`; the
//! membership maps it to an index, so no message carries a second, possibly
//! contradicting, name.

use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};

use super::codec::{decode, encode, DecodeError};
use super::envelope::{Kind, WireMessage};
use super::limits::*;
use super::Digest;

/// A job's id: the sequence number that ordered it and its index in the batch.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobId {
    pub seq: u64,
    pub index: u32,
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.seq, self.index)
    }
}

/// What a request asks the network to do.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Operation {
    /// Run the pipeline of `repo` at `git_ref`. `commit` is the pinned commit;
    /// `None` when the gateway could not resolve the ref.
    Run { repo: String, git_ref: String, commit: Option<String> },
    /// Cancel a job that has no verdict yet.
    Cancel { job: JobId },
}

/// A gateway's request. Signed by `gateway`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub gateway: PeerId,
    /// From a counter the gateway persists; de-duplicated per gateway.
    pub number: u64,
    /// The git host's delivery id, de-duplicated across gateways.
    pub delivery: Option<String>,
    pub op: Operation,
}

impl Request {
    /// The request's digest, over its canonical encoding: two encodings of one
    /// request never get two digests.
    pub fn digest(&self) -> Digest {
        Digest::of_parts(b"pbft-ci/request", &[&encode(self)])
    }
}

fn check_len(s: &str, max: usize, what: &'static str) -> Result<(), &'static str> {
    if s.len() > max {
        Err(what)
    } else {
        Ok(())
    }
}

impl WireMessage for Request {
    const KIND: Kind = Kind::Request;
    const BODY_BYTES_MAX: usize = REQUEST_BYTES_MAX;
    fn check(&self) -> Result<(), &'static str> {
        if let Some(d) = &self.delivery {
            check_len(d, DELIVERY_BYTES_MAX, "delivery id too long")?;
        }
        match &self.op {
            Operation::Run { repo, git_ref, commit } => {
                check_len(repo, REPO_BYTES_MAX, "repository URL too long")?;
                check_len(git_ref, REF_BYTES_MAX, "ref too long")?;
                if let Some(c) = commit {
                    check_len(c, COMMIT_BYTES_MAX, "commit id too long")?;
                }
            }
            Operation::Cancel { .. } => {}
        }
        Ok(())
    }
}

/// Why a replica refused to order a request.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Rejection {
    /// The request number is below the gateway's de-duplication window: it was
    /// ordered long ago, or is a replay.
    Stale,
    /// The request number is too far above the window.
    TooFarAhead,
    /// The replica holds too many pending requests; retry later.
    Busy,
    /// The request number was already ordered for another request (a
    /// gateway that lost its counter): this request is not run.
    Conflict,
}

/// The deterministic outcome of a job.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Outcome {
    Passed,
    Failed {
        step: String,
        exit_code: i32,
    },
    Timeout {
        step: String,
    },
    /// A property of the request, not of the replica's machine.
    Error {
        error: RequestError,
        detail: String,
    },
    /// The job was cancelled through consensus before it finished.
    Cancelled,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum RequestError {
    /// The ref does not exist on the repository (the proof of concept's "branch not found").
    RefNotFound,
    /// The pinned commit is not reachable from the ref.
    CommitNotOnRef,
    /// `.pbft-ci.yml` (or the node's default pipeline) is not a valid pipeline.
    InvalidPipeline,
    /// The repository is not on the membership's allow-list, or its URL
    /// scheme is not allowed by the operator.
    RepoNotAllowed,
    /// The ref or commit id is not one git accepts (or could be taken for an option).
    InvalidRef,
}

/// One step's part of a result.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepResult {
    pub name: String,
    pub image: Option<String>,
    pub exit_code: Option<i32>,
}

/// What every correct replica computes the same for a job. Wall times and
/// logs travel beside it, never inside.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobResult {
    pub commit: Option<String>,
    pub tree: Option<String>,
    pub pipeline: Option<Digest>,
    pub executor: String,
    pub steps: Vec<StepResult>,
    pub outcome: Outcome,
}

impl JobResult {
    pub fn digest(&self) -> Digest {
        Digest::of_parts(b"pbft-ci/result", &[&encode(self)])
    }

    fn check(&self) -> Result<(), &'static str> {
        if self.steps.len() > STEPS_MAX {
            return Err("too many steps");
        }
        for s in &self.steps {
            check_len(&s.name, TEXT_BYTES_MAX, "step name too long")?;
            if let Some(i) = &s.image {
                check_len(i, TEXT_BYTES_MAX, "image id too long")?;
            }
        }
        check_len(&self.executor, TEXT_BYTES_MAX, "executor name too long")?;
        match &self.outcome {
            Outcome::Failed { step, .. } | Outcome::Timeout { step } => {
                check_len(step, TEXT_BYTES_MAX, "step name too long")
            }
            Outcome::Error { detail, .. } => check_len(detail, TEXT_BYTES_MAX, "error detail too long"),
            Outcome::Passed | Outcome::Cancelled => Ok(()),
        }
    }
}

/// What a replica answers.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum ReplyBody {
    /// Ordered as job `job`.
    Accepted {
        job: JobId,
    },
    /// Already ordered earlier (same request number, or same delivery id) as `job`.
    Duplicate {
        job: JobId,
    },
    /// Tentatively ordered as `job`: its slot prepared at this replica, in
    /// its current view, with every slot before it executed, so executing it
    /// would answer `Accepted { job }`. Sent before the slot commits; 2f + 1
    /// of them mean ordered (f + 1 correct replicas hold the prepared
    /// certificate, which every later view keeps), where `Accepted` needs
    /// f + 1.
    Prepared {
        job: JobId,
    },
    Rejected {
        reason: Rejection,
    },
    /// The job ended with this result.
    Result {
        job: JobId,
        result: JobResult,
    },
    /// The replica could not run the job (a fault of its own machine); never
    /// counted towards a verdict.
    Abstain {
        job: JobId,
        reason: String,
    },
}

/// A replica's signed answer to one request.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    pub view: u64,
    pub gateway: PeerId,
    pub number: u64,
    pub request: Digest,
    pub body: ReplyBody,
}

impl WireMessage for Reply {
    const KIND: Kind = Kind::Reply;
    const BODY_BYTES_MAX: usize = 64 * 1024;
    fn check(&self) -> Result<(), &'static str> {
        match &self.body {
            ReplyBody::Result { result, .. } => result.check(),
            ReplyBody::Abstain { reason, .. } => check_len(reason, TEXT_BYTES_MAX, "abstain reason too long"),
            _ => Ok(()),
        }
    }
}

/// The primary's proposal: the requests (by digest) to order at `seq`.
/// An empty list is a null request (used by NEW-VIEW to fill gaps).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrePrepare {
    pub view: u64,
    pub seq: u64,
    pub requests: Vec<Digest>,
}

impl PrePrepare {
    /// The batch digest that PREPARE and COMMIT name.
    pub fn batch_digest(&self) -> Digest {
        batch_digest(&self.requests)
    }
}

/// Digest of a batch of request digests.
pub fn batch_digest(requests: &[Digest]) -> Digest {
    let parts: Vec<&[u8]> = requests.iter().map(|d| d.0.as_slice()).collect();
    Digest::of_parts(b"pbft-ci/batch", &parts)
}

impl WireMessage for PrePrepare {
    const KIND: Kind = Kind::PrePrepare;
    const BODY_BYTES_MAX: usize = 64 + BATCH_REQUESTS_MAX * 40;
    fn check(&self) -> Result<(), &'static str> {
        if self.requests.len() > BATCH_REQUESTS_MAX {
            return Err("batch too large");
        }
        let mut seen = std::collections::HashSet::with_capacity(self.requests.len());
        if !self.requests.iter().all(|d| seen.insert(*d)) {
            return Err("batch names a request twice");
        }
        Ok(())
    }
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prepare {
    pub view: u64,
    pub seq: u64,
    pub batch: Digest,
}

impl WireMessage for Prepare {
    const KIND: Kind = Kind::Prepare;
    const BODY_BYTES_MAX: usize = 128;
    fn check(&self) -> Result<(), &'static str> {
        Ok(())
    }
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Commit {
    pub view: u64,
    pub seq: u64,
    pub batch: Digest,
}

impl WireMessage for Commit {
    const KIND: Kind = Kind::Commit;
    const BODY_BYTES_MAX: usize = 128;
    fn check(&self) -> Result<(), &'static str> {
        Ok(())
    }
}

/// A replica's digest of the replicated state after executing `seq`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub seq: u64,
    pub state: Digest,
}

impl WireMessage for Checkpoint {
    const KIND: Kind = Kind::Checkpoint;
    const BODY_BYTES_MAX: usize = 128;
    fn check(&self) -> Result<(), &'static str> {
        Ok(())
    }
}

/// A signed message kept as the exact bytes that were signed (CBOR bytes).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SignedBytes(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// Several signed requests in one gossip message. A gateway under load
/// publishes the requests it has ready together, so gossipsub signs, and
/// checks per copy received, one message for all of them; each request keeps
/// its own signature (fetching by digest and certificates need it). Encoded
/// as a CBOR array, never mistaken for an envelope (a CBOR map).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestBundle(pub Vec<SignedBytes>);

impl RequestBundle {
    /// Whether `bytes` starts as a bundle does (a CBOR array), rather than as
    /// a single envelope.
    pub fn looks_like(bytes: &[u8]) -> bool {
        bytes.first().is_some_and(|b| b >> 5 == 4)
    }

    /// Decodes a bundle within the bounds: at most [`BUNDLE_REQUESTS_MAX`]
    /// requests in at most [`ENVELOPE_BYTES_MAX`] bytes.
    pub fn decode(bytes: &[u8]) -> Result<RequestBundle, DecodeError> {
        let bundle: RequestBundle = decode(bytes, ENVELOPE_BYTES_MAX)?;
        if bundle.0.is_empty() || bundle.0.len() > BUNDLE_REQUESTS_MAX {
            return Err(DecodeError::Invalid("a request bundle holds 1 to BUNDLE_REQUESTS_MAX requests"));
        }
        Ok(bundle)
    }

    /// Groups `requests` (signed request bytes, in order) into the fewest
    /// encoded gossip messages within the bounds; a group of one is the
    /// request's own bytes.
    pub fn pack(requests: &[&[u8]]) -> Vec<Vec<u8>> {
        fn close(group: &mut Vec<SignedBytes>, out: &mut Vec<Vec<u8>>) {
            match group.len() {
                0 => {}
                1 => out.extend(group.pop().map(|r| r.0)),
                _ => out.push(encode(&RequestBundle(std::mem::take(group)))),
            }
        }
        // Headroom for the array's and each byte string's CBOR header.
        let fits =
            |count: usize, bytes: usize| count < BUNDLE_REQUESTS_MAX && bytes + 16 * (count + 1) < ENVELOPE_BYTES_MAX;
        let mut out = Vec::new();
        let mut group: Vec<SignedBytes> = Vec::new();
        let mut bytes = 0;
        for r in requests {
            if !fits(group.len(), bytes + r.len()) {
                close(&mut group, &mut out);
                bytes = 0;
            }
            bytes += r.len();
            group.push(SignedBytes(r.to_vec()));
        }
        close(&mut group, &mut out);
        out
    }
}

/// Proof that a slot prepared: its pre-prepare and 2f matching prepares.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreparedProof {
    pub pre_prepare: SignedBytes,
    pub prepares: Vec<SignedBytes>,
}

/// A replica's move to `view`, with what it must carry over.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewChange {
    pub view: u64,
    /// The replica's stable checkpoint and its 2f + 1 signed CHECKPOINTs.
    pub checkpoint_seq: u64,
    pub checkpoint_state: Digest,
    pub checkpoint_proof: Vec<SignedBytes>,
    /// Every slot above the checkpoint that prepared at this replica.
    pub prepared: Vec<PreparedProof>,
}

impl WireMessage for ViewChange {
    const KIND: Kind = Kind::ViewChange;
    const BODY_BYTES_MAX: usize = ENVELOPE_BYTES_MAX - 1024;
    fn check(&self) -> Result<(), &'static str> {
        if self.checkpoint_proof.len() > REPLICAS_MAX {
            return Err("checkpoint proof too long");
        }
        if self.prepared.len() > PREPARED_MAX {
            return Err("too many prepared certificates");
        }
        if self.prepared.iter().any(|p| p.prepares.len() > REPLICAS_MAX) {
            return Err("prepared certificate too long");
        }
        Ok(())
    }
}

/// The new primary's announcement of `view`: 2f + 1 VIEW-CHANGEs and the
/// pre-prepares it derived from them.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewView {
    pub view: u64,
    pub view_changes: Vec<SignedBytes>,
    pub pre_prepares: Vec<SignedBytes>,
}

impl WireMessage for NewView {
    const KIND: Kind = Kind::NewView;
    const BODY_BYTES_MAX: usize = ENVELOPE_BYTES_MAX - 1024;
    fn check(&self) -> Result<(), &'static str> {
        if self.view_changes.len() > REPLICAS_MAX {
            return Err("too many view changes");
        }
        if self.pre_prepares.len() > PREPARED_MAX {
            return Err("too many pre-prepares");
        }
        Ok(())
    }
}

/// Request-response between peers (not signed as a whole: what it carries is).
/// A replica's report of how far it got, so peers can help it catch up.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    pub view: u64,
    /// Between its VIEW-CHANGE for `view` and that view's NEW-VIEW.
    pub changing: bool,
    /// Last executed sequence number.
    pub executed: u64,
    /// Last stable checkpoint.
    pub stable: u64,
}

/// Point-to-point exchanges between peers (libp2p request-response). Not
/// signed as a whole: the transport authenticates the peer, and what must be
/// re-verifiable inside is signed on its own.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum PeerRequest {
    /// Send me these requests (by digest); they come back as `Deliver`.
    Requests(Vec<Digest>),
    /// Signed messages for you: retransmissions, fetched requests, help.
    Deliver(Vec<SignedBytes>),
    /// How far I got.
    Status(Status),
    /// State transfer: a stable checkpoint's state (canonical encoding) and
    /// the 2f + 1 signed CHECKPOINTs of its digest.
    State {
        proof: Vec<SignedBytes>,
        #[serde(with = "serde_bytes")]
        state: Vec<u8>,
    },
    /// Send me the signed replies you hold for this request.
    Replies { request: Digest },
    /// Send me the step logs you kept for this job (gateways, to show people).
    Logs { job: JobId },
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum PeerResponse {
    Ack,
    Replies(Vec<SignedBytes>),
    Logs(JobLogs),
    /// The request was refused (not a member, malformed, over a bound).
    Refused(String),
}

/// A replica's step logs of one job: for people, outside every signature
/// and digest (the result never depends on them).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobLogs {
    pub job: JobId,
    /// In step order; empty when the replica kept no logs for the job.
    pub steps: Vec<StepLog>,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepLog {
    /// The log's file name, `<n>-<step>.log`.
    pub file: String,
    /// The whole log's length.
    pub bytes: u64,
    /// Its last bytes: at most [`LOG_TAIL_BYTES_MAX`], all of it when `bytes`
    /// is no more.
    #[serde(with = "serde_bytes")]
    pub tail: Vec<u8>,
    /// SHA-256 of the whole log (hex) as `SHA256SUMS` recorded it at the
    /// end of the job; `None` while it runs.
    pub sha256: Option<String>,
}

impl JobLogs {
    pub fn check(&self) -> Result<(), &'static str> {
        if self.steps.len() > STEPS_MAX {
            return Err("too many step logs");
        }
        let mut total = 0;
        for s in &self.steps {
            check_len(&s.file, TEXT_BYTES_MAX, "log file name too long")?;
            if s.tail.len() > LOG_TAIL_BYTES_MAX || s.tail.len() as u64 > s.bytes {
                return Err("log tail too long");
            }
            if s.sha256.as_ref().is_some_and(|h| h.len() != 64) {
                return Err("log digest is not SHA-256 hex");
            }
            total += s.tail.len();
        }
        if total > LOGS_BYTES_MAX {
            return Err("logs too long");
        }
        Ok(())
    }
}

impl PeerRequest {
    pub fn check(&self) -> Result<(), &'static str> {
        match self {
            PeerRequest::Requests(d) if d.len() > BATCH_REQUESTS_MAX => Err("too many digests"),
            PeerRequest::Deliver(m) if m.len() > 4 * BATCH_REQUESTS_MAX => Err("too many messages"),
            PeerRequest::State { proof, .. } if proof.len() > REPLICAS_MAX => Err("proof too long"),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Debug;

    use libp2p_identity::Keypair;

    use super::*;
    use crate::pbft::Message;
    use crate::wire::testkit::*;
    use crate::wire::{OpenError, Signed, Signer};

    /// Seals `msg`, opens the sealed bytes, and checks nothing changed.
    fn round_trip<T: WireMessage + PartialEq + Debug + Clone>(net: &Net, msg: T, key: &Keypair) {
        let sealed = Signed::seal(msg.clone(), &net.network(), key);
        let opened = Signed::<T>::open(sealed.bytes(), &net.network(), &net.members)
            .unwrap_or_else(|e| panic!("{msg:?} does not open: {e}"));
        assert_eq!(opened.msg, msg);
        assert_eq!(opened.signer, key.peer_id());
        assert_eq!(opened.bytes(), sealed.bytes());
        assert_eq!(opened.envelope_digest(), sealed.envelope_digest());
    }

    #[test]
    fn requests_with_run_and_cancel_round_trip() {
        let net = Net::new();
        let gw = net.gateway.peer_id();
        let ops = [
            net.request(1).op,
            Operation::Run { repo: "file:///srv/git/app".into(), git_ref: "feature".into(), commit: None },
            Operation::Cancel { job: JobId { seq: 7, index: 3 } },
        ];
        for (number, op) in ops.into_iter().enumerate() {
            for delivery in [None, Some("72d3162e-cc78-11e3-81ab-4c9367dc0958".into())] {
                let msg = Request { gateway: gw, number: number as u64, delivery, op: op.clone() };
                round_trip(&net, msg, &net.gateway);
            }
        }
    }

    #[test]
    fn replies_with_every_body_round_trip() {
        let net = Net::new();
        let req = net.request(4);
        for body in reply_bodies() {
            let msg = Reply { view: 2, gateway: req.gateway, number: req.number, request: req.digest(), body };
            round_trip(&net, msg, &net.replicas[1]);
        }
    }

    #[test]
    fn protocol_messages_round_trip() {
        let net = Net::new();
        let key = &net.replicas[0];
        let full: Vec<Digest> = (0..BATCH_REQUESTS_MAX).map(|i| Digest::of_parts(b"t", &[&i.to_be_bytes()])).collect();
        for requests in [vec![], vec![digest(1), digest(2)], full] {
            round_trip(&net, PrePrepare { view: 0, seq: 9, requests }, key);
        }
        let batch = digest(3);
        round_trip(&net, Prepare { view: 1, seq: 9, batch }, key);
        round_trip(&net, Commit { view: 1, seq: u64::MAX, batch }, key);
        round_trip(&net, Checkpoint { seq: 128, state: digest(4) }, key);
        let proof = SignedBytes(vec![0xa5; 40]);
        round_trip(
            &net,
            ViewChange {
                view: 5,
                checkpoint_seq: 128,
                checkpoint_state: digest(4),
                checkpoint_proof: vec![proof.clone(); 3],
                prepared: vec![PreparedProof { pre_prepare: proof.clone(), prepares: vec![proof.clone(); 2] }],
            },
            key,
        );
        round_trip(&net, NewView { view: 5, view_changes: vec![proof.clone(); 3], pre_prepares: vec![proof] }, key);
    }

    #[test]
    fn protocol_messages_open_as_their_own_variant() {
        let net = Net::new();
        for (kind, bytes) in sealed_samples(&net) {
            let opened = Message::open(&bytes, &net.network(), &net.members);
            let got = match &opened {
                Ok(Message::PrePrepare(_)) => Some(Kind::PrePrepare),
                Ok(Message::Prepare(_)) => Some(Kind::Prepare),
                Ok(Message::Commit(_)) => Some(Kind::Commit),
                Ok(Message::Checkpoint(_)) => Some(Kind::Checkpoint),
                Ok(Message::ViewChange(_)) => Some(Kind::ViewChange),
                Ok(Message::NewView(_)) => Some(Kind::NewView),
                Err(_) => None,
            };
            match kind {
                Kind::Request | Kind::Reply => {
                    assert!(matches!(opened, Err(OpenError::Invalid(_))), "{kind:?} is not a protocol message")
                }
                _ => assert_eq!(got, Some(kind)),
            }
            if let Ok(m) = opened {
                assert_eq!(&*m.bytes(), bytes.as_slice());
            }
        }
    }

    fn open_pre_prepare(net: &Net, requests: Vec<Digest>) -> Result<(), OpenError> {
        let pp = PrePrepare { view: 0, seq: 1, requests };
        let sealed = Signed::seal(pp, &net.network(), &net.replicas[0]);
        Signed::<PrePrepare>::open(sealed.bytes(), &net.network(), &net.members).map(|_| ())
    }

    #[test]
    fn pre_prepare_over_the_batch_bound_is_rejected() {
        let net = Net::new();
        let requests: Vec<Digest> =
            (0..=BATCH_REQUESTS_MAX).map(|i| Digest::of_parts(b"t", &[&i.to_be_bytes()])).collect();
        assert!(matches!(open_pre_prepare(&net, requests), Err(OpenError::Invalid("batch too large"))));
    }

    #[test]
    fn pre_prepare_naming_a_request_twice_is_rejected() {
        let net = Net::new();
        let requests = vec![digest(1), digest(2), digest(1)];
        assert!(matches!(open_pre_prepare(&net, requests), Err(OpenError::Invalid("batch names a request twice"))));
    }

    #[test]
    fn request_strings_over_their_bounds_are_rejected() {
        let net = Net::new();
        let long = |n: usize| "x".repeat(n);
        let mut cases = Vec::new();
        let mut r = net.request(1);
        r.delivery = Some(long(DELIVERY_BYTES_MAX + 1));
        cases.push(r);
        for (repo, git_ref, commit) in
            [(REPO_BYTES_MAX + 1, 1, 1), (1, REF_BYTES_MAX + 1, 1), (1, 1, COMMIT_BYTES_MAX + 1)]
        {
            let mut r = net.request(1);
            r.op = Operation::Run { repo: long(repo), git_ref: long(git_ref), commit: Some(long(commit)) };
            cases.push(r);
        }
        for r in cases {
            let sealed = Signed::seal(r, &net.network(), &net.gateway);
            let opened = Signed::<Request>::open(sealed.bytes(), &net.network(), &net.members);
            assert!(matches!(opened, Err(OpenError::Invalid(_))));
        }
    }

    #[test]
    fn result_strings_over_their_bounds_are_rejected() {
        let net = Net::new();
        let long = "x".repeat(TEXT_BYTES_MAX + 1);
        let job = JobId { seq: 1, index: 0 };
        let many_steps = JobResult { steps: vec![passed().steps[0].clone(); STEPS_MAX + 1], ..passed() };
        let long_detail = JobResult {
            outcome: Outcome::Error { error: RequestError::InvalidPipeline, detail: long.clone() },
            ..passed()
        };
        let bodies = [
            ReplyBody::Result { job, result: many_steps },
            ReplyBody::Result { job, result: long_detail },
            ReplyBody::Abstain { job, reason: long },
        ];
        let req = net.request(1);
        for body in bodies {
            let reply = Reply { view: 0, gateway: req.gateway, number: 1, request: req.digest(), body };
            let sealed = Signed::seal(reply, &net.network(), &net.replicas[0]);
            let opened = Signed::<Reply>::open(sealed.bytes(), &net.network(), &net.members);
            assert!(matches!(opened, Err(OpenError::Invalid(_))));
        }
    }

    #[test]
    fn request_digest_depends_on_every_field_but_not_on_the_signer() {
        let net = Net::new();
        let base = net.request(1);
        let mut other_number = base.clone();
        other_number.number = 2;
        let mut no_delivery = base.clone();
        no_delivery.delivery = None;
        let digests = [&base, &other_number, &no_delivery].map(Request::digest);
        assert_ne!(digests[0], digests[1]);
        assert_ne!(digests[0], digests[2]);
        let by_gateway = Signed::seal(base.clone(), &net.network(), &net.gateway);
        let by_replica = Signed::seal(base.clone(), &net.network(), &net.replicas[0]);
        assert_eq!(by_gateway.msg.digest(), by_replica.msg.digest());
        assert_ne!(by_gateway.envelope_digest(), by_replica.envelope_digest());
    }

    #[test]
    fn peer_requests_over_the_batch_bound_fail_their_check() {
        let many = vec![digest(1); BATCH_REQUESTS_MAX + 1];
        assert!(PeerRequest::Requests(many).check().is_err());
        let many = vec![SignedBytes(vec![]); 4 * BATCH_REQUESTS_MAX + 1];
        assert!(PeerRequest::Deliver(many).check().is_err());
        assert!(PeerRequest::Requests(vec![digest(1); BATCH_REQUESTS_MAX]).check().is_ok());
        let long_proof = vec![SignedBytes(vec![]); REPLICAS_MAX + 1];
        assert!(PeerRequest::State { proof: long_proof, state: vec![] }.check().is_err());
        assert!(PeerRequest::State { proof: vec![], state: vec![] }.check().is_ok());
    }

    #[test]
    fn job_logs_over_their_bounds_fail_their_check() {
        let step = |tail: usize, bytes: u64| StepLog {
            file: "0-test.log".into(),
            bytes,
            tail: vec![b'x'; tail],
            sha256: None,
        };
        let job = JobId { seq: 1, index: 0 };
        let ok = JobLogs { job, steps: vec![step(LOG_TAIL_BYTES_MAX, 1 << 30); LOGS_BYTES_MAX / LOG_TAIL_BYTES_MAX] };
        assert!(ok.check().is_ok());
        let mut over = ok.clone();
        over.steps.push(step(1, 1));
        assert_eq!(over.check(), Err("logs too long"));
        assert!(JobLogs { job, steps: vec![step(LOG_TAIL_BYTES_MAX + 1, 1 << 30)] }.check().is_err());
        assert!(JobLogs { job, steps: vec![step(10, 9)] }.check().is_err());
        let bad_sum = StepLog { sha256: Some("abc".into()), ..step(1, 1) };
        assert!(JobLogs { job, steps: vec![bad_sum] }.check().is_err());
    }
}
