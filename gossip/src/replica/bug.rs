//! Deliberate defects in the replica core, compiled only with the `fault-injection` feature
//! (test and chaos builds; never the release binary). They exist to prove that the
//! deterministic simulation, which drives this very core, catches a broken replica.

use super::Member;
use crate::head::HeldAd;
use crate::version::NodeId;

/// A deliberate defect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// Fetches from any live peer that holds a different document (not only the head's
    /// holders) and adopts whatever comes back, older or not: skips `should_adopt`.
    AdoptOlder,
}

/// The adoption decision, broken by the bug.
pub(super) fn adopt(
    bug: Option<Bug>,
    correct: bool,
    held: Option<&HeldAd>,
    offered: &HeldAd,
) -> bool {
    match bug {
        Some(Bug::AdoptOlder) => held != Some(offered),
        None => correct,
    }
}

/// The fetch plan, broken by the bug: the first live peer (rotated by the time) whose document
/// differs from ours.
pub(super) fn plan_fetch(
    bug: Option<Bug>,
    correct: Option<(HeldAd, Vec<NodeId>)>,
    me: &NodeId,
    held: Option<&HeldAd>,
    members: &[Member],
    now_ms: u64,
) -> Option<(HeldAd, Vec<NodeId>)> {
    match bug {
        None => correct,
        Some(Bug::AdoptOlder) => {
            let differing: Vec<&Member> = members
                .iter()
                .filter(|m| m.alive && &m.id != me)
                .filter(|m| m.held.is_some() && m.held.as_ref() != held)
                .collect();
            if differing.is_empty() {
                return None;
            }
            let m = differing[(now_ms / 10) as usize % differing.len()];
            Some((m.held.clone()?, vec![m.id.clone()]))
        }
    }
}
