//! Publisher election, sticky: the member that publishes keeps publishing while it is live and
//! caught up (the head's origin first, then a member that claims the role without having
//! stamped yet); otherwise the live, caught-up member with the lowest id publishes.
//! Pure; no I/O. Ids compare with [`NodeId`]'s numeric-aware order (`n2 < n10`).

use crate::version::{NodeId, Version};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// What one node knows about a member when it runs the election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: NodeId,
    pub alive: bool,
    /// The member announced that it has caught up with the mesh (see [`is_caught_up`]).
    pub caught_up: bool,
    /// The member announced that it holds the publisher role ([`crate::keys::PUBLISHING`]).
    pub publishing: bool,
}

/// The role of one node in the mesh.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Stamps and spreads new documents.
    Publisher,
    /// Caught up; adopts what the publisher spreads.
    Follower,
    /// Has not yet heard the mesh long enough or does not yet hold the head: never publishes.
    CatchingUp,
}

/// Why a node holds its role: the same view always gives the same answer and the same reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoleReason {
    /// This node stamped the head and is live and caught up: it keeps the role.
    Incumbent,
    /// The head's origin is gone or behind, and this node is the lowest live caught-up member.
    LowestCaughtUp,
    /// Another member publishes (the head's live origin, or the lowest live caught-up member).
    Follows { publisher: NodeId },
    /// This node is caught up but no member qualifies yet (only possible while views settle).
    NoPublisher,
    /// This node still waits for the join grace period or for the head document.
    CatchingUp,
    /// This node was given seeds that resolve to other addresses, the startup patience has
    /// passed, and none of them has answered: it does not serve or publish until one does (a
    /// node cut off by a partition or a handshake flood must not run as a cluster of its own;
    /// `Timing::single_node` lets it). See [`must_hear_cluster`].
    AwaitingSeeds,
    /// Another, older live process runs with this node's id (at `other_at`): this one refuses
    /// to serve until it is gone (see `incarnation.rs`).
    DuplicateId {
        other_generation: u64,
        other_at: SocketAddr,
    },
}

impl RoleReason {
    pub fn role(&self) -> Role {
        match self {
            RoleReason::Incumbent | RoleReason::LowestCaughtUp => Role::Publisher,
            RoleReason::Follows { .. } | RoleReason::NoPublisher => Role::Follower,
            RoleReason::CatchingUp | RoleReason::AwaitingSeeds | RoleReason::DuplicateId { .. } => {
                Role::CatchingUp
            }
        }
    }
}

/// The publisher of a connected cluster: the live, caught-up member with the lowest id.
///
/// Invariant: depends only on the set of candidates, never on their order, so every node that
/// holds the same view picks the same publisher without exchanging a message.
pub fn choose_publisher(members: &[Candidate]) -> Option<NodeId> {
    members
        .iter()
        .filter(|m| m.alive && m.caught_up)
        .map(|m| &m.id)
        .min()
        .cloned()
}

/// [`choose_publisher`], holding back while a lower live member is still starting.
///
/// Two nodes started together each finish their join grace before they see the other as
/// caught up, and both would publish for a moment; on the Kubernetes source that means two API
/// clients. A lower id that is live but still catching up will publish once it has caught up,
/// so the others wait for it (no publisher for that moment) instead of electing themselves.
/// `starting` lists members that joined recently and are not caught up; a member that stays
/// behind longer than the caller's patience is no longer listed, so it cannot block forever.
pub fn choose_publisher_after_startup(
    members: &[Candidate],
    starting: &[NodeId],
) -> Option<NodeId> {
    let chosen = choose_publisher(members)?;
    let lower_starting = members
        .iter()
        .any(|m| m.alive && !m.caught_up && m.id < chosen && starting.contains(&m.id));
    (!lower_starting).then_some(chosen)
}

/// The sticky publisher, first of:
/// 1. the head's origin, while it is live and caught up, and claims the role or no live
///    caught-up member does;
/// 2. the lowest live, caught-up member that claims the role;
/// 3. [`choose_publisher_after_startup`].
///
/// A publisher that keeps its role while it lives means that a lower id that rejoins (a
/// restart, a healed partition) does not take the role back: no extra takeover, no extra
/// epoch, no extra relist of the source. The claim covers a publisher that has not stamped
/// yet (its source still lists, or rejects its input): the head's origin is then another
/// member, perhaps a restarted process of the last publisher's id, which holds the head but
/// never stamped it and does not claim. Derived from the view alone, like the rest: every node
/// that holds the same view picks the same publisher. After a partition heals, the sides'
/// heads meet, the greater one wins (`select_head`), and its origin keeps or takes the role.
pub fn choose_publisher_sticky(
    members: &[Candidate],
    starting: &[NodeId],
    head_origin: Option<&NodeId>,
) -> Option<NodeId> {
    let eligible = |m: &&Candidate| m.alive && m.caught_up;
    let claimants = || members.iter().filter(eligible).filter(|m| m.publishing);
    let claimed = claimants().next().is_some();
    let incumbent = head_origin
        .filter(|origin| {
            members
                .iter()
                .filter(eligible)
                .any(|m| &m.id == *origin && (m.publishing || !claimed))
        })
        .cloned();
    incumbent
        .or_else(|| claimants().map(|m| &m.id).min().cloned())
        .or_else(|| choose_publisher_after_startup(members, starting))
}

/// The role of `self_id` given the publisher chosen from its view and the head's origin.
pub fn role_of(
    self_id: &NodeId,
    self_caught_up: bool,
    publisher: Option<&NodeId>,
    head_origin: Option<&NodeId>,
) -> RoleReason {
    match publisher {
        _ if !self_caught_up => RoleReason::CatchingUp,
        Some(p) if p == self_id && head_origin == Some(self_id) => RoleReason::Incumbent,
        Some(p) if p == self_id => RoleReason::LowestCaughtUp,
        Some(p) => RoleReason::Follows {
            publisher: p.clone(),
        },
        None => RoleReason::NoPublisher,
    }
}

/// What a starting node has heard so far (see [`has_listened`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listening {
    /// Since the node started (or since its control loop last stalled).
    pub uptime_ms: u64,
    /// Seeds not yet in the view (see [`unheard_seeds`]).
    pub unheard_seeds: usize,
    /// Members in the view whose liveness is not judged yet (see [`liveness_unjudged`]).
    pub unjudged_members: usize,
}

/// Whether a starting node has listened long enough to know what exists.
///
/// It listens for `join_grace_ms` at least, and longer while a seed it was given is not in its
/// view yet, or a member it has just heard of is not yet judged alive or dead: either may be a
/// lower id that started a moment later or on a slower host, and publishing before hearing it
/// would give the cluster two publishers (two Kubernetes API clients) for a moment. After
/// `patience_ms` nothing holds the node back any more: a seed may be down for good.
pub fn has_listened(listening: &Listening, join_grace_ms: u64, patience_ms: u64) -> bool {
    let Listening {
        uptime_ms,
        unheard_seeds,
        unjudged_members,
    } = *listening;
    let settled = unheard_seeds == 0 && unjudged_members == 0;
    uptime_ms >= join_grace_ms && (settled || uptime_ms >= patience_ms)
}

/// A member that is not alive, but whose heartbeat advanced (or was first heard) less than
/// `window_ms` ago, is not judged yet: the failure detector calls a member live only after its
/// second heartbeat, so a peer heard once looks dead for a round. A member that really died
/// stops advancing and is judged after `window_ms`.
pub fn liveness_unjudged(alive: bool, last_seen_ms: Option<u64>, window_ms: u64) -> bool {
    !alive && last_seen_ms.is_some_and(|ms| ms < window_ms)
}

/// How many seeds are not yet accounted for: a seed is heard once one of the addresses it
/// resolves to is the listen address of a member of the view (alive or dead, this node
/// included). A seed that does not resolve yet counts as unheard.
pub fn unheard_seeds(seeds: &[Vec<SocketAddr>], member_addrs: &[SocketAddr]) -> usize {
    seeds
        .iter()
        .filter(|resolved| !resolved.iter().any(|a| member_addrs.contains(a)))
        .count()
}

/// Whether a starting node must hear another member before it may catch up: it was given
/// seeds, and at least one of them resolves to an address other than its own. A node whose
/// seeds do not resolve (the first replica of a fresh StatefulSet: its peers' DNS names do not
/// exist yet) or name only itself is the first node of its cluster. A node whose seeds resolve
/// but never answer stays catching up (not ready, never publisher) until one does, unless it is
/// configured as a single-node cluster (`Timing::single_node`).
pub fn must_hear_cluster(seeds: &[Vec<SocketAddr>], me: SocketAddr) -> bool {
    seeds.iter().flatten().any(|a| *a != me)
}

/// Whether a node has caught up with the mesh.
///
/// A node must first have listened (see [`has_listened`]: a fresh node with a low id must not
/// publish before it knows what exists), then hold the newest version any live member holds.
/// Once caught up, a node stays caught up for the rest of its generation, so a publisher does
/// not lose its role each time it stamps a version the others have not fetched yet.
pub fn is_caught_up(
    already_caught_up: bool,
    listened: bool,
    held: Option<&Version>,
    head: Option<&Version>,
) -> bool {
    if already_caught_up {
        return true;
    }
    if !listened {
        return false;
    }
    match (held, head) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(held), Some(head)) => held >= head,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(id: &str, alive: bool, caught_up: bool) -> Candidate {
        Candidate {
            id: NodeId::new(id),
            alive,
            caught_up,
            publishing: false,
        }
    }

    fn claiming(mut candidate: Candidate) -> Candidate {
        candidate.publishing = true;
        candidate
    }

    #[test]
    fn lowest_live_caught_up_wins() {
        let members = [
            c("a", false, true),
            c("b", true, false),
            c("c", true, true),
            c("d", true, true),
        ];
        assert_eq!(choose_publisher(&members), Some(NodeId::new("c")));
        assert_eq!(choose_publisher(&[c("a", false, true)]), None);
    }

    #[test]
    fn a_lower_starting_member_holds_the_election_back() {
        let members = [c("a", true, false), c("b", true, true), c("c", true, true)];
        assert_eq!(
            choose_publisher_after_startup(&members, &[NodeId::new("a")]),
            None
        );
        // Once it is past the patience (not listed as starting), b publishes.
        assert_eq!(
            choose_publisher_after_startup(&members, &[]),
            Some(NodeId::new("b"))
        );
        // A higher member that is starting does not hold anyone back.
        let members = [c("a", true, true), c("b", true, false)];
        assert_eq!(
            choose_publisher_after_startup(&members, &[NodeId::new("b")]),
            Some(NodeId::new("a"))
        );
        // Nor does a dead one.
        let members = [c("a", false, false), c("b", true, true)];
        assert_eq!(
            choose_publisher_after_startup(&members, &[NodeId::new("a")]),
            Some(NodeId::new("b"))
        );
    }

    #[test]
    fn roles_follow_the_publisher() {
        let a = NodeId::new("a");
        let b = NodeId::new("b");
        assert_eq!(
            role_of(&a, true, Some(&a), None),
            RoleReason::LowestCaughtUp
        );
        assert_eq!(role_of(&a, true, Some(&a), Some(&a)), RoleReason::Incumbent);
        assert_eq!(
            role_of(&b, true, Some(&a), Some(&a)),
            RoleReason::Follows {
                publisher: a.clone()
            }
        );
        assert_eq!(role_of(&a, false, Some(&a), None).role(), Role::CatchingUp);
        assert_eq!(role_of(&a, true, None, None).role(), Role::Follower);
    }

    #[test]
    fn the_head_origin_keeps_the_role_while_live_and_caught_up() {
        let members = [c("a", true, true), c("b", true, true), c("c", true, true)];
        let b = NodeId::new("b");
        assert_eq!(
            choose_publisher_sticky(&members, &[], Some(&b)),
            Some(b.clone())
        );
        // A lower member that is starting does not hold the incumbent back either.
        let members = [c("a", true, false), c("b", true, true)];
        assert_eq!(
            choose_publisher_sticky(&members, &[NodeId::new("a")], Some(&b)),
            Some(b.clone())
        );
        // Origin dead or behind: the lowest live caught-up member.
        let members = [c("a", true, true), c("b", false, true), c("c", true, true)];
        assert_eq!(
            choose_publisher_sticky(&members, &[], Some(&b)),
            Some(NodeId::new("a"))
        );
        let members = [c("a", true, true), c("b", true, false)];
        assert_eq!(
            choose_publisher_sticky(&members, &[], Some(&b)),
            Some(NodeId::new("a"))
        );
        // Numeric-aware: n2 is below n10.
        let members = [c("n10", true, true), c("n2", true, true)];
        assert_eq!(
            choose_publisher_sticky(&members, &[], None),
            Some(NodeId::new("n2"))
        );
    }

    #[test]
    fn a_claimant_that_has_not_stamped_keeps_the_role_from_the_heads_origin() {
        let a = NodeId::new("a");
        let b = NodeId::new("b");
        // a stamped the head, died and came back as a new process: it holds the head but does
        // not claim; b took over and claims without having stamped yet.
        let members = [c("a", true, true), claiming(c("b", true, true))];
        assert_eq!(
            choose_publisher_sticky(&members, &[], Some(&a)),
            Some(b.clone())
        );
        // The head's origin that claims keeps the role against any other claimant (a healed
        // partition: the greater head's publisher goes on).
        let members = [claiming(c("a", true, true)), claiming(c("b", true, true))];
        assert_eq!(
            choose_publisher_sticky(&members, &[], Some(&b)),
            Some(b.clone())
        );
        // With no live, caught-up claimant the origin keeps the role as before (a cluster
        // whose publisher's claim has not spread yet).
        let members = [c("a", true, true), claiming(c("b", false, true))];
        assert_eq!(
            choose_publisher_sticky(&members, &[], Some(&a)),
            Some(a.clone())
        );
        let members = [c("a", true, true), claiming(c("b", true, false))];
        assert_eq!(
            choose_publisher_sticky(&members, &[], Some(&a)),
            Some(a.clone())
        );
        // Two claimants and the origin gone: the lower one, whatever is starting.
        let members = [
            c("a", true, false),
            claiming(c("c", true, true)),
            claiming(c("b", true, true)),
            c("d", false, true),
        ];
        assert_eq!(
            choose_publisher_sticky(&members, std::slice::from_ref(&a), Some(&NodeId::new("d"))),
            Some(b)
        );
    }

    #[test]
    fn catching_up_waits_for_grace_and_head() {
        let v1 = Version::new(1, 1, NodeId::new("a"));
        let v2 = Version::new(1, 2, NodeId::new("a"));
        assert!(!is_caught_up(false, false, None, None));
        assert!(is_caught_up(false, true, None, None));
        assert!(!is_caught_up(false, true, None, Some(&v1)));
        assert!(!is_caught_up(false, true, Some(&v1), Some(&v2)));
        assert!(is_caught_up(false, true, Some(&v2), Some(&v2)));
        assert!(is_caught_up(true, false, None, Some(&v2)));
    }

    #[test]
    fn listening_waits_for_grace_then_for_what_is_unheard_up_to_patience() {
        let l = |uptime_ms, unheard_seeds, unjudged_members| Listening {
            uptime_ms,
            unheard_seeds,
            unjudged_members,
        };
        assert!(!has_listened(&l(100, 0, 0), 600, 5_000));
        assert!(has_listened(&l(600, 0, 0), 600, 5_000));
        assert!(!has_listened(&l(600, 1, 0), 600, 5_000));
        assert!(!has_listened(&l(600, 0, 1), 600, 5_000));
        assert!(!has_listened(&l(4_999, 2, 1), 600, 5_000));
        assert!(has_listened(&l(5_000, 2, 1), 600, 5_000));
    }

    #[test]
    fn a_member_heard_once_is_not_yet_judged_dead() {
        assert!(liveness_unjudged(false, Some(0), 600));
        assert!(liveness_unjudged(false, Some(599), 600));
        assert!(!liveness_unjudged(false, Some(600), 600));
        assert!(!liveness_unjudged(true, Some(0), 600));
        assert!(!liveness_unjudged(false, None, 600));
    }

    #[test]
    fn a_seed_is_heard_through_any_member_it_resolves_to() {
        let a: SocketAddr = "198.18.0.1:7946".parse().unwrap();
        let b: SocketAddr = "198.18.0.2:7946".parse().unwrap();
        let c: SocketAddr = "198.18.0.3:7946".parse().unwrap();
        let seeds = vec![vec![a], vec![b, c], vec![]];
        // The unresolved seed is always unheard.
        assert_eq!(unheard_seeds(&seeds, &[]), 3);
        assert_eq!(unheard_seeds(&seeds, &[a]), 2);
        assert_eq!(unheard_seeds(&seeds, &[a, c]), 1);
        assert_eq!(unheard_seeds(&[], &[a]), 0);
    }

    fn arb_candidates() -> impl Strategy<Value = Vec<Candidate>> {
        proptest::collection::btree_map(
            "[a-f]{1,2}",
            (any::<bool>(), any::<bool>(), proptest::bool::weighted(0.2)),
            0..12,
        )
        .prop_map(|m| {
            m.into_iter()
                .map(|(id, (alive, caught_up, publishing))| Candidate {
                    publishing,
                    ..c(&id, alive, caught_up)
                })
                .collect()
        })
    }

    /// The candidates with no claims, and the publisher an election picks among them.
    fn unclaimed_with_publisher(members: Vec<Candidate>) -> (Vec<Candidate>, Option<NodeId>) {
        let members: Vec<Candidate> = members
            .into_iter()
            .map(|m| Candidate {
                publishing: false,
                ..m
            })
            .collect();
        let publisher = choose_publisher(&members);
        (members, publisher)
    }

    proptest! {
        #[test]
        fn same_set_same_publisher(members in arb_candidates(), seed in any::<u64>()) {
            let mut shuffled = members.clone();
            // Deterministic shuffle from the seed: order must not matter.
            let n = shuffled.len().max(1);
            shuffled.rotate_left((seed as usize) % n);
            if seed % 2 == 0 { shuffled.reverse(); }
            prop_assert_eq!(choose_publisher(&members), choose_publisher(&shuffled));
        }

        #[test]
        fn publisher_is_eligible_and_lowest(members in arb_candidates()) {
            if let Some(p) = choose_publisher(&members) {
                let chosen = members.iter().find(|m| m.id == p).unwrap();
                prop_assert!(chosen.alive && chosen.caught_up);
                for m in &members {
                    if m.alive && m.caught_up { prop_assert!(m.id >= p); }
                }
            } else {
                prop_assert!(members.iter().all(|m| !(m.alive && m.caught_up)));
            }
        }

        #[test]
        fn at_most_one_node_thinks_it_publishes(members in arb_candidates()) {
            // Every node with the same view: exactly the chosen one sees Role::Publisher.
            let publisher = choose_publisher(&members);
            let publishers = members
                .iter()
                .filter(|m| role_of(&m.id, m.caught_up, publisher.as_ref(), None).role() == Role::Publisher)
                .count();
            prop_assert_eq!(publishers, usize::from(publisher.is_some()));
        }

        /// Same view, same sticky publisher, whatever the order of the members.
        #[test]
        fn sticky_same_view_same_publisher(
            members in arb_candidates(), origin in proptest::option::of("[a-f]{1,2}"), seed in any::<u64>(),
        ) {
            let origin = origin.map(NodeId::new);
            let mut shuffled = members.clone();
            let n = shuffled.len().max(1);
            shuffled.rotate_left((seed as usize) % n);
            if seed % 2 == 0 { shuffled.reverse(); }
            prop_assert_eq!(
                choose_publisher_sticky(&members, &[], origin.as_ref()),
                choose_publisher_sticky(&shuffled, &[], origin.as_ref())
            );
        }

        /// The sticky publisher is always live and caught up, and claims the role whenever
        /// any eligible member does.
        #[test]
        fn sticky_publisher_is_eligible(members in arb_candidates(), origin in proptest::option::of("[a-f]{1,2}")) {
            let origin = origin.map(NodeId::new);
            let chosen = choose_publisher_sticky(&members, &[], origin.as_ref());
            let eligible = |m: &&Candidate| m.alive && m.caught_up;
            match chosen {
                Some(p) => {
                    let chosen = members.iter().find(|m| m.id == p).unwrap();
                    prop_assert!(chosen.alive && chosen.caught_up);
                    let claimed = members.iter().filter(eligible).any(|m| m.publishing);
                    prop_assert!(chosen.publishing || !claimed);
                }
                None => prop_assert!(members.iter().find(eligible).is_none()),
            }
        }

        /// A member that rejoins below the incumbent (starting, then caught up) never takes
        /// the role: the publisher stays the head's origin throughout.
        #[test]
        fn a_lower_rejoin_does_not_move_the_role(members in arb_candidates(), lower in "[0-9]{1,3}") {
            let (members, publisher) = unclaimed_with_publisher(members);
            prop_assume!(publisher.is_some());
            let incumbent = publisher.unwrap();
            // `lower` sorts below every [a-f] id: digits come before letters.
            let rejoin = NodeId::new(lower);
            let mut view = members.clone();
            view.push(Candidate { id: rejoin.clone(), alive: true, caught_up: false, publishing: false });
            prop_assert_eq!(choose_publisher_sticky(&view, std::slice::from_ref(&rejoin), Some(&incumbent)), Some(incumbent.clone()));
            view.last_mut().unwrap().caught_up = true;
            prop_assert_eq!(choose_publisher_sticky(&view, &[], Some(&incumbent)), Some(incumbent));
        }

        /// The head's origin restarted (a new process: holds the head, does not claim) never
        /// takes the role from a member that claims it, stamped or not.
        #[test]
        fn a_restarted_origin_does_not_take_the_role_back(members in arb_candidates(), lower in "[0-9]{1,3}") {
            let (members, publisher) = unclaimed_with_publisher(members);
            prop_assume!(publisher.is_some());
            let claimant = publisher.unwrap();
            let mut view: Vec<Candidate> = members
                .into_iter()
                .map(|m| Candidate { publishing: m.id == claimant, ..m })
                .collect();
            let origin = NodeId::new(lower);
            view.push(Candidate { id: origin.clone(), alive: true, caught_up: true, publishing: false });
            prop_assert_eq!(choose_publisher_sticky(&view, &[], Some(&origin)), Some(claimant));
        }
    }

    #[test]
    fn only_reachable_looking_seeds_must_be_heard() {
        let me: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let other: SocketAddr = "127.0.0.1:2".parse().unwrap();
        assert!(!must_hear_cluster(&[], me));
        assert!(!must_hear_cluster(&[vec![], vec![me]], me));
        assert!(must_hear_cluster(&[vec![], vec![me, other]], me));
    }
}
