//! What may enter from the network: every signed message is opened here, once,
//! before gossipsub forwards it or the driver sees it. Bytes that do not
//! decode, are over a bound, belong to another network, carry a bad signature,
//! or come from a member in the wrong role (a request not from a gateway, a
//! protocol message or a reply not from a replica) are refused; gossipsub then
//! rejects the message, penalises the peer that forwarded it and never passes
//! it on.

use std::sync::Arc;

use super::topics::Channel;
use crate::membership::Membership;
use crate::pbft::Message;
use crate::wire::{limits, Envelope, Kind, OpenError, Reply, Request, RequestBundle, Signed};

/// A signed message that passed every check.
#[derive(Clone, Debug)]
pub enum Opened {
    Request(Signed<Request>),
    Message(Message),
    Reply(Signed<Reply>),
}

impl Opened {
    /// The topic this message travels on.
    pub fn channel(&self) -> Channel {
        match self {
            Opened::Request(_) => Channel::Requests,
            Opened::Reply(_) => Channel::Replies,
            Opened::Message(_) => Channel::Consensus,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            Opened::Request(_) => "request",
            Opened::Reply(_) => "reply",
            Opened::Message(_) => "protocol message",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error("{len} bytes, over the bound of {max}")]
    TooLarge { len: usize, max: usize },
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("a {kind:?} message on the {channel:?} topic")]
    WrongTopic { kind: Kind, channel: Channel },
    #[error("a {kind:?} message signed by {signer}, who is not a {role}")]
    WrongRole { kind: Kind, signer: String, role: &'static str },
    #[error("a request signed by {signer} in the name of gateway {named}")]
    NotOwnRequest { signer: String, named: String },
}

/// Opens `bytes` as a signed message of `membership`'s network. `channel`:
/// the topic it came on, if it came by gossip.
pub fn open(bytes: &[u8], channel: Option<Channel>, membership: &Membership) -> Result<Opened, Invalid> {
    if bytes.len() > limits::ENVELOPE_BYTES_MAX {
        return Err(Invalid::TooLarge { len: bytes.len(), max: limits::ENVELOPE_BYTES_MAX });
    }
    let env = Envelope::open(bytes, &membership.network_id(), membership)?;
    let kind = env.kind;
    if let Some(channel) = channel {
        if Channel::of(kind) != channel {
            return Err(Invalid::WrongTopic { kind, channel });
        }
    }
    let signer = env.signer;
    let wrong_role = |role| Invalid::WrongRole { kind, signer: signer.to_string(), role };
    let shared: Arc<[u8]> = bytes.into();
    match kind {
        Kind::Request => {
            if !membership.is_gateway_peer(&signer) {
                return Err(wrong_role("gateway"));
            }
            let req = Signed::<Request>::from_envelope(env, shared)?;
            // A gateway's de-duplication window is its own: no one else may
            // spend its request numbers.
            if req.msg.gateway != signer {
                return Err(Invalid::NotOwnRequest { signer: signer.to_string(), named: req.msg.gateway.to_string() });
            }
            Ok(Opened::Request(req))
        }
        Kind::Reply => {
            if membership.replica_index(&signer).is_none() {
                return Err(wrong_role("replica"));
            }
            Ok(Opened::Reply(Signed::from_envelope(env, shared)?))
        }
        _ => {
            if membership.replica_index(&signer).is_none() {
                return Err(wrong_role("replica"));
            }
            Ok(Opened::Message(Message::from_envelope(env, shared)?))
        }
    }
}

/// Messages opened recently, by the digest of their bytes: a retransmitted
/// or relayed copy of a message already checked is not checked again (a
/// digest costs a microsecond, a signature check some tens). Bounded; the
/// oldest are forgotten first.
pub struct Recent {
    opened: std::collections::HashMap<crate::wire::Digest, Opened>,
    order: std::collections::VecDeque<crate::wire::Digest>,
    max: usize,
}

impl Recent {
    pub fn new(max: usize) -> Recent {
        Recent { opened: Default::default(), order: Default::default(), max }
    }

    /// Opens what came by gossip on `channel`: one signed message, or on the
    /// requests topic a [`RequestBundle`], every request of which must open.
    pub fn open_gossip(
        &mut self,
        bytes: &[u8],
        channel: Channel,
        membership: &Membership,
    ) -> Result<Vec<Opened>, Invalid> {
        if channel == Channel::Requests && RequestBundle::looks_like(bytes) {
            let bundle = RequestBundle::decode(bytes).map_err(OpenError::from)?;
            return bundle.0.iter().map(|r| self.open(&r.0, Some(channel), membership)).collect();
        }
        self.open(bytes, Some(channel), membership).map(|opened| vec![opened])
    }

    /// [`open`], remembering what opened.
    pub fn open(&mut self, bytes: &[u8], channel: Option<Channel>, membership: &Membership) -> Result<Opened, Invalid> {
        if bytes.len() > limits::ENVELOPE_BYTES_MAX {
            return Err(Invalid::TooLarge { len: bytes.len(), max: limits::ENVELOPE_BYTES_MAX });
        }
        let digest = crate::wire::Digest::of_parts(b"pbft-ci/opened", &[bytes]);
        if let Some(opened) = self.opened.get(&digest) {
            if let Some(c) = channel.filter(|c| *c != opened.channel()) {
                return Err(Invalid::WrongTopic { kind: kind_of(opened), channel: c });
            }
            return Ok(opened.clone());
        }
        let opened = open(bytes, channel, membership)?;
        if self.order.len() == self.max {
            if let Some(old) = self.order.pop_front() {
                self.opened.remove(&old);
            }
        }
        self.order.push_back(digest);
        self.opened.insert(digest, opened.clone());
        Ok(opened)
    }
}

fn kind_of(opened: &Opened) -> Kind {
    match opened {
        Opened::Request(_) => Kind::Request,
        Opened::Reply(_) => Kind::Reply,
        Opened::Message(m) => match m {
            Message::PrePrepare(_) => Kind::PrePrepare,
            Message::Prepare(_) => Kind::Prepare,
            Message::Commit(_) => Kind::Commit,
            Message::Checkpoint(_) => Kind::Checkpoint,
            Message::ViewChange(_) => Kind::ViewChange,
            Message::NewView(_) => Kind::NewView,
        },
    }
}

#[cfg(test)]
mod tests {
    use libp2p_identity::Keypair;

    use super::*;
    use crate::membership::Member;
    use crate::wire::{Digest, Operation, Prepare, ReplyBody, SignedBytes};

    struct Net {
        replicas: Vec<Keypair>,
        gateway: Keypair,
        members: Membership,
    }

    fn net() -> Net {
        let replicas: Vec<Keypair> = (0..4).map(|_| Keypair::generate_ed25519()).collect();
        let gateway = Keypair::generate_ed25519();
        let m = |k: &Keypair| Member { peer_id: k.public().to_peer_id(), addr: None };
        let members = Membership::new("t".into(), replicas.iter().map(m).collect(), vec![m(&gateway)], vec![]).unwrap();
        Net { replicas, gateway, members }
    }

    fn request(n: &Net, by: &Keypair) -> Vec<u8> {
        let req = Request {
            gateway: by.public().to_peer_id(),
            number: 1,
            delivery: None,
            op: Operation::Run { repo: "file:///r".into(), git_ref: "master".into(), commit: None },
        };
        Signed::seal(req, &n.members.network_id(), by).bytes().to_vec()
    }

    fn prepare(n: &Net, by: &Keypair) -> Vec<u8> {
        let p = Prepare { view: 0, seq: 1, batch: Digest([7; 32]) };
        Signed::seal(p, &n.members.network_id(), by).bytes().to_vec()
    }

    #[test]
    fn members_in_their_roles_are_accepted() {
        let n = net();
        assert!(matches!(open(&request(&n, &n.gateway), Some(Channel::Requests), &n.members), Ok(Opened::Request(_))));
        assert!(matches!(
            open(&prepare(&n, &n.replicas[1]), Some(Channel::Consensus), &n.members),
            Ok(Opened::Message(_))
        ));
        let reply = Reply {
            view: 0,
            gateway: n.gateway.public().to_peer_id(),
            number: 1,
            request: Digest([1; 32]),
            body: ReplyBody::Accepted { job: crate::wire::JobId { seq: 1, index: 0 } },
        };
        let bytes = Signed::seal(reply, &n.members.network_id(), &n.replicas[2]).bytes().to_vec();
        assert!(matches!(open(&bytes, Some(Channel::Replies), &n.members), Ok(Opened::Reply(_))));
        assert!(matches!(open(&bytes, None, &n.members), Ok(Opened::Reply(_))));
    }

    #[test]
    fn wrong_roles_topics_and_outsiders_are_refused() {
        let n = net();
        let outsider = Keypair::generate_ed25519();
        let cases = [
            (request(&n, &n.replicas[0]), Channel::Requests),
            (prepare(&n, &n.gateway), Channel::Consensus),
            (prepare(&n, &n.replicas[0]), Channel::Requests),
            (prepare(&n, &outsider), Channel::Consensus),
            (request(&n, &outsider), Channel::Requests),
            (b"garbage".to_vec(), Channel::Consensus),
            (vec![0; limits::ENVELOPE_BYTES_MAX + 1], Channel::Consensus),
        ];
        for (bytes, channel) in cases {
            assert!(open(&bytes, Some(channel), &n.members).is_err());
        }
    }

    #[test]
    fn a_remembered_message_opens_again_but_not_on_another_topic() {
        let n = net();
        let mut recent = Recent::new(2);
        let req = request(&n, &n.gateway);
        assert!(recent.open(&req, Some(Channel::Requests), &n.members).is_ok());
        assert!(matches!(recent.open(&req, None, &n.members), Ok(Opened::Request(_))));
        assert!(matches!(recent.open(&req, Some(Channel::Consensus), &n.members), Err(Invalid::WrongTopic { .. })));
        // Bounded: older entries are forgotten, and still open the long way.
        for i in 1..4 {
            assert!(recent.open(&prepare(&n, &n.replicas[i]), None, &n.members).is_ok());
        }
        assert_eq!(recent.opened.len(), 2);
        assert!(recent.open(&req, None, &n.members).is_ok());
        assert!(recent.open(b"garbage", None, &n.members).is_err());
    }

    #[test]
    fn a_bundle_of_requests_opens_to_each_request_or_not_at_all() {
        let n = net();
        let mut recent = Recent::new(64);
        let numbered = |i: u64| {
            let req = Request {
                gateway: n.gateway.public().to_peer_id(),
                number: i,
                delivery: None,
                op: Operation::Run { repo: "file:///r".into(), git_ref: "master".into(), commit: None },
            };
            Signed::seal(req, &n.members.network_id(), &n.gateway).bytes().to_vec()
        };
        let reqs: Vec<Vec<u8>> = (1..=3).map(numbered).collect();
        let refs: Vec<&[u8]> = reqs.iter().map(|r| &r[..]).collect();
        let packed = RequestBundle::pack(&refs);
        assert_eq!(packed.len(), 1);
        let opened = recent.open_gossip(&packed[0], Channel::Requests, &n.members).unwrap();
        let numbers: Vec<u64> = opened
            .iter()
            .map(|o| match o {
                Opened::Request(r) => r.msg.number,
                other => panic!("not a request: {other:?}"),
            })
            .collect();
        assert_eq!(numbers, [1, 2, 3]);
        // A single request is published as itself, and opens as before.
        assert_eq!(RequestBundle::pack(&refs[..1]), vec![reqs[0].clone()]);
        assert_eq!(recent.open_gossip(&reqs[0], Channel::Requests, &n.members).unwrap().len(), 1);

        // One bad item spoils the bundle: a protocol message, a request by a
        // replica, a broken signature, garbage.
        let mut forged = numbered(4);
        let last = forged.len() - 1;
        forged[last] ^= 1;
        for bad in [prepare(&n, &n.replicas[0]), request(&n, &n.replicas[1]), forged, b"garbage".to_vec()] {
            let bundle = crate::wire::encode(&RequestBundle(vec![SignedBytes(numbered(5)), SignedBytes(bad)]));
            assert!(RequestBundle::looks_like(&bundle));
            assert!(recent.open_gossip(&bundle, Channel::Requests, &n.members).is_err());
        }
        // Empty, or over the count bound; and bundles only travel as requests.
        let empty = crate::wire::encode(&RequestBundle(Vec::new()));
        assert!(recent.open_gossip(&empty, Channel::Requests, &n.members).is_err());
        let many = vec![SignedBytes(numbered(6)); limits::BUNDLE_REQUESTS_MAX + 1];
        let many = crate::wire::encode(&RequestBundle(many));
        assert!(recent.open_gossip(&many, Channel::Requests, &n.members).is_err());
        assert!(recent.open_gossip(&packed[0], Channel::Consensus, &n.members).is_err());
        assert!(recent.open(&packed[0], None, &n.members).is_err());
    }

    #[test]
    fn pack_splits_at_the_count_bound() {
        let n = net();
        let one = request(&n, &n.gateway);
        let reqs = vec![&one[..]; limits::BUNDLE_REQUESTS_MAX + 1];
        let packed = RequestBundle::pack(&reqs);
        assert_eq!(packed.len(), 2);
        assert_eq!(RequestBundle::decode(&packed[0]).unwrap().0.len(), limits::BUNDLE_REQUESTS_MAX);
        assert_eq!(packed[1], one);
        assert!(RequestBundle::pack(&[]).is_empty());
    }

    #[test]
    fn a_request_in_another_gateways_name_is_refused() {
        let n = net();
        let req = Request {
            gateway: n.replicas[0].public().to_peer_id(),
            number: 1,
            delivery: None,
            op: Operation::Cancel { job: crate::wire::JobId { seq: 1, index: 0 } },
        };
        let bytes = Signed::seal(req, &n.members.network_id(), &n.gateway).bytes().to_vec();
        assert!(matches!(open(&bytes, None, &n.members), Err(Invalid::NotOwnRequest { .. })));
    }
}
