//! Members that came back to the live set after this node saw them gone (a thawed process, a
//! healed partition), and which of their opinions are too old to count.
//!
//! A member's gossiped opinions outlive its absence: when it comes back, the values it
//! gossiped before count again at once, although the backends may have died meanwhile. A
//! probe froze a checker at 10,000 health keys, killed 200 of its backends, and thawed it:
//! its health thread did its first pass 41 s later, and until then its "up" from before the
//! freeze, 55-78 s old, put every one of those backends back in service on every node. An
//! opinion of a returned member counts again only if its last probe is no older than the
//! return less [`STALE_BEFORE_RETURN_MS`] (a member refreshes an unchanged value only every
//! `runner::REFRESH_INTERVAL`, so a value that old may still be its latest word).
//! Pure: the runner hands in the live set and the wall clock.

use super::wire::Observation;
use shoal_gossip::version::NodeId;
use std::collections::{BTreeMap, BTreeSet};

/// How much older than a member's return its last probe of a backend may be and still count:
/// the runner's refresh interval (10 s) and 2 s for the members' clocks to differ.
pub const STALE_BEFORE_RETURN_MS: u64 = 12_000;

#[derive(Debug, Default)]
pub struct Returns {
    /// The live set of the last pass (empty before the first).
    live: BTreeSet<NodeId>,
    /// Members seen live once and not live now.
    gone: BTreeSet<NodeId>,
    /// When each member that was gone came back (unix ms).
    back_at: BTreeMap<NodeId, u64>,
}

impl Returns {
    /// Takes this pass's live set; `true` when a member came back.
    pub fn follow(&mut self, live: &[NodeId], now_ms: u64) -> bool {
        // Every pass asks; the live set seldom moves (the board lists it sorted).
        if self.live.iter().eq(live) {
            return false;
        }
        let mut returned = false;
        let now: BTreeSet<NodeId> = live.iter().cloned().collect();
        for node in now.difference(&self.live) {
            if self.gone.remove(node) {
                self.back_at.insert(node.clone(), now_ms);
                returned = true;
            }
        }
        for node in self.live.difference(&now) {
            self.gone.insert(node.clone());
        }
        self.live = now;
        returned
    }

    /// Whether `node`'s opinion `o` counts: it is not from well before the node came back.
    pub fn counts(&self, node: &NodeId, o: &Observation) -> bool {
        self.back_at
            .get(node)
            .is_none_or(|&back| probed_since(o, back))
    }

    /// `node`'s opinions that count ([`Self::counts`]).
    pub fn fresh(&self, node: &NodeId, mut observations: Vec<Observation>) -> Vec<Observation> {
        if let Some(&back) = self.back_at.get(node) {
            observations.retain(|o| probed_since(o, back));
        }
        observations
    }
}

/// Whether `o` was probed no earlier than [`STALE_BEFORE_RETURN_MS`] before `back` (unix ms).
fn probed_since(o: &Observation, back: u64) -> bool {
    o.last_probe_ms.saturating_add(STALE_BEFORE_RETURN_MS) >= back
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::hysteresis::CheckState;
    use crate::health::result::ProbeResult;

    fn said(last_probe_ms: u64) -> Observation {
        Observation {
            address: [198, 18, 0, 1].into(),
            port: 80,
            state: CheckState::Up,
            last_result: ProbeResult::Ok,
            last_probe_ms,
            since_ms: 1,
        }
    }

    #[test]
    fn a_returned_members_opinions_from_before_its_return_do_not_count() {
        let (a, b) = (NodeId::new("a"), NodeId::new("b"));
        let mut r = Returns::default();
        // Everyone at the start is new, not returned: what they said before counts.
        assert!(!r.follow(&[a.clone(), b.clone()], 100_000));
        assert!(r.counts(&b, &said(1)));
        // b gone, then back at 200 s: its word from before 188 s does not count.
        assert!(!r.follow(std::slice::from_ref(&a), 150_000));
        assert!(r.follow(&[a.clone(), b.clone()], 200_000));
        assert!(!r.counts(&b, &said(120_000)), "the thaw: 80 s old");
        assert!(!r.counts(&b, &said(187_999)));
        assert!(r.counts(&b, &said(188_000)), "a refresh's worth older");
        assert!(r.counts(&b, &said(200_500)), "probed since");
        assert!(r.counts(&a, &said(1)), "a never left");
        assert_eq!(
            r.fresh(&b, vec![said(1), said(199_000)]),
            vec![said(199_000)]
        );
        // Staying live changes nothing; a second return moves the bound.
        assert!(!r.follow(&[a.clone(), b.clone()], 300_000));
        assert!(r.counts(&b, &said(188_000)));
        r.follow(std::slice::from_ref(&a), 310_000);
        r.follow(&[a, b.clone()], 320_000);
        assert!(!r.counts(&b, &said(300_000)));
    }
}
