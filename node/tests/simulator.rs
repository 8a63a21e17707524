//! The simulator sweeps: every fault class for n = 4 and n = 7 over many
//! seeds, determinism of a seed, and proof that the checkers catch a broken
//! protocol. A failure names its seed; re-run it with
//! `cargo run --release -p pbft-node --example soak -- 1 SEED`.

use pbft_node::sim::{run, sweep, Byzantine, FaultClass, SimConfig};

const SEEDS: u64 = 500;

/// Runs SEEDS seeds of one scenario and fails with the first few failing
/// seeds and what they broke.
fn assert_sweep(n: usize, class: FaultClass, byzantine: Option<Byzantine>) {
    let failures = sweep(n, class, byzantine, 0..SEEDS);
    let shown: Vec<String> = failures
        .iter()
        .take(5)
        .map(|r| format!("seed {}: {:?}", r.seed, r.violations.iter().map(|v| &v.what).collect::<Vec<_>>()))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {SEEDS} seeds failed for {class:?} with {byzantine:?}, n = {n}:\n{}",
        failures.len(),
        shown.join("\n")
    );
}

macro_rules! sweeps {
    ($($name:ident: $n:expr, $class:expr $(, $byzantine:expr)?;)*) => {
        $(
            #[test]
            fn $name() {
                assert_sweep($n, $class, None $(.or(Some($byzantine)))?);
            }
        )*
    };
}

sweeps! {
    clean_network_n4: 4, FaultClass::Clean;
    clean_network_n7: 7, FaultClass::Clean;
    dropped_messages_n4: 4, FaultClass::Drop;
    dropped_messages_n7: 7, FaultClass::Drop;
    duplicated_messages_n4: 4, FaultClass::Duplicate;
    duplicated_messages_n7: 7, FaultClass::Duplicate;
    reordered_messages_n4: 4, FaultClass::Reorder;
    reordered_messages_n7: 7, FaultClass::Reorder;
    delayed_messages_n4: 4, FaultClass::Delay;
    delayed_messages_n7: 7, FaultClass::Delay;
    backups_crash_and_restart_n4: 4, FaultClass::CrashRestart;
    backups_crash_and_restart_n7: 7, FaultClass::CrashRestart;
    primary_crashes_n4: 4, FaultClass::PrimaryCrash;
    primary_crashes_n7: 7, FaultClass::PrimaryCrash;
    partitions_heal_n4: 4, FaultClass::Partition;
    partitions_heal_n7: 7, FaultClass::Partition;
    all_faults_mixed_n4: 4, FaultClass::Mixed;
    all_faults_mixed_n7: 7, FaultClass::Mixed;
}

#[test]
fn a_seed_replays_the_same_trace() {
    for class in [FaultClass::Mixed, FaultClass::CrashRestart] {
        let a = run(SimConfig::new(4, 42, class));
        let b = run(SimConfig::new(4, 42, class));
        assert_eq!(a.trace_hash, b.trace_hash, "{class:?}: same seed, same trace");
        assert_eq!(a.events, b.events);
        let c = run(SimConfig::new(4, 43, class));
        assert_ne!(a.trace_hash, c.trace_hash, "{class:?}: another seed, another trace");
    }
}

#[test]
fn runs_order_every_request_and_cross_checkpoints() {
    let r = run(SimConfig::new(4, 7, FaultClass::Clean));
    assert!(r.ok(), "{:?}", r.violations);
    // 16 requests, some redelivered: most become jobs, spread over batches of
    // at most 4, so the run crosses several checkpoints (K = 4) and windows.
    assert!(r.jobs >= 10, "jobs: {}", r.jobs);
    assert!(r.max_executed >= 8, "executed up to seq {}", r.max_executed);
}

fn equivocating_with_weak_quorums(seed: u64) -> pbft_node::sim::Report {
    let mut cfg = SimConfig::new(4, seed, FaultClass::Reorder);
    cfg.byzantine = Some(Byzantine::EquivocatingPrimary);
    // One prepare makes a slot prepared, one commit committed.
    cfg.unsafe_quorum_override = Some((1, 1));
    run(cfg)
}

// A Byzantine replica under every other fault at once (drops, duplicates,
// reordering, delays, partitions, crashes of backups and of the primary): no
// split, no correct replica signs conflicting messages, and after the
// network heals every request is ordered.
sweeps! {
    an_equivocating_primary_cannot_split_correct_replicas_n4: 4, FaultClass::Mixed, Byzantine::EquivocatingPrimary;
    an_equivocating_primary_cannot_split_correct_replicas_n7: 7, FaultClass::Mixed, Byzantine::EquivocatingPrimary;
    a_silent_primary_is_replaced_n4: 4, FaultClass::Mixed, Byzantine::SilentPrimary;
    a_silent_primary_is_replaced_n7: 7, FaultClass::Mixed, Byzantine::SilentPrimary;
    a_silent_new_primary_is_replaced_in_turn_n4: 4, FaultClass::Mixed, Byzantine::SilentNextPrimary;
    a_silent_new_primary_is_replaced_in_turn_n7: 7, FaultClass::Mixed, Byzantine::SilentNextPrimary;
    forged_and_garbled_messages_change_nothing_n4: 4, FaultClass::Mixed, Byzantine::Forger;
    forged_and_garbled_messages_change_nothing_n7: 7, FaultClass::Mixed, Byzantine::Forger;
    replayed_old_messages_change_nothing_n4: 4, FaultClass::Mixed, Byzantine::Replayer;
    replayed_old_messages_change_nothing_n7: 7, FaultClass::Mixed, Byzantine::Replayer;
    wrong_checkpoint_digests_change_nothing_n4: 4, FaultClass::Mixed, Byzantine::WrongCheckpoints;
    wrong_checkpoint_digests_change_nothing_n7: 7, FaultClass::Mixed, Byzantine::WrongCheckpoints;
}

#[test]
fn a_weakened_quorum_is_caught_by_the_agreement_checker() {
    let caught = (0..20)
        .map(equivocating_with_weak_quorums)
        .filter(|r| r.violations.iter().any(|v| v.what.starts_with("agreement")))
        .count();
    assert!(caught > 0, "with 1-of-n quorums an equivocating primary must split the replicas in some seed");
}

#[test]
fn a_weakened_view_change_rule_is_caught_by_the_agreement_checker() {
    // NEW-VIEW that forgets prepared certificates turns slots some replicas
    // already executed into null requests at the others.
    let caught = (0..100)
        .map(|seed| {
            let mut cfg = SimConfig::new(4, seed, FaultClass::PrimaryCrash);
            cfg.unsafe_forget_prepared_in_new_view = true;
            run(cfg)
        })
        .filter(|r| r.violations.iter().any(|v| v.what.starts_with("agreement")))
        .count();
    assert!(caught > 0, "forgetting prepared certificates in NEW-VIEW must break agreement in some seed");
}
