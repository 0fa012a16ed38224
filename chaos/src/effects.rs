//! What an episode's faults do: which packets each node drops, and which nodes lose the
//! publisher and must elect a new one (whose agreement times the takeover). Pure.

use crate::lab::nft::Inbound;
use crate::schedule::Fault;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// Per node (by index into `addrs`), the inbound drops the faults need.
pub fn inbound_rules(addrs: &[Ipv4Addr], faults: &[Fault]) -> Vec<Inbound> {
    let n = addrs.len();
    let mut rules = vec![Inbound::default(); n];
    let mut cut = |from: usize, to: usize| rules[to].cut_from.push(addrs[from]);
    for f in faults {
        match f {
            Fault::Isolate { node } => {
                for other in (0..n).filter(|o| o != node) {
                    cut(*node, other);
                    cut(other, *node);
                }
            }
            Fault::Halves { side } => {
                for a in side {
                    for b in (0..n).filter(|b| !side.contains(b)) {
                        cut(*a, b);
                        cut(b, *a);
                    }
                }
            }
            Fault::OneWay { from, to } => cut(*from, *to),
            _ => {}
        }
    }
    for f in faults {
        if let Fault::Loss { node, percent } = f {
            rules[*node].loss_percent = Some(*percent);
        }
    }
    rules
}

/// The running nodes that lose the publisher `old` in this episode and should elect anew:
/// the largest group still connected among themselves but not to `old`. Empty when `old`
/// stays reachable or restarts at once (then it may simply keep its role).
pub fn orphans(n: usize, faults: &[Fault], old: usize) -> Vec<usize> {
    let stopped: BTreeSet<usize> = faults.iter().filter_map(|f| f.stopped_node()).collect();
    if faults.contains(&Fault::Restart { node: old }) {
        return Vec::new();
    }
    // Nodes with equal group ids can still talk over the mesh (one-way cuts and loss aside).
    let mut group_of: Vec<usize> = vec![0; n];
    for f in faults {
        match f {
            Fault::Isolate { node } => group_of[*node] = 1000 + node,
            Fault::Halves { side } => side.iter().for_each(|s| group_of[*s] = 1),
            _ => {}
        }
    }
    let old_stopped = stopped.contains(&old);
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in (0..n).filter(|i| !stopped.contains(i) && *i != old) {
        if old_stopped || group_of[i] != group_of[old] {
            groups.entry(group_of[i]).or_default().push(i);
        }
    }
    groups
        .into_values()
        .max_by_key(|g| g.len())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: usize) -> Vec<Ipv4Addr> {
        (0..n)
            .map(|i| Ipv4Addr::new(10, 0, 0, i as u8 + 1))
            .collect()
    }

    #[test]
    fn cuts_land_on_the_receivers() {
        let a = addrs(3);
        let r = inbound_rules(&a, &[Fault::OneWay { from: 0, to: 2 }]);
        assert_eq!(r[2].cut_from, vec![a[0]]);
        assert!(r[0].is_empty() && r[1].is_empty());
        let r = inbound_rules(
            &a,
            &[
                Fault::Isolate { node: 1 },
                Fault::Loss {
                    node: 0,
                    percent: 30,
                },
            ],
        );
        assert_eq!(r[1].cut_from, vec![a[0], a[2]]);
        assert_eq!(r[0].cut_from, vec![a[1]]);
        assert_eq!(r[0].loss_percent, Some(30));
        let r = inbound_rules(&a, &[Fault::Halves { side: vec![2] }]);
        assert_eq!(r[2].cut_from, vec![a[0], a[1]]);
        assert_eq!(r[0].cut_from, vec![a[2]]);
    }

    #[test]
    fn orphans_are_those_cut_off_from_the_old_publisher() {
        assert_eq!(orphans(5, &[Fault::Kill { node: 0 }], 0), vec![1, 2, 3, 4]);
        assert_eq!(
            orphans(5, &[Fault::Kill { node: 0 }, Fault::Freeze { node: 3 }], 0),
            vec![1, 2, 4]
        );
        assert_eq!(
            orphans(5, &[Fault::Isolate { node: 0 }], 0),
            vec![1, 2, 3, 4]
        );
        // The other side of halves elects; the publisher's own side keeps it.
        assert_eq!(
            orphans(5, &[Fault::Halves { side: vec![1, 3] }], 0),
            vec![1, 3]
        );
        assert_eq!(
            orphans(5, &[Fault::Halves { side: vec![0, 3] }], 0),
            vec![1, 2, 4]
        );
        // The publisher is untouched or comes straight back: nobody needs to elect.
        assert!(orphans(5, &[Fault::Kill { node: 2 }], 0).is_empty());
        assert!(orphans(5, &[Fault::Restart { node: 0 }], 0).is_empty());
        assert!(orphans(
            5,
            &[Fault::Loss {
                node: 0,
                percent: 80
            }],
            0
        )
        .is_empty());
    }
}
