//! Runs the simulator over many seeds and prints seeds/s and violations.
//!
//! `cargo run --release -p pbft-node --example soak -- [SEEDS] [FIRST_SEED]`
//! (every fault class, n = 4 and n = 7). A violation prints its seed, class
//! and n; re-run exactly that case with `-- 1 SEED`.

use std::time::Instant;

use pbft_node::sim::{run, FaultClass, SimConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let seeds: u64 = args.next().map(|s| s.parse().expect("SEEDS is a number")).unwrap_or(1000);
    let first: u64 = args.next().map(|s| s.parse().expect("FIRST_SEED is a number")).unwrap_or(0);
    let start = Instant::now();
    let (mut runs, mut violations, mut events, mut jobs) = (0u64, 0u64, 0u64, 0u64);
    for seed in first..first + seeds {
        for class in FaultClass::ALL {
            for n in [4, 7] {
                let report = run(SimConfig::new(n, seed, class));
                runs += 1;
                events += report.events;
                jobs += report.jobs as u64;
                if !report.ok() {
                    violations += report.violations.len() as u64;
                    eprintln!("VIOLATION seed={seed} class={class:?} n={n}:");
                    for v in &report.violations {
                        eprintln!("  at {} ms: {}", v.at_ms, v.what);
                    }
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{runs} runs ({seeds} seeds x {} classes x n=4,7) in {secs:.1} s: {:.1} runs/s, {:.0} events/s, {jobs} jobs, {violations} violations",
        FaultClass::ALL.len(),
        runs as f64 / secs,
        events as f64 / secs,
    );
    if violations > 0 {
        std::process::exit(1);
    }
}
