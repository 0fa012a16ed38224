//! Announcing a new head down the spread tree (issue #16, goal 2): as soon as this node knows of
//! a head version it has not announced yet (the publisher right after stamping it, a follower
//! as soon as gossip shows it), it gossips directly to its children in that head's tree
//! (`spread::children`), instead of leaving them to hear of it from random gossip rounds. Each
//! level of the tree then learns of the head one round trip after its parent and asks its
//! parent at once (which waits for its own copy: `transfer::serve`). Once per head version:
//! nothing is sent in steady state.

use super::{Action, Replica};
use crate::spread;
use crate::version::NodeId;
use crate::view::Decisions;
use std::net::SocketAddr;

impl Replica {
    /// Queues [`Action::Announce`] for the head in `decisions` if it is a version this node has
    /// not announced yet.
    pub(super) fn announce_head(&mut self, decisions: &Decisions) {
        let Some(head) = decisions.head.as_ref() else {
            return;
        };
        if self
            .announced
            .as_ref()
            .is_some_and(|done| *done >= head.version)
        {
            return;
        }
        if self.refused().is_some() {
            return;
        }
        self.announced = Some(head.version.clone());
        let live: Vec<NodeId> = self
            .members
            .iter()
            .filter(|m| m.alive)
            .map(|m| m.id.clone())
            .collect();
        let children = spread::children(
            &self.me.id,
            spread::Head {
                digest: &head.digest,
                holders: &head.holders,
                publisher: decisions.publisher.as_ref(),
            },
            &live,
        );
        // A child that holds the head already needs no news of it.
        let to: Vec<(NodeId, SocketAddr)> = children
            .into_iter()
            .filter(|c| !head.holders.contains(c))
            .filter_map(|id| {
                let m = self.members.iter().find(|m| m.id == id && m.alive)?;
                Some((id, m.listen))
            })
            .collect();
        if !to.is_empty() {
            self.actions.push_back(Action::Announce { to });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Identity, ReplicaTiming};
    use super::*;
    use crate::head::HeldAd;
    use crate::version::Version;
    use crate::view::Member;
    use std::collections::BTreeMap;

    const D: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn addr(i: usize) -> SocketAddr {
        SocketAddr::from(([198, 18, 1, i as u8], 7946))
    }
    fn name(i: usize) -> NodeId {
        NodeId::new(format!("n{i:02}"))
    }
    fn ad(seq: u64) -> HeldAd {
        HeldAd {
            version: Version::new(1, seq, name(0)),
            digest: format!("{D}{seq}"),
            size_bytes: 1,
        }
    }
    fn member(i: usize, held: Option<HeldAd>) -> Member {
        Member {
            id: name(i),
            generation: 0,
            listen: addr(i),
            alive: true,
            ready: true,
            publishing: false,
            held,
            applied: None,
            metadata: BTreeMap::new(),
            app: Default::default(),
            last_seen_ms: Some(0),
            stand_down: None,
            leaving: false,
            down: Vec::new(),
        }
    }
    fn replica(i: usize) -> Replica {
        let timing = ReplicaTiming {
            join_grace_ms: 600,
            startup_patience_ms: 5_000,
            stall_reset_ms: 400,
            fetch_retry_ms: 200,
            fetch_hedge_ms: 300,
            single_node: true,
            liveness: crate::liveness::LivenessTiming {
                phi_threshold: 8.0,
                confirm_phi: 5.0,
                prior_interval_ms: 100,
                max_interval_ms: 2_000,
                window: 1_000,
                pause_allowance_ms: 100,
            },
        };
        let me = Identity {
            id: name(i),
            generation: 0,
            listen: addr(i),
        };
        Replica::new(me, timing, 0, 0)
    }
    /// The members: n00 (the publisher) holds `head`, the other `n - 1` hold nothing.
    fn members(n: usize, head: &HeldAd) -> Vec<Member> {
        (0..n)
            .map(|i| member(i, (i == 0).then(|| head.clone())))
            .collect()
    }
    fn announced(r: &mut Replica) -> Vec<Vec<(NodeId, SocketAddr)>> {
        std::iter::from_fn(|| r.poll_action())
            .filter_map(|a| match a {
                Action::Announce { to } => Some(to),
                _ => None,
            })
            .collect()
    }

    /// A follower announces each new head version to its children in that head's tree, once.
    #[test]
    fn a_follower_announces_each_head_once_to_its_children() {
        let n = 20;
        let live: Vec<NodeId> = (0..n).map(name).collect();
        // A member with children in the first head's tree.
        let first = ad(1);
        let h = |a: &HeldAd, holders: &[NodeId]| {
            spread::children(
                &name(0),
                spread::Head {
                    digest: &a.digest,
                    holders,
                    publisher: Some(&name(0)),
                },
                &live,
            )
        };
        let me = h(&first, &[name(0)])[0].clone();
        let i = (0..n).find(|&i| name(i) == me).unwrap();
        let mut r = replica(i);
        r.handle_members(members(n, &first));
        r.handle_tick(0, 0);
        let expected = spread::children(
            &me,
            spread::Head {
                digest: &first.digest,
                holders: &[name(0)],
                publisher: Some(&name(0)),
            },
            &live,
        );
        let got = announced(&mut r);
        assert_eq!(got.len(), 1, "{got:?}");
        let to: Vec<NodeId> = got[0].iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(to, expected);
        assert!(got[0]
            .iter()
            .all(|(id, a)| *a == addr((0..n).find(|&j| name(j) == *id).unwrap())));
        // Steady state: the same head is never announced again.
        for t in 1..20 {
            r.handle_tick(t * 25, t * 25);
            assert!(announced(&mut r).is_empty());
        }
        // A new head version (a new tree: `me` may be a leaf of it): announced once more, to
        // its children in the new tree.
        let second = ad(2);
        r.handle_members(members(n, &second));
        r.handle_tick(600, 600);
        let expected = spread::children(
            &me,
            spread::Head {
                digest: &second.digest,
                holders: &[name(0)],
                publisher: Some(&name(0)),
            },
            &live,
        );
        let got: Vec<Vec<NodeId>> = announced(&mut r)
            .into_iter()
            .map(|to| to.into_iter().map(|(id, _)| id).collect())
            .collect();
        let want: Vec<Vec<NodeId>> = Some(expected)
            .filter(|e| !e.is_empty())
            .into_iter()
            .collect();
        assert_eq!(got, want);
        assert_eq!(r.announced, Some(second.version));
        r.handle_tick(625, 625);
        assert!(announced(&mut r).is_empty());
    }

    /// A leaf of the tree (no children) announces nothing; no head, nothing either.
    #[test]
    fn leaves_and_headless_members_announce_nothing() {
        let n = 5;
        let mut quiet = replica(3);
        quiet.handle_members((0..n).map(|i| member(i, None)).collect());
        quiet.handle_tick(0, 0);
        assert!(announced(&mut quiet).is_empty());
        // 5 members: the publisher's 3 children are positions 1-3 of the tree, and only
        // position 1 has a child (position 4): one follower announces.
        let head = ad(1);
        let mut announcing = 0;
        for i in 1..n {
            let mut r = replica(i);
            r.handle_members(members(n, &head));
            r.handle_tick(0, 0);
            announcing += announced(&mut r).len();
        }
        assert_eq!(announcing, 1);
    }
}
