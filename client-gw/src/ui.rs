//! Pages for people: `GET /` lists recent jobs with their verdicts and each
//! replica's vote; a job's page (`GET /jobs/{id}` asked for as HTML) shows
//! the votes, the certificate (pretty, downloadable) and each replica's step
//! logs.
//!
//! Pure: views in, HTML out. Everything a webhook or a replica chose (repo,
//! ref, commit, delivery, details, logs) passes through [`esc`]; the pages
//! carry no script and are served under a policy that forbids any.

use std::fmt::Write as _;

use sha2::{Digest as _, Sha256};

use crate::gateway::{JobSummary, JobView, VoteView};

/// The Content-Security-Policy of every page: no script, no frame, no
/// form, nothing fetched; only the inline style sheet.
pub const CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Text made safe for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse}td,th{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}\
code,pre{font:12px/1.35 ui-monospace,monospace}pre{background:#f6f6f6;padding:.6em;overflow:auto;max-height:40em}\
.v{display:inline-block;min-width:1.4em;text-align:center;border-radius:3px;margin-right:2px;color:#fff;background:#999}\
.passed{background:#2a7d2e}.failed,.timeout{background:#b3261e}.error{background:#8a5a00}\
.disputed{background:#6a1b9a}.undecided,.abstain{background:#616161}.cancelled{background:#455a64}\
.pending{background:#bbb}.muted{color:#777}h1 a{color:inherit;text-decoration:none}";

fn page(title: &str, refresh: bool, body: &str) -> String {
    let refresh = if refresh { "<meta http-equiv=\"refresh\" content=\"5\">" } else { "" };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}<title>{}</title>\
         <style>{STYLE}</style></head><body><h1><a href=\"/\">pbft-ci</a></h1>\n{body}\n</body></html>\n",
        esc(title)
    )
}

fn badge(class: &str, text: &str, title: &str) -> String {
    format!("<span class=\"v {}\" title=\"{}\">{}</span>", esc(class), esc(title), esc(text))
}

fn verdict_badge(s: &JobSummary) -> String {
    match s.verdict {
        Some(v) => badge(v.as_str(), v.as_str(), v.as_str()),
        None => badge("pending", "pending", "no verdict yet"),
    }
}

/// One letter per vote, for the job list.
fn vote_letter(v: &VoteView) -> &'static str {
    match v.vote {
        Some("passed") => "P",
        Some("failed") => "F",
        Some("timeout") => "T",
        Some("error") => "E",
        Some("cancelled") => "C",
        Some("abstain") => "A",
        Some(_) => "?",
        None => "·",
    }
}

fn short(s: &str, n: usize) -> &str {
    s.get(..n).unwrap_or(s)
}

/// Unix milliseconds as `YYYY-MM-DD hh:mm:ss UTC`.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// What the index page shows above the list.
pub struct Health {
    pub connected: usize,
    pub replicas: usize,
    pub quorum: usize,
}

/// `GET /`: the newest jobs, with a link to older ones.
pub fn index(jobs: &[JobView], health: &Health, older: Option<&str>) -> String {
    let mut body = String::new();
    let _ = writeln!(
        body,
        "<p>Replicas connected: {} of {} (a quorum is {}). <a href=\"/metrics\">metrics</a> · \
         <a href=\"/jobs\">jobs as JSON</a></p>",
        health.connected, health.replicas, health.quorum
    );
    if jobs.is_empty() {
        body.push_str("<p class=\"muted\">No jobs yet.</p>");
        return page("pbft-ci", false, &body);
    }
    body.push_str(
        "<table><tr><th>job</th><th>verdict</th><th>votes</th><th>repository</th><th>ref</th>\
         <th>commit</th><th>accepted</th></tr>\n",
    );
    for j in jobs {
        let s = &j.summary;
        let votes: String = j
            .votes
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let title = format!("replica {i} ({}): {}", v.replica, v.vote.unwrap_or("no answer yet"));
                badge(v.vote.unwrap_or("pending"), vote_letter(v), &title)
            })
            .collect();
        let what = match &s.cancel_of {
            Some(target) => format!(" <span class=\"muted\">cancels {}</span>", esc(target)),
            None => String::new(),
        };
        let _ = writeln!(
            body,
            "<tr><td><a href=\"/jobs/{id}\">{id}</a>{what}</td><td>{}</td><td>{votes}</td><td>{}</td>\
             <td><code>{}</code></td><td><code title=\"{}\">{}</code></td><td>{}</td></tr>",
            verdict_badge(s),
            esc(&s.repo),
            esc(&s.git_ref),
            esc(s.commit.as_deref().unwrap_or("")),
            esc(short(s.commit.as_deref().unwrap_or("unpinned"), 12)),
            utc(s.accepted_ms),
            id = esc(&s.id),
        );
    }
    body.push_str("</table>\n");
    if let Some(next) = older {
        let _ = write!(body, "<p><a href=\"{}\">older jobs</a></p>", esc(next));
    }
    let pending = jobs.iter().any(|j| j.summary.verdict.is_none());
    page("pbft-ci", pending, &body)
}

/// One replica's logs of a job as the page shows them.
pub struct ReplicaLogs {
    pub replica: String,
    /// `None`: the replica did not answer in time.
    pub logs: Option<pbft_node::wire::JobLogs>,
}

/// Whether a log as served matches the digest its replica recorded: `None`
/// when that cannot be told (only a tail was sent, or no digest yet).
pub fn log_verified(step: &pbft_node::wire::StepLog) -> Option<bool> {
    let sum = step.sha256.as_deref()?;
    if step.tail.len() as u64 != step.bytes {
        return None;
    }
    Some(hex::encode(Sha256::digest(&step.tail)) == sum)
}

/// A job's page. `logs`: per replica, when the job ran (ordered).
pub fn job(view: &JobView, logs: Option<&[ReplicaLogs]>) -> String {
    let s = &view.summary;
    let mut body = String::new();
    let _ = write!(body, "<h2>Job {} {}</h2>\n<table>", esc(&s.id), verdict_badge(s));
    let mut row = |k: &str, v: String| {
        let _ = write!(body, "<tr><th>{k}</th><td>{v}</td></tr>");
    };
    row("repository", esc(&s.repo));
    row("ref", format!("<code>{}</code>", esc(&s.git_ref)));
    row(
        "commit",
        format!("<code>{}</code>", esc(s.commit.as_deref().unwrap_or("unpinned: the replicas resolve the ref"))),
    );
    if let Some(d) = &s.delivery {
        row("delivery", format!("<code>{}</code>", esc(d)));
    }
    row("accepted", utc(s.accepted_ms));
    row("ordered as", esc(s.job.as_deref().unwrap_or("not yet")));
    if let Some(target) = &s.cancel_of {
        row("cancels", format!("<a href=\"/jobs/{0}\">job {0}</a>", esc(target)));
    }
    if let Some(r) = &s.refused {
        row("refused", esc(r));
    }
    row(
        "JSON",
        format!(
            "<a href=\"/jobs/{0}\" type=\"application/json\">/jobs/{0}</a> (without Accept: text/html)",
            esc(&s.id)
        ),
    );
    body.push_str("</table>\n<h3>Votes</h3>\n<table><tr><th>#</th><th>replica</th><th>vote</th><th>result</th><th>detail</th></tr>\n");
    for (i, v) in view.votes.iter().enumerate() {
        let _ = writeln!(
            body,
            "<tr><td>{i}</td><td><code>{}</code></td><td>{}</td><td><code title=\"{}\">{}</code></td><td>{}</td></tr>",
            esc(&v.replica),
            badge(v.vote.unwrap_or("pending"), v.vote.unwrap_or("no answer yet"), v.vote.unwrap_or("")),
            esc(v.result.as_deref().unwrap_or("")),
            esc(short(v.result.as_deref().unwrap_or(""), 16)),
            esc(v.detail.as_deref().unwrap_or("")),
        );
    }
    body.push_str("</table>\n<h3>Certificate</h3>\n");
    match &view.certificate {
        Some(cert) => {
            let pretty = serde_json::to_string_pretty(cert).unwrap_or_default();
            let _ = write!(
                body,
                "<p><a href=\"/jobs/{id}/certificate?download=1\">download</a>, then check it with \
                 <code>pbft-node verify --members members.toml job-{id}-certificate.json</code></p>\n<pre>{}</pre>\n",
                esc(&pretty),
                id = esc(&s.id)
            );
        }
        None if s.verdict.is_none() => body.push_str("<p class=\"muted\">None until the verdict.</p>\n"),
        None => body.push_str("<p class=\"muted\">This verdict rests on no result, so it has no certificate.</p>\n"),
    }
    if let Some(logs) = logs {
        body.push_str("<h3>Logs</h3>\n");
        for (i, r) in logs.iter().enumerate() {
            let _ = writeln!(body, "<h4>Replica {i} <code class=\"muted\">{}</code></h4>", esc(&r.replica));
            let Some(l) = &r.logs else {
                body.push_str("<p class=\"muted\">No answer in time.</p>\n");
                continue;
            };
            if l.steps.is_empty() {
                body.push_str("<p class=\"muted\">No logs kept for this job (yet).</p>\n");
            }
            for step in &l.steps {
                let check = match log_verified(step) {
                    Some(true) => "matches its SHA256SUMS entry",
                    Some(false) => "DOES NOT match its SHA256SUMS entry",
                    None if step.sha256.is_none() => "no digest recorded yet",
                    None => "only the end is shown, so it is not checked here",
                };
                let cut = if (step.tail.len() as u64) < step.bytes {
                    format!(", last {} bytes shown", step.tail.len())
                } else {
                    String::new()
                };
                let _ = writeln!(
                    body,
                    "<p><code>{}</code> — {} bytes{cut}; sha256 <code>{}</code> ({check})</p>\n<pre>{}</pre>",
                    esc(&step.file),
                    step.bytes,
                    esc(step.sha256.as_deref().unwrap_or("-")),
                    esc(&String::from_utf8_lossy(&step.tail)),
                );
            }
        }
    }
    page(&format!("job {} — pbft-ci", s.id), s.verdict.is_none(), &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_are_civil() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_798_761_599_000), "2026-12-31 23:59:59 UTC");
    }

    #[test]
    fn markup_characters_are_escaped() {
        assert_eq!(esc(r#"<a href="x" onclick='y'>&"#), "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;");
    }
}
