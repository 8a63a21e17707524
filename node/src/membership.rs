//! The membership file: who counts. Discovery only finds addresses; the
//! replicas (in their fixed order), the gateways allowed to submit jobs and
//! the repositories the network may fetch are fixed here.
//!
//! ```toml
//! name = "testnet"                     # part of the network id
//! repos = ["file:///srv/git/", "https://git.example.org/team/"]  # URL prefixes
//!
//! [[replicas]]                          # order matters: primary of view v is v mod n
//! peer_id = "12D3KooW..."
//! addr = "/ip4/127.0.0.1/tcp/7000"      # optional, a first address to dial
//!
//! [[gateways]]
//! peer_id = "12D3KooW..."
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

use libp2p_identity::{PeerId, PublicKey};
use serde::{Deserialize, Serialize};

use crate::pbft::quorum::Quorum;
use crate::wire::public_key_of;
use crate::wire::{limits, Digest, NetworkId, Roster, Verifier};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub peer_id: PeerId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: String,
    #[serde(default)]
    repos: Vec<String>,
    replicas: Vec<Member>,
    #[serde(default)]
    gateways: Vec<Member>,
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("parsing the membership file: {0}")]
    Parse(String),
    #[error("{0}")]
    Invalid(String),
}

/// A parsed, checked membership with the members' public keys decoded once.
#[derive(Clone, Debug)]
pub struct Membership {
    pub name: String,
    pub replicas: Vec<Member>,
    pub gateways: Vec<Member>,
    pub repos: Vec<String>,
    network: NetworkId,
    quorum: Quorum,
    keys: HashMap<PeerId, PublicKey>,
    index: HashMap<PeerId, usize>,
    roots: Arc<VerifiedRoots>,
}

impl Membership {
    pub fn load(path: &Path) -> Result<Membership, MembershipError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| MembershipError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Membership, MembershipError> {
        let file: File = toml::from_str(text).map_err(|e| MembershipError::Parse(e.to_string()))?;
        Self::new(file.name, file.replicas, file.gateways, file.repos)
    }

    pub fn new(
        name: String,
        replicas: Vec<Member>,
        gateways: Vec<Member>,
        repos: Vec<String>,
    ) -> Result<Membership, MembershipError> {
        let n = replicas.len();
        if !(4..=limits::REPLICAS_MAX).contains(&n) || (n - 1) % 3 != 0 {
            return Err(MembershipError::Invalid(format!(
                "a network has n = 3f + 1 replicas (4, 7, 10, … up to {}); this file lists {n}",
                limits::REPLICAS_MAX
            )));
        }
        if gateways.len() > limits::GATEWAYS_MAX {
            return Err(MembershipError::Invalid(format!("at most {} gateways", limits::GATEWAYS_MAX)));
        }
        let mut keys = HashMap::new();
        let mut index = HashMap::new();
        for (i, m) in replicas.iter().chain(gateways.iter()).enumerate() {
            let key = public_key_of(&m.peer_id).ok_or_else(|| {
                MembershipError::Invalid(format!("{} is not an ed25519 peer id (its key must be inline)", m.peer_id))
            })?;
            if keys.insert(m.peer_id, key).is_some() {
                return Err(MembershipError::Invalid(format!("{} is listed twice", m.peer_id)));
            }
            if i < n {
                index.insert(m.peer_id, i);
            }
        }
        let ids: Vec<PeerId> = replicas.iter().map(|m| m.peer_id).collect();
        let network = NetworkId::new(&name, &ids);
        Ok(Membership {
            name,
            replicas,
            gateways,
            repos,
            network,
            quorum: Quorum::new(n),
            keys,
            index,
            roots: Arc::default(),
        })
    }

    pub fn to_toml(&self) -> String {
        let file = File {
            name: self.name.clone(),
            repos: self.repos.clone(),
            replicas: self.replicas.clone(),
            gateways: self.gateways.clone(),
        };
        toml::to_string_pretty(&file).expect("membership encodes")
    }

    pub fn network_id(&self) -> NetworkId {
        self.network
    }

    pub fn quorum(&self) -> Quorum {
        self.quorum
    }

    pub fn replica_ids(&self) -> Vec<PeerId> {
        self.replicas.iter().map(|m| m.peer_id).collect()
    }

    /// The replica's index in the fixed order.
    pub fn replica_index(&self, peer: &PeerId) -> Option<usize> {
        self.index.get(peer).copied()
    }

    pub fn is_gateway_peer(&self, peer: &PeerId) -> bool {
        self.gateways.iter().any(|g| g.peer_id == *peer)
    }

    /// Whether `url` is on the repository allow-list: equal to an entry, or
    /// under an entry that ends in `/`. A URL with a `.` or `..` path segment
    /// (plain, percent-encoded or behind a backslash) is refused outright:
    /// git and curl resolve those, so `prefix/../elsewhere` would climb out of
    /// the prefix it matches as a string.
    pub fn repo_allowed(&self, url: &str) -> bool {
        let lower = url.to_ascii_lowercase();
        let dotted = lower.contains("%2e") || lower.split(['/', '\\']).any(|segment| segment == "." || segment == "..");
        !dotted && self.repos.iter().any(|p| url == p || (p.ends_with('/') && url.starts_with(p.as_str())))
    }
}

impl Verifier for Membership {
    fn verify(&self, signer: &PeerId, msg: &[u8], sig: &[u8]) -> bool {
        self.keys.get(signer).is_some_and(|k| k.verify(msg, sig))
    }

    fn verify_root(&self, signer: &PeerId, msg: &[u8], sig: &[u8]) -> bool {
        let seen = Digest::of_parts(b"pbft-ci/verified-root", &[&signer.to_bytes(), msg, sig]);
        if self.roots.contains(&seen) {
            return true;
        }
        let good = self.verify(signer, msg, sig);
        if good {
            self.roots.insert(seen);
        }
        good
    }
}

/// Batch roots whose signature this membership checked, the newest
/// [`VERIFIED_ROOTS_MAX`]: the envelopes of one batch (a round's replies, a
/// bundle of requests) arrive together, each opened alone.
#[derive(Debug, Default)]
struct VerifiedRoots(Mutex<(HashSet<Digest>, VecDeque<Digest>)>);

const VERIFIED_ROOTS_MAX: usize = 1024;

impl VerifiedRoots {
    fn contains(&self, d: &Digest) -> bool {
        self.0.lock().expect("verified roots lock").0.contains(d)
    }

    fn insert(&self, d: Digest) {
        let mut g = self.0.lock().expect("verified roots lock");
        let (set, order) = &mut *g;
        if set.insert(d) {
            order.push_back(d);
            if order.len() > VERIFIED_ROOTS_MAX {
                if let Some(old) = order.pop_front() {
                    set.remove(&old);
                }
            }
        }
    }
}

impl Roster for Membership {
    fn network_id(&self) -> NetworkId {
        self.network
    }
    fn is_replica(&self, peer: &PeerId) -> bool {
        self.index.contains_key(peer)
    }
    fn is_gateway(&self, peer: &PeerId) -> bool {
        self.is_gateway_peer(peer)
    }
    fn f(&self) -> usize {
        self.quorum.f
    }
}

#[cfg(test)]
mod tests {
    use libp2p_identity::Keypair;

    use super::*;

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| Keypair::generate_ed25519().public().to_peer_id()).collect()
    }

    fn toml_of(name: &str, replicas: &[PeerId], gateways: &[PeerId]) -> String {
        let mut s = format!("name = \"{name}\"\nrepos = [\"file:///srv/git/\"]\n");
        for p in replicas {
            s += &format!("\n[[replicas]]\npeer_id = \"{p}\"\n");
        }
        for p in gateways {
            s += &format!("\n[[gateways]]\npeer_id = \"{p}\"\n");
        }
        s
    }

    #[test]
    fn the_documented_format_parses() {
        let r = peers(4);
        let g = peers(1);
        let text = format!(
            r#"
name = "testnet"                     # part of the network id
repos = ["file:///srv/git/", "https://git.example.org/team/"]  # URL prefixes

[[replicas]]                          # order matters: primary of view v is v mod n
peer_id = "{}"
addr = "/ip4/127.0.0.1/tcp/7000"      # optional, a first address to dial

[[replicas]]
peer_id = "{}"

[[replicas]]
peer_id = "{}"

[[replicas]]
peer_id = "{}"

[[gateways]]
peer_id = "{}"
"#,
            r[0], r[1], r[2], r[3], g[0]
        );
        let m = Membership::parse(&text).unwrap();
        assert_eq!(m.name, "testnet");
        assert_eq!(m.replica_ids(), r);
        assert_eq!(m.replicas[0].addr.as_deref(), Some("/ip4/127.0.0.1/tcp/7000"));
        assert_eq!(m.replica_index(&r[2]), Some(2));
        assert_eq!(m.replica_index(&g[0]), None);
        assert!(m.is_gateway_peer(&g[0]));
        assert!(m.is_replica(&r[3]) && !m.is_replica(&g[0]));
        assert!(!m.is_gateway_peer(&r[0]));
        assert_eq!((m.quorum().n, m.f()), (4, 1));
        assert_eq!(m.network_id(), NetworkId::new("testnet", &r));
    }

    #[test]
    fn to_toml_parses_back_to_the_same_network() {
        let m = Membership::parse(&toml_of("net", &peers(7), &peers(2))).unwrap();
        let back = Membership::parse(&m.to_toml()).unwrap();
        assert_eq!(back.network_id(), m.network_id());
        assert_eq!(back.replica_ids(), m.replica_ids());
        assert_eq!(back.gateways.len(), 2);
        assert_eq!(back.f(), 2);
    }

    #[test]
    fn a_replica_count_other_than_3f_plus_1_is_rejected() {
        // No [[replicas]] at all is a parse error (the list is required).
        assert!(Membership::parse(&toml_of("net", &[], &[])).is_err());
        for n in [1, 2, 3, 5, 6, 8, 9, 11] {
            let err = Membership::parse(&toml_of("net", &peers(n), &[])).unwrap_err();
            assert!(matches!(err, MembershipError::Invalid(_)), "n = {n}");
        }
        for n in [4, 7, 10] {
            assert!(Membership::parse(&toml_of("net", &peers(n), &[])).is_ok());
        }
    }

    #[test]
    fn a_peer_listed_twice_is_rejected() {
        let mut r = peers(4);
        r[3] = r[1];
        let err = Membership::parse(&toml_of("net", &r, &[])).unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
        let r = peers(4);
        let err = Membership::parse(&toml_of("net", &r, &[r[0]])).unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
    }

    #[test]
    fn a_peer_id_without_an_inline_ed25519_key_is_rejected() {
        // A sha256 multihash peer id (as RSA keys get) names no key we can use.
        let mut sha256 = vec![0x12, 0x20];
        sha256.extend_from_slice(&[7; 32]);
        let mut r = peers(3);
        r.push(PeerId::from_bytes(&sha256).unwrap());
        assert!(Membership::parse(&toml_of("net", &r, &[])).is_err());
    }

    #[test]
    fn unknown_fields_and_bad_peer_ids_are_rejected() {
        let r = peers(4);
        let text = toml_of("net", &r, &[]) + "colour = \"blue\"\n";
        assert!(matches!(Membership::parse(&text), Err(MembershipError::Parse(_))));
        let text = toml_of("net", &r, &[]).replace(&r[0].to_string(), "12D3KooWnotapeer");
        assert!(matches!(Membership::parse(&text), Err(MembershipError::Parse(_))));
    }

    #[test]
    fn the_network_id_ignores_formatting_addresses_and_gateways() {
        let r = peers(4);
        let base = Membership::parse(&toml_of("net", &r, &[])).unwrap();
        // Same content, other layout: inline tables, comments, key order.
        let reformatted = format!(
            "# our network\nreplicas = [\n  {{ peer_id = \"{}\", addr = \"/ip4/10.0.0.1/tcp/7000\" }},\n  {{ peer_id = \"{}\" }},\n  {{ peer_id = \"{}\" }},\n  {{ peer_id = \"{}\" }},\n]\nrepos = []\nname   =   'net'\n",
            r[0], r[1], r[2], r[3]
        );
        let m = Membership::parse(&reformatted).unwrap();
        assert_eq!(m.network_id(), base.network_id());
        let with_gateways = Membership::parse(&toml_of("net", &r, &peers(3))).unwrap();
        assert_eq!(with_gateways.network_id(), base.network_id());
    }

    #[test]
    fn the_network_id_changes_with_replica_order_membership_or_name() {
        let r = peers(4);
        let base = Membership::parse(&toml_of("net", &r, &[])).unwrap();
        let mut reordered = r.clone();
        reordered.swap(0, 1);
        let mut replaced = r.clone();
        replaced[3] = peers(1)[0];
        for other in [toml_of("net", &reordered, &[]), toml_of("net", &replaced, &[]), toml_of("net2", &r, &[])] {
            let m = Membership::parse(&other).unwrap();
            assert_ne!(m.network_id(), base.network_id());
        }
    }

    fn with_repos(repos: &[&str]) -> Membership {
        let r = peers(4);
        let members = r.iter().map(|p| Member { peer_id: *p, addr: None }).collect();
        let repos = repos.iter().map(|s| s.to_string()).collect();
        Membership::new("net".into(), members, vec![], repos).unwrap()
    }

    #[test]
    fn a_repo_prefix_ending_in_a_slash_allows_what_lies_under_it() {
        let m = with_repos(&["https://git.example.org/team/", "file:///srv/git/"]);
        assert!(m.repo_allowed("https://git.example.org/team/app.git"));
        assert!(m.repo_allowed("https://git.example.org/team/sub/app"));
        assert!(m.repo_allowed("https://git.example.org/team/"));
        assert!(m.repo_allowed("file:///srv/git/app"));
        assert!(!m.repo_allowed("https://git.example.org/team"));
        assert!(!m.repo_allowed("https://git.example.org/teamster/app.git"));
        assert!(!m.repo_allowed("https://git.example.org/other/app.git"));
        assert!(!m.repo_allowed("http://git.example.org/team/app.git"));
        assert!(!m.repo_allowed("file:///srv/gitx/app"));
        assert!(!m.repo_allowed(""));
    }

    #[test]
    fn a_repo_entry_without_a_trailing_slash_is_exact() {
        let m = with_repos(&["https://git.example.org/team/app.git"]);
        assert!(m.repo_allowed("https://git.example.org/team/app.git"));
        assert!(!m.repo_allowed("https://git.example.org/team/app.git2"));
        assert!(!m.repo_allowed("https://git.example.org/team/app.git/x"));
        assert!(!m.repo_allowed("https://git.example.org/team/app"));
    }

    #[test]
    fn an_empty_allow_list_allows_nothing() {
        let m = with_repos(&[]);
        assert!(!m.repo_allowed("file:///srv/git/app"));
    }

    #[test]
    fn a_repo_url_cannot_climb_out_of_its_prefix() {
        let m = with_repos(&["https://git.example.org/team/", "file:///srv/git/"]);
        for url in [
            "file:///srv/git/../../etc/secret",
            "file:///srv/git/app/../../other",
            "https://git.example.org/team/../admin/repo.git",
            "https://git.example.org/team/./../admin",
            "https://git.example.org/team/%2e%2e/admin",
            "https://git.example.org/team/%2E%2E/admin",
            "file:///srv/git/..",
            "file:///srv/git/..\\..\\etc",
        ] {
            assert!(!m.repo_allowed(url), "{url}");
        }
        assert!(m.repo_allowed("https://git.example.org/team/app..v2.git"));
    }
}
