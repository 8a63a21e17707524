//! Runs the simulator over many seeds and prints seeds/s and violations.
//!
//! `cargo run --release -p pbft-node --example soak -- [SEEDS] [FIRST_SEED] [CLASS] [N]`
//! (one worker thread per core; `SOAK_THREADS=1` for one)
//! (by default every fault class, n = 4 and n = 7). A violation prints its
//! seed, class and n; re-run exactly that case with `-- 1 SEED CLASS N`
//! (with `SIM_DEBUG=1` to print where each replica stopped). `SOAK_LIST=1`
//! also prints each run as `RUN SEED CLASS N JOBS EVENTS`: two soaks of one
//! binary, sorted, must not differ (each run depends on its seed alone).

use std::sync::atomic::{AtomicUsize, Ordering};
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
    // Every (seed, scenario, n) is its own deterministic run: the threads
    // share them out, one worker per core (SOAK_THREADS to choose).
    let mut cases = Vec::new();
    for seed in first..first + seeds {
        for &scenario in &classes {
            cases.extend(sizes.iter().map(|&n| (seed, scenario, n)));
        }
    }
    let threads = std::env::var("SOAK_THREADS")
        .ok()
        .map(|t| t.parse().expect("SOAK_THREADS is a number"))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |p| p.get()));
    let list = std::env::var("SOAK_LIST").is_ok();
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    let totals = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut t = Totals::default();
                    while let Some(&(seed, scenario, n)) = cases.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let mut cfg = SimConfig::new(n, seed, scenario.0);
                        cfg.byzantine = scenario.1;
                        let report = run(cfg);
                        t.runs += 1;
                        t.events += report.events;
                        t.jobs += report.jobs as u64;
                        if list {
                            println!("RUN {seed} {} {n} {} {}", name(&scenario), report.jobs, report.events);
                        }
                        if !report.ok() {
                            t.violations += report.violations.len() as u64;
                            let mut msg = format!("VIOLATION seed={seed} class={} n={n}:\n", name(&scenario));
                            for v in &report.violations {
                                msg += &format!("  at {} ms: {}\n", v.at_ms, v.what);
                            }
                            eprint!("{msg}");
                        }
                    }
                    t
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("a soak worker panicked")).fold(Totals::default(), Totals::add)
    });
    let Totals { runs, violations, events, jobs } = totals;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{runs} runs ({seeds} seeds x {} classes x n in {sizes:?}, {threads} threads) in {secs:.1} s: {:.1} runs/s, {:.0} events/s, {jobs} jobs, {violations} violations",
        classes.len(),
        runs as f64 / secs,
        events as f64 / secs,
    );
    if violations > 0 {
        std::process::exit(1);
    }
}

#[derive(Default)]
struct Totals {
    runs: u64,
    violations: u64,
    events: u64,
    jobs: u64,
}

impl Totals {
    fn add(self, o: Totals) -> Totals {
        Totals {
            runs: self.runs + o.runs,
            violations: self.violations + o.violations,
            events: self.events + o.events,
            jobs: self.jobs + o.jobs,
        }
    }
}
