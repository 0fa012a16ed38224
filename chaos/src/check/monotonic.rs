//! I1: a node's applied version never decreases, for as long as one process runs.
//!
//! A restarted node is a new process with an empty dataplane, so the count starts again; the
//! key is (node, incarnation), the harness's own count of starts.

use super::{Invariant, Violation};
use crate::observation::Ver;
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct Monotonic {
    last: HashMap<(String, u32), Option<Ver>>,
    pub checks: u64,
}

impl Monotonic {
    /// Feeds the applied version one poll of `node` (in its `incarnation`) returned.
    pub fn observe(
        &mut self,
        node: &str,
        incarnation: u32,
        applied: Option<&Ver>,
        t_ms: u64,
        episode: Option<u64>,
    ) -> Option<Violation> {
        self.checks += 1;
        let key = (node.to_string(), incarnation);
        let previous = self.last.insert(key, applied.cloned());
        match previous {
            Some(before) if applied.cloned() < before => Some(Violation {
                invariant: Invariant::I1,
                t_ms,
                episode,
                node: Some(node.to_string()),
                detail: format!(
                    "applied version went back from {} to {}",
                    show(before.as_ref()),
                    show(applied)
                ),
            }),
            _ => None,
        }
    }
}

impl Monotonic {
    /// The last (so, by I1, the highest) version `node` applied in its `incarnation`.
    pub fn best(&self, node: &str, incarnation: u32) -> Option<&Ver> {
        self.last.get(&(node.to_string(), incarnation))?.as_ref()
    }
}

fn show(v: Option<&Ver>) -> String {
    v.map_or_else(|| "none".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(e: u64, s: u64) -> Ver {
        Ver {
            epoch: e,
            seq: s,
            origin: "n1".into(),
        }
    }

    #[test]
    fn flags_a_step_back_and_a_reset_but_not_a_restart() {
        let mut m = Monotonic::default();
        assert!(m.observe("n1", 0, None, 0, None).is_none());
        assert!(m.observe("n1", 0, Some(&v(1, 1)), 1, None).is_none());
        assert!(m.observe("n1", 0, Some(&v(1, 1)), 2, None).is_none());
        assert!(m.observe("n1", 0, Some(&v(2, 1)), 3, None).is_none());
        let bad = m.observe("n1", 0, Some(&v(1, 9)), 4, Some(3)).unwrap();
        assert_eq!(
            (bad.invariant, bad.t_ms, bad.episode),
            (Invariant::I1, 4, Some(3))
        );
        assert!(
            m.observe("n1", 0, None, 5, None).is_some(),
            "losing the version is a step back"
        );
        // A new start of the node begins from nothing.
        assert!(m.observe("n1", 1, None, 6, None).is_none());
        assert!(m.observe("n2", 0, Some(&v(0, 1)), 7, None).is_none());
    }
}
