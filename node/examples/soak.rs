//! Runs the simulator over many seeds and prints seeds/s and violations.
//!
//! `cargo run --release -p pbft-node --example soak -- [SEEDS] [FIRST_SEED] [CLASS] [N]`
//! (by default every fault class, n = 4 and n = 7). A violation prints its
//! seed, class and n; re-run exactly that case with `-- 1 SEED CLASS N`
//! (with `SIM_DEBUG=1` to print where each replica stopped).

use std::time::Instant;

use pbft_node::sim::{run, Byzantine, FaultClass, SimConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let seeds: u64 = args.next().map(|s| s.parse().expect("SEEDS is a number")).unwrap_or(1000);
    let first: u64 = args.next().map(|s| s.parse().expect("FIRST_SEED is a number")).unwrap_or(0);
    // A scenario: a fault class, with or without a Byzantine replica.
    let all: Vec<(FaultClass, Option<Byzantine>)> = std::iter::once(None)
        .chain(Byzantine::ALL.into_iter().map(Some))
        .flat_map(|b| FaultClass::ALL.into_iter().map(move |c| (c, b)))
        .collect();
    let name = |(c, b): &(FaultClass, Option<Byzantine>)| match b {
        None => format!("{c:?}"),
        Some(b) => format!("{c:?}+{b:?}"),
    };
    let classes: Vec<(FaultClass, Option<Byzantine>)> = match args.next() {
        Some(wanted) => vec![*all
            .iter()
            .find(|s| name(s).eq_ignore_ascii_case(&wanted))
            .unwrap_or_else(|| panic!("CLASS is one of {:?}", all.iter().map(name).collect::<Vec<_>>()))],
        None => all.clone(),
    };
    let sizes: Vec<usize> = match args.next() {
        Some(n) => vec![n.parse().expect("N is a number")],
        None => vec![4, 7],
    };
    let start = Instant::now();
    let (mut runs, mut violations, mut events, mut jobs) = (0u64, 0u64, 0u64, 0u64);
    for seed in first..first + seeds {
        for scenario in &classes {
            for &n in &sizes {
                let mut cfg = SimConfig::new(n, seed, scenario.0);
                cfg.byzantine = scenario.1;
                let report = run(cfg);
                runs += 1;
                events += report.events;
                jobs += report.jobs as u64;
                if !report.ok() {
                    violations += report.violations.len() as u64;
                    eprintln!("VIOLATION seed={seed} class={} n={n}:", name(scenario));
                    for v in &report.violations {
                        eprintln!("  at {} ms: {}", v.at_ms, v.what);
                    }
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{runs} runs ({seeds} seeds x {} classes x n in {sizes:?}) in {secs:.1} s: {:.1} runs/s, {:.0} events/s, {jobs} jobs, {violations} violations",
        classes.len(),
        runs as f64 / secs,
        events as f64 / secs,
    );
    if violations > 0 {
        std::process::exit(1);
    }
}
