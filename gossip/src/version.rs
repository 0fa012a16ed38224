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

/// A gossip value that did not parse as a [`Version`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad version string {value:?}: expected <epoch>.<seq>@<origin>")]
pub struct VersionParseError {
    pub value: String,
}

impl Version {
    pub fn new(epoch: u64, seq: u64, origin: NodeId) -> Self {
        Version { epoch, seq, origin }
    }

    /// Parses the `epoch.seq@origin` form produced by `Display` (the form gossiped).
    pub fn parse(value: &str) -> Result<Self, VersionParseError> {
        let bad = || VersionParseError {
            value: value.chars().take(64).collect(),
        };
        let (numbers, origin) = value.split_once('@').ok_or_else(bad)?;
        let (epoch, seq) = numbers.split_once('.').ok_or_else(bad)?;
        if origin.is_empty() {
            return Err(bad());
        }
        Ok(Version {
            epoch: epoch.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
            origin: NodeId::new(origin),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(epoch: u64, seq: u64, origin: &str) -> Version {
        Version::new(epoch, seq, NodeId::new(origin))
    }

    #[test]
    fn epoch_dominates_seq_and_origin_breaks_ties() {
        assert!(v(2, 0, "a") > v(1, 99, "z"));
        assert!(v(1, 2, "a") > v(1, 1, "z"));
        assert!(v(1, 1, "b") > v(1, 1, "a"));
    }

    #[test]
    fn parse_rejects_garbage() {
        for bad in ["", "1.2", "1@a", "x.1@a", "1.x@a", "1.2@", "-1.2@a"] {
            assert!(Version::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(epoch in any::<u64>(), seq in any::<u64>(), origin in "[a-z0-9@.-]{1,20}") {
            let version = v(epoch, seq, &origin);
            prop_assert_eq!(Version::parse(&version.to_string()).unwrap(), version);
        }

        #[test]
        fn order_is_lexicographic(a in (0u64..4, 0u64..4, "[ab]"), b in (0u64..4, 0u64..4, "[ab]")) {
            let (va, vb) = (v(a.0, a.1, &a.2), v(b.0, b.1, &b.2));
            prop_assert_eq!(va.cmp(&vb), (a.0, a.1, a.2.clone()).cmp(&(b.0, b.1, b.2.clone())));
        }
    }
}
