//! Byzantine and broken replicas, end to end: four `pbft-node` processes and
//! `pbft-gw` on 127.0.0.1 (`support`'s testnet), a real git repository, jobs
//! posted over HTTP. Each test asserts what users see — verdicts, votes,
//! certificates `pbft-node verify` accepts, identical job logs — never how
//! long anything took.
//!
//! The tests that need a misbehaving replica run a `pbft-node` built with
//! `--features fault-injection` (`--fault KIND`), copied aside so that the
//! default binary never holds the feature (see `support`).
//!
//! What they show, for README.md:
//!
//! - One lying replica (`f = 1` of 4) changes no verdict: the truth has
//!   `2f + 1 = 3` matching signed results, the lie one; its dissent is
//!   visible among the votes.
//! - An equivocating primary (two different pre-prepares for one slot) is
//!   replaced by a view change; no two correct replicas order different
//!   jobs, every job gets its verdict, and the replicas that see both
//!   pre-prepares log them as `evidence:`.
//! - Machines that disagree (a pipeline that passes on two replicas and
//!   fails on the other two) make the verdict `disputed`, with both results
//!   certified, never a silent pick; a 3–1 split is decided by the majority
//!   and shows the dissent. A replica whose machine cannot run a job
//!   abstains, and the others decide.
//! - Two lying replicas (`f + 1`) are beyond the guarantee: their identical
//!   lie has `f + 1` signatures, as many as the truth. The gateway still
//!   picks neither: the verdict is `disputed`, every vote shown.
//! - A silent replica, one that replays its old messages and one that signs
//!   wrong checkpoints cost no verdict.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pbft_node::pbft::Record;
use pbft_node::store::Store;
use pbft_node::wire::{decode, limits, Digest, Envelope, JobId};
use serde_json::Value;
use support::{pbft_node_binary, pbft_node_binary_with_fault_injection, Setup, Testnet};

/// Long enough for a loaded 2-core machine; the tests never wait this long
/// when things work.
const VERDICT_WITHIN: Duration = Duration::from_secs(120);

fn pipeline(command: &str) -> String {
    format!("steps:\n  - name: test\n    commands:\n      - '{command}'\n")
}

/// Passes on the replicas whose data dir is `data<i>` for `i` in `passing`:
/// the workspace (`DATA_DIR/ci/work/<seq>-<index>`) is the only thing that
/// tells the machines apart.
fn passes_only_on(passing: &[usize]) -> String {
    let cases: Vec<String> = passing.iter().map(|i| format!("*/data{i}/*")).collect();
    pipeline(&format!(r#"case "$(pwd)" in {}) exit 0;; *) exit 1;; esac"#, cases.join("|")))
}

fn local(node: std::path::PathBuf, faults: [&[&str]; 4]) -> Setup {
    let args = faults.map(|extra| {
        let mut args = vec!["--job-attempts".to_string(), "1".to_string()];
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    });
    Setup { node, executor: "local", replica_args: args, lan: None }
}

fn votes(net: &Testnet, job: &Value) -> [String; 4] {
    [0, 1, 2, 3].map(|i| net.vote(job, i).to_string())
}

fn assert_certified(net: &Testnet, job: &Value, sets: usize, says: &str) {
    let cert = &job["certificate"];
    assert_eq!(cert["sets"].as_array().map(Vec::len), Some(sets), "{job}");
    let (ok, said) = net.verify(&format!("cert-{}.json", job["id"].as_str().unwrap()), cert);
    assert!(ok, "pbft-node verify refused the certificate: {said}");
    assert!(said.contains(says), "{said}");
}

#[test]
fn machines_that_disagree_make_a_verdict_disputed_or_outvoted_and_a_broken_machine_abstains() {
    let net = Testnet::start_with(|| local(pbft_node_binary(), [&[], &[], &[], &[]]));
    let started = Instant::now();
    net.branch("two-two", &passes_only_on(&[0, 1]));
    net.branch("three-one", &passes_only_on(&[0, 1, 2]));
    net.branch("green", &pipeline("true"));
    let (two_two, three_one) = (net.submit("two-two"), net.submit("three-one"));

    // 2–2: two results with f + 1 votes each. Disputed, both certified.
    let job = net.wait_job(&two_two, 4, VERDICT_WITHIN);
    assert_eq!(job["verdict"], "disputed", "{job}");
    assert_eq!(votes(&net, &job), ["passed", "passed", "failed", "failed"], "{job}");
    assert_certified(&net, &job, 2, "disputed");

    // 3–1: the majority's verdict, the dissent shown.
    let job = net.wait_job(&three_one, 4, VERDICT_WITHIN);
    assert_eq!(job["verdict"], "passed", "{job}");
    assert_eq!(votes(&net, &job), ["passed", "passed", "passed", "failed"], "{job}");
    assert_certified(&net, &job, 1, "passed");

    // Replica 3's machine breaks: its workspaces cannot be created any more.
    let work = net.data_dir(3).join("ci/work");
    std::fs::remove_dir_all(&work).unwrap();
    std::fs::write(&work, "not a directory\n").unwrap();
    let green = net.submit("green");
    let job = net.wait_job(&green, 4, VERDICT_WITHIN);
    assert_eq!(job["verdict"], "passed", "{job}");
    assert_eq!(votes(&net, &job), ["passed", "passed", "passed", "abstain"], "{job}");
    assert_certified(&net, &job, 1, "passed");
    eprintln!("byzantine: 2–2 and 3–1 splits and an abstention in {:?} once the testnet was up", started.elapsed());
}

#[test]
fn one_lying_replica_changes_no_verdict_and_two_make_it_disputed() {
    let mut net =
        Testnet::start_with(|| local(pbft_node_binary_with_fault_injection(), [&[], &[], &[], &["--fault", "lie"]]));
    let started = Instant::now();
    net.branch("green", &pipeline("true"));
    net.branch("red", &pipeline("exit 3"));
    let series: Vec<(&str, String)> =
        ["green", "red", "green", "red"].into_iter().map(|branch| (branch, net.submit(branch))).collect();
    for (branch, id) in &series {
        let (truth, lie) = if *branch == "green" { ("passed", "failed") } else { ("failed", "passed") };
        let job = net.wait_job(id, 4, VERDICT_WITHIN);
        assert_eq!(job["verdict"], truth, "{branch}: {job}");
        assert_eq!(votes(&net, &job), [truth, truth, truth, lie], "{branch}: the dissent shows: {job}");
        assert_certified(&net, &job, 1, truth);
    }

    // Beyond the guarantee: replica 2 lies too, the same lie. Neither
    // result wins; the votes show who said what.
    net.restart_replica(2, &["--job-attempts", "1", "--fault", "lie"]);
    let (green, red) = (net.submit("green"), net.submit("red"));
    for (id, truth, lie) in [(green, "passed", "failed"), (red, "failed", "passed")] {
        let job = net.wait_job(&id, 4, VERDICT_WITHIN);
        assert_eq!(job["verdict"], "disputed", "{job}");
        assert_eq!(votes(&net, &job), [truth, truth, lie, lie], "{job}");
        assert_certified(&net, &job, 2, "disputed");
    }
    eprintln!("byzantine: one and two liars in {:?} once the testnet was up", started.elapsed());
}

#[test]
fn an_equivocating_primary_is_replaced_and_no_correct_replicas_diverge() {
    let mut net = Testnet::start_with(|| Setup {
        node: pbft_node_binary_with_fault_injection(),
        executor: "none",
        replica_args: [vec!["--fault".into(), "equivocate".into()], vec![], vec![], vec![]],
        lan: None,
    });
    let started = Instant::now();
    let ids: Vec<String> = (0..6).map(|k| net.submit(if k % 2 == 0 { "master" } else { "no-such-branch" })).collect();
    for (k, id) in ids.iter().enumerate() {
        let job = net.wait_job(id, 4, VERDICT_WITHIN);
        let want = if k % 2 == 0 { "passed" } else { "error" };
        assert_eq!(job["verdict"], want, "{job}");
    }
    net.kill_gateway();
    for i in 0..4 {
        net.kill_replica(i);
    }

    let correct = [1, 2, 3];
    for i in correct {
        let log = net.replica_log(i);
        assert!(log.contains("view change: now in view"), "replica {i} never changed view:\n{log}");
    }
    let evidence = format!("evidence: replica 0 ({})", net.peer(0));
    assert!(
        correct.iter().any(|&i| net.replica_log(i).contains(&evidence)),
        "no correct replica logged replica 0's two pre-prepares"
    );
    for i in correct {
        assert!(!net.replica_log(i).contains(&format!("evidence: replica {i} ")), "evidence against correct {i}");
    }
    let logs: Vec<BTreeMap<JobId, Digest>> = correct.iter().map(|&i| net.job_log(i)).collect();
    assert_eq!(logs[0].len(), ids.len(), "{:?}", logs[0]);
    assert!(logs.iter().all(|l| *l == logs[0]), "correct replicas' job logs differ: {logs:?}");
    eprintln!("byzantine: an equivocating primary in {:?} once the testnet was up", started.elapsed());
}

#[test]
fn a_silent_a_replaying_and_a_wrong_checkpointing_replica_cost_no_verdict() {
    let mut net = Testnet::start_with(|| Setup {
        node: pbft_node_binary_with_fault_injection(),
        executor: "none",
        replica_args: [vec![], vec![], vec![], vec!["--fault".into(), "silent".into()]],
        lan: None,
    });
    let started = Instant::now();
    let id = net.submit("master");
    let job = net.wait_job(&id, 3, VERDICT_WITHIN);
    assert_eq!(job["verdict"], "passed", "{job}");
    assert_eq!(net.vote(&job, 3), "", "a silent replica sent a vote: {job}");

    net.restart_replica(3, &["--fault", "replay"]);
    let ids: Vec<String> = (0..4).map(|_| net.submit("master")).collect();
    for id in &ids {
        assert_eq!(net.wait_job(id, 3, VERDICT_WITHIN)["verdict"], "passed");
    }

    // Past a checkpoint (every 64 slots): replica 3 signs its checkpoints
    // over a wrong state; the others' 2f + 1 make theirs stable regardless.
    // One job at a time, so that each takes a slot of its own.
    net.restart_replica(3, &["--fault", "wrong-checkpoint"]);
    let mut seq = 0;
    while seq < 70 {
        let job = net.wait_job(&net.submit("master"), 3, VERDICT_WITHIN);
        assert_eq!(job["verdict"], "passed", "{job}");
        seq = job["job"].as_str().and_then(|j| j.split('-').next()?.parse().ok()).expect("an ordered job id");
    }
    net.kill_gateway();
    for i in 0..4 {
        net.kill_replica(i);
    }
    for i in 0..3 {
        assert!(!net.replica_log(i).contains(&format!("evidence: replica {i} ")), "evidence against correct {i}");
        let store = Store::open(&net.data_dir(i)).unwrap();
        let Some(Record::Stable { seq, proof, .. }) = store.records().unwrap().into_iter().next() else {
            panic!("replica {i} has no stable checkpoint");
        };
        let signers: Vec<String> = proof
            .iter()
            .map(|b| decode::<Envelope>(b, limits::ENVELOPE_BYTES_MAX).unwrap().signer.to_string())
            .collect();
        assert!(seq >= 64 && !signers.contains(&net.peer(3)), "replica {i}: stable at {seq} by {signers:?}");
    }
    eprintln!("byzantine: silent, replaying, wrong checkpoints in {:?} once the testnet was up", started.elapsed());
}
