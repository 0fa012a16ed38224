//! Who checks which backend: rendezvous (highest-random-weight) hashing over the live members.
//!
//! Every node ranks the live members by `sha256(node || 0 || backend_key)` and takes the first
//! `k`. The same view therefore gives the same checkers on every node without any message, and
//! when a member leaves only the backends it was checking move (each to the next-ranked node).

use shoal_gossip::rendezvous;
use shoal_gossip::version::NodeId;
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
