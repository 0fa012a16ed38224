//! Time to converge as a function of N (issue #16, goal 5): the same simulation at several
//! cluster sizes, each over its own seeds, with several chaos-then-heal episodes per seed.
//! `shoal-chaos sim-scale` prints the rows as a table.

use super::{run_many, SimConfig};
use crate::stats::{summarize, Summary};
use std::time::Instant;

/// What one cluster size did.
#[derive(Clone, Debug)]
pub struct ScaleRow {
    pub nodes: usize,
    pub seeds: u64,
    pub heals: u64,
    /// Heal to one publisher, one head, everyone applied (simulated ms).
    pub convergence: Summary,
    pub violations: usize,
    /// The first seeds with a violation (replay: `shoal-chaos sim --nodes N --first S --seeds 1`).
    pub failed_seeds: Vec<u64>,
    pub takeovers: u64,
    pub wall_s: f64,
}

/// Runs seeds `first..first + seeds` with `nodes` nodes and the rest of `base`.
pub fn run_size(
    nodes: usize,
    first: u64,
    seeds: u64,
    base: &SimConfig,
    threads: usize,
) -> ScaleRow {
    let cfg = SimConfig {
        nodes,
        ..base.clone()
    };
    let started = Instant::now();
    let batch = run_many(first, seeds, &cfg, threads);
    ScaleRow {
        nodes,
        seeds,
        heals: batch.heals,
        convergence: summarize(&batch.convergence_ms),
        violations: batch.failed.iter().map(|o| o.violations.len()).sum(),
        failed_seeds: batch.failed.iter().take(10).map(|o| o.seed).collect(),
        takeovers: batch.takeovers,
        wall_s: started.elapsed().as_secs_f64(),
    }
}

/// The rows as a Markdown table.
pub fn table(rows: &[ScaleRow]) -> String {
    let mut s = String::from(
        "| nodes | seeds | heals | convergence p50 / p99 / max (simulated ms) | violations | takeovers | wall time |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let failed = if r.failed_seeds.is_empty() {
            String::new()
        } else {
            format!(" (seeds {:?})", r.failed_seeds)
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} / {} / {} | {}{} | {} | {:.1} s |\n",
            r.nodes,
            r.seeds,
            r.heals,
            r.convergence.p50_ms,
            r.convergence.p99_ms,
            r.convergence.max_ms,
            r.violations,
            failed,
            r.takeovers,
            r.wall_s
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_counts_every_heal_and_the_table_shows_it() {
        let base = SimConfig {
            chaos_ms: 500,
            heals: 2,
            ..SimConfig::default()
        };
        let row = run_size(4, 0, 3, &base, 1);
        assert_eq!(row.heals, 6);
        assert_eq!(row.violations, 0, "{row:?}");
        assert_eq!(row.convergence.count, 6);
        let t = table(&[row]);
        assert!(
            t.lines()
                .nth(2)
                .is_some_and(|l| l.starts_with("| 4 | 3 | 6 |")),
            "{t}"
        );
    }
}
