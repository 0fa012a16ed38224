//! Head selection, adoption and stamping rules for the replicated document. Pure; no I/O.
//!
//! Every member gossips what it *holds* (version, digest, size). The head is the newest of
//! those among live members; the holders of that exact (version, digest) are where the
//! document can be fetched from.

use crate::version::{NodeId, Version, MAX_EPOCH};
use serde::{Deserialize, Serialize};

/// What one member says it holds: gossiped, small.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldAd {
    pub version: Version,
    /// Hex SHA-256 of the document's bincode bytes.
    pub digest: String,
    pub size_bytes: u64,
}

/// One member's entry as seen by the node that selects the head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberHeld {
    pub id: NodeId,
    pub alive: bool,
    pub held: Option<HeldAd>,
}

/// The newest document any live member holds, and who holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadInfo {
    pub version: Version,
    pub digest: String,
    pub size_bytes: u64,
    /// Sorted ids of the live members holding exactly this version and digest.
    pub holders: Vec<NodeId>,
}

/// Selects the head among live members: the greatest (version, digest) pair.
///
/// Invariant: order-independent. Two ads with one version but different digests come from a
/// publisher that re-stamped an old version (see [`Rank`]); the digest breaks the tie so that
/// every node still agrees.
pub fn select_head(members: &[MemberHeld]) -> Option<HeadInfo> {
    let best = members
        .iter()
        .filter(|m| m.alive)
        .filter_map(|m| m.held.as_ref())
        .max_by(|a, b| (&a.version, &a.digest).cmp(&(&b.version, &b.digest)))?;
    let mut holders: Vec<NodeId> = members
        .iter()
        .filter(|m| m.alive)
        .filter(|m| {
            m.held
                .as_ref()
                .is_some_and(|h| h.version == best.version && h.digest == best.digest)
        })
        .map(|m| m.id.clone())
        .collect();
    holders.sort();
    holders.dedup();
    Some(HeadInfo {
        version: best.version.clone(),
        digest: best.digest.clone(),
        size_bytes: best.size_bytes,
        holders,
    })
}

/// A document's rank in the order nodes adopt by: its version, then its digest.
///
/// The digest only matters between two documents stamped with one version, which happens when
/// a publisher restarts cut off from every holder of its old stamps (a fresh process does not
/// know the epochs it stamped before). Ranking them by digest makes every node settle on the
/// same one; without it, holders of either copy would each keep theirs for good.
pub type Rank<'a> = (&'a Version, &'a str);

/// A node adopts a document only if it ranks strictly above the one it holds: never backwards.
pub fn should_adopt(current: Option<Rank<'_>>, offered: Rank<'_>) -> bool {
    current.is_none_or(|c| offered > c)
}

/// What a node should do about the head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CatchUp {
    /// It holds the head (or something newer, or there is no head).
    UpToDate,
    /// Fetch the head, trying these holders in order.
    Fetch { sources: Vec<NodeId> },
    /// The head is newer but no live member other than this node holds it.
    NoSource,
}

/// Decides whether to fetch the head and from whom: the order of [`crate::spread::sources`]
/// (the parent in a tree over the `live` members rooted at the publisher, then the grandparent,
/// the other holders, and the publisher last), so that a new head spreads without every
/// follower queueing at the publisher.
pub fn catch_up(
    self_id: &NodeId,
    current: Option<Rank<'_>>,
    head: Option<&HeadInfo>,
    publisher: Option<&NodeId>,
    live: &[NodeId],
) -> CatchUp {
    let Some(head) = head else {
        return CatchUp::UpToDate;
    };
    if !should_adopt(current, (&head.version, &head.digest)) {
        return CatchUp::UpToDate;
    }
    let sources = crate::spread::sources(
        self_id,
        crate::spread::Head {
            digest: &head.digest,
            holders: &head.holders,
            publisher,
        },
        live,
    );
    if sources.is_empty() {
        CatchUp::NoSource
    } else {
        CatchUp::Fetch { sources }
    }
}

/// The publisher's memory of its own stamps within its current term.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StampState {
    /// `None` right after gaining the role: the next stamp opens a new epoch.
    pub epoch: Option<u64>,
    pub seq: u64,
    /// The last document this process stamped in this term: its version and digest. Only
    /// that exact document counts as this publisher's; a head with this node's id stamped by
    /// an earlier process (or term) does not ([`crate::replica::Replica::needs_republish`]).
    pub last: Option<(Version, String)>,
}

/// Result of asking for a stamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stamp {
    /// The head already carries this content, stamped by this process in its current term.
    Reuse(Version),
    New(Version),
}

/// No version above the head is left: every epoch up to [`MAX_EPOCH`] is used (only a corrupt
/// or hand-edited epoch file, or a peer's gossip, gets there). Stamping refuses rather than
/// wrap to a lower epoch, which every other node would ignore.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no epoch left to stamp with: the highest epoch seen is {highest_seen} and epochs end at {max} (refusing to wrap to a lower one)", max = MAX_EPOCH)]
pub struct EpochsExhausted {
    pub highest_seen: u64,
}

/// Chooses the version for a document the publisher wants to spread.
///
/// Invariant: a `New` version is greater than the head and than every epoch seen, so every node
/// that knows the head adopts it; when none is left below [`MAX_EPOCH`] it is
/// `Err(EpochsExhausted)`, never a wrapped, lower version. The first stamp of a term uses
/// `max_epoch_seen + 1`; later ones `seq + 1` in the same epoch, unless another publisher (the
/// other side of a healed partition) reached a higher epoch meanwhile, in which case a new epoch
/// starts. `Reuse` only for the very document this process stamped last (`state.last`), when
/// it is the head and `digest` is its content.
pub fn next_stamp(
    self_id: &NodeId,
    state: &StampState,
    head: Option<&HeadInfo>,
    max_epoch_seen: u64,
    digest: &str,
) -> Result<Stamp, EpochsExhausted> {
    if let (Some((last, _)), Some(head)) = (&state.last, head) {
        if head.version == *last && head.digest == digest {
            return Ok(Stamp::Reuse(head.version.clone()));
        }
    }
    let highest_seen = max_epoch_seen.max(head.map_or(0, |h| h.version.epoch));
    let new_epoch = || match highest_seen.checked_add(1) {
        Some(epoch) if epoch <= MAX_EPOCH => Ok(Version::new(epoch, 1, self_id.clone())),
        _ => Err(EpochsExhausted { highest_seen }),
    };
    let candidate = match (state.epoch, state.seq.checked_add(1)) {
        (Some(epoch), Some(seq)) if epoch >= max_epoch_seen && epoch <= MAX_EPOCH => {
            Version::new(epoch, seq, self_id.clone())
        }
        _ => new_epoch()?,
    };
    match head {
        Some(h) if h.version >= candidate => new_epoch().map(Stamp::New),
        _ => Ok(Stamp::New(candidate)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s)
    }
    fn v(e: u64, s: u64, o: &str) -> Version {
        Version::new(e, s, id(o))
    }
    fn ad(version: Version, digest: &str) -> HeldAd {
        HeldAd {
            version,
            digest: digest.into(),
            size_bytes: 1,
        }
    }
    fn m(name: &str, alive: bool, held: Option<HeldAd>) -> MemberHeld {
        MemberHeld {
            id: id(name),
            alive,
            held,
        }
    }

    #[test]
    fn head_is_newest_live_ad_and_lists_holders() {
        let members = [
            m("a", true, Some(ad(v(1, 2, "a"), "x"))),
            m("b", true, Some(ad(v(1, 2, "a"), "x"))),
            m("c", true, Some(ad(v(1, 1, "a"), "w"))),
            m("d", false, Some(ad(v(9, 9, "d"), "z"))),
            m("e", true, None),
        ];
        let head = select_head(&members).unwrap();
        assert_eq!(head.version, v(1, 2, "a"));
        assert_eq!(head.holders, vec![id("a"), id("b")]);
        assert_eq!(select_head(&[m("e", true, None)]), None);
    }

    #[test]
    fn catch_up_prefers_publisher_then_others() {
        let head = HeadInfo {
            version: v(2, 1, "b"),
            digest: "x".into(),
            size_bytes: 1,
            holders: vec![id("b"), id("c"), id("d")],
        };
        let me = id("e");
        let live = [id("a"), id("b"), id("c"), id("d"), id("e")];
        match catch_up(
            &me,
            Some((&v(1, 5, "a"), "w")),
            Some(&head),
            Some(&id("b")),
            &live,
        ) {
            // Five members: the publisher is everyone's parent, the other holders follow.
            CatchUp::Fetch { sources } => {
                assert_eq!(sources[0], id("b"));
                assert_eq!(sources.len(), 3);
                assert!(sources.contains(&id("c")) && sources.contains(&id("d")));
            }
            other => panic!("{other:?}"),
        }
        // A publisher that does not hold the head is neither root nor source.
        match catch_up(&me, None, Some(&head), Some(&id("a")), &live) {
            CatchUp::Fetch { sources } => {
                assert_eq!(sources.len(), 3);
                assert!(!sources.contains(&id("a")));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            catch_up(&me, Some((&v(2, 1, "b"), "x")), Some(&head), None, &live),
            CatchUp::UpToDate
        );
        assert_eq!(
            catch_up(
                &id("b"),
                None,
                Some(&HeadInfo {
                    holders: vec![id("b")],
                    ..head.clone()
                }),
                None,
                &live
            ),
            CatchUp::NoSource
        );
    }

    #[test]
    fn stamps_open_an_epoch_then_count() {
        let me = id("a");
        let s = StampState::default();
        assert_eq!(
            next_stamp(&me, &s, None, 0, "d"),
            Ok(Stamp::New(v(1, 1, "a")))
        );
        let s = StampState {
            epoch: Some(3),
            seq: 4,
            last: Some((v(3, 4, "a"), "d".into())),
        };
        assert_eq!(
            next_stamp(&me, &s, None, 3, "d"),
            Ok(Stamp::New(v(3, 5, "a")))
        );
        // Another publisher reached epoch 4 while we were in epoch 3.
        assert_eq!(
            next_stamp(&me, &s, None, 4, "d"),
            Ok(Stamp::New(v(5, 1, "a")))
        );
        let head = HeadInfo {
            version: v(3, 4, "a"),
            digest: "d".into(),
            size_bytes: 1,
            holders: vec![],
        };
        assert_eq!(
            next_stamp(&me, &s, Some(&head), 3, "d"),
            Ok(Stamp::Reuse(v(3, 4, "a")))
        );
        assert_eq!(
            next_stamp(&me, &s, Some(&head), 3, "other"),
            Ok(Stamp::New(v(3, 5, "a")))
        );
        // Same content but stamped in an earlier term: a fresh stamp is needed.
        let fresh = StampState::default();
        assert_eq!(
            next_stamp(&me, &fresh, Some(&head), 3, "d"),
            Ok(Stamp::New(v(4, 1, "a")))
        );
    }

    /// The head carries this node's id and epoch and the very content, but this process did
    /// not stamp it (an earlier process of this id, without its epoch file, did): not reused.
    #[test]
    fn a_head_with_this_id_from_an_earlier_process_is_not_reused() {
        let me = id("a");
        let s = StampState {
            epoch: Some(3),
            seq: 1,
            last: Some((v(3, 1, "a"), "mine".into())),
        };
        let stale = HeadInfo {
            version: v(3, 7, "a"),
            digest: "d".into(),
            size_bytes: 1,
            holders: vec![id("b")],
        };
        assert_eq!(
            next_stamp(&me, &s, Some(&stale), 3, "d"),
            Ok(Stamp::New(v(4, 1, "a")))
        );
    }

    /// F1: an epoch near the end must never wrap to a lower one (a wrapped 0.1 stamp was
    /// ignored by every other node and the publisher republished it in a tight loop).
    #[test]
    fn stamping_refuses_rather_than_wrap_at_the_last_epoch() {
        let me = id("a");
        let fresh = StampState::default();
        for seen in [MAX_EPOCH, u64::MAX] {
            assert_eq!(
                next_stamp(&me, &fresh, None, seen, "d"),
                Err(EpochsExhausted { highest_seen: seen })
            );
        }
        // The last epoch is still usable, and seq counts on within it.
        assert_eq!(
            next_stamp(&me, &fresh, None, MAX_EPOCH - 1, "d"),
            Ok(Stamp::New(v(MAX_EPOCH, 1, "a")))
        );
        let in_last = StampState {
            epoch: Some(MAX_EPOCH),
            seq: 1,
            last: Some((v(MAX_EPOCH, 1, "a"), "d".into())),
        };
        assert_eq!(
            next_stamp(&me, &in_last, None, MAX_EPOCH, "e"),
            Ok(Stamp::New(v(MAX_EPOCH, 2, "a")))
        );
        // A head another node holds in the last epoch cannot be beaten: refuse.
        let head = HeadInfo {
            version: v(MAX_EPOCH, 9, "b"),
            digest: "x".into(),
            size_bytes: 1,
            holders: vec![id("b")],
        };
        assert!(next_stamp(&me, &in_last, Some(&head), MAX_EPOCH, "e").is_err());
        // seq at its end opens a new epoch, or refuses: never wraps.
        let full = StampState {
            epoch: Some(5),
            seq: u64::MAX,
            last: None,
        };
        assert_eq!(
            next_stamp(&me, &full, None, 5, "e"),
            Ok(Stamp::New(v(6, 1, "a")))
        );
    }

    fn arb_version() -> impl Strategy<Value = Version> {
        (0u64..5, 0u64..5, "[a-d]").prop_map(|(e, s, o)| v(e, s, &o))
    }

    fn arb_members() -> impl Strategy<Value = Vec<MemberHeld>> {
        proptest::collection::btree_map(
            "[a-f]",
            (any::<bool>(), proptest::option::of((arb_version(), "[xy]"))),
            0..8,
        )
        .prop_map(|m| {
            m.into_iter()
                .map(|(name, (alive, held))| MemberHeld {
                    id: id(&name),
                    alive,
                    held: held.map(|(v, d)| ad(v, &d)),
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn every_order_selects_the_same_head(members in arb_members(), k in 0usize..8) {
            let mut shuffled = members.clone();
            if !shuffled.is_empty() { let n = shuffled.len(); shuffled.rotate_left(k % n); }
            shuffled.reverse();
            prop_assert_eq!(select_head(&members), select_head(&shuffled));
        }

        #[test]
        fn head_beats_every_live_ad(members in arb_members()) {
            if let Some(head) = select_head(&members) {
                for m in members.iter().filter(|m| m.alive) {
                    if let Some(h) = &m.held { prop_assert!(h.version <= head.version); }
                }
                prop_assert!(!head.holders.is_empty());
            }
        }

        /// A node that applies every offer through `should_adopt` never moves backwards.
        #[test]
        fn held_version_never_decreases(
            offers in proptest::collection::vec((arb_version(), "[xy]"), 0..30),
        ) {
            let mut held: Option<(Version, String)> = None;
            for offer in offers {
                let before = held.clone();
                let current = held.as_ref().map(|(v, d)| (v, d.as_str()));
                if should_adopt(current, (&offer.0, &offer.1)) { held = Some(offer); }
                prop_assert!(held >= before);
            }
        }

        /// Nodes that hold different copies of one version and adopt whatever ranks above
        /// theirs all end on the same copy, whichever they started from.
        #[test]
        fn copies_of_one_version_settle_on_one(
            version in arb_version(), copies in proptest::collection::vec("[a-e]", 1..6),
        ) {
            let mut held = copies.clone();
            for offered in &copies {
                for h in held.iter_mut() {
                    if should_adopt(Some((&version, h.as_str())), (&version, offered)) {
                        *h = offered.clone();
                    }
                }
            }
            prop_assert!(held.windows(2).all(|w| w[0] == w[1]));
        }

        /// Whatever the publisher remembers and whatever head it sees, a new stamp is newer than
        /// the head and than every epoch seen.
        #[test]
        fn new_stamps_beat_everything_seen(
            epoch in proptest::option::of(0u64..6), seq in 0u64..6,
            head in proptest::option::of(arb_version()), seen in 0u64..6, me in "[a-d]",
        ) {
            let me = id(&me);
            let max_seen = seen.max(head.as_ref().map_or(0, |h| h.epoch)).max(epoch.unwrap_or(0));
            let head = head.map(|version| HeadInfo { version, digest: "h".into(), size_bytes: 1, holders: vec![] });
            let state = StampState { epoch, seq, last: None };
            match next_stamp(&me, &state, head.as_ref(), max_seen, "new") {
                Ok(Stamp::New(v)) => {
                    prop_assert!(v.epoch >= max_seen);
                    if let Some(h) = &head { prop_assert!(v > h.version); }
                    prop_assert_eq!(v.origin, me);
                }
                Ok(Stamp::Reuse(_)) => prop_assert!(false, "digest differs, reuse impossible"),
                Err(e) => prop_assert!(false, "refused far from the limit: {}", e),
            }
        }

        /// Near the end of the epochs too: a stamp is above the head and every epoch seen,
        /// within `MAX_EPOCH`, or refused; never a wrapped, lower version.
        #[test]
        fn stamps_near_the_last_epoch_never_wrap(
            epoch in proptest::option::of(0u64..4), seq in prop_oneof![0u64..4, Just(u64::MAX)],
            head in proptest::option::of((0u64..4, 0u64..4, "[a-d]")), seen in 0u64..4, me in "[a-d]",
        ) {
            let near = |e: u64| MAX_EPOCH + 1 - e;
            let me = id(&me);
            let head = head.map(|(e, s, o)| HeadInfo { version: v(near(e), s, &o), digest: "h".into(), size_bytes: 1, holders: vec![] });
            let max_seen = near(seen).max(head.as_ref().map_or(0, |h| h.version.epoch));
            let state = StampState { epoch: epoch.map(near), seq, last: None };
            match next_stamp(&me, &state, head.as_ref(), max_seen, "new") {
                Ok(Stamp::New(v)) => {
                    prop_assert!(v.epoch >= max_seen && v.epoch <= MAX_EPOCH);
                    if let Some(h) = &head { prop_assert!(v > h.version); }
                }
                Ok(Stamp::Reuse(_)) => prop_assert!(false, "reuse impossible"),
                Err(EpochsExhausted { highest_seen }) => prop_assert!(highest_seen >= MAX_EPOCH),
            }
        }
    }
}
