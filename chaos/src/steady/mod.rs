//! A steady run: the whole cluster under one constant fault (random loss on every link), no
//! episodes, counting false deaths. Pure: what a poll of every node's live list means, and
//! what the nodes' logs say; the shell that starts the lab and polls is in [`run`].
//!
//! A false death is any moment a running node does not list every other running node as
//! alive. Two witnesses, since a short one can fall between two polls: the polls (checks with a
//! member missing, the lowest live count seen) and the nodes' own log lines "member judged
//! dead", written on every transition however short.

pub mod run;

use serde::Serialize;
use std::collections::BTreeSet;

/// The line the mesh logs (at info, target `shoal_gossip::mesh::shell`) when a member it listed
/// as alive stops being so.
pub const DEATH_LINE: &str = "member judged dead";

/// The `SHOAL_LOG` filter that makes the nodes write [`DEATH_LINE`] and nothing else at info.
pub const NODE_LOG: &str = "warn,shoal_gossip::mesh::shell=info";

/// One poll's tally, kept for the report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Answers that listed members (one per node per poll).
    pub checks: u64,
    /// Answers that lacked at least one expected member.
    pub checks_missing: u64,
    /// Polls that got no answer (a node too slow or gone: not a death, but counted).
    pub polls_failed: u64,
    /// The fewest alive members (the node itself included) any answer listed.
    pub lowest_live: Option<usize>,
    /// The first few misses, `(t_ms, observer, missing members)`.
    pub first_misses: Vec<(u64, String, Vec<String>)>,
}

const KEEP_MISSES: usize = 20;

impl Tally {
    /// Counts one node's answer: `alive` is the ids it lists as alive, `expected` every id that
    /// should be there.
    pub fn observe(
        &mut self,
        t_ms: u64,
        observer: &str,
        alive: &[String],
        expected: &BTreeSet<String>,
    ) {
        self.checks += 1;
        let have: BTreeSet<&str> = alive.iter().map(String::as_str).collect();
        let live = expected
            .iter()
            .filter(|id| have.contains(id.as_str()))
            .count();
        self.lowest_live = Some(self.lowest_live.map_or(live, |l| l.min(live)));
        if live < expected.len() {
            self.checks_missing += 1;
            if self.first_misses.len() < KEEP_MISSES {
                let missing = expected
                    .iter()
                    .filter(|id| !have.contains(id.as_str()))
                    .cloned()
                    .collect();
                self.first_misses
                    .push((t_ms, observer.to_string(), missing));
            }
        }
    }

    pub fn failed_poll(&mut self) {
        self.polls_failed += 1;
    }

    /// Whether every answer listed every member (and at least one answer came).
    pub fn clean(&self) -> bool {
        self.checks > 0 && self.checks_missing == 0
    }
}

/// Whether every answer lists all of `expected`: the cluster has formed.
pub fn formed<'a>(
    answers: impl IntoIterator<Item = &'a [String]>,
    expected: &BTreeSet<String>,
) -> bool {
    let mut any = false;
    for alive in answers {
        any = true;
        let have: BTreeSet<&str> = alive.iter().map(String::as_str).collect();
        if !expected.iter().all(|id| have.contains(id.as_str())) {
            return false;
        }
    }
    any
}

/// How many times a node's log (the part written since the fault was applied) says a member was
/// judged dead.
pub fn deaths_in_log(text: &str) -> usize {
    text.lines().filter(|l| l.contains(DEATH_LINE)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn expected() -> BTreeSet<String> {
        ids(&["n1", "n2", "n3"]).into_iter().collect()
    }

    #[test]
    fn full_answers_are_clean_and_a_missing_member_is_counted() {
        let mut t = Tally::default();
        assert!(!t.clean(), "no answer is not a clean run");
        t.observe(10, "n1", &ids(&["n1", "n2", "n3"]), &expected());
        t.observe(10, "n2", &ids(&["n3", "n2", "n1", "stranger"]), &expected());
        assert!(t.clean());
        assert_eq!(t.lowest_live, Some(3));
        t.observe(20, "n3", &ids(&["n3", "n1"]), &expected());
        assert!(!t.clean());
        assert_eq!((t.checks, t.checks_missing), (3, 1));
        assert_eq!(t.lowest_live, Some(2));
        assert_eq!(t.first_misses, vec![(20, "n3".into(), ids(&["n2"]))]);
    }

    #[test]
    fn only_the_first_misses_are_kept() {
        let mut t = Tally::default();
        for i in 0..100 {
            t.observe(i, "n1", &ids(&["n1"]), &expected());
        }
        assert_eq!(t.checks_missing, 100);
        assert_eq!(t.first_misses.len(), KEEP_MISSES);
        assert_eq!(t.lowest_live, Some(1));
    }

    #[test]
    fn formed_needs_every_answer_complete() {
        let full = ids(&["n1", "n2", "n3"]);
        let short = ids(&["n1", "n2"]);
        assert!(formed([full.as_slice(), full.as_slice()], &expected()));
        assert!(!formed([full.as_slice(), short.as_slice()], &expected()));
        assert!(!formed(std::iter::empty::<&[String]>(), &expected()));
    }

    #[test]
    fn death_lines_are_counted() {
        let log = "2026 INFO shoal_gossip::mesh::shell: member judged dead member=n3\n\
                   2026 INFO shoal_gossip::mesh::shell: member alive again member=n3\n\
                   2026 WARN something else\n\
                   2026 INFO shoal_gossip::mesh::shell: member judged dead member=n4\n";
        assert_eq!(deaths_in_log(log), 2);
        assert_eq!(deaths_in_log(""), 0);
    }
}
