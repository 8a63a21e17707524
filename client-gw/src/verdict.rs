//! The verdict rule of DESIGN.md ("Results and verdicts"), pure: the votes of
//! `n = 3f + 1` distinct replicas in, the verdict and the results its
//! certificate carries out. A result with f + 1 matching votes was computed
//! by at least one correct replica.
//!
//! - one digest with f + 1 votes is *decided* once no other digest can still
//!   reach f + 1 with the votes outstanding, or at the deadline;
//! - two digests with f + 1 each: *disputed*, the only change a decided
//!   verdict can undergo;
//! - no digest able to reach f + 1 any more, or none with f + 1 at the
//!   deadline: *undecided*;
//! - a cancel of the job ordered before it has a verdict: *cancelled*.
//!
//! Abstentions are votes cast (they are no longer outstanding) that count
//! for no digest. No clock here: the caller says whether the deadline passed.

use std::collections::BTreeMap;

use pbft_node::wire::{Digest, Outcome};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Passed,
    Failed,
    Error,
    Disputed,
    Undecided,
    Cancelled,
}

impl Verdict {
    /// The verdict a result stands for, once decided.
    pub fn of(outcome: &Outcome) -> Verdict {
        match outcome {
            Outcome::Passed => Verdict::Passed,
            Outcome::Failed { .. } | Outcome::Timeout { .. } => Verdict::Failed,
            Outcome::Error { .. } => Verdict::Error,
            Outcome::Cancelled => Verdict::Cancelled,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::Failed => "failed",
            Verdict::Error => "error",
            Verdict::Disputed => "disputed",
            Verdict::Undecided => "undecided",
            Verdict::Cancelled => "cancelled",
        }
    }

    /// Decided from one result: may still turn `disputed`.
    fn is_decided(self) -> bool {
        matches!(self, Verdict::Passed | Verdict::Failed | Verdict::Error)
    }
}

/// One replica's final reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vote {
    /// A result, by digest, and the verdict it would give.
    Result { digest: Digest, verdict: Verdict },
    /// The replica could not run the job: shown, never counted.
    Abstain,
}

/// A verdict and the results its certificate proves: one for a decided
/// verdict, every result with f + 1 votes for a disputed one, none otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub verdict: Verdict,
    pub results: Vec<Digest>,
}

/// What the job's votes decide now, given what was decided before
/// (`previous`). `None`: no verdict yet.
pub fn decide(
    n: usize,
    votes: &BTreeMap<usize, Vote>,
    previous: Option<&Decision>,
    deadline_passed: bool,
    cancel_ordered: bool,
) -> Option<Decision> {
    let f = (n - 1) / 3;
    let weak = f + 1;
    let mut counts: BTreeMap<Digest, (usize, Verdict)> = BTreeMap::new();
    for vote in votes.values() {
        if let Vote::Result { digest, verdict } = vote {
            counts.entry(*digest).or_insert((0, *verdict)).0 += 1;
        }
    }
    let outstanding = n.saturating_sub(votes.len());
    // Most votes first; ties by digest, so the order never depends on arrival.
    let mut ranked: Vec<(Digest, usize, Verdict)> = counts.into_iter().map(|(d, (c, v))| (d, c, v)).collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let heavy: Vec<Digest> = ranked.iter().filter(|r| r.1 >= weak).map(|r| r.0).collect();

    if let Some(prev) = previous {
        if prev.verdict.is_decided() && heavy.len() >= 2 {
            // The decided result first, then the ones that contradict it.
            let mut results = prev.results.clone();
            results.extend(heavy.iter().filter(|d| !prev.results.contains(d)));
            return Some(Decision { verdict: Verdict::Disputed, results });
        }
        return Some(prev.clone());
    }
    if cancel_ordered {
        return Some(Decision { verdict: Verdict::Cancelled, results: Vec::new() });
    }
    if heavy.len() >= 2 {
        return Some(Decision { verdict: Verdict::Disputed, results: heavy });
    }
    // The most votes any digest but `except` holds (0 for one not seen yet).
    let best_other = |except: Option<Digest>| ranked.iter().filter(|r| Some(r.0) != except).map(|r| r.1).max();
    match ranked.first() {
        Some(&(digest, count, verdict)) if count >= weak => {
            let contested = best_other(Some(digest)).unwrap_or(0) + outstanding >= weak;
            if contested && !deadline_passed {
                return None;
            }
            Some(match verdict {
                Verdict::Cancelled => Decision { verdict, results: Vec::new() },
                _ => Decision { verdict, results: vec![digest] },
            })
        }
        _ => {
            let reachable = best_other(None).unwrap_or(0) + outstanding >= weak;
            if reachable && !deadline_passed {
                return None;
            }
            Some(Decision { verdict: Verdict::Undecided, results: Vec::new() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `P`, `Q`: two different passing results; `F`: failed, `G`: another
    /// failure; `E`: error; `C`: cancelled; `-`: abstain; `.`: no reply yet.
    fn votes(s: &str) -> BTreeMap<usize, Vote> {
        s.chars()
            .enumerate()
            .filter_map(|(i, c)| {
                let verdict = match c {
                    'P' | 'Q' => Verdict::Passed,
                    'F' | 'G' => Verdict::Failed,
                    'E' => Verdict::Error,
                    'C' => Verdict::Cancelled,
                    '-' => return Some((i, Vote::Abstain)),
                    '.' => return None,
                    _ => panic!("vote {c:?}"),
                };
                Some((i, Vote::Result { digest: digest(c), verdict }))
            })
            .collect()
    }

    fn digest(c: char) -> Digest {
        Digest::of_parts(b"test result", &[c.to_string().as_bytes()])
    }

    /// `pending`, a verdict, or a verdict with its certificate's results
    /// (`passed:P`, `disputed:PF`).
    fn show(d: Option<Decision>) -> String {
        let Some(d) = d else { return "pending".into() };
        let letters: String =
            d.results.iter().map(|r| "PQFGEC".chars().find(|&c| digest(c) == *r).expect("a known result")).collect();
        if letters.is_empty() {
            d.verdict.as_str().into()
        } else {
            format!("{}:{letters}", d.verdict.as_str())
        }
    }

    /// votes, deadline passed, want. No verdict before, no cancel.
    const N4: &[(&str, bool, &str)] = &[
        ("....", false, "pending"),
        ("P...", false, "pending"),
        ("PP..", false, "pending"), // two outstanding could still agree on another result
        ("PP..", true, "passed:P"), // the only one with f + 1 at the deadline
        ("PPP.", false, "passed:P"),
        ("PP.-", false, "passed:P"), // one outstanding cannot lift another result to f + 1
        ("PPPP", false, "passed:P"),
        ("PPF.", false, "pending"),
        ("PPF.", true, "passed:P"),
        ("PPF-", false, "passed:P"),
        ("FFF.", false, "failed:F"),
        ("F.F-", false, "failed:F"),
        ("EEE.", false, "error:E"),
        ("EE..", false, "pending"),
        ("PPFF", false, "disputed:FP"), // ties ranked by digest
        ("PQ..", false, "pending"),
        ("PQ..", true, "undecided"),
        ("PQ-.", false, "pending"), // P or Q could still reach two
        ("PQ--", false, "undecided"),
        ("PQF-", false, "undecided"),
        ("P---", false, "undecided"),
        ("--..", false, "pending"),
        ("---.", false, "undecided"),
        ("----", false, "undecided"),
        ("....", true, "undecided"),
        ("CC..", false, "pending"),
        ("CCC.", false, "cancelled"), // cancelled results: no certificate
    ];

    /// n = 7, f = 2: f + 1 = 3.
    const N7: &[(&str, bool, &str)] = &[
        ("PPP....", false, "pending"),
        ("PPPP...", false, "pending"), // three outstanding could still make three for another
        ("PPPPP..", false, "passed:P"),
        ("PPP....", true, "passed:P"),
        ("PPPFF..", false, "pending"),
        ("PPPFF-.", false, "pending"),
        ("PPPFF--", false, "passed:P"),
        ("PPPP-F.", false, "passed:P"),
        ("PPPFFF.", false, "disputed:FP"),
        ("PPFF---", false, "undecided"),
        ("PPFF-..", false, "pending"),
        ("PPFF-..", true, "undecided"),
        ("PPQQFF-", false, "undecided"),
        ("FFFG-..", false, "pending"),
        ("FFFGG--", false, "failed:F"),
        ("-----..", false, "undecided"),
        ("----...", false, "pending"),
        ("EEEEEEE", false, "error:E"),
    ];

    fn check(n: usize, table: &[(&str, bool, &str)]) {
        let mut failures = Vec::new();
        for &(v, deadline, want) in table {
            assert_eq!(v.len(), n);
            let got = show(decide(n, &votes(v), None, deadline, false));
            if got != want {
                failures.push(format!("n={n} {v} deadline={deadline}: want {want}, got {got}"));
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    #[test]
    fn four_replicas_decide_as_the_table_says() {
        check(4, N4);
    }

    #[test]
    fn seven_replicas_decide_as_the_table_says() {
        check(7, N7);
    }

    /// previous verdict, votes now, deadline passed, cancel ordered, want.
    const LATER: &[(usize, &str, &str, bool, bool, &str)] = &[
        // Decided at the deadline, then the outstanding votes contradict it.
        (4, "passed:P", "PPFF", false, false, "disputed:PF"),
        (7, "failed:F", "FFFPPP.", false, false, "disputed:FP"),
        // A decided verdict changes in no other way.
        (4, "passed:P", "PPF-", false, false, "passed:P"),
        (4, "passed:P", "PPPP", false, true, "passed:P"),
        // Undecided, disputed and cancelled are final.
        (4, "undecided", "PPP.", false, false, "undecided"),
        (4, "disputed:PF", "PPFF", true, true, "disputed:PF"),
        (4, "cancelled", "PPPP", false, false, "cancelled"),
        // A cancel ordered before any verdict.
        (4, "", "PP..", false, true, "cancelled"),
        (4, "", "....", false, true, "cancelled"),
        (7, "", "PPPPPP.", false, true, "cancelled"),
    ];

    fn parse(s: &str) -> Option<Decision> {
        if s.is_empty() {
            return None;
        }
        let (verdict, letters) = s.split_once(':').unwrap_or((s, ""));
        let verdict = serde_json::from_value(serde_json::Value::String(verdict.into())).unwrap();
        Some(Decision { verdict, results: letters.chars().map(digest).collect() })
    }

    #[test]
    fn a_verdict_only_ever_turns_disputed_and_a_cancel_wins_before_one() {
        let mut failures = Vec::new();
        for &(n, before, v, deadline, cancel, want) in LATER {
            let got = show(decide(n, &votes(v), parse(before).as_ref(), deadline, cancel));
            if got != want {
                failures.push(format!("n={n} {before} then {v}: want {want}, got {got}"));
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    #[test]
    fn results_map_to_verdicts() {
        use pbft_node::wire::RequestError;
        assert_eq!(Verdict::of(&Outcome::Passed), Verdict::Passed);
        assert_eq!(Verdict::of(&Outcome::Failed { step: "test".into(), exit_code: 1 }), Verdict::Failed);
        assert_eq!(Verdict::of(&Outcome::Timeout { step: "test".into() }), Verdict::Failed);
        let error = Outcome::Error { error: RequestError::RefNotFound, detail: "nope".into() };
        assert_eq!(Verdict::of(&error), Verdict::Error);
        assert_eq!(Verdict::of(&Outcome::Cancelled), Verdict::Cancelled);
    }
}
