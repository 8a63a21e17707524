//! GitLab's `Push Hook` and `Tag Push Hook`. The repository is
//! `project.git_http_url` (`repository.git_http_url` in older payloads); the
//! commit to pin is `checkout_sha`, which for a tag is the commit rather than
//! the tag object `after` names.

use serde::Deserialize;

use super::{invalid, IntakeError, Push};

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    checkout_sha: Option<String>,
    project: Option<Repository>,
    repository: Option<Repository>,
    #[serde(default)]
    commits: Vec<Commit>,
}

#[derive(Deserialize)]
struct Repository {
    git_http_url: Option<String>,
}

#[derive(Deserialize)]
struct Commit {
    id: String,
    #[serde(default)]
    message: String,
}

pub(super) fn push(json: &[u8]) -> Result<Push, IntakeError> {
    let e: Event = serde_json::from_slice(json).map_err(|err| invalid(format!("not a GitLab push event: {err}")))?;
    let repo = [e.project, e.repository]
        .into_iter()
        .flatten()
        .find_map(|r| r.git_http_url)
        .ok_or_else(|| invalid("GitLab push event without project.git_http_url"))?;
    let head = e.checkout_sha.clone().unwrap_or_else(|| e.after.clone());
    let head_message = e.commits.into_iter().find(|c| c.id == head).map(|c| c.message);
    Ok(Push {
        git_ref: e.git_ref,
        after: e.after,
        commit: e.checkout_sha,
        deleted: false,
        repo,
        head_message,
        full_name: None,
    })
}
