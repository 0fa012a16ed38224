//! `shoal-chaos sim` and `sim-scale`: the deterministic simulation from the command line, many
//! seeds (a summary and the first failures) or one seed replayed in detail, and the
//! convergence table as a function of N.

use super::Verdict;
use crate::sim::{self, scale, Bug, SimConfig};
use anyhow::bail;

/// The shape of each simulated seed.
#[derive(clap::Args, Clone, Debug)]
pub struct SimShape {
    /// Simulated nodes (`sim` only; `sim-scale` takes a list).
    #[arg(long, default_value_t = 5)]
    pub sim_nodes: usize,
    /// Chaos-then-heal episodes per seed.
    #[arg(long, default_value_t = 1)]
    pub heals: usize,
    /// Simulated chaos before each heal (ms).
    #[arg(long, default_value_t = 6_000)]
    pub chaos_ms: u64,
    /// After each heal, everything must agree within this (simulated ms).
    #[arg(long, default_value_t = 5_000)]
    pub bound_ms: u64,
}

impl SimShape {
    pub fn config(&self, bug_adopt_older: bool) -> SimConfig {
        SimConfig {
            nodes: self.sim_nodes,
            heals: self.heals,
            chaos_ms: self.chaos_ms,
            convergence_bound_ms: self.bound_ms,
            bug: bug_adopt_older.then_some(Bug::AdoptOlder),
            ..SimConfig::default()
        }
    }
}

/// `seeds` seeds from `first` (one seed: replayed, every violation printed).
pub fn run(first: u64, seeds: u64, threads: usize, cfg: &SimConfig) -> Verdict {
    let started = std::time::Instant::now();
    if seeds == 1 {
        let o = sim::run_seed(first, cfg);
        println!(
            "seed {first}: {} nodes, {} faults, {} stamps, {} takeovers, {} messages, {} heals, converged after each in {:?} ms ({:.1} s)",
            cfg.nodes, o.faults, o.stamps, o.takeovers, o.messages, o.heals, o.convergence_ms,
            started.elapsed().as_secs_f64()
        );
        for v in &o.violations {
            println!("  {v}");
        }
        return Verdict::of(o.violations.is_empty(), false);
    }
    let batch = sim::run_many(first, seeds, cfg, threads);
    let s = crate::stats::summarize(&batch.convergence_ms);
    println!(
        "{seeds} seeds of {} nodes from {first} in {:.1} s: {} failed; {} heals, convergence after heal p50 {} ms, p99 {} ms, max {} ms; \
         {} publisher takeovers",
        cfg.nodes,
        started.elapsed().as_secs_f64(),
        batch.failed.len(),
        batch.heals,
        s.p50_ms,
        s.p99_ms,
        s.max_ms,
        batch.takeovers
    );
    for o in batch.failed.iter().take(20) {
        println!("seed {}: {}", o.seed, o.violations[0]);
    }
    Verdict::of(batch.failed.is_empty(), false)
}

/// `sim-scale`: one row per cluster size, printed as it finishes, then the table.
pub fn scale(
    nodes: &[usize],
    seeds: &[u64],
    first: u64,
    threads: usize,
    base: &SimConfig,
) -> anyhow::Result<Verdict> {
    if nodes.len() != seeds.len() {
        bail!(
            "--seeds needs one count per --nodes size ({} sizes, {} counts)",
            nodes.len(),
            seeds.len()
        );
    }
    if let Some(n) = nodes.iter().find(|&&n| n < 2) {
        bail!("--nodes: a cluster needs at least 2 nodes, got {n}");
    }
    let mut rows = Vec::new();
    for (&n, &count) in nodes.iter().zip(seeds) {
        let row = scale::run_size(n, first, count, base, threads);
        print!("{}", scale::table(std::slice::from_ref(&row)));
        rows.push(row);
    }
    println!(
        "\n{} chaos-then-heal episodes per seed, {} ms of chaos each, bound {} ms after each heal, {threads} threads:\n",
        base.heals, base.chaos_ms, base.convergence_bound_ms
    );
    print!("{}", scale::table(&rows));
    Ok(Verdict::of(rows.iter().all(|r| r.violations == 0), false))
}
