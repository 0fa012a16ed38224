//! The shipping health rules in each simulated node: who checks which backend (the rendezvous
//! ranking of `health::assign`), rise/fall hysteresis, and the verdict from live opinions.

use super::node::{index_of, SimNode, Timing, World};
use shoal_gossip::version::NodeId;
use shoal_node::health::hysteresis::Hysteresis;
use shoal_node::health::verdict::verdict;
use shoal_node::health::CheckState;

/// Who checks each backend: the shipping rendezvous ranking (`health::assign::checkers`) of
/// every node, computed once; a node's checkers are the first `k` of it that it sees alive
/// (the ranking does not depend on who else is alive, so this is `checkers(key, live, k)`).
pub fn rankings(all: &[NodeId], backends: usize) -> Vec<Vec<usize>> {
    (0..backends)
        .map(|b| {
            shoal_node::health::assign::checkers(&format!("sim|backend-{b}"), all, all.len())
                .iter()
                .filter_map(index_of)
                .collect()
        })
        .collect()
}

impl SimNode {
    /// Probes the backends this node checks and judges every backend from live opinions.
    pub(super) fn health(&mut self, now_ms: u64, t: &Timing, w: &World<'_>, live: &[bool]) {
        for (b, &truth) in w.backend_up.iter().enumerate() {
            let assigned: Vec<NodeId> = w.rankings[b]
                .iter()
                .filter(|&&i| live[i])
                .take(t.checkers_per_backend)
                .map(|&i| w.all[i].clone())
                .collect();
            if assigned.contains(&self.id) {
                let h = self
                    .checks
                    .entry(b)
                    .or_insert_with(|| Hysteresis::new(now_ms));
                h.observe(truth, t.rise, t.fall, now_ms);
            } else {
                self.checks.remove(&b);
            }
            let mut reports: Vec<(NodeId, CheckState)> = Vec::new();
            if let Some(h) = self.checks.get(&b) {
                reports.push((self.id.clone(), h.state()));
            }
            for (i, k) in self.gossip.entries() {
                if !live[i] {
                    continue;
                }
                if let Some((_, s)) = k.ad.opinions.iter().find(|(ob, _)| *ob == b) {
                    reports.push((w.all[i].clone(), *s));
                }
            }
            self.verdicts[b] = verdict(&reports, &assigned, Some(self.verdicts[b])).0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::node::ids;
    use proptest::prelude::*;

    proptest! {
        /// The precomputed ranking gives the shipping `checkers(key, live, k)` for any live set.
        #[test]
        fn rankings_filtered_by_liveness_are_the_shipping_checkers(
            n in 1usize..40, mask in any::<u64>(), k in 1usize..4,
        ) {
            let all = ids(n);
            let ranks = rankings(&all, 3);
            let live: Vec<NodeId> =
                (0..n).filter(|i| mask >> (i % 64) & 1 == 1).map(|i| all[i].clone()).collect();
            for (b, rank) in ranks.iter().enumerate() {
                let ours: Vec<NodeId> = rank
                    .iter()
                    .filter(|&&i| live.contains(&all[i]))
                    .take(k)
                    .map(|&i| all[i].clone())
                    .collect();
                let key = format!("sim|backend-{b}");
                prop_assert_eq!(ours, shoal_node::health::assign::checkers(&key, &live, k));
            }
        }
    }
}
