//! Intake: what a webhook delivery asks for, decided from its headers and
//! raw body alone. Pure: no clock, no disk, no network, so every provider's
//! quirks are table-tested with the payloads they really send.
//!
//! - the proof of concept's `{"branch": B}` (optional `repo`, `commit`):
//!   unsigned, so it may only name the gateway's own `--repo`;
//! - push events of GitHub, Gitea/Forgejo and GitLab, recognised by their
//!   event header, authenticated whenever a secret is configured.
//!
//! The outcome is a [`Submission`] to order, a [`Intake::Skip`] (answered,
//! never run: pings, deletions, `[skip ci]`, tags when not wanted, events
//! other than pushes), or an [`IntakeError`] with its HTTP status. Whether the
//! repository is on the network's allow-list is the gateway's check, not
//! this module's.

mod github;
mod gitlab;
mod poc;
pub mod signature;

use axum::http::{HeaderMap, StatusCode};
use pbft_node::wire::limits::{DELIVERY_BYTES_MAX, REPO_BYTES_MAX};

/// Git's refname rules and ours (no leading `-`, bounded length): the
/// replicas' own check, so both ends refuse the same refs.
pub fn check_ref(name: &str) -> Result<(), IntakeError> {
    pbft_node::ci::git::check_ref(name).map_err(IntakeError::Invalid)
}

/// What to order: a run of `repo` at `git_ref`, pinned to `commit` when known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submission {
    pub repo: String,
    pub git_ref: String,
    /// Lowercase hex, 40 or 64 digits.
    pub commit: Option<String>,
    /// The git host's delivery id: a redelivery carries the same one.
    pub delivery: Option<String>,
    /// Where the commit's status goes, for events of a host with a
    /// commit status API.
    pub forge: Option<Forge>,
}

/// A repository on a git host that takes commit statuses.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Forge {
    pub kind: ForgeKind,
    /// `owner/name`, checked to be safe in a URL path.
    pub repo: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ForgeKind {
    GitHub,
    /// Gitea and Forgejo (the same status API).
    Gitea,
}

/// `owner/name` as GitHub and Gitea allow them (letters, digits, `.`, `-`,
/// `_`): nothing that could change the API path it is put into.
fn forge_repo(full_name: &str) -> Option<String> {
    let (owner, name) = full_name.split_once('/')?;
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 100
            && p != "."
            && p != ".."
            && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    (part_ok(owner) && part_ok(name)).then(|| full_name.to_string())
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Intake {
    Run(Submission),
    /// Acknowledged and not run, for this reason.
    Skip(String),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IntakeError {
    /// Malformed or refused input: 400.
    #[error("{0}")]
    Invalid(String),
    /// A provider event without a valid signature or token while a secret is
    /// configured: 401.
    #[error("{0}")]
    Unauthorized(&'static str),
}

impl IntakeError {
    pub fn status(&self) -> StatusCode {
        match self {
            IntakeError::Invalid(_) => StatusCode::BAD_REQUEST,
            IntakeError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        }
    }
}

fn invalid(msg: impl Into<String>) -> IntakeError {
    IntakeError::Invalid(msg.into())
}

/// How the body is encoded (the HTTP layer refuses any other content type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Json,
    /// `application/x-www-form-urlencoded` with the JSON in `payload=`
    /// (GitHub's and Gitea's form deliveries).
    Form,
}

/// What intake needs to know of the gateway's configuration.
#[derive(Clone, Debug, Default)]
pub struct IntakeConfig {
    /// The repository of the proof-of-concept call (`--repo`).
    pub repo: Option<String>,
    /// The webhook secret; when set, provider events must prove they know it.
    pub secret: Option<Vec<u8>>,
    /// Run tag pushes (default) or acknowledge them only.
    pub run_tags: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Provider {
    GitHub,
    /// Gitea and Forgejo (a fork; it sends both header families).
    Gitea,
    GitLab,
}

/// Decides what a delivery asks for.
pub fn intake(cfg: &IntakeConfig, headers: &HeaderMap, body: &[u8], encoding: Encoding) -> Result<Intake, IntakeError> {
    let Some((provider, event)) = detect(headers)? else {
        let json = payload(body, encoding)?;
        return poc::intake(cfg, &json);
    };
    if let Some(secret) = &cfg.secret {
        authenticate(provider, secret, headers, body)?;
    }
    let delivery = delivery_id(provider, headers)?;
    let json = payload(body, encoding)?;
    let push = match (provider, event.as_str()) {
        (Provider::GitHub, "ping") => return Ok(Intake::Skip("ping: nothing to run".into())),
        (Provider::GitHub | Provider::Gitea, "push") => github::push(&json, provider_name(provider))?,
        (Provider::GitLab, "Push Hook" | "Tag Push Hook") => gitlab::push(&json)?,
        (p, other) => return Ok(Intake::Skip(format!("{} {other:?} events are not run", provider_name(p)))),
    };
    let kind = match provider {
        Provider::GitHub => Some(ForgeKind::GitHub),
        Provider::Gitea => Some(ForgeKind::Gitea),
        Provider::GitLab => None,
    };
    let forge = kind.zip(push.full_name.as_deref().and_then(forge_repo)).map(|(kind, repo)| Forge { kind, repo });
    Ok(match push.decide(cfg, delivery)? {
        Intake::Run(sub) => Intake::Run(Submission { forge, ..sub }),
        skip => skip,
    })
}

fn provider_name(p: Provider) -> &'static str {
    match p {
        Provider::GitHub => "GitHub",
        Provider::Gitea => "Gitea",
        Provider::GitLab => "GitLab",
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, IntakeError> {
    headers
        .get(name)
        .map(|v| v.to_str().map_err(|_| invalid(format!("header {name} is not visible ASCII"))))
        .transpose()
}

/// The first of `names` present.
fn first_header<'a>(headers: &'a HeaderMap, names: &[&str]) -> Result<Option<&'a str>, IntakeError> {
    for name in names {
        if let Some(v) = header(headers, name)? {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// The provider and event a delivery's headers name. Gitea and Forgejo also
/// send GitHub's headers for compatibility, so theirs are looked at first.
fn detect(headers: &HeaderMap) -> Result<Option<(Provider, String)>, IntakeError> {
    let found = if let Some(e) = first_header(headers, &["x-forgejo-event", "x-gitea-event"])? {
        Some((Provider::Gitea, e))
    } else if let Some(e) = header(headers, "x-gitlab-event")? {
        Some((Provider::GitLab, e))
    } else {
        header(headers, "x-github-event")?.map(|e| (Provider::GitHub, e))
    };
    Ok(found.map(|(p, e)| (p, e.trim().to_string())))
}

fn authenticate(provider: Provider, secret: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<(), IntakeError> {
    let unauthorized = IntakeError::Unauthorized;
    match provider {
        Provider::GitHub => {
            let sig = header(headers, "x-hub-signature-256")?
                .ok_or(unauthorized("missing X-Hub-Signature-256 (a webhook secret is configured)"))?;
            if !signature::github_valid(secret, body, sig) {
                return Err(unauthorized("X-Hub-Signature-256 does not match the body"));
            }
        }
        Provider::Gitea => {
            if let Some(sig) = first_header(headers, &["x-forgejo-signature", "x-gitea-signature"])? {
                if !signature::hmac_sha256_hex_valid(secret, body, sig) {
                    return Err(unauthorized("X-Gitea-Signature does not match the body"));
                }
            } else {
                let sig = header(headers, "x-hub-signature-256")?
                    .ok_or(unauthorized("missing X-Gitea-Signature (a webhook secret is configured)"))?;
                if !signature::github_valid(secret, body, sig) {
                    return Err(unauthorized("X-Hub-Signature-256 does not match the body"));
                }
            }
        }
        Provider::GitLab => {
            let token = header(headers, "x-gitlab-token")?
                .ok_or(unauthorized("missing X-Gitlab-Token (a webhook secret is configured)"))?;
            if !signature::token_valid(secret, token) {
                return Err(unauthorized("X-Gitlab-Token is not the configured secret"));
            }
        }
    }
    Ok(())
}

fn delivery_id(provider: Provider, headers: &HeaderMap) -> Result<Option<String>, IntakeError> {
    let names: &[&str] = match provider {
        Provider::GitHub => &["x-github-delivery"],
        Provider::Gitea => &["x-forgejo-delivery", "x-gitea-delivery", "x-github-delivery"],
        // GitLab keeps `Idempotency-Key` across retries of one delivery
        // (newer versions); older ones send only the event's UUID.
        Provider::GitLab => &["idempotency-key", "x-gitlab-event-uuid"],
    };
    let Some(id) = first_header(headers, names)? else { return Ok(None) };
    let id = id.trim();
    if id.is_empty() || id.len() > DELIVERY_BYTES_MAX || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(format!("the delivery id must be 1 to {DELIVERY_BYTES_MAX} visible ASCII characters")));
    }
    Ok(Some(id.to_string()))
}

/// The JSON text of the body.
fn payload(body: &[u8], encoding: Encoding) -> Result<Vec<u8>, IntakeError> {
    match encoding {
        Encoding::Json => Ok(body.to_vec()),
        Encoding::Form => form_urlencoded::parse(body)
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| v.into_owned().into_bytes())
            .ok_or_else(|| invalid("a form body must carry the event in its `payload` field")),
    }
}

/// A push event, whatever the provider, before the gateway's rules apply.
struct Push {
    git_ref: String,
    /// The ref's new value: all zeros when the ref was deleted.
    after: String,
    /// The commit to pin: for an annotated tag, the commit rather than the
    /// tag object that `after` names.
    commit: Option<String>,
    deleted: bool,
    repo: String,
    head_message: Option<String>,
    /// The repository's `owner/name` on its host (GitHub, Gitea).
    full_name: Option<String>,
}

impl Push {
    fn decide(self, cfg: &IntakeConfig, delivery: Option<String>) -> Result<Intake, IntakeError> {
        check_ref(&self.git_ref)?;
        if self.deleted || is_null_commit(&self.after) {
            return Ok(Intake::Skip(format!("{} was deleted: nothing to run", self.git_ref)));
        }
        if self.git_ref.starts_with("refs/tags/") && !cfg.run_tags {
            return Ok(Intake::Skip(format!("{} is a tag; tag pushes are not run here", self.git_ref)));
        }
        if self.head_message.as_deref().is_some_and(skip_ci) {
            return Ok(Intake::Skip("the head commit asks to skip CI".into()));
        }
        let commit = check_commit(self.commit.as_deref().unwrap_or(&self.after))?;
        check_repo(&self.repo)?;
        Ok(Intake::Run(Submission {
            repo: self.repo,
            git_ref: self.git_ref,
            commit: Some(commit),
            delivery,
            forge: None,
        }))
    }
}

/// `[skip ci]` or `[ci skip]`, in any case, anywhere in the message.
fn skip_ci(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("[skip ci]") || m.contains("[ci skip]")
}

fn is_null_commit(id: &str) -> bool {
    matches!(id.len(), 40 | 64) && id.bytes().all(|b| b == b'0')
}

/// A full commit id (SHA-1 or SHA-256 object name), lowercased.
pub fn check_commit(id: &str) -> Result<String, IntakeError> {
    if matches!(id.len(), 40 | 64) && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id.to_ascii_lowercase())
    } else {
        Err(invalid(format!("commit {:?} is not a full commit id (40 or 64 hex digits)", truncated(id))))
    }
}

/// A repository URL as a command line may carry it; the allow-list decides
/// the rest.
pub fn check_repo(url: &str) -> Result<(), IntakeError> {
    if url.is_empty() || url.len() > REPO_BYTES_MAX {
        return Err(invalid(format!("the repository URL must be 1 to {REPO_BYTES_MAX} bytes")));
    }
    if url.starts_with('-') || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(format!("repository URL {:?} is not acceptable", truncated(url))));
    }
    Ok(())
}

/// Echoes at most a little of what was sent.
fn truncated(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests;
