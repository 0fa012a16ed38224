//! The fault schedule: a seeded, endless sequence of episodes (faults, hold, heal). Pure.
//!
//! An episode injects one to three faults at once, holds them for a while, then heals them all;
//! the runner then waits for the cluster to converge before the next episode. The same seed and
//! node count always give the same sequence, so a violation is replayed by its seed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// One fault. Nodes are 0-based indexes into the lab's nodes (`n1` is index 0).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// `kill -9`; the heal starts it again with a new generation.
    Kill { node: usize },
    /// SIGSTOP; the heal sends SIGCONT.
    Freeze { node: usize },
    /// `kill -9` and an immediate start with a new generation.
    Restart { node: usize },
    /// The node's mesh traffic to and from every other node is dropped.
    Isolate { node: usize },
    /// Mesh traffic between `side` and the other nodes is dropped both ways.
    Halves { side: Vec<usize> },
    /// Mesh packets from `from` to `to` are dropped; the other direction flows.
    OneWay { from: usize, to: usize },
    /// `percent` of the mesh packets the node receives are dropped at random.
    Loss { node: usize, percent: u8 },
}

impl Fault {
    /// The short name reports count faults by.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Kill { .. } => "kill",
            Fault::Freeze { .. } => "freeze",
            Fault::Restart { .. } => "restart",
            Fault::Isolate { .. } => "isolate",
            Fault::Halves { .. } => "halves",
            Fault::OneWay { .. } => "one_way",
            Fault::Loss { .. } => "loss",
        }
    }

    /// The node whose process the fault stops, if any (it cannot answer until healed).
    pub fn stopped_node(&self) -> Option<usize> {
        match self {
            Fault::Kill { node } | Fault::Freeze { node } => Some(*node),
            _ => None,
        }
    }

    /// Every node the fault touches.
    pub fn nodes(&self) -> Vec<usize> {
        match self {
            Fault::Kill { node }
            | Fault::Freeze { node }
            | Fault::Restart { node }
            | Fault::Isolate { node }
            | Fault::Loss { node, .. } => vec![*node],
            Fault::Halves { side } => side.clone(),
            Fault::OneWay { from, to } => vec![*from, *to],
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |i: &usize| format!("n{}", i + 1);
        match self {
            Fault::Kill { node } => write!(f, "kill {}", name(node)),
            Fault::Freeze { node } => write!(f, "freeze {}", name(node)),
            Fault::Restart { node } => write!(f, "restart {}", name(node)),
            Fault::Isolate { node } => write!(f, "isolate {}", name(node)),
            Fault::Halves { side } => {
                let side: Vec<String> = side.iter().map(name).collect();
                write!(f, "halves [{}] | rest", side.join(","))
            }
            Fault::OneWay { from, to } => write!(f, "one-way {} -> {} cut", name(from), name(to)),
            Fault::Loss { node, percent } => write!(f, "loss {percent}% into {}", name(node)),
        }
    }
}

/// Faults injected together, held for `hold_ms`, then healed together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Episode {
    /// 0-based position in the schedule.
    pub index: u64,
    pub faults: Vec<Fault>,
    pub hold_ms: u64,
    /// Quiet time after convergence before the next episode.
    pub gap_ms: u64,
}

/// Knobs of the schedule; the seed and these fully determine it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleConfig {
    pub nodes: usize,
    pub hold_ms_min: u64,
    pub hold_ms_max: u64,
    pub gap_ms_max: u64,
    /// Percent chance that a process fault picks `n1`, the usual publisher, to force takeovers.
    pub publisher_bias_percent: u32,
}

impl ScheduleConfig {
    pub fn new(nodes: usize) -> Self {
        ScheduleConfig {
            nodes,
            hold_ms_min: 1_000,
            hold_ms_max: 4_000,
            gap_ms_max: 500,
            publisher_bias_percent: 40,
        }
    }
}

/// An endless iterator of episodes drawn from a seed.
pub struct Schedule {
    cfg: ScheduleConfig,
    rng: StdRng,
    next_index: u64,
}

impl Schedule {
    pub fn new(seed: u64, cfg: ScheduleConfig) -> Self {
        Schedule {
            cfg,
            rng: StdRng::seed_from_u64(seed),
            next_index: 0,
        }
    }

    fn pick_node(&mut self, taken: &BTreeSet<usize>) -> Option<usize> {
        let free: Vec<usize> = (0..self.cfg.nodes).filter(|n| !taken.contains(n)).collect();
        if free.is_empty() {
            return None;
        }
        if free.contains(&0) && self.rng.gen_range(0..100) < self.cfg.publisher_bias_percent {
            return Some(0);
        }
        Some(free[self.rng.gen_range(0..free.len())])
    }

    fn draw_fault(&mut self, taken: &mut BTreeSet<usize>, stopped: &mut usize) -> Option<Fault> {
        let n = self.cfg.nodes;
        // A minority may be stopped at once, so a majority always runs and can elect.
        let stop_budget = (n.saturating_sub(1)) / 2;
        let roll = self.rng.gen_range(0..100);
        let fault = match roll {
            0..=19 if *stopped < stop_budget => {
                let node = self.pick_node(taken)?;
                *stopped += 1;
                Fault::Kill { node }
            }
            20..=34 if *stopped < stop_budget => {
                let node = self.pick_node(taken)?;
                *stopped += 1;
                Fault::Freeze { node }
            }
            35..=47 => Fault::Restart {
                node: self.pick_node(taken)?,
            },
            48..=62 => Fault::Isolate {
                node: self.pick_node(taken)?,
            },
            63..=74 if taken.is_empty() && n >= 2 => {
                let size = self.rng.gen_range(1..=n / 2);
                let mut all: Vec<usize> = (0..n).collect();
                let mut side = Vec::with_capacity(size);
                for _ in 0..size {
                    let i = self.rng.gen_range(0..all.len());
                    side.push(all.remove(i));
                }
                side.sort_unstable();
                Fault::Halves { side }
            }
            75..=86 if n >= 2 => {
                let from = self.pick_node(taken)?;
                taken.insert(from);
                let to = self.pick_node(taken)?;
                Fault::OneWay { from, to }
            }
            _ => Fault::Loss {
                node: self.pick_node(taken)?,
                percent: [10u8, 30, 50, 80][self.rng.gen_range(0..4)],
            },
        };
        if matches!(fault, Fault::Halves { .. }) {
            // Halves touch everyone: nothing else in this episode.
            taken.extend(0..n);
        } else {
            taken.extend(fault.nodes());
        }
        Some(fault)
    }
}

impl Iterator for Schedule {
    type Item = Episode;

    fn next(&mut self) -> Option<Episode> {
        let count = match self.rng.gen_range(0..10) {
            0..=5 => 1,
            6..=8 => 2,
            _ => 3,
        };
        let mut taken = BTreeSet::new();
        let mut stopped = 0;
        let mut faults = Vec::with_capacity(count);
        for _ in 0..count {
            if let Some(f) = self.draw_fault(&mut taken, &mut stopped) {
                faults.push(f);
            }
        }
        let hold_ms = self
            .rng
            .gen_range(self.cfg.hold_ms_min..=self.cfg.hold_ms_max.max(self.cfg.hold_ms_min));
        let gap_ms = self.rng.gen_range(0..=self.cfg.gap_ms_max);
        let index = self.next_index;
        self.next_index += 1;
        Some(Episode {
            index,
            faults,
            hold_ms,
            gap_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn same_seed_same_schedule_other_seed_other_schedule() {
        let a: Vec<Episode> = Schedule::new(7, ScheduleConfig::new(5)).take(200).collect();
        let b: Vec<Episode> = Schedule::new(7, ScheduleConfig::new(5)).take(200).collect();
        let c: Vec<Episode> = Schedule::new(8, ScheduleConfig::new(5)).take(200).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn every_kind_shows_up() {
        let kinds: BTreeSet<&str> = Schedule::new(1, ScheduleConfig::new(5))
            .take(300)
            .flat_map(|e| e.faults.into_iter().map(|f| f.kind()))
            .collect();
        for k in [
            "kill", "freeze", "restart", "isolate", "halves", "one_way", "loss",
        ] {
            assert!(kinds.contains(k), "{k} never drawn: {kinds:?}");
        }
    }

    proptest! {
        /// Each episode stops at most a minority, touches each node once, and holds in range.
        #[test]
        fn episodes_keep_a_majority_running(seed in any::<u64>(), nodes in 1usize..8) {
            let cfg = ScheduleConfig::new(nodes);
            for e in Schedule::new(seed, cfg.clone()).take(50) {
                let stopped = e.faults.iter().filter(|f| f.stopped_node().is_some()).count();
                prop_assert!(stopped <= (nodes - 1) / 2);
                let mut seen = BTreeSet::new();
                for f in &e.faults {
                    for n in f.nodes() {
                        prop_assert!(n < nodes);
                        prop_assert!(seen.insert(n), "node {} twice in {:?}", n, e.faults);
                    }
                }
                prop_assert!((cfg.hold_ms_min..=cfg.hold_ms_max).contains(&e.hold_ms));
            }
        }
    }
}
