//! The proof of concept's call, `{"branch": B}`, optionally with `repo` and
//! `commit`. It carries no signature, so it may only name a ref of the
//! gateway's own `--repo` (DESIGN.md, "Trust model").

use serde::Deserialize;

use super::{check_commit, check_ref, invalid, Intake, IntakeConfig, IntakeError, Submission};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Call {
    branch: String,
    repo: Option<String>,
    commit: Option<String>,
}

pub(super) fn intake(cfg: &IntakeConfig, json: &[u8]) -> Result<Intake, IntakeError> {
    let call: Call = serde_json::from_slice(json)
        .map_err(|e| invalid(format!("expected {{\"branch\": \"NAME\"}} (optional \"repo\", \"commit\"): {e}")))?;
    let Some(own) = &cfg.repo else {
        return Err(invalid(
            "this gateway has no --repo, so {\"branch\": ...} names nothing; send a signed push event",
        ));
    };
    if call.repo.as_ref().is_some_and(|r| r != own) {
        return Err(invalid(format!("an unsigned call may only name this gateway's repository, {own}")));
    }
    check_ref(&call.branch)?;
    let commit = call.commit.as_deref().map(check_commit).transpose()?;
    Ok(Intake::Run(Submission { repo: own.clone(), git_ref: call.branch, commit, delivery: None, forge: None }))
}
