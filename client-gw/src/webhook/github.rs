//! GitHub's push event, which Gitea and Forgejo reproduce field for field
//! (they send `clone_url`, `after`, `head_commit` the same way).

use serde::Deserialize;

use super::{invalid, IntakeError, Push};

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    /// GitHub only; elsewhere a deletion shows as an all-zero `after`.
    #[serde(default)]
    deleted: bool,
    repository: Repository,
    head_commit: Option<Commit>,
}

#[derive(Deserialize)]
struct Repository {
    clone_url: String,
    full_name: Option<String>,
}

#[derive(Deserialize)]
struct Commit {
    id: String,
    #[serde(default)]
    message: String,
}

pub(super) fn push(json: &[u8], provider: &str) -> Result<Push, IntakeError> {
    let e: Event =
        serde_json::from_slice(json).map_err(|err| invalid(format!("not a {provider} push event: {err}")))?;
    let (commit, head_message) = match e.head_commit {
        Some(c) => (Some(c.id), Some(c.message)),
        None => (None, None),
    };
    Ok(Push {
        git_ref: e.git_ref,
        after: e.after,
        commit,
        deleted: e.deleted,
        repo: e.repository.clone_url,
        head_message,
        full_name: e.repository.full_name,
    })
}
