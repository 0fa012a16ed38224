//! Versions of the replicated document: `(epoch, seq, origin)`, totally ordered.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A node's identity in the mesh. Election picks the lowest id, so ids compare as strings.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub String);

impl NodeId {
    pub fn new(id: impl Into<String>) -> Self {
        NodeId(id.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The stamp a publisher puts on each document it publishes.
///
/// Invariant: ordering is lexicographic on `(epoch, seq, origin)`. A publisher that takes over
/// uses an epoch higher than any it has seen, so its first version beats everything before it;
/// `origin` only breaks ties between two publishers of one epoch (the two sides of a partition).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    pub epoch: u64,
    pub seq: u64,
    pub origin: NodeId,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.epoch, self.seq, self.origin)
    }
}
