//! The report of one run: JSON for machines, a Markdown summary for people. Pure rendering.

use crate::check::Violation;
use crate::stats::Summary;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// What happened in one episode.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpisodeRecord {
    pub index: u64,
    /// When its faults were injected (ms since the run started).
    pub t_ms: u64,
    pub faults: Vec<String>,
    pub hold_ms: u64,
    /// Heal to agreement (I2/I3), if reached.
    pub convergence_ms: Option<u64>,
    /// Heal to agreement on health verdicts (I5), if reached.
    pub health_ms: Option<u64>,
    /// Fault to a new agreed publisher among the nodes cut off from the old one.
    pub takeover_ms: Option<u64>,
}

/// A violation with what replays it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Found {
    pub seed: u64,
    pub replay: String,
    #[serde(flatten)]
    pub violation: Violation,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    pub seed: u64,
    pub nodes: usize,
    pub command: String,
    pub planned_ms: u64,
    pub elapsed_ms: u64,
    pub started_unix_ms: u64,
    pub tls: bool,
    pub episodes: u64,
    pub faults_total: u64,
    pub faults_by_kind: BTreeMap<String, u64>,
    pub edits_written: u64,
    pub polls_ok: u64,
    pub polls_failed: u64,
    /// How many times each invariant was evaluated.
    pub checks: BTreeMap<String, u64>,
    pub violations: Vec<Found>,
    pub convergence_bound_ms: u64,
    pub convergence_target_ms: u64,
    pub convergence: Summary,
    pub health_agreement: Summary,
    pub takeover: Summary,
    /// Applied versions never seen as a head or table (sampling gaps, not violations).
    pub unverified_applied: usize,
    pub episode_log: Vec<EpisodeRecord>,
}

impl RunReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        let _ = writeln!(s, "# shoal-chaos run: seed {} ({verdict})\n", self.seed);
        let _ = writeln!(s, "`{}`\n", self.command);
        let _ = writeln!(
            s,
            "- {} nodes ({}), {:.1} min planned, {:.1} min run",
            self.nodes,
            if self.tls { "mutual TLS" } else { "insecure" },
            self.planned_ms as f64 / 60_000.0,
            self.elapsed_ms as f64 / 60_000.0
        );
        let _ = writeln!(
            s,
            "- {} episodes, {} faults, {} workload edits, {} polls ({} failed: stopped or cut-off nodes)",
            self.episodes, self.faults_total, self.edits_written, self.polls_ok + self.polls_failed, self.polls_failed
        );
        let _ = writeln!(s, "- violations: **{}**", self.violations.len());
        let _ = writeln!(s, "\n## Faults by kind\n\n| kind | count |\n|---|---|");
        for (k, n) in &self.faults_by_kind {
            let _ = writeln!(s, "| {k} | {n} |");
        }
        let _ = writeln!(s, "\n## Checks\n\n| invariant | evaluations |\n|---|---|");
        for (k, n) in &self.checks {
            let _ = writeln!(s, "| {k} | {n} |");
        }
        let _ = writeln!(
            s,
            "\nUnverified applied versions (applied but never sampled as a head): {}",
            self.unverified_applied
        );
        let _ = writeln!(
            s,
            "\n## Timing (ms)\n\n| measure | count | p50 | p99 | max |\n|---|---|---|---|---|"
        );
        for (name, m) in [
            ("convergence after heal (I2/I3)", &self.convergence),
            ("health agreement after heal (I5)", &self.health_agreement),
            ("publisher takeover after fault", &self.takeover),
        ] {
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} | {} |",
                m.count, m.p50_ms, m.p99_ms, m.max_ms
            );
        }
        let _ = writeln!(
            s,
            "\nConvergence target {} ms; a heal not converged within {} ms is an I2 violation.",
            self.convergence_target_ms, self.convergence_bound_ms
        );
        let over = self
            .episode_log
            .iter()
            .filter(|e| {
                e.convergence_ms
                    .is_some_and(|c| c > self.convergence_target_ms)
            })
            .count();
        let _ = writeln!(
            s,
            "Heals that took longer than the target: {over} of {}.",
            self.convergence.count
        );
        let _ = writeln!(s, "\n## Violations\n");
        if self.violations.is_empty() {
            let _ = writeln!(s, "None.");
        }
        for f in &self.violations {
            let _ = writeln!(s, "- {} — replay: `{}`", f.violation, f.replay);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Invariant;

    #[test]
    fn markdown_names_the_verdict_and_the_replay() {
        let mut r = RunReport {
            seed: 9,
            command: "shoal-chaos run --seed 9".into(),
            ..RunReport::default()
        };
        r.faults_by_kind.insert("kill".into(), 3);
        assert!(r.to_markdown().contains("(PASS)"));
        r.violations.push(Found {
            seed: 9,
            replay: "shoal-chaos run --seed 9".into(),
            violation: Violation {
                invariant: Invariant::I1,
                t_ms: 1234,
                episode: Some(2),
                node: Some("n3".into()),
                detail: "went back".into(),
            },
        });
        let md = r.to_markdown();
        assert!(md.contains("(FAIL)") && md.contains("I1 at 1234 ms (episode 2) on n3"));
        assert!(md.contains("| kill | 3 |"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["violations"][0]["invariant"], "I1");
        assert_eq!(json["violations"][0]["seed"], 9);
    }
}
