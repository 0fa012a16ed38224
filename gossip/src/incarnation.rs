//! Which incarnation of each node id counts, and duplicate ids. Pure; no I/O.
//!
//! Chitchat keys a node by (id, generation, address): a restart gives a new generation, and a
//! second process started with the same id gives a second incarnation. Rules, per node id:
//! 1. An incarnation this node has not verified (see `identity.rs`) never counts: a relayed,
//!    forged state for an id cannot shadow the real one.
//! 2. Live incarnations at two or more addresses are a *duplicate id* (two processes). The
//!    oldest generation is kept; the younger ones are refused, and a refused node that sees
//!    this refuses to serve (not ready, no publishing) until the other is gone.
//! 3. Otherwise the newest generation counts: a restarted node at the same address replaces
//!    its old incarnation at once, even before the failure detector has judged it dead.
//!
//! The viewing node always keeps its own record in its own members (its own decisions rest on
//! it), even when rule 2 refuses it; the view it shows then lists the kept record in its place
//! (`Duplicate::kept_record`), as every other node does.

use crate::version::NodeId;
use crate::view::RawMember;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// One incarnation of a node id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Incarnation {
    pub generation: u64,
    pub listen: SocketAddr,
}

/// A node id with live incarnations at several addresses.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Duplicate {
    pub id: NodeId,
    /// The oldest live incarnation: the one the cluster keeps.
    pub kept: Incarnation,
    /// The younger live ones.
    pub refused: Vec<Incarnation>,
    /// The viewing node is one of `refused`: it must refuse to serve.
    pub refuses_me: bool,
    /// With `refuses_me`: the kept incarnation's record, which the viewing node's own record
    /// stands in for in its members. Its view of the cluster shows this one (the member the
    /// cluster counts), not itself: a refused duplicate named another publisher (a probe).
    pub kept_record: Option<RawMember>,
}

/// Keeps the incarnation that counts for each node id (see the module doc) and reports the
/// duplicates. `me` marks the viewing node's own record.
pub(crate) fn choose(raw: Vec<RawMember>) -> (Vec<RawMember>, Vec<Duplicate>) {
    let mut by_id: BTreeMap<NodeId, Vec<RawMember>> = BTreeMap::new();
    for r in raw.into_iter().filter(|r| r.verified || r.me) {
        by_id.entry(r.id.clone()).or_default().push(r);
    }
    let mut kept = Vec::with_capacity(by_id.len());
    let mut duplicates = Vec::new();
    for (id, mut records) in by_id {
        let mut live: Vec<Incarnation> = records
            .iter()
            .filter(|r| is_live(r))
            .map(|r| Incarnation {
                generation: r.generation,
                listen: r.listen,
            })
            .collect();
        live.sort();
        let addresses = {
            let mut a: Vec<SocketAddr> = live.iter().map(|i| i.listen).collect();
            a.sort();
            a.dedup();
            a.len()
        };
        let me = records.iter().find(|r| r.me).map(|r| Incarnation {
            generation: r.generation,
            listen: r.listen,
        });
        let chosen = if addresses >= 2 {
            let oldest = live[0];
            // Younger incarnations at the oldest one's address are its own restarts, not others.
            let refused: Vec<Incarnation> = live[1..]
                .iter()
                .copied()
                .filter(|i| i.listen != oldest.listen)
                .collect();
            let refuses_me = me.is_some_and(|m| refused.contains(&m));
            let kept_record = refuses_me
                .then(|| {
                    records
                        .iter()
                        .find(|r| r.generation == oldest.generation && r.listen == oldest.listen)
                        .cloned()
                })
                .flatten();
            duplicates.push(Duplicate {
                id: id.clone(),
                kept: oldest,
                refuses_me,
                refused,
                kept_record,
            });
            oldest
        } else {
            // Ties (two processes started in the same millisecond) break by address, so every
            // node picks the same one whatever order chitchat lists them in.
            let Some(newest) = records.iter().max_by_key(|r| (r.generation, r.listen)) else {
                continue;
            };
            let newest = Incarnation {
                generation: newest.generation,
                listen: newest.listen,
            };
            match live.last() {
                // A live incarnation elsewhere is not shadowed by a newer one that is not live
                // (yet): that may be a second process heard once, before it counts as live.
                Some(l) if !live.contains(&newest) && l.listen != newest.listen => *l,
                _ => newest,
            }
        };
        let chosen = me.unwrap_or(chosen);
        if let Some(pos) = records
            .iter()
            .position(|r| r.generation == chosen.generation && r.listen == chosen.listen)
        {
            kept.push(records.swap_remove(pos));
        }
    }
    (kept, duplicates)
}

/// The dead incarnations this node knows only from its peers' gossip, for the ids it holds no
/// verified record of: the newest generation of each. They never count (rule 1); they are
/// listed as dead in the view, so that a node that joined after a member died (and so never
/// heard it first-hand) lists it as the nodes that saw it die do: "any node answers for the
/// cluster" held for the live members only, and `shoal_members_dead` differed by node (an
/// operator's probe). A forged record costs a dead entry in the view, nothing else.
pub(crate) fn relayed_dead(raw: &[RawMember]) -> Vec<RawMember> {
    let verified: std::collections::BTreeSet<&NodeId> = raw
        .iter()
        .filter(|r| r.verified || r.me)
        .map(|r| &r.id)
        .collect();
    let mut newest: BTreeMap<&NodeId, &RawMember> = BTreeMap::new();
    for r in raw
        .iter()
        .filter(|r| !is_live(r) && !verified.contains(&r.id))
    {
        let slot = newest.entry(&r.id).or_insert(r);
        if (r.generation, r.listen) > (slot.generation, slot.listen) {
            *slot = r;
        }
    }
    newest.into_values().cloned().collect()
}

/// Live and not leaving.
fn is_live(r: &RawMember) -> bool {
    r.live && !r.keys.contains_key(crate::keys::LEAVING)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(id: &str, generation: u64, port: u16, live: bool, verified: bool) -> RawMember {
        RawMember {
            id: NodeId::new(id),
            generation,
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            live,
            keys: Default::default(),
            last_seen_ms: None,
            verified,
            me: false,
        }
    }

    fn me(mut raw: RawMember) -> RawMember {
        raw.me = true;
        raw
    }

    fn gens(members: &[RawMember]) -> Vec<(String, u64)> {
        members
            .iter()
            .map(|m| (m.id.as_str().to_string(), m.generation))
            .collect()
    }

    #[test]
    fn unverified_records_never_count() {
        // A forged newer generation of n0, relayed by someone else, does not shadow n0.
        let (kept, dups) = choose(vec![r("n0", 1, 1, true, true), r("n0", 9, 1, true, false)]);
        assert_eq!(gens(&kept), vec![("n0".into(), 1)]);
        assert!(dups.is_empty());
        let (kept, _) = choose(vec![r("n9", 1, 9, true, false)]);
        assert!(kept.is_empty());
    }

    #[test]
    fn a_restart_at_the_same_address_replaces_the_old_incarnation() {
        let (kept, dups) = choose(vec![r("n1", 1, 1, true, true), r("n1", 2, 1, true, true)]);
        assert_eq!(gens(&kept), vec![("n1".into(), 2)]);
        assert!(dups.is_empty());
        // At another address once the old one is dead: the newest too.
        let (kept, dups) = choose(vec![r("n1", 1, 1, false, true), r("n1", 2, 2, true, true)]);
        assert_eq!(gens(&kept), vec![("n1".into(), 2)]);
        assert!(dups.is_empty());
    }

    #[test]
    fn a_second_process_heard_once_does_not_shadow_the_live_one() {
        // The younger is not live yet (chitchat calls a node live after its second heartbeat).
        let (kept, dups) = choose(vec![r("n1", 1, 1, true, true), r("n1", 2, 2, false, true)]);
        assert_eq!(gens(&kept), vec![("n1".into(), 1)]);
        assert!(dups.is_empty());
        // At the same address it is a restart: the newer wins at once.
        let (kept, _) = choose(vec![r("n1", 1, 1, true, true), r("n1", 2, 1, false, true)]);
        assert_eq!(gens(&kept), vec![("n1".into(), 2)]);
    }

    #[test]
    fn a_duplicate_keeps_the_older_and_the_younger_refuses() {
        let older = r("n1", 1, 1, true, true);
        let younger = r("n1", 2, 2, true, true);
        // Seen by a third node.
        let (kept, dups) = choose(vec![
            older.clone(),
            younger.clone(),
            r("n2", 5, 3, true, true),
        ]);
        assert_eq!(gens(&kept), vec![("n1".into(), 1), ("n2".into(), 5)]);
        assert_eq!(dups.len(), 1);
        assert_eq!(dups[0].kept.generation, 1);
        assert!(!dups[0].refuses_me);
        // Seen by the younger: it keeps its own record but must refuse.
        let (kept, dups) = choose(vec![older.clone(), me(younger.clone())]);
        assert_eq!(gens(&kept), vec![("n1".into(), 2)]);
        assert!(dups[0].refuses_me);
        // ... and the record of the older, for its view of the cluster.
        assert_eq!(dups[0].kept_record.as_ref(), Some(&older));
        // Seen by the older: it keeps serving.
        let (_, dups) = choose(vec![me(older), younger]);
        assert!(!dups[0].refuses_me);
        assert_eq!(dups[0].kept_record, None);
    }

    #[test]
    fn a_member_dead_before_this_node_heard_it_is_listed_from_its_relayed_record() {
        let dead = relayed_dead(&[
            r("n1", 1, 1, true, true),
            // Died before this node joined: only relayed, two incarnations of it.
            r("n3", 1, 3, false, false),
            r("n3", 2, 3, false, false),
            // Relayed, live: not yet verified (a round or two), not dead.
            r("n4", 1, 4, true, false),
            // Dead, but a verified record of the id exists: the view has it already.
            r("n2", 1, 2, false, false),
            r("n2", 2, 2, true, true),
        ]);
        assert_eq!(gens(&dead), vec![("n3".into(), 2)]);
    }

    proptest! {
        /// Relayed dead records: one per id, never live, never an id that has a verified
        /// record, so never one that `choose` keeps.
        #[test]
        fn relayed_dead_never_overlaps_the_counted(recs in proptest::collection::vec((0u8..4, 1u64..4, 1u16..4, any::<bool>(), any::<bool>()), 0..12)) {
            let mut seen = std::collections::HashSet::new();
            let raw: Vec<RawMember> = recs
                .iter()
                .map(|(i, g, p, l, v)| r(&format!("n{i}"), *g, *p, *l, *v))
                .filter(|m| seen.insert((m.id.clone(), m.generation, m.listen)))
                .collect();
            let dead = relayed_dead(&raw);
            let (kept, _) = choose(raw);
            let mut ids: Vec<&NodeId> = dead.iter().map(|m| &m.id).collect();
            ids.dedup();
            prop_assert_eq!(ids.len(), dead.len());
            prop_assert!(dead.iter().all(|m| !m.live && !m.verified));
            prop_assert!(dead.iter().all(|d| kept.iter().all(|k| k.id != d.id)));
        }

        /// At most one record per id; never an unverified one (other than the viewer's own); the
        /// same records in any order give the same choice.
        #[test]
        fn choice_is_well_formed(recs in proptest::collection::vec((0u8..3, 1u64..4, 1u16..4, any::<bool>(), any::<bool>()), 0..12), seed in any::<u64>()) {
            let raw: Vec<RawMember> = recs.iter().map(|(i, g, p, l, v)| r(&format!("n{i}"), *g, *p, *l, *v)).collect();
            // Chitchat never holds two records with the same (id, generation, address).
            let mut raw: Vec<RawMember> = {
                let mut seen = std::collections::HashSet::new();
                raw.into_iter().filter(|m| seen.insert((m.id.clone(), m.generation, m.listen))).collect()
            };
            let (kept, _) = choose(raw.clone());
            let mut ids: Vec<&NodeId> = kept.iter().map(|m| &m.id).collect();
            ids.dedup();
            prop_assert_eq!(ids.len(), kept.len());
            prop_assert!(kept.iter().all(|m| m.verified));
            let n = raw.len().max(1);
            raw.rotate_left((seed as usize) % n);
            let (again, _) = choose(raw);
            prop_assert_eq!(gens(&kept), gens(&again));
        }
    }
}
