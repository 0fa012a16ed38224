//! Who checks which backend: rendezvous (highest-random-weight) hashing over the live members.
//!
//! Every node ranks the live members by `sha256(node || 0 || backend_key)` and takes the first
//! `k`. The same view therefore gives the same checkers on every node without any message, and
//! when a member leaves only the backends it was checking move (each to the next-ranked node).

use super::verdict::BackendRef;
use shoal_gossip::rendezvous;
use shoal_gossip::version::NodeId;
use std::collections::HashMap;
use std::net::IpAddr;

/// The stable name of one backend of one service, the input of the hash.
///
/// Health checks are configured per service, so the same address in two services is two
/// backends with independent checkers.
pub fn backend_key(service: &str, address: IpAddr, port: u16) -> String {
    format!("{service}|{address}|{port}")
}

/// The rank of `node` for `backend_key`: higher wins (the mesh's rendezvous weight,
/// `sha256(node || 0 || backend_key)`).
fn score(node: &NodeId, backend_key: &str) -> [u8; 32] {
    rendezvous::weight(&[node.as_str().as_bytes(), backend_key.as_bytes()])
}

/// The `k` live members that check `backend_key`, best-ranked first.
///
/// `live` may be in any order and may hold duplicates; the answer depends only on the set.
/// With fewer than `k` live members, every member checks.
pub fn checkers(backend_key: &str, live: &[NodeId], k: usize) -> Vec<NodeId> {
    let mut ranked: Vec<([u8; 32], &NodeId)> =
        live.iter().map(|n| (score(n, backend_key), n)).collect();
    // Ties in a 256-bit hash are practically impossible; the id keeps the order total anyway.
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    ranked.dedup_by(|a, b| a.1 == b.1);
    ranked.into_iter().take(k).map(|(_, n)| n.clone()).collect()
}

/// The checkers of each backend for one live set and `k`, each ranked once.
///
/// A pass of the health runner asks for every backend's checkers twice (its own duties, then
/// every verdict), and each answer is a SHA-256 per live member and backend; passes run on
/// probe results, up to 20 a second, while the live set changes far less often. So the answers
/// are kept until the live set or `k` changes.
#[derive(Debug, Default)]
pub struct Assignment {
    /// Sorted, without duplicates.
    live: Vec<NodeId>,
    k: usize,
    /// Each backend's checkers, and whether it was asked for since the last [`Self::sweep`].
    ranked: HashMap<BackendRef, (Vec<NodeId>, bool)>,
}

impl Assignment {
    pub fn new(live: &[NodeId], k: usize) -> Self {
        let mut assignment = Assignment::default();
        assignment.follow(live, k);
        assignment
    }

    /// Answers for `live` (any order, duplicates allowed) and `k` from now on: forgets every
    /// answer if either changed, and says whether it did.
    pub fn follow(&mut self, live: &[NodeId], k: usize) -> bool {
        let mut live = live.to_vec();
        live.sort();
        live.dedup();
        if live == self.live && k == self.k {
            return false;
        }
        self.live = live;
        self.k = k;
        self.ranked.clear();
        true
    }

    /// The live set followed, sorted.
    pub fn live(&self) -> &[NodeId] {
        &self.live
    }

    /// [`checkers`] of `backend`'s key in the live set followed, best-ranked first.
    pub fn checkers(&mut self, backend: &BackendRef) -> &[NodeId] {
        let (live, k) = (&self.live, self.k);
        let entry = self.ranked.entry(backend.clone()).or_insert_with(|| {
            let key = backend_key(&backend.service, backend.address, backend.port);
            (checkers(&key, live, k), false)
        });
        entry.1 = true;
        &entry.0
    }

    /// Forgets the backends not asked for since the last sweep: a runner sweeps after judging
    /// a new table's backends, so the answers for backends the tables dropped do not pile up.
    pub fn sweep(&mut self) {
        self.ranked.retain(|_, (_, asked)| std::mem::take(asked));
    }

    /// How many backends' answers are kept.
    pub fn len(&self) -> usize {
        self.ranked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranked.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn ids(n: usize) -> Vec<NodeId> {
        (0..n).map(|i| NodeId::new(format!("lb-{i}"))).collect()
    }

    #[test]
    fn picks_k_distinct_live_members() {
        let live = ids(5);
        let picked = checkers("svc|10.0.0.1|80", &live, 2);
        assert_eq!(picked.len(), 2);
        assert_ne!(picked[0], picked[1]);
        assert!(picked.iter().all(|p| live.contains(p)));
    }

    #[test]
    fn fewer_members_than_k_means_everyone_checks() {
        let live = ids(2);
        let picked: BTreeSet<_> = checkers("b", &live, 3).into_iter().collect();
        assert_eq!(picked, live.into_iter().collect());
        assert!(checkers("b", &[], 2).is_empty());
    }

    /// The same live set in another order, or with a duplicate, keeps the answers; another
    /// set or `k` forgets them.
    #[test]
    fn an_assignment_forgets_only_when_the_set_or_k_changes() {
        let live = ids(4);
        let mut assignment = Assignment::new(&live, 2);
        let backend = BackendRef {
            service: "web".into(),
            address: IpAddr::from([198, 18, 0, 1]),
            port: 80,
        };
        assignment.checkers(&backend);
        let mut shuffled = live.clone();
        shuffled.reverse();
        shuffled.push(live[1].clone());
        assert!(!assignment.follow(&shuffled, 2));
        assert_eq!(assignment.len(), 1);
        assert_eq!(assignment.live(), live.as_slice());
        assert!(assignment.follow(&live, 3));
        assert!(assignment.is_empty());
        assignment.checkers(&backend);
        assert!(assignment.follow(&live[..3], 3));
        assert!(assignment.is_empty());
    }

    #[test]
    fn load_spreads_over_members() {
        // 600 backends over 10 nodes with k=2: 120 each on average; no node should be idle or
        // take more than double its share.
        let live = ids(10);
        let mut load = std::collections::BTreeMap::new();
        for b in 0..600 {
            for c in checkers(&format!("svc|10.0.{}.{}|80", b / 250, b % 250), &live, 2) {
                *load.entry(c).or_insert(0) += 1;
            }
        }
        assert_eq!(load.len(), 10);
        assert!(load.values().all(|&n| (60..=240).contains(&n)), "{load:?}");
    }

    proptest! {
        #[test]
        fn same_set_same_checkers(n in 1usize..30, k in 1usize..5, key in "[a-z0-9|.]{1,20}", seed in any::<u64>()) {
            let live = ids(n);
            let mut shuffled = live.clone();
            // A cheap deterministic shuffle driven by the seed.
            let len = shuffled.len();
            for i in 0..len {
                let j = ((seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64)) % len as u64) as usize;
                shuffled.swap(i, j);
            }
            shuffled.push(live[0].clone());
            prop_assert_eq!(checkers(&key, &live, k), checkers(&key, &shuffled, k));
            prop_assert_eq!(checkers(&key, &live, k).len(), k.min(n));
        }

        /// The kept answers are always what `checkers` says for the live set followed, however
        /// the live set, `k` and the backends asked for change between passes.
        #[test]
        fn the_assignment_answers_as_checkers_does(
            passes in prop::collection::vec((1usize..8, 1usize..4, prop::collection::vec(0u8..20, 0..12)), 1..12),
        ) {
            let all = ids(8);
            let mut assignment = Assignment::default();
            for (n, k, backends) in passes {
                let live = &all[..n];
                assignment.follow(live, k);
                prop_assert_eq!(assignment.live(), live);
                for b in &backends {
                    let backend = BackendRef {
                        service: format!("svc-{}", b % 3),
                        address: IpAddr::from([198, 18, 0, *b]),
                        port: 80,
                    };
                    let key = backend_key(&backend.service, backend.address, backend.port);
                    let expected = checkers(&key, live, k);
                    prop_assert_eq!(assignment.checkers(&backend), expected.as_slice());
                }
                assignment.sweep();
                // Each backend asked for since the last sweep is kept, and only those.
                let asked: BTreeSet<u8> = backends.iter().copied().collect();
                prop_assert_eq!(assignment.len(), asked.len());
            }
        }

        #[test]
        fn removing_a_member_moves_only_its_backends(n in 2usize..30, k in 1usize..4, dead in any::<prop::sample::Index>()) {
            let live = ids(n);
            let dead = live[dead.index(n)].clone();
            let survivors: Vec<NodeId> = live.iter().filter(|m| **m != dead).cloned().collect();
            for b in 0..50 {
                let key = format!("svc|10.1.0.{b}|443");
                let before = checkers(&key, &live, k);
                let after = checkers(&key, &survivors, k);
                if before.contains(&dead) {
                    // The survivors keep their seat; exactly one newcomer (if any is left) fills the hole.
                    for kept in before.iter().filter(|c| **c != dead) {
                        prop_assert!(after.contains(kept));
                    }
                    prop_assert_eq!(after.len(), k.min(n - 1));
                } else {
                    prop_assert_eq!(&before, &after);
                }
            }
        }
    }
}
