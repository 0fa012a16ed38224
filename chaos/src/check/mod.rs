//! The invariants, each as a pure checker fed observations; a breach becomes a [`Violation`].
//!
//! I1 `monotonic`: a node's applied version never decreases (within one start of the node).
//! I2 `convergence`: after every heal all live nodes agree on one publisher (the lowest live
//!    id), on one head, on membership, and every dataplane holds the head, within a bound.
//! I3 `convergence`: nothing published is lost: the converged head is at least every version a
//!    running node applied, and carries the last edit the workload wrote.
//! I4 `provenance`: no node holds a table no publisher published: one digest per version, and
//!    every table read back is exactly one the workload wrote.
//! I5 `convergence`: once health verdicts exist, live nodes agree on them (and they are right).

pub mod convergence;
pub mod monotonic;
pub mod provenance;

use serde::{Deserialize, Serialize};
use std::fmt;

/// Which promise was broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Invariant {
    I1,
    I2,
    I3,
    I4,
    I5,
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// One broken promise, with what is needed to find and replay it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub invariant: Invariant,
    /// Milliseconds since the run (or simulation) started.
    pub t_ms: u64,
    /// The episode during or after which it was seen.
    pub episode: Option<u64>,
    pub node: Option<String>,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {} ms", self.invariant, self.t_ms)?;
        if let Some(e) = self.episode {
            write!(f, " (episode {e})")?;
        }
        if let Some(n) = &self.node {
            write!(f, " on {n}")?;
        }
        write!(f, ": {}", self.detail)
    }
}
