//! The cluster view: members (parsed from their gossiped keys), the head and the publisher.
//!
//! Pure: built from plain member records, so any node holding the same records computes the
//! same view (the property tests below check this across simulated nodes).

use crate::election::{choose_publisher_sticky, Candidate, Role};
use crate::head::{select_head, HeadInfo, HeldAd, MemberHeld};
use crate::incarnation::{choose, Duplicate};
use crate::keys;
use crate::version::{NodeId, Version};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// What any node can say about the cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    pub self_id: NodeId,
    pub publisher: Option<NodeId>,
    pub head: Option<HeadInfo>,
    /// Sorted by id; one entry per node id (its newest generation).
    pub members: Vec<MemberView>,
}

/// One member as seen by the node producing the view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberView {
    pub id: NodeId,
    pub alive: bool,
    /// Rises on every restart (start time in ms since the Unix epoch).
    pub generation: u64,
    pub role: Role,
    /// The version its dataplane runs (set by its application).
    pub applied: Option<Version>,
    /// The version of the document it holds.
    pub held: Option<Version>,
    pub listen: SocketAddr,
    pub metadata: BTreeMap<String, String>,
    /// Milliseconds since its heartbeat last advanced (`Some(0)` for the viewing node itself).
    pub last_seen_ms: Option<u64>,
    /// Why the member stands down from the publisher role, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stand_down: Option<String>,
    /// A dead member this node knows only from its peers' gossip (it died before this node
    /// heard it first-hand): listed so every node lists the same members, never counted
    /// (`incarnation::relayed_dead`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub relayed: bool,
    /// It left on purpose (a graceful shutdown: SIGTERM, a scale-down) rather than died.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub left: bool,
    /// Not alive, but heard less than the join grace ago: the failure detector has not judged
    /// it yet (it calls a member live only after its second heartbeat), so it is neither alive
    /// nor dead. A node's first answers after its start listed every live peer as dead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unjudged: bool,
}

/// Raw facts about one chitchat node, as read from chitchat's state.
#[derive(Clone, Debug, PartialEq)]
pub struct RawMember {
    pub id: NodeId,
    pub generation: u64,
    pub listen: SocketAddr,
    /// Chitchat's failure detector says live (always true for the node itself).
    pub live: bool,
    pub keys: BTreeMap<String, String>,
    pub last_seen_ms: Option<u64>,
    /// Heard first-hand from a peer whose certificate names this id at this address (always
    /// true without node identity): see `identity.rs`. Unverified records never count.
    pub verified: bool,
    /// The viewing node's own record.
    pub me: bool,
}

/// A member with its keys parsed: what the replica core ([`crate::replica::Replica`]) decides
/// from. The mesh builds it from chitchat; the simulation builds it from its own messages.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub id: NodeId,
    pub generation: u64,
    pub listen: SocketAddr,
    /// Live and not leaving.
    pub alive: bool,
    pub ready: bool,
    /// It holds the publisher role ([`keys::PUBLISHING`]).
    pub publishing: bool,
    pub held: Option<HeldAd>,
    pub applied: Option<Version>,
    pub metadata: BTreeMap<String, String>,
    /// Shared, so that a reader (`Mesh::app_keys`, every health pass) takes it under the
    /// mesh's lock without copying tens of thousands of health values there.
    pub app: Arc<BTreeMap<String, String>>,
    pub last_seen_ms: Option<u64>,
    /// The member passes on the publisher role, with its reason ([`keys::STAND_DOWN`]).
    pub stand_down: Option<String>,
    /// It announced a graceful leave: never alive again, whatever its heartbeat does.
    pub leaving: bool,
    /// The incarnations it judged dead lately ([`keys::DOWN`]).
    pub down: Vec<(NodeId, u64)>,
}

/// [`parse_members_checked`] without the duplicate report.
pub fn parse_members(raw: Vec<RawMember>) -> Vec<Member> {
    parse_members_checked(raw).0
}

/// Parses raw records. One incarnation per node id counts (see `incarnation.rs`: verified only,
/// the older of two live duplicates, else the newest generation, so a restarted node's old
/// incarnation never lingers as a ghost); a node announcing `leaving` is gone at once.
pub(crate) fn parse_members_checked(raw: Vec<RawMember>) -> (Vec<Member>, Vec<Duplicate>) {
    let (chosen, duplicates) = choose(raw);
    (chosen.into_iter().map(parse_member).collect(), duplicates)
}

/// One record's keys parsed, whether it counts or not.
pub(crate) fn parse_member(r: RawMember) -> Member {
    let leaving = r.keys.contains_key(keys::LEAVING);
    let strip = |prefix: &str| -> BTreeMap<String, String> {
        r.keys
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v.clone())))
            .collect()
    };
    Member {
        alive: r.live && !leaving,
        ready: r.keys.contains_key(keys::READY),
        publishing: r.keys.contains_key(keys::PUBLISHING),
        held: r.keys.get(keys::HELD).and_then(|v| keys::parse_held(v)),
        applied: r
            .keys
            .get(keys::APPLIED)
            .and_then(|v| Version::parse(v).ok()),
        metadata: strip(keys::META_PREFIX),
        stand_down: r.keys.get(keys::STAND_DOWN).cloned(),
        down: r
            .keys
            .get(keys::DOWN)
            .map(|v| keys::parse_down(v))
            .unwrap_or_default(),
        // Last, moving the values: the application's keys are most of them (health opinions),
        // and this runs on every control step in which a key changed.
        app: Arc::new(
            r.keys
                .into_iter()
                .filter_map(|(k, v)| Some((k.strip_prefix(keys::APP_PREFIX)?.to_string(), v)))
                .collect(),
        ),
        id: r.id,
        generation: r.generation,
        listen: r.listen,
        last_seen_ms: r.last_seen_ms,
        leaving,
    }
}

/// The head and publisher a node derives from its members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decisions {
    pub head: Option<HeadInfo>,
    pub publisher: Option<NodeId>,
}

/// Decides from a view with no member counted as starting (tests, the convergence check).
#[cfg(test)]
pub(crate) fn decide(members: &[Member]) -> Decisions {
    decide_at(members, 0, 0)
}

/// Head and publisher from one view. A member is *starting* while it is live, not yet caught
/// up, and its generation (its start time, unix ms) is less than `patience_ms` before `now_unix_ms`.
pub fn decide_at(members: &[Member], now_unix_ms: u64, patience_ms: u64) -> Decisions {
    let held: Vec<MemberHeld> = members
        .iter()
        .map(|m| MemberHeld {
            id: m.id.clone(),
            alive: m.alive,
            held: m.held.clone(),
        })
        .collect();
    let candidates: Vec<Candidate> = members
        .iter()
        .map(|m| Candidate {
            id: m.id.clone(),
            alive: m.alive,
            // A member that stands down is passed over like one still catching up.
            caught_up: m.ready && m.stand_down.is_none(),
            publishing: m.publishing,
        })
        .collect();
    let starting: Vec<NodeId> = members
        .iter()
        .filter(|m| m.alive && !m.ready && m.generation.abs_diff(now_unix_ms) < patience_ms)
        .map(|m| m.id.clone())
        .collect();
    let head = select_head(&held);
    let origin = head.as_ref().map(|h| &h.version.origin);
    let publisher = choose_publisher_sticky(&candidates, &starting, origin);
    Decisions { head, publisher }
}

pub(crate) fn build_view(
    self_id: &NodeId,
    members: &[Member],
    relayed_dead: &[Member],
    decisions: &Decisions,
) -> ClusterView {
    let relayed_dead = relayed_dead.iter().map(|m| (m, true));
    let mut members: Vec<MemberView> = members
        .iter()
        .map(|m| (m, false))
        .chain(relayed_dead)
        .map(|(m, relayed)| MemberView {
            id: m.id.clone(),
            alive: m.alive && !relayed,
            generation: m.generation,
            role: if decisions.publisher.as_ref() == Some(&m.id) {
                Role::Publisher
            } else if m.ready {
                Role::Follower
            } else {
                Role::CatchingUp
            },
            applied: m.applied.clone(),
            held: m.held.as_ref().map(|h| h.version.clone()),
            listen: m.listen,
            metadata: m.metadata.clone(),
            last_seen_ms: m.last_seen_ms,
            stand_down: m.stand_down.clone(),
            relayed,
            left: m.leaving,
            unjudged: false,
        })
        .collect();
    members.sort_by(|a, b| a.id.cmp(&b.id));
    ClusterView {
        self_id: self_id.clone(),
        publisher: decisions.publisher.clone(),
        head: decisions.head.clone(),
        members,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn raw(id: &str, generation: u64, live: bool, keys: &[(&str, &str)]) -> RawMember {
        RawMember {
            id: NodeId::new(id),
            generation,
            listen: "127.0.0.1:1".parse().unwrap(),
            live,
            keys: keys
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            last_seen_ms: None,
            verified: true,
            me: false,
        }
    }

    const D: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn old_generation_is_no_ghost_and_leaving_is_gone() {
        let held = format!("1.1@a|{D}|3");
        let members = parse_members(vec![
            raw("a", 1, true, &[("ready", "1"), ("held", &held)]),
            raw("a", 2, true, &[]),
            raw("b", 1, true, &[("ready", "1"), ("leaving", "1")]),
            raw(
                "c",
                1,
                true,
                &[("ready", "1"), ("meta:admin", "x"), ("app:h", "ok")],
            ),
        ]);
        assert_eq!(members.len(), 3);
        assert_eq!(members[0].generation, 2);
        assert!(members[0].held.is_none() && !members[0].ready);
        assert!(!members[1].alive);
        assert_eq!(
            members[2].metadata.get("admin").map(String::as_str),
            Some("x")
        );
        assert_eq!(members[2].app.get("h").map(String::as_str), Some("ok"));
        let d = decide(&members);
        assert_eq!(d.publisher, Some(NodeId::new("c")));
        assert_eq!(d.head, None);
        let view = build_view(&NodeId::new("c"), &members, &[], &d);
        assert_eq!(view.members[2].role, Role::Publisher);
        assert_eq!(view.members[0].role, Role::CatchingUp);
    }

    #[test]
    fn a_member_that_stands_down_is_passed_over_and_says_why() {
        let members = parse_members(vec![
            raw(
                "a",
                1,
                true,
                &[("ready", "1"), ("stand-down", "API refuses")],
            ),
            raw("b", 1, true, &[("ready", "1")]),
        ]);
        let d = decide(&members);
        assert_eq!(d.publisher, Some(NodeId::new("b")));
        let view = build_view(&NodeId::new("a"), &members, &[], &d);
        assert_eq!(view.members[0].stand_down.as_deref(), Some("API refuses"));
        assert_eq!(view.members[0].role, Role::Follower);
        assert_eq!(view.members[1].stand_down, None);
    }

    /// One gossiped record per member with a per-member counter, as scuttlebutt has: a node's
    /// partial view holds some records; a full exchange keeps, per member, the newest.
    #[derive(Clone, Debug)]
    struct Record {
        counter: u64,
        raw: RawMember,
    }

    fn arb_record(id: String) -> impl Strategy<Value = Record> {
        (
            0u64..4,
            1u64..3,
            any::<bool>(),
            any::<bool>(),
            proptest::option::of((0u64..3, 0u64..3, "[a-d]")),
        )
            .prop_map(move |(counter, generation, live, ready, held)| {
                let mut keys: Vec<(String, String)> = Vec::new();
                if ready {
                    keys.push(("ready".into(), "1".into()));
                }
                if let Some((e, s, o)) = held {
                    keys.push(("held".into(), format!("{e}.{s}@{o}|{D}|10")));
                }
                let keys_ref: Vec<(&str, &str)> =
                    keys.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                Record {
                    counter,
                    raw: raw(&id, generation, live, &keys_ref),
                }
            })
    }

    fn arb_cluster() -> impl Strategy<Value = Vec<Vec<Option<Record>>>> {
        // nodes x members: what each node initially knows about each member.
        (1usize..5, 1usize..6).prop_flat_map(|(nodes, members)| {
            let row: Vec<_> = (0..members)
                .map(|m| proptest::option::of(arb_record(format!("m{m}"))))
                .collect();
            proptest::collection::vec(row, nodes)
        })
    }

    proptest! {
        /// For any set of member views, after a full exchange every node selects the same head
        /// and the same publisher, whatever order it sees the records in.
        #[test]
        fn full_exchange_agrees(cluster in arb_cluster(), rot in 0usize..7) {
            let members = cluster[0].len();
            let mut merged: Vec<Option<Record>> = vec![None; members];
            for node in &cluster {
                for (i, rec) in node.iter().enumerate() {
                    if let Some(rec) = rec {
                        let newer = merged[i].as_ref().is_none_or(|m| rec.counter > m.counter);
                        if newer { merged[i] = Some(rec.clone()); }
                    }
                }
            }
            let mut answers = Vec::new();
            for (n, _) in cluster.iter().enumerate() {
                let mut records: Vec<RawMember> = merged.iter().flatten().map(|r| r.raw.clone()).collect();
                if !records.is_empty() { let len = records.len(); records.rotate_left((rot + n) % len); }
                if n % 2 == 1 { records.reverse(); }
                answers.push(decide(&parse_members(records)));
            }
            for a in &answers { prop_assert_eq!(a, &answers[0]); }
        }
    }
}
