//! Whom a node fetches a new head from, so that a large document spreads as a tree instead of
//! every follower queueing at the publisher (issue #16, goal 2). Pure; no I/O.
//!
//! Every node ranks the live members by a rendezvous weight, `sha256(digest || 0 || id)`, lowest
//! first, and puts the root (the publisher when it holds the head, else the lowest-weight holder)
//! in front. It reads that ranking as a [`FANOUT`]-ary tree: the member at position `p` fetches
//! from the one at `(p - 1) / FANOUT`. So the root sends `FANOUT` copies, every other member at
//! most `FANOUT`, and a new head reaches `N` nodes in about `log_FANOUT(N)` transfers in a row.
//! The weight depends on the document, so who serves whom changes with every head: no member
//! serves more than its share over time.
//!
//! A parent usually does not hold the head yet when its children ask: it learns of the head from
//! gossip as they do. It waits briefly for the copy it is fetching (`transfer::serve`) instead
//! of answering "not held". A fetcher that gets nothing from its parent asks its grandparent,
//! then the other holders (ranked by its own weight, so that fallbacks spread too), and the
//! root last: the publisher is the fallback of every fetch.
//!
//! Why waits never form a cycle: a node only asks a non-holder that is one of its ancestors, and
//! every ancestor other than the root has a lower weight than the node itself. The weight does
//! not depend on anyone's view of the membership, so two nodes with different views still never
//! wait on each other; the root holds the head and never waits. Views that differ (a member seen
//! live by some nodes only) change the tree a little, not the result: every fetch ends at a
//! holder.

use crate::rendezvous;
use crate::version::NodeId;

/// How many members each member serves a new head to (the publisher included).
pub const FANOUT: usize = 3;

/// Ancestors asked before the other holders: the parent and the grandparent.
const ANCESTORS_ASKED: usize = 2;

/// The rank of `id` for the document with `digest`: lower ranks first.
fn weight(digest: &str, id: &NodeId) -> [u8; 32] {
    rendezvous::weight(&[digest.as_bytes(), id.as_str().as_bytes()])
}

/// The rank of holder `id` among the fallbacks of fetcher `me`: every fetcher orders the holders
/// differently, so that fallbacks spread.
fn fallback_weight(digest: &str, me: &NodeId, id: &NodeId) -> [u8; 32] {
    rendezvous::weight(&[
        digest.as_bytes(),
        me.as_str().as_bytes(),
        id.as_str().as_bytes(),
    ])
}

/// What a fetcher knows about the head it wants.
#[derive(Clone, Copy, Debug)]
pub struct Head<'a> {
    /// The head's digest: the key of the ranking.
    pub digest: &'a str,
    /// The live members that hold it.
    pub holders: &'a [NodeId],
    pub publisher: Option<&'a NodeId>,
}

/// The members `me` asks for the head, in order; empty when no member other than `me` holds it.
///
/// `live`: the live members (in any order, duplicates allowed; `me` and the holders may be
/// missing from it). The answer never names `me`; it names every holder other than `me`: first
/// `me`'s parent and grandparent in the tree (holders or not), then the other holders, then the
/// root if it was not the parent or grandparent.
pub fn sources(me: &NodeId, head: Head<'_>, live: &[NodeId]) -> Vec<NodeId> {
    let Head {
        digest,
        holders,
        publisher,
    } = head;
    let mut others: Vec<&NodeId> = holders.iter().filter(|h| *h != me).collect();
    others.sort();
    others.dedup();
    let Some(root) = root_of(digest, &others, publisher) else {
        return Vec::new();
    };
    let tree = tree(digest, root, me, &others, live);
    let mut position = tree.iter().position(|id| *id == me).unwrap_or(0);
    let mut order: Vec<NodeId> = Vec::with_capacity(others.len() + ANCESTORS_ASKED);
    while position > 0 && order.len() < ANCESTORS_ASKED {
        position = (position - 1) / FANOUT;
        order.push(tree[position].clone());
    }
    let mut fallbacks: Vec<([u8; 32], &NodeId)> = others
        .iter()
        .filter(|h| **h != root && !order.contains(h))
        .map(|h| (fallback_weight(digest, me, h), *h))
        .collect();
    fallbacks.sort();
    order.extend(fallbacks.into_iter().map(|(_, h)| h.clone()));
    if !order.contains(root) {
        order.push(root.clone());
    }
    order
}

/// The root of the tree: the publisher when it holds the head, else the lowest-weight holder.
fn root_of<'a>(
    digest: &str,
    holders: &[&'a NodeId],
    publisher: Option<&NodeId>,
) -> Option<&'a NodeId> {
    match holders.iter().find(|h| Some(**h) == publisher) {
        Some(p) => Some(*p),
        None => holders
            .iter()
            .min_by_key(|h| (weight(digest, h), **h))
            .copied(),
    }
}

/// The tree as a list: the root, then every other member (`live`, the holders and `me`, each
/// once) by weight. The member at position `p` fetches from the one at `(p - 1) / FANOUT`.
fn tree<'a>(
    digest: &str,
    root: &'a NodeId,
    me: &'a NodeId,
    holders: &[&'a NodeId],
    live: &'a [NodeId],
) -> Vec<&'a NodeId> {
    let mut ranked: Vec<([u8; 32], &NodeId)> = live
        .iter()
        .chain(holders.iter().copied())
        .chain(std::iter::once(me))
        .filter(|id| *id != root)
        .map(|id| (weight(digest, id), id))
        .collect();
    ranked.sort();
    ranked.dedup_by(|a, b| a.1 == b.1);
    std::iter::once(root)
        .chain(ranked.into_iter().map(|(_, id)| id))
        .collect()
}

/// The members `me` serves first in the tree for this head: those at positions
/// `p * FANOUT + 1 ..= p * FANOUT + FANOUT` when `me` is at `p`, in tree order; exactly the
/// members whose [`sources`] names `me` first (with the same view). `me` announces a new head
/// to them directly (`replica/announce.rs`), so that each level of the tree learns of it one
/// round trip after its parent instead of a gossip round or more. Empty when nobody holds the
/// head (no tree yet).
pub fn children(me: &NodeId, head: Head<'_>, live: &[NodeId]) -> Vec<NodeId> {
    let mut holders: Vec<&NodeId> = head.holders.iter().collect();
    holders.sort();
    holders.dedup();
    let Some(root) = root_of(head.digest, &holders, head.publisher) else {
        return Vec::new();
    };
    let tree = tree(head.digest, root, me, &holders, live);
    let Some(p) = tree.iter().position(|id| *id == me) else {
        return Vec::new();
    };
    let first = p * FANOUT + 1;
    tree.iter()
        .skip(first)
        .take(FANOUT)
        .map(|id| (*id).clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn id(s: &str) -> NodeId {
        NodeId::new(s)
    }
    fn ids(n: usize) -> Vec<NodeId> {
        (0..n).map(|i| NodeId::new(format!("n{i:03}"))).collect()
    }
    fn head<'a>(digest: &'a str, holders: &'a [NodeId], publisher: &'a NodeId) -> Head<'a> {
        Head {
            digest,
            holders,
            publisher: Some(publisher),
        }
    }

    /// Who serves each member first, when every member has the same view.
    fn first_sources(digest: &str, live: &[NodeId], holders: &[NodeId]) -> BTreeMap<NodeId, usize> {
        let mut load = BTreeMap::new();
        for me in live.iter().filter(|m| !holders.contains(m)) {
            let order = sources(me, head(digest, holders, &live[0]), live);
            *load.entry(order[0].clone()).or_insert(0) += 1;
        }
        load
    }

    #[test]
    fn a_small_cluster_fetches_from_the_publisher_first() {
        let live = ids(3);
        let holders = [id("n000"), id("n001")];
        let order = sources(&id("n002"), head("d", &holders, &id("n000")), &live);
        assert_eq!(order, vec![id("n000"), id("n001")]);
    }

    #[test]
    fn nobody_else_holds_it_means_no_source() {
        let live = ids(4);
        let holders = [id("n001")];
        assert!(sources(&id("n001"), head("d", &holders, &id("n001")), &live).is_empty());
        assert!(sources(&id("n002"), head("d", &[], &id("n001")), &live).is_empty());
    }

    #[test]
    fn fifty_nodes_the_publisher_serves_fanout_copies_and_the_tree_is_shallow() {
        let live = ids(50);
        let holders = [live[0].clone()];
        for digest in ["a", "b", "c", "d"] {
            let load = first_sources(digest, &live, &holders);
            assert_eq!(load.get(&live[0]), Some(&FANOUT), "{digest}: {load:?}");
            assert!(load.values().all(|&n| n <= FANOUT), "{load:?}");
            // Depth: follow first sources up to the publisher.
            for me in &live[1..] {
                let mut at = me.clone();
                let mut hops = 0;
                while at != live[0] {
                    at = sources(&at, head(digest, &holders, &live[0]), &live)[0].clone();
                    hops += 1;
                    assert!(hops <= 4, "{me} is {hops}+ hops from the publisher");
                }
            }
        }
    }

    #[test]
    fn without_the_publisher_holding_the_lowest_weight_holder_is_the_root() {
        let live = ids(20);
        let holders = [id("n005"), id("n009")];
        let root = holders
            .iter()
            .min_by_key(|h| weight("d", h))
            .unwrap()
            .clone();
        let mut served_first = 0;
        for me in live.iter().filter(|m| !holders.contains(m)) {
            let order = sources(me, head("d", &holders, &id("n000")), &live);
            assert!(order.contains(&root));
            served_first += usize::from(order[0] == root);
        }
        assert_eq!(served_first, FANOUT);
    }

    #[test]
    fn children_are_the_next_fanout_members_of_the_tree() {
        let live = ids(50);
        let holders = [live[0].clone()];
        let h = head("d", &holders, &live[0]);
        let root_children = children(&live[0], h, &live);
        assert_eq!(root_children.len(), FANOUT);
        for c in &root_children {
            assert_eq!(sources(c, h, &live)[0], live[0]);
        }
        // Nobody holds it: no tree, nobody to announce to.
        assert!(children(&live[0], head("d", &[], &live[0]), &live).is_empty());
        // A leaf has no children.
        let leaves = live
            .iter()
            .filter(|m| children(m, h, &live).is_empty())
            .count();
        assert!(leaves >= 50 - 50 / FANOUT - 1, "{leaves} leaves");
    }

    fn arb_case() -> impl Strategy<Value = (Vec<NodeId>, Vec<NodeId>, String, usize)> {
        (1usize..60, 0usize..5, "[a-f]{1,8}", any::<usize>()).prop_flat_map(
            |(n, extra_holders, digest, me)| {
                let live = ids(n);
                proptest::sample::subsequence(live.clone(), 1..=(extra_holders + 1).min(n))
                    .prop_map(move |holders| (live.clone(), holders, digest.clone(), me % n))
            },
        )
    }

    proptest! {
        /// Never self; every holder other than self is listed, the root last; non-holders are
        /// only ancestors, with a lower weight than the fetcher (so waits never form a cycle).
        #[test]
        fn names_every_holder_never_self_and_only_lighter_non_holders(
            (live, holders, digest, me) in arb_case(), publisher in 0usize..60,
        ) {
            let me = live[me].clone();
            let publisher = live[publisher % live.len()].clone();
            let order = sources(&me, head(&digest, &holders, &publisher), &live);
            prop_assert!(!order.contains(&me));
            let others: BTreeSet<&NodeId> = holders.iter().filter(|h| **h != me).collect();
            prop_assert_eq!(order.is_empty(), others.is_empty());
            let listed: BTreeSet<&NodeId> = order.iter().collect();
            prop_assert_eq!(listed.len(), order.len(), "listed twice: {:?}", order);
            prop_assert!(others.iter().all(|h| listed.contains(h)));
            // The last resort is a holder: the root, or a holder after it.
            if let Some(last) = order.last() {
                prop_assert!(others.contains(last));
            }
            let non_holders: Vec<&NodeId> = order.iter().filter(|s| !others.contains(s)).collect();
            prop_assert!(non_holders.len() <= ANCESTORS_ASKED);
            for s in non_holders {
                prop_assert!(live.contains(s));
                prop_assert!(weight(&digest, s) < weight(&digest, &me), "{} waits on heavier {}", me, s);
            }
        }

        /// The same facts give the same order, whatever order the live list comes in.
        #[test]
        fn deterministic_and_independent_of_list_order(
            (live, holders, digest, me) in arb_case(), k in 0usize..60,
        ) {
            let me = live[me].clone();
            let mut shuffled = live.clone();
            let n = shuffled.len();
            shuffled.rotate_left(k % n);
            shuffled.reverse();
            shuffled.extend(live.iter().take(k % 3).cloned());
            let a = sources(&me, head(&digest, &holders, &live[0]), &live);
            let b = sources(&me, head(&digest, &holders, &live[0]), &shuffled);
            prop_assert_eq!(a, b);
        }

        /// Load spreads: with one view, no member is the first source of more than FANOUT
        /// others, and the publisher of exactly min(FANOUT, fetchers).
        #[test]
        fn nobody_serves_more_than_fanout_first((live, _h, digest, _m) in arb_case()) {
            let holders = [live[0].clone()];
            let load = first_sources(&digest, &live, &holders);
            prop_assert!(load.values().all(|&n| n <= FANOUT), "{:?}", load);
            let fetchers = live.len() - 1;
            prop_assert_eq!(load.get(&live[0]).copied().unwrap_or(0), fetchers.min(FANOUT));
        }
        /// In one view, every member but the root is the child of exactly one member, and the
        /// children of a member are the non-holders that name it first in `sources`.
        #[test]
        fn every_member_but_the_root_is_one_members_child(
            (live, holders, digest, _m) in arb_case(), publisher in 0usize..60,
        ) {
            let publisher = live[publisher % live.len()].clone();
            let h = head(&digest, &holders, &publisher);
            let mut parent_of: BTreeMap<NodeId, NodeId> = BTreeMap::new();
            for m in &live {
                let kids = children(m, h, &live);
                prop_assert!(kids.len() <= FANOUT);
                prop_assert!(!kids.contains(m));
                for c in kids {
                    prop_assert!(parent_of.insert(c.clone(), m.clone()).is_none(), "{} has two parents", c);
                }
            }
            let root = if holders.contains(&publisher) {
                publisher.clone()
            } else {
                holders.iter().min_by_key(|x| (weight(&digest, x), (*x).clone())).unwrap().clone()
            };
            prop_assert!(!parent_of.contains_key(&root));
            prop_assert_eq!(parent_of.len(), live.len() - 1);
            for m in live.iter().filter(|m| !holders.contains(m)) {
                let order = sources(m, h, &live);
                prop_assert_eq!(Some(&order[0]), parent_of.get(m), "{}", m);
            }
        }
    }
}
