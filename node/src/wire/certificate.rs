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
    pub fn new(network: &NetworkId, request: &[u8], sets: Vec<(Digest, Vec<Vec<u8>>)>) -> Certificate {
        Certificate {
            network: network.0.to_hex(),
            request: hex::encode(request),
            sets: sets
                .into_iter()
                .map(|(d, rs)| ResultSet { result: d.to_hex(), replies: rs.iter().map(hex::encode).collect() })
                .collect(),
        }
    }

    /// Checks every signature and every agreement the certificate claims.
    pub fn verify(&self, roster: &dyn Roster) -> Result<Verified, CertificateError> {
        let network = roster.network_id();
        if self.network != network.0.to_hex() {
            return Err(CertificateError::WrongNetwork { got: self.network.clone(), want: network.0.to_hex() });
        }
        if self.sets.is_empty() || self.sets.len() > CERTIFICATE_SETS_MAX {
            return Err(CertificateError::SetCount(self.sets.len()));
        }
        let bytes = hex::decode(&self.request).map_err(|_| CertificateError::Hex("request"))?;
        let request =
            Signed::<Request>::open(&bytes, &network, roster).map_err(|e| CertificateError::Request(e.to_string()))?;
        if request.signer != request.msg.gateway {
            return Err(CertificateError::Request("signed by someone other than its gateway".into()));
        }
        if !roster.is_gateway(&request.signer) {
            return Err(CertificateError::Request(format!("{} is not a gateway of this network", request.signer)));
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
                let reply =
                    Signed::<Reply>::open(&bytes, &network, roster).map_err(|e| err(format!("reply {k}: {e}")))?;
                if !roster.is_replica(&reply.signer) {
                    return Err(err(format!("reply {k}: {} is not a replica", reply.signer)));
                }
                if !signers.insert(reply.signer) {
                    return Err(err(format!("reply {k}: {} counted twice", reply.signer)));
                }
                let r = reply.msg;
                if r.request != request_digest || r.gateway != request.msg.gateway || r.number != request.msg.number {
                    return Err(err(format!("reply {k} answers another request")));
                }
                let ReplyBody::Result { job: j, result } = r.body else {
                    return Err(err(format!("reply {k} is not a result")));
                };
                if *job.get_or_insert(j) != j {
                    return Err(err(format!("reply {k} names job {j}, not {}", job.unwrap())));
                }
                let d = result.digest();
                match &agreed {
                    None => agreed = Some((d, result)),
                    Some((a, _)) if *a != d => return Err(err(format!("reply {k} reports another result"))),
                    Some(_) => {}
                }
            }
            let need = roster.f() + 1;
            if signers.len() < need {
                return Err(err(format!("{} distinct replicas signed, f + 1 = {need} needed", signers.len())));
            }
            let (d, result) = agreed.expect("at least one reply");
            if set.result != d.to_hex() {
                return Err(err("its stated result digest does not match the replies".into()));
            }
            if results.iter().any(|(o, _)| *o == d) {
                return Err(err("the same result appears in two sets".into()));
            }
            results.push((d, result));
        }
        Ok(Verified { request: request.msg, job: job.expect("one set at least"), results })
    }
}

#[cfg(test)]
mod tests {
    use libp2p_identity::Keypair;

    use super::*;
    use crate::wire::testkit::*;
    use crate::wire::JobResult;

    /// A certificate for request 1 with one result set, signed by the
    /// replicas `signers` (f + 1 = 2 of them for a valid one).
    fn certificate(net: &Net, signers: &[usize], result: &JobResult) -> Certificate {
        let req = net.seal_request(1);
        let replies = signers.iter().map(|&i| net.result_reply(i, &req.msg, result).bytes().to_vec()).collect();
        Certificate::new(&net.network(), req.bytes(), vec![(result.digest(), replies)])
    }

    /// Replaces the hex string `field` by the hex of its bytes with byte `i`
    /// flipped.
    fn flip_hex(field: &mut String, i: usize) {
        let mut bytes = hex::decode(&*field).unwrap();
        bytes[i] ^= 0x01;
        *field = hex::encode(bytes);
    }

    #[test]
    fn a_certificate_with_f_plus_one_results_verifies() {
        let net = Net::new();
        let cert = certificate(&net, &[0, 2], &passed());
        let v = cert.verify(&net.members).expect("valid");
        assert_eq!(v.request, net.request(1));
        assert_eq!(v.job, JobId { seq: 1, index: 0 });
        assert_eq!(v.results, vec![(passed().digest(), passed())]);
    }

    #[test]
    fn all_n_results_verify_too() {
        let net = Net::new();
        certificate(&net, &[3, 2, 1, 0], &failed()).verify(&net.members).expect("valid");
    }

    #[test]
    fn tampering_any_byte_of_the_request_fails() {
        let net = Net::new();
        let cert = certificate(&net, &[0, 1], &passed());
        for i in 0..cert.request.len() / 2 {
            let mut bad = cert.clone();
            flip_hex(&mut bad.request, i);
            assert!(bad.verify(&net.members).is_err(), "request byte {i}");
        }
    }

    #[test]
    fn tampering_any_byte_of_a_reply_fails() {
        let net = Net::new();
        let cert = certificate(&net, &[0, 1], &passed());
        for k in 0..2 {
            for i in 0..cert.sets[0].replies[k].len() / 2 {
                let mut bad = cert.clone();
                flip_hex(&mut bad.sets[0].replies[k], i);
                assert!(bad.verify(&net.members).is_err(), "reply {k} byte {i}");
            }
        }
    }

    #[test]
    fn a_wrong_stated_result_digest_or_bad_hex_fails() {
        let net = Net::new();
        let cert = certificate(&net, &[0, 1], &passed());
        let mut bad = cert.clone();
        bad.sets[0].result = failed().digest().to_hex();
        assert!(bad.verify(&net.members).is_err());
        let mut bad = cert.clone();
        bad.request.push('0');
        assert!(matches!(bad.verify(&net.members), Err(CertificateError::Hex("request"))));
        let mut bad = cert;
        bad.sets[0].replies[1].replace_range(0..2, "zz");
        assert!(matches!(bad.verify(&net.members), Err(CertificateError::Hex("reply"))));
    }

    #[test]
    fn only_f_results_fail() {
        let net = Net::new();
        let err = certificate(&net, &[0], &passed()).verify(&net.members).unwrap_err();
        assert!(err.to_string().contains("f + 1 = 2 needed"), "{err}");
    }

    #[test]
    fn the_same_replica_counted_twice_fails() {
        let net = Net::new();
        let err = certificate(&net, &[1, 1], &passed()).verify(&net.members).unwrap_err();
        assert!(err.to_string().contains("counted twice"), "{err}");
    }

    #[test]
    fn results_for_another_request_fail() {
        let net = Net::new();
        let req = net.seal_request(1);
        let other = net.request(2);
        let replies = (0..2).map(|i| net.result_reply(i, &other, &passed()).bytes().to_vec()).collect();
        let cert = Certificate::new(&net.network(), req.bytes(), vec![(passed().digest(), replies)]);
        let err = cert.verify(&net.members).unwrap_err();
        assert!(err.to_string().contains("answers another request"), "{err}");
    }

    #[test]
    fn a_reply_that_is_not_a_result_fails() {
        let net = Net::new();
        let req = net.seal_request(1);
        let replies = (0..2)
            .map(|i| {
                let reply = Reply {
                    view: 0,
                    gateway: req.msg.gateway,
                    number: 1,
                    request: req.msg.digest(),
                    body: ReplyBody::Accepted { job: JobId { seq: 1, index: 0 } },
                };
                Signed::seal(reply, &net.network(), &net.replicas[i]).bytes().to_vec()
            })
            .collect();
        let cert = Certificate::new(&net.network(), req.bytes(), vec![(passed().digest(), replies)]);
        assert!(cert.verify(&net.members).is_err());
    }

    #[test]
    fn a_result_signed_by_the_gateway_fails() {
        let net = Net::new();
        let req = net.seal_request(1);
        let reply = net.result_reply(0, &req.msg, &passed()).msg;
        let by_gateway = Signed::seal(reply, &net.network(), &net.gateway);
        let replies = vec![net.result_reply(0, &req.msg, &passed()).bytes().to_vec(), by_gateway.bytes().to_vec()];
        let cert = Certificate::new(&net.network(), req.bytes(), vec![(passed().digest(), replies)]);
        let err = cert.verify(&net.members).unwrap_err();
        assert!(err.to_string().contains("is not a replica"), "{err}");
    }

    #[test]
    fn a_request_not_signed_by_a_gateway_fails() {
        let net = Net::new();
        // A replica signs a request naming itself as gateway.
        let r0: &Keypair = &net.replicas[0];
        let mut msg = net.request(1);
        msg.gateway = r0.public().to_peer_id();
        let req = Signed::seal(msg, &net.network(), r0);
        let replies = (1..3).map(|i| net.result_reply(i, &req.msg, &passed()).bytes().to_vec()).collect();
        let cert = Certificate::new(&net.network(), req.bytes(), vec![(passed().digest(), replies)]);
        assert!(matches!(cert.verify(&net.members), Err(CertificateError::Request(_))));
    }

    #[test]
    fn a_certificate_of_another_network_fails() {
        let net = Net::new();
        let other = Net::new();
        let cert = certificate(&net, &[0, 1], &passed());
        assert!(matches!(cert.verify(&other.members), Err(CertificateError::WrongNetwork { .. })));
    }

    #[test]
    fn a_disputed_certificate_with_two_results_verifies() {
        let net = Net::new();
        let req = net.seal_request(1);
        let set = |signers: [usize; 2], result: &JobResult| {
            let replies = signers.iter().map(|&i| net.result_reply(i, &req.msg, result).bytes().to_vec()).collect();
            (result.digest(), replies)
        };
        let cert = Certificate::new(&net.network(), req.bytes(), vec![set([0, 1], &passed()), set([2, 3], &failed())]);
        let v = cert.verify(&net.members).expect("valid");
        assert_eq!(v.results, vec![(passed().digest(), passed()), (failed().digest(), failed())]);
        // The same result twice is not a dispute.
        let twice = Certificate::new(&net.network(), req.bytes(), vec![set([0, 1], &passed()), set([2, 3], &passed())]);
        assert!(twice.verify(&net.members).is_err());
    }

    #[test]
    fn a_set_mixing_two_results_fails() {
        let net = Net::new();
        let req = net.seal_request(1);
        let replies = vec![
            net.result_reply(0, &req.msg, &passed()).bytes().to_vec(),
            net.result_reply(1, &req.msg, &failed()).bytes().to_vec(),
        ];
        let cert = Certificate::new(&net.network(), req.bytes(), vec![(passed().digest(), replies)]);
        assert!(cert.verify(&net.members).is_err());
    }

    #[test]
    fn no_result_set_or_too_many_fails() {
        let net = Net::new();
        let mut cert = certificate(&net, &[0, 1], &passed());
        let set = cert.sets[0].clone();
        cert.sets.clear();
        assert!(matches!(cert.verify(&net.members), Err(CertificateError::SetCount(0))));
        cert.sets = vec![set; CERTIFICATE_SETS_MAX + 1];
        assert!(matches!(cert.verify(&net.members), Err(CertificateError::SetCount(_))));
    }

    #[test]
    fn a_certificate_round_trips_through_json_with_lowercase_hex() {
        let net = Net::new();
        let cert = certificate(&net, &[1, 3], &passed());
        let json = serde_json::to_string_pretty(&cert).unwrap();
        let hex_fields = [&cert.network, &cert.request, &cert.sets[0].replies[0]];
        for h in hex_fields {
            assert!(h.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')));
            assert!(json.contains(h.as_str()));
        }
        let back: Certificate = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cert);
        back.verify(&net.members).expect("still valid");
        let unknown = json.replacen('{', "{\"extra\": 1,", 1);
        assert!(serde_json::from_str::<Certificate>(&unknown).is_err());
    }
}
