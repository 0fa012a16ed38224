//! Versions of the replicated document: `(epoch, seq, origin)`, totally ordered.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::fmt;

/// A node's identity in the mesh.
///
/// Ids order the way people count (see [`natural_cmp`]): `shoal-2` before `shoal-10`. This one
/// order is used everywhere the mesh compares ids: the election's "lowest id", sorted views,
/// and the tie-break between two versions of one epoch.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId(pub String);

impl Ord for NodeId {
    fn cmp(&self, other: &Self) -> Ordering {
        natural_cmp(&self.0, &other.0)
    }
}

impl PartialOrd for NodeId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Numeric-aware ("natural") string order: runs of ASCII digits compare as numbers, everything
/// else byte by byte; so `n2 < n10` and `shoal-9 < shoal-10 < shoal-10a`.
///
/// Invariant: a total order consistent with string equality. Equal numbers spelled with
/// different leading zeros (`n01`, `n1`) are ordered by their bytes as a last resort, so two
/// different ids never compare equal.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (x, y) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < x.len() && j < y.len() {
        if x[i].is_ascii_digit() && y[j].is_ascii_digit() {
            let (si, sj) = (i, j);
            while i < x.len() && x[i].is_ascii_digit() {
                i += 1;
            }
            while j < y.len() && y[j].is_ascii_digit() {
                j += 1;
            }
            let trim = |d: &[u8]| -> usize { d.iter().take_while(|&&c| c == b'0').count() };
            let (da, db) = (&x[si..i], &y[sj..j]);
            let (na, nb) = (&da[trim(da)..], &db[trim(db)..]);
            let by_number = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
            if by_number != Ordering::Equal {
                return by_number;
            }
        } else {
            if x[i] != y[j] {
                return x[i].cmp(&y[j]);
            }
            i += 1;
            j += 1;
        }
    }
    (x.len() - i).cmp(&(y.len() - j)).then_with(|| x.cmp(y))
}

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

/// The highest epoch a version may carry (`i64::MAX`). A stamp never goes above it (stamping
/// refuses instead, `head::next_stamp`), gossip carrying a higher one does not parse (bad =
/// absent), and reservations stop at it: epoch arithmetic can never wrap. At one takeover a
/// millisecond it lasts 292 million years; only a corrupt or hand-edited epoch file gets near,
/// and `epoch_file.rs` refuses one that leaves too little room.
pub const MAX_EPOCH: u64 = i64::MAX as u64;

/// A gossip value that did not parse as a [`Version`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad version string {value:?}: expected <epoch>.<seq>@<origin>, epoch at most {MAX_EPOCH}")]
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
        let epoch: u64 = epoch.parse().map_err(|_| bad())?;
        if epoch > MAX_EPOCH {
            return Err(bad());
        }
        Ok(Version {
            epoch,
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
    fn shoal_10_comes_after_shoal_2() {
        let mut ids: Vec<NodeId> = ["shoal-10", "shoal-2", "shoal-1", "shoal-0", "node-b"]
            .into_iter()
            .map(NodeId::new)
            .collect();
        ids.sort();
        let names: Vec<&str> = ids.iter().map(NodeId::as_str).collect();
        assert_eq!(
            names,
            ["node-b", "shoal-0", "shoal-1", "shoal-2", "shoal-10"]
        );
        assert!(v(1, 1, "n10") > v(1, 1, "n9"));
        assert_eq!(natural_cmp("n01", "n1"), Ordering::Less);
        assert_eq!(natural_cmp("a", "a0"), Ordering::Less);
    }

    #[test]
    fn parse_rejects_garbage() {
        let beyond = format!("{}.1@a", MAX_EPOCH + 1);
        for bad in [
            "",
            "1.2",
            "1@a",
            "x.1@a",
            "1.x@a",
            "1.2@",
            "-1.2@a",
            beyond.as_str(),
        ] {
            assert!(Version::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(epoch in 0..=MAX_EPOCH, seq in any::<u64>(), origin in "[a-z0-9@.-]{1,20}") {
            let version = v(epoch, seq, &origin);
            prop_assert_eq!(Version::parse(&version.to_string()).unwrap(), version);
        }

        /// `natural_cmp` is a total order consistent with equality (antisymmetric, transitive,
        /// equal only for equal strings).
        #[test]
        fn natural_order_is_total(a in "[a-c0-9-]{0,6}", b in "[a-c0-9-]{0,6}", c in "[a-c0-9-]{0,6}") {
            prop_assert_eq!(natural_cmp(&a, &b), natural_cmp(&b, &a).reverse());
            prop_assert_eq!(natural_cmp(&a, &b) == Ordering::Equal, a == b);
            if natural_cmp(&a, &b) != Ordering::Greater && natural_cmp(&b, &c) != Ordering::Greater {
                prop_assert!(natural_cmp(&a, &c) != Ordering::Greater);
            }
        }

        /// With one prefix, ids order by their ordinal as a number, whatever its width.
        #[test]
        fn ordinals_order_as_numbers(prefix in "[a-z-]{0,8}", m in 0u64..100_000, n in 0u64..100_000) {
            let (a, b) = (NodeId::new(format!("{prefix}{m}")), NodeId::new(format!("{prefix}{n}")));
            prop_assert_eq!(a.cmp(&b), m.cmp(&n));
        }

        #[test]
        fn order_is_lexicographic(a in (0u64..4, 0u64..4, "[ab]"), b in (0u64..4, 0u64..4, "[ab]")) {
            let (va, vb) = (v(a.0, a.1, &a.2), v(b.0, b.1, &b.2));
            prop_assert_eq!(va.cmp(&vb), (a.0, a.1, a.2.clone()).cmp(&(b.0, b.1, b.2.clone())));
        }
    }
}
