//! Certificates: the proof that comes with a verdict.
//!
//! A certificate carries the signed bytes themselves: the gateway's request
//! and, per result, f + 1 result replies from distinct replicas. Anyone with
//! the membership re-checks every signature offline; f + 1 signers include at
//! least one correct replica, so at least one correct replica computed this
//! result for this request. A `disputed` verdict carries one set per result.
//! In JSON, signed byte strings are lowercase hex.

use serde::{Deserialize, Serialize};

use super::{limits::CERTIFICATE_SETS_MAX, NetworkId};
use super::{Digest, JobId, Reply, ReplyBody, Request, Signed, Verifier};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// Network id, hex.
    pub network: String,
    /// The request's signed envelope, hex.
    pub request: String,
    pub sets: Vec<ResultSet>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultSet {
    /// Digest of the result these replies agree on, hex (checked, not trusted).
    pub result: String,
    /// Signed result replies, hex.
    pub replies: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("certificate is for network {got}, the membership's is {want}")]
    WrongNetwork { got: String, want: String },
    #[error("not hex: {0}")]
    Hex(&'static str),
    #[error("request: {0}")]
    Request(String),
    #[error("result set {set}: {reason}")]
    Set { set: usize, reason: String },
    #[error("a certificate holds 1 to {CERTIFICATE_SETS_MAX} result sets, this one {0}")]
    SetCount(usize),
}

/// What a verified certificate states.
#[derive(Debug, Clone)]
pub struct Verified {
    pub request: Request,
    pub job: JobId,
    pub results: Vec<(Digest, super::JobResult)>,
}

/// The facts a certificate is checked against: who the replicas are and how
/// many make f + 1. Implemented by the membership.
pub trait Roster: Verifier {
    fn network_id(&self) -> NetworkId;
    fn is_replica(&self, peer: &libp2p_identity::PeerId) -> bool;
    fn is_gateway(&self, peer: &libp2p_identity::PeerId) -> bool;
    fn f(&self) -> usize;
}

impl Certificate {
    pub fn new(
        network: &NetworkId,
        request: &[u8],
        sets: Vec<(Digest, Vec<Vec<u8>>)>,
    ) -> Certificate {
        Certificate {
            network: network.0.to_hex(),
            request: hex::encode(request),
            sets: sets
                .into_iter()
                .map(|(d, rs)| ResultSet {
                    result: d.to_hex(),
                    replies: rs.iter().map(hex::encode).collect(),
                })
                .collect(),
        }
    }

    /// Checks every signature and every agreement the certificate claims.
    pub fn verify(&self, roster: &dyn Roster) -> Result<Verified, CertificateError> {
        let network = roster.network_id();
        if self.network != network.0.to_hex() {
            return Err(CertificateError::WrongNetwork {
                got: self.network.clone(),
                want: network.0.to_hex(),
            });
        }
        if self.sets.is_empty() || self.sets.len() > CERTIFICATE_SETS_MAX {
            return Err(CertificateError::SetCount(self.sets.len()));
        }
        let bytes = hex::decode(&self.request).map_err(|_| CertificateError::Hex("request"))?;
        let request = Signed::<Request>::open(&bytes, &network, roster)
            .map_err(|e| CertificateError::Request(e.to_string()))?;
        if request.signer != request.msg.gateway {
            return Err(CertificateError::Request(
                "signed by someone other than its gateway".into(),
            ));
        }
        if !roster.is_gateway(&request.signer) {
            return Err(CertificateError::Request(format!(
                "{} is not a gateway of this network",
                request.signer
            )));
        }
        let request_digest = request.msg.digest();
        let mut job = None;
        let mut results = Vec::new();
        for (i, set) in self.sets.iter().enumerate() {
            let err = |reason: String| CertificateError::Set { set: i, reason };
            let mut signers = std::collections::BTreeSet::new();
            let mut agreed: Option<(Digest, super::JobResult)> = None;
            for (k, hexed) in set.replies.iter().enumerate() {
                let bytes = hex::decode(hexed).map_err(|_| CertificateError::Hex("reply"))?;
                let reply = Signed::<Reply>::open(&bytes, &network, roster)
                    .map_err(|e| err(format!("reply {k}: {e}")))?;
                if !roster.is_replica(&reply.signer) {
                    return Err(err(format!("reply {k}: {} is not a replica", reply.signer)));
                }
                if !signers.insert(reply.signer) {
                    return Err(err(format!("reply {k}: {} counted twice", reply.signer)));
                }
                let r = reply.msg;
                if r.request != request_digest
                    || r.gateway != request.msg.gateway
                    || r.number != request.msg.number
                {
                    return Err(err(format!("reply {k} answers another request")));
                }
                let ReplyBody::Result { job: j, result } = r.body else {
                    return Err(err(format!("reply {k} is not a result")));
                };
                if *job.get_or_insert(j) != j {
                    return Err(err(format!(
                        "reply {k} names job {j}, not {}",
                        job.unwrap()
                    )));
                }
                let d = result.digest();
                match &agreed {
                    None => agreed = Some((d, result)),
                    Some((a, _)) if *a != d => {
                        return Err(err(format!("reply {k} reports another result")))
                    }
                    Some(_) => {}
                }
            }
            let need = roster.f() + 1;
            if signers.len() < need {
                return Err(err(format!(
                    "{} distinct replicas signed, f + 1 = {need} needed",
                    signers.len()
                )));
            }
            let (d, result) = agreed.expect("at least one reply");
            if set.result != d.to_hex() {
                return Err(err(
                    "its stated result digest does not match the replies".into()
                ));
            }
            if results.iter().any(|(o, _)| *o == d) {
                return Err(err("the same result appears in two sets".into()));
            }
            results.push((d, result));
        }
        Ok(Verified {
            request: request.msg,
            job: job.expect("one set at least"),
            results,
        })
    }
}
