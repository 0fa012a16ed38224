//! The deterministic simulation inside `cargo test`: thousands of seeds must keep every
//! invariant, and a node with a deliberate bug must be caught with a seed that replays it.

use shoal_chaos::check::Invariant;
use shoal_chaos::sim::scale::run_size;
use shoal_chaos::sim::{run_many, run_seed, Bug, SimConfig};
use shoal_chaos::stats::summarize;

/// SHOAL_SIM_SEEDS overrides the count (e.g. 100000 for a long search).
fn seed_count(default: u64) -> u64 {
    std::env::var("SHOAL_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn thousands_of_seeds_keep_every_invariant() {
    let cfg = SimConfig::default();
    let count = seed_count(10_000);
    let started = std::time::Instant::now();
    let batch = run_many(0, count, &cfg, 2);
    let (failed, conv) = (&batch.failed, &batch.convergence_ms);
    let s = summarize(conv);
    println!(
        "sim: {count} seeds in {:.1} s; convergence after heal p50 {} ms p99 {} ms max {} ms",
        started.elapsed().as_secs_f64(),
        s.p50_ms,
        s.p99_ms,
        s.max_ms
    );
    for o in failed.iter().take(5) {
        for v in &o.violations {
            println!("seed {}: {v}", o.seed);
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {count} seeds broke an invariant; first seeds: {:?}",
        failed.len(),
        failed.iter().take(10).map(|o| o.seed).collect::<Vec<_>>()
    );
    assert_eq!(conv.len() as u64, count);
}

/// The scale mode's short, fixed-seed variant (`shoal-chaos sim-scale` runs 10, 100 and 1,000
/// nodes): 100 nodes through two chaos-then-heal episodes agree after each heal.
#[test]
fn a_hundred_nodes_agree_after_every_heal() {
    let base = SimConfig {
        chaos_ms: 3_000,
        heals: 2,
        ..SimConfig::default()
    };
    let started = std::time::Instant::now();
    let row = run_size(100, 2026, 1, &base, 1);
    println!(
        "sim: 100 nodes, {} heals in {:.1} s: convergence p50 {} ms max {} ms",
        row.heals,
        started.elapsed().as_secs_f64(),
        row.convergence.p50_ms,
        row.convergence.max_ms
    );
    assert_eq!(row.violations, 0, "{row:?}");
    assert_eq!(row.heals, 2);
    assert_eq!(row.convergence.count, 2);
}

#[test]
fn adopt_older_bug_breaks_i1_with_a_replayable_seed() {
    let cfg = SimConfig {
        bug: Some(Bug::AdoptOlder),
        ..SimConfig::default()
    };
    let caught = (0..200u64)
        .map(|seed| run_seed(seed, &cfg))
        .find(|o| o.violations.iter().any(|v| v.invariant == Invariant::I1))
        .expect("the I1 checker never caught a node that adopts older versions");
    let first = caught
        .violations
        .iter()
        .find(|v| v.invariant == Invariant::I1)
        .unwrap();
    println!("caught with seed {}: {first}", caught.seed);
    assert!(first.detail.contains(&format!("sim seed {}", caught.seed)));
    // The printed seed replays the same history and the same violation.
    assert_eq!(run_seed(caught.seed, &cfg), caught);
}
