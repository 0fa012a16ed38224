//! The `announce` decision, pure: from this node's readiness, the VIPs' health and (in L2 mode)
//! the live eligible members, which VIPs this node announces and why each other one is not.
//!
//! Invariants (checked by the property tests below):
//! - a node that is not [`Readiness::Ready`] announces nothing (not caught up, draining,
//!   stalled, BIRD not answering, or no table yet: a restarted node attracts no traffic before it has applied the
//!   head);
//! - in BGP mode a ready node announces exactly the VIPs that have a healthy backend (every VIP
//!   of the table when `withdraw_when_no_backends` is off), and the VIPs of services removed
//!   from the table that still drain on this node (the flows a drain keeps must still reach
//!   the node; new ones find every destination at weight 0);
//! - it never announces a VIP none of whose services its dataplane holds (the kernel refused
//!   them, or their source filter failed), unless that VIP drains: such traffic would reach a
//!   node with nothing to forward it to;
//! - while a ready node's dataplane has not applied the head yet (the grace of
//!   [`follows_head`]), it announces nothing the head adds and keeps what the head removes:
//!   routes follow what the dataplane serves, not the table on its way to it;
//! - in L2 mode every VIP has at most one owner among the candidates, every node that sees the
//!   same candidates picks the same owner whatever their order, and an owner keeps its VIPs when
//!   another candidate leaves (rendezvous hashing).

use crate::health::Verdicts;
use crate::table::RuleTable;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

/// How VIPs are brought to the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Host routes announced over BGP (through BIRD), one next hop per replica (ECMP).
    Bgp,
    /// One owner per VIP answers ARP/NDP on the node's interface.
    L2,
}

/// Why this node may not attract traffic at all right now, or `Ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Readiness {
    Ready,
    /// No rule table has been published yet.
    NoTable,
    /// The mesh has not caught up (just started, or after a stall).
    NotCaughtUp,
    /// The dataplane has not applied the head yet.
    NotApplied,
    /// This node's reconcile passes have kept failing for longer than [`FAILING_GRACE`]: its
    /// kernel does not hold what the table says (an interface it cannot make, a kernel that
    /// refuses a VIP), whatever version it applied last.
    DataplaneFailing,
    /// This node's own announce loop missed its deadline (the process was frozen or starved);
    /// it waits for the mesh to re-check before announcing again.
    Stalled,
    /// BGP: BIRD has not answered its control socket for longer than [`BIRD_GRACE`] (it is not
    /// running, crash-loops or hangs): nothing can be announced through it.
    BirdNotAnswering,
    /// Shutting down: withdrawn while flows in flight finish.
    Draining,
    /// Another, older live process has this node's id: the cluster keeps that one, and this
    /// one never fetches a table (shown as `no-table` before, which read as a node starting).
    DuplicateId,
}

/// The facts [`readiness`] is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeFacts {
    pub draining: bool,
    pub stalled: bool,
    /// BGP: BIRD answers its control socket ([`bird_answering`]); always true in L2 mode.
    pub bird_answering: bool,
    pub has_head: bool,
    /// The mesh says caught up (its role is not catching-up).
    pub mesh_caught_up: bool,
    /// The version the dataplane applied is the head's, or see [`follows_head`].
    pub applied_is_head: bool,
    /// The mesh refuses this process: an older live one has its id.
    pub duplicate_id: bool,
    /// Its reconcile passes keep failing ([`dataplane_failing`]).
    pub dataplane_failing: bool,
}

/// Whether the dataplane follows the head well enough to attract traffic: it applied the head,
/// or this node was ready before and has lagged behind a new head for less than `grace` (every
/// replica applies a new table a few milliseconds after it spreads; withdrawing everywhere on
/// each change would flap every route). A node that has not been ready since it started gets
/// no grace: a restarted node announces nothing until it has applied the head.
pub fn follows_head(
    applied_is_head: bool,
    ready_before: bool,
    lagging_for: Duration,
    grace: Duration,
) -> bool {
    applied_is_head || (ready_before && lagging_for < grace)
}

/// How long BIRD may leave its control socket unanswered before the node stops being ready.
pub const BIRD_GRACE: Duration = Duration::from_secs(5);
/// ... and how many polls in a row must have failed: one slow answer (a busy BIRD, a starved
/// node) must not withdraw every route of the node.
pub const BIRD_FAILED_POLLS: u32 = 3;

/// Whether BIRD counts as answering: it answered within [`BIRD_GRACE`] (`silent_for`: since
/// its last answer, or since start when it never answered), or fewer than
/// [`BIRD_FAILED_POLLS`] polls in a row failed.
pub fn bird_answering(silent_for: Duration, failed_polls: u32) -> bool {
    silent_for <= BIRD_GRACE || failed_polls < BIRD_FAILED_POLLS
}

/// How long BIRD may be silent on its control socket (while its process runs) before shoal
/// kills and restarts it: a BIRD that is stopped, deadlocked or lost its socket never comes
/// back by itself (the router drops its sessions by BFD or hold timer, and the node stays out
/// of service for good). Far above [`BIRD_GRACE`]: a restart drops every BGP session of the
/// node, so a BIRD that is only slow (a starved host) must not be restarted.
pub const BIRD_HUNG: Duration = Duration::from_secs(20);
/// ... and the polls in a row that must have failed meanwhile (one per second, each waiting
/// up to 2 s): a starved shoal that did not poll has not seen BIRD fail.
pub const BIRD_HUNG_POLLS: u32 = 6;

/// Whether a running BIRD counts as hung: silent for longer than [`BIRD_HUNG`] since both its
/// last answer and its own start (a BIRD just started is given the whole bound to answer),
/// with at least [`BIRD_HUNG_POLLS`] failed polls in a row.
pub fn bird_hung(since_answer: Duration, since_start: Duration, failed_polls: u32) -> bool {
    since_answer.min(since_start) > BIRD_HUNG && failed_polls >= BIRD_HUNG_POLLS
}

/// How long a node's reconcile passes may keep failing before it stops being ready: a failed
/// pass is retried a second later, and one transient error (a busy kernel, a race with an
/// operator's edit) must not withdraw the node's routes.
pub const FAILING_GRACE: Duration = Duration::from_secs(5);
/// ... and how many passes in a row must have failed meanwhile (a pass at 10,000 services can
/// take seconds: one slow failure is not a pattern).
pub const FAILING_PASSES: u32 = 3;

/// Whether this node's dataplane counts as failing: its passes have failed for longer than
/// [`FAILING_GRACE`] (`failing_for`: since the first failure after the last success) and at
/// least [`FAILING_PASSES`] times in a row. Before, such a node kept answering ready for the
/// head it had applied once, and BGP kept its routes, while every pass failed (a probe:
/// `shoal0` deleted behind its back).
pub fn dataplane_failing(failing_for: Option<Duration>, failed_in_a_row: u32) -> bool {
    failing_for.is_some_and(|d| d > FAILING_GRACE) && failed_in_a_row >= FAILING_PASSES
}

/// The most important reason first: draining, stalled, BIRD not answering, no table, not
/// caught up, dataplane failing, not applied.
pub fn readiness(f: NodeFacts) -> Readiness {
    if f.draining {
        Readiness::Draining
    } else if f.stalled {
        Readiness::Stalled
    } else if f.duplicate_id {
        Readiness::DuplicateId
    } else if !f.bird_answering {
        Readiness::BirdNotAnswering
    } else if !f.has_head {
        Readiness::NoTable
    } else if !f.mesh_caught_up {
        Readiness::NotCaughtUp
    } else if f.dataplane_failing {
        Readiness::DataplaneFailing
    } else if !f.applied_is_head {
        Readiness::NotApplied
    } else {
        Readiness::Ready
    }
}

/// What happens to one VIP on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "why")]
pub enum VipState {
    Announced,
    /// Announced only while services removed from the table drain on this node.
    Draining,
    /// Not announced by this node, for this reason.
    Withheld(Withheld),
    /// L2: another member owns it and answers for it.
    OwnedBy(String),
}

/// The VIPs of `table` none of whose services this node's dataplane holds: each one's key is
/// in `unprogrammed` (set aside after the kernel refused it, or withheld for a failed source
/// filter).
pub fn unprogrammed_vips(
    table: &RuleTable,
    unprogrammed: &BTreeSet<shoal_dataplane::ServiceKey>,
) -> BTreeSet<IpAddr> {
    if unprogrammed.is_empty() {
        return BTreeSet::new();
    }
    let mut programmed: BTreeMap<IpAddr, bool> = BTreeMap::new();
    for vs in &table.services {
        let here = !unprogrammed.contains(&crate::desired::key_of(vs));
        *programmed.entry(vs.vip).or_insert(false) |= here;
    }
    programmed
        .into_iter()
        .filter(|(_, here)| !here)
        .map(|(vip, _)| vip)
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Withheld {
    NotReady(Readiness),
    /// None of the VIP's services has a backend that is up with a weight above 0.
    NoHealthyBackend,
    /// None of the VIP's services is in this node's dataplane: the kernel refused them, or
    /// their source filter could not be programmed (`reconcile.refused`, `reconcile.withheld`).
    NotProgrammed,
    /// L2: no live member is ready to own it.
    NoEligibleOwner,
    /// Decided on, but the kernel refused to add it (the node's log says why).
    NotHeld,
}

impl std::fmt::Display for Withheld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Withheld::NotReady(Readiness::Ready) => "ready",
            Withheld::NotReady(Readiness::NoTable) => "no rule table yet",
            Withheld::NotReady(Readiness::NotCaughtUp) => "not caught up",
            Withheld::NotReady(Readiness::NotApplied) => "not caught up (head not applied)",
            Withheld::NotReady(Readiness::DataplaneFailing) => "its reconcile passes keep failing",
            Withheld::NotReady(Readiness::Stalled) => "stalled (missed its control deadline)",
            Withheld::NotReady(Readiness::BirdNotAnswering) => {
                "BIRD is not answering its control socket"
            }
            Withheld::NotReady(Readiness::Draining) => "draining",
            Withheld::NotReady(Readiness::DuplicateId) => "an older live process has this node id",
            Withheld::NoHealthyBackend => "no healthy backend",
            Withheld::NotProgrammed => "none of its services is programmed here",
            Withheld::NoEligibleOwner => "no eligible owner",
            Withheld::NotHeld => "the kernel refused to add it (see the node's log)",
        };
        f.write_str(s)
    }
}

/// Per VIP of the table: whether at least one of its services has a backend that is up with
/// a weight above 0.
pub fn vip_health(table: &RuleTable, verdicts: &Verdicts) -> BTreeMap<IpAddr, bool> {
    let mut out: BTreeMap<IpAddr, bool> = BTreeMap::new();
    for vs in &table.services {
        let healthy = vs
            .backends
            .iter()
            .any(|b| b.weight > 0 && !verdicts.is_down_in(vs, b.address, b.port));
        *out.entry(vs.vip).or_insert(false) |= healthy;
    }
    out
}

/// The rendezvous (highest random weight) owner of `vip` among `candidates`: the one whose
/// `sha256(id + "#" + vip)` is lowest. Independent of the candidates' order.
///
/// Deliberately not `shoal_gossip::rendezvous::weight` (zero-byte separator): changing the
/// bytes hashed here would move L2 VIP owners while nodes of two releases run side by side (a
/// rolling upgrade), each answering ARP for the VIPs it thinks it owns.
pub fn owner(vip: IpAddr, candidates: &[String]) -> Option<&str> {
    candidates
        .iter()
        .map(|c| {
            let mut h = Sha256::new();
            h.update(c.as_bytes());
            h.update(b"#");
            h.update(vip.to_string().as_bytes());
            (h.finalize(), c)
        })
        .min()
        .map(|(_, c)| c.as_str())
}

/// Everything one decision needs.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub mode: Mode,
    pub me: &'a str,
    pub readiness: Readiness,
    /// Every VIP of the table and whether it has a healthy backend ([`vip_health`]).
    pub vips: &'a BTreeMap<IpAddr, bool>,
    /// VIPs of services removed from the table that still drain on this node (in the
    /// table or not).
    pub draining: &'a BTreeSet<IpAddr>,
    /// Whether the dataplane has applied the head (a ready node may lag behind a new head
    /// for the grace of [`follows_head`]).
    pub applied_is_head: bool,
    /// What this node announces now.
    pub announced_now: &'a BTreeSet<IpAddr>,
    /// VIPs of the table none of whose services this node's dataplane holds
    /// ([`unprogrammed_vips`]).
    pub unprogrammed: &'a BTreeSet<IpAddr>,
    pub withdraw_when_no_backends: bool,
    /// L2: the live members that are ready to own VIPs (this node included when it is ready).
    pub l2_candidates: &'a [String],
}

/// The state of every VIP of the table, and of every VIP still draining, on this node.
pub fn decide(i: &Inputs<'_>) -> BTreeMap<IpAddr, VipState> {
    let mut draining: BTreeSet<IpAddr> = i.draining.clone();
    if !i.applied_is_head {
        // The dataplane still serves the table before the head: what it announces stays.
        draining.extend(i.announced_now.iter().filter(|v| !i.vips.contains_key(v)));
    }
    let gone = draining.iter().filter(|v| !i.vips.contains_key(v));
    let all = i
        .vips
        .iter()
        .map(|(&v, &h)| (v, h))
        .chain(gone.map(|&v| (v, false)));
    let unhealthy = VipState::Withheld(Withheld::NoHealthyBackend);
    all.map(|(vip, healthy)| {
        // Healthy or not: a drain is for the flows already there.
        let served = if !i.applied_is_head && !i.announced_now.contains(&vip) {
            VipState::Withheld(Withheld::NotReady(Readiness::NotApplied))
        } else if i.unprogrammed.contains(&vip) && !draining.contains(&vip) {
            // Announced, it drew flows to a node whose kernel has no service for them (a
            // probe: a service the kernel refused kept its VIP announced everywhere).
            VipState::Withheld(Withheld::NotProgrammed)
        } else if healthy {
            VipState::Announced
        } else if draining.contains(&vip)
            && (i.announced_now.contains(&vip) || !i.withdraw_when_no_backends)
        {
            // It stays announced, never comes back: a VIP withdrawn for want of a healthy
            // backend has no flows here to drain, and announcing it for the drain drew new
            // ones to nothing (an audit: removing such a service re-announced it everywhere
            // for the whole drain).
            VipState::Draining
        } else if i.withdraw_when_no_backends {
            VipState::Withheld(Withheld::NoHealthyBackend)
        } else {
            VipState::Announced
        };
        let state = if i.readiness != Readiness::Ready {
            VipState::Withheld(Withheld::NotReady(i.readiness))
        } else if i.mode == Mode::L2 {
            match owner(vip, i.l2_candidates) {
                None => VipState::Withheld(Withheld::NoEligibleOwner),
                // Health is shared, so the owner withholds it too: naming an owner that does
                // not answer for it sent a probe looking for a holder there was none of.
                Some(o) if o != i.me && served == unhealthy && !draining.contains(&vip) => served,
                Some(o) if o != i.me => VipState::OwnedBy(o.to_string()),
                Some(_) => served,
            }
        } else {
            served
        };
        (vip, state)
    })
    .collect()
}

/// The VIPs a decision announces (draining ones included).
pub fn announced(states: &BTreeMap<IpAddr, VipState>) -> BTreeSet<IpAddr> {
    states
        .iter()
        .filter(|(_, s)| matches!(s, VipState::Announced | VipState::Draining))
        .map(|(ip, _)| *ip)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::BackendRef;
    use crate::table::{Backend, VirtualService};
    use proptest::prelude::*;
    use shoal_dataplane::model::{Forwarding, Protocol, SchedFlags, Tunnel};
    use std::collections::BTreeSet;

    fn vip(n: u8) -> IpAddr {
        IpAddr::from([203, 0, 113, n])
    }

    fn service(name: &str, vip: IpAddr, weights: &[u32]) -> VirtualService {
        VirtualService {
            name: name.into(),
            vip,
            port: 80,
            protocol: Protocol::Tcp,
            scheduler: "mh".into(),
            flags: SchedFlags::default(),
            forwarding: Forwarding::Tunnel(Tunnel::Ipip),
            backends: weights
                .iter()
                .enumerate()
                .map(|(j, w)| Backend {
                    address: IpAddr::from([198, 18, 5, j as u8 + 1]),
                    port: 8080,
                    weight: *w,
                })
                .collect(),
            health: None,
            source_ranges: vec![],
        }
    }

    fn facts(bits: u8) -> NodeFacts {
        NodeFacts {
            draining: bits & 1 != 0,
            stalled: bits & 2 != 0,
            has_head: bits & 4 != 0,
            mesh_caught_up: bits & 8 != 0,
            applied_is_head: bits & 16 != 0,
            bird_answering: bits & 32 != 0,
            duplicate_id: bits & 64 != 0,
            dataplane_failing: bits & 128 != 0,
        }
    }

    #[test]
    fn ready_only_when_every_fact_allows_it() {
        for bits in 0..=255u8 {
            let f = facts(bits);
            let ready = !f.draining
                && !f.duplicate_id
                && !f.stalled
                && f.bird_answering
                && f.has_head
                && f.mesh_caught_up
                && f.applied_is_head
                && !f.dataplane_failing;
            assert_eq!(readiness(f) == Readiness::Ready, ready, "{f:?}");
        }
        // Applied the head once, every pass failing since: not ready, and said so rather than
        // "not applied" when both hold.
        assert_eq!(readiness(facts(0b1011_1100)), Readiness::DataplaneFailing);
        assert_eq!(readiness(facts(0b1010_1100)), Readiness::DataplaneFailing);
        assert_eq!(readiness(facts(0b1011_0100)), Readiness::NotCaughtUp);
        assert_eq!(readiness(facts(0b111111)), Readiness::Draining);
        assert_eq!(readiness(facts(0b101100)), Readiness::NotApplied);
        assert_eq!(readiness(facts(0b110100)), Readiness::NotCaughtUp);
        assert_eq!(readiness(facts(0b011100)), Readiness::BirdNotAnswering);
        assert_eq!(readiness(facts(0b011110)), Readiness::Stalled);
        assert_eq!(readiness(facts(0b1111100)), Readiness::DuplicateId);
        assert_eq!(readiness(facts(0b1000000)), Readiness::DuplicateId);
    }

    #[test]
    fn bird_is_down_only_after_the_grace_and_several_failed_polls() {
        let s = Duration::from_secs;
        // Answering, or one slow answer: still up.
        assert!(bird_answering(s(0), 0));
        assert!(
            bird_answering(s(30), 1),
            "one failed poll after a long quiet"
        );
        assert!(bird_answering(s(30), 2));
        // Several failed polls but within the grace (e.g. right after start): still up.
        assert!(bird_answering(s(3), 3));
        assert!(bird_answering(BIRD_GRACE, 10));
        // Silent past the grace with 3 failures in a row: down.
        assert!(!bird_answering(s(6), 3));
        assert!(!bird_answering(s(600), 600));
    }

    #[test]
    fn a_vip_is_unprogrammed_only_when_none_of_its_services_is_programmed() {
        let refused = service("odd", vip(1), &[1]);
        let table = RuleTable {
            services: vec![
                refused.clone(),
                // Another port of the same VIP is programmed: the VIP is served.
                VirtualService {
                    port: 443,
                    ..service("tls", vip(1), &[1])
                },
                service("alone", vip(2), &[1]),
                service("fine", vip(3), &[1]),
            ],
        };
        let key = |vs: &VirtualService| crate::desired::key_of(vs);
        assert!(unprogrammed_vips(&table, &BTreeSet::new()).is_empty());
        let set: BTreeSet<_> = [key(&refused), key(&table.services[2])].into();
        assert_eq!(unprogrammed_vips(&table, &set), [vip(2)].into());
        let set: BTreeSet<_> = table.services[..2].iter().map(key).collect();
        assert_eq!(unprogrammed_vips(&table, &set), [vip(1)].into());
    }

    #[test]
    fn the_dataplane_fails_only_after_the_grace_and_several_failed_passes() {
        let s = Duration::from_secs;
        assert!(!dataplane_failing(None, 0), "the last pass succeeded");
        assert!(!dataplane_failing(Some(s(600)), 2), "two slow failures");
        assert!(!dataplane_failing(Some(s(4)), 5), "within the grace");
        assert!(!dataplane_failing(Some(FAILING_GRACE), FAILING_PASSES));
        assert!(dataplane_failing(Some(s(6)), FAILING_PASSES));
    }

    #[test]
    fn bird_is_hung_only_when_silent_long_since_its_answer_and_its_start() {
        let long = BIRD_HUNG + Duration::from_secs(1);
        assert!(bird_hung(long, long, BIRD_HUNG_POLLS));
        // Answered recently, or started recently (a restart gets the whole bound again).
        assert!(!bird_hung(Duration::from_secs(3), long, 30));
        assert!(!bird_hung(long, Duration::from_secs(3), 30));
        assert!(!bird_hung(BIRD_HUNG, long, 30));
        // Silent that long but barely polled: shoal itself was starved, not BIRD.
        assert!(!bird_hung(long, long, BIRD_HUNG_POLLS - 1));
    }

    #[test]
    fn only_a_node_that_was_ready_gets_grace_behind_a_new_head() {
        let g = Duration::from_secs(2);
        assert!(follows_head(true, false, Duration::ZERO, g));
        assert!(follows_head(false, true, Duration::from_millis(500), g));
        assert!(!follows_head(false, true, Duration::from_secs(3), g));
        assert!(
            !follows_head(false, false, Duration::ZERO, g),
            "restarted node"
        );
    }

    #[test]
    fn a_vip_is_healthy_when_any_of_its_services_has_a_live_backend() {
        let table = RuleTable {
            services: vec![
                service("a", vip(1), &[1, 1]),
                service("b", vip(2), &[0]),
                service("c", vip(3), &[]),
                service("d", vip(3), &[5]),
                service("e", vip(4), &[3]),
            ],
        };
        let down = Verdicts::from_down([BackendRef {
            service: "e".into(),
            address: IpAddr::from([198, 18, 5, 1]),
            port: 8080,
        }]);
        let h = vip_health(&table, &down);
        assert_eq!(
            h,
            BTreeMap::from([
                (vip(1), true),
                (vip(2), false),
                (vip(3), true),
                (vip(4), false)
            ])
        );
    }

    #[test]
    fn reasons_read_as_the_issue_names_them() {
        assert_eq!(
            Withheld::NotReady(Readiness::NotCaughtUp).to_string(),
            "not caught up"
        );
        assert_eq!(
            Withheld::NotReady(Readiness::Draining).to_string(),
            "draining"
        );
        assert_eq!(Withheld::NoHealthyBackend.to_string(), "no healthy backend");
    }

    #[test]
    fn l2_spreads_vips_over_the_candidates() {
        let nodes: Vec<String> = ["n1", "n2", "n3"].iter().map(|s| s.to_string()).collect();
        let mut per: BTreeMap<&str, usize> = BTreeMap::new();
        for n in 1..=60 {
            *per.entry(owner(vip(n), &nodes).unwrap()).or_default() += 1;
        }
        assert_eq!(per.len(), 3, "{per:?}");
        assert!(per.values().all(|c| *c >= 10), "{per:?}");
    }

    fn arb_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from)
        ]
    }

    fn arb_vips() -> impl Strategy<Value = BTreeMap<IpAddr, bool>> {
        prop::collection::btree_map(arb_ip(), any::<bool>(), 0..12)
    }

    /// The table's VIPs and the draining ones: some of the table's (a VIP with a service left
    /// and one removed) and some gone from it (every service of the VIP removed).
    fn arb_vips_and_drains() -> impl Strategy<Value = (BTreeMap<IpAddr, bool>, BTreeSet<IpAddr>)> {
        (
            arb_vips(),
            any::<u16>(),
            prop::collection::btree_set(arb_ip(), 0..4),
        )
            .prop_map(|(vips, mask, gone)| {
                let kept = vips
                    .keys()
                    .enumerate()
                    .filter(|(k, _)| (mask >> k) & 1 == 1)
                    .map(|(_, v)| *v);
                let draining = kept.chain(gone).collect();
                (vips, draining)
            })
    }

    fn arb_readiness() -> impl Strategy<Value = Readiness> {
        (0..128u8).prop_map(|b| readiness(facts(b)))
    }

    proptest! {
        #[test]
        fn not_ready_announces_nothing(
            (vips, draining) in arb_vips_and_drains(),
            r in arb_readiness(),
            l2 in any::<bool>(),
            withdraw in any::<bool>(),
        ) {
            prop_assume!(r != Readiness::Ready);
            let cands = vec!["me".to_string(), "other".to_string()];
            let states = decide(&Inputs {
                mode: if l2 { Mode::L2 } else { Mode::Bgp },
                me: "me",
                readiness: r,
                vips: &vips,
                draining: &draining,
                applied_is_head: true,
                announced_now: &BTreeSet::new(),
                unprogrammed: &BTreeSet::new(),
                withdraw_when_no_backends: withdraw,
                l2_candidates: &cands,
            });
            prop_assert!(announced(&states).is_empty());
            let every: BTreeSet<IpAddr> = vips.keys().chain(&draining).copied().collect();
            prop_assert_eq!(states.len(), every.len());
            for s in states.values() {
                prop_assert_eq!(s, &VipState::Withheld(Withheld::NotReady(r)));
            }
        }

        #[test]
        fn bgp_announces_exactly_the_healthy_and_the_draining_vips(
            (vips, draining) in arb_vips_and_drains(),
            withdraw in any::<bool>(),
            mask in any::<u16>(),
            refused_mask in any::<u16>(),
        ) {
            // The VIPs whose services the kernel refused here: some of the table's.
            let unprogrammed: BTreeSet<IpAddr> = vips
                .keys()
                .enumerate()
                .filter(|(k, _)| refused_mask & (1 << (k % 16)) != 0)
                .map(|(_, ip)| *ip)
                .collect();
            // What the node announces now: some of the VIPs of the table and of the drains.
            let every: BTreeSet<IpAddr> = vips.keys().chain(&draining).copied().collect();
            let now: BTreeSet<IpAddr> = every
                .iter()
                .enumerate()
                .filter(|(k, _)| mask & (1 << (k % 16)) != 0)
                .map(|(_, ip)| *ip)
                .collect();
            let states = decide(&Inputs {
                mode: Mode::Bgp,
                me: "me",
                readiness: Readiness::Ready,
                vips: &vips,
                draining: &draining,
                applied_is_head: true,
                announced_now: &now,
                unprogrammed: &unprogrammed,
                withdraw_when_no_backends: withdraw,
                l2_candidates: &[],
            });
            let healthy = |ip: &IpAddr| vips.get(ip).copied().unwrap_or(false);
            let mut want: BTreeSet<IpAddr> = vips
                .iter()
                .filter(|(_, h)| **h || !withdraw)
                .map(|(ip, _)| *ip)
                .filter(|ip| !unprogrammed.contains(ip) || draining.contains(ip))
                .collect();
            // A drain keeps a VIP announced; it brings back none withdrawn for want of a
            // healthy backend.
            want.extend(draining.iter().filter(|ip| !withdraw || now.contains(ip)));
            prop_assert_eq!(announced(&states), want);
            for (ip, s) in &states {
                match s {
                    VipState::Announced => prop_assert!(healthy(ip) || (!withdraw && !draining.contains(ip)), "{}", ip),
                    VipState::Withheld(Withheld::NotProgrammed) => prop_assert!(
                        unprogrammed.contains(ip) && !draining.contains(ip),
                        "{}", ip
                    ),
                    VipState::Draining => prop_assert!(
                        !healthy(ip) && draining.contains(ip) && (now.contains(ip) || !withdraw),
                        "{}", ip
                    ),
                    other => prop_assert_eq!(other, &VipState::Withheld(Withheld::NoHealthyBackend), "{}", ip),
                }
            }
        }

        #[test]
        fn behind_the_head_nothing_is_added_and_nothing_removed(
            (vips, draining) in arb_vips_and_drains(),
            mask in any::<u16>(),
            others in prop::collection::btree_set(arb_ip(), 0..4),
            withdraw in any::<bool>(),
        ) {
            // What the node announces now: some of the head's VIPs, and some the head removed.
            let now: BTreeSet<IpAddr> = vips
                .keys()
                .enumerate()
                .filter(|(k, _)| (mask >> k) & 1 == 1)
                .map(|(_, v)| *v)
                .chain(others)
                .collect();
            let none = BTreeSet::new();
            let inputs = |applied_is_head| Inputs {
                mode: Mode::Bgp,
                me: "me",
                readiness: Readiness::Ready,
                vips: &vips,
                draining: &draining,
                applied_is_head,
                announced_now: &now,
                unprogrammed: &none,
                withdraw_when_no_backends: withdraw,
                l2_candidates: &[],
            };
            let applied = announced(&decide(&inputs(true)));
            let behind = decide(&inputs(false));
            let removed: BTreeSet<IpAddr> =
                now.iter().filter(|v| !vips.contains_key(v)).copied().collect();
            let want: BTreeSet<IpAddr> =
                applied.intersection(&now).copied().chain(removed).collect();
            prop_assert_eq!(announced(&behind), want);
            for (ip, s) in &behind {
                if !now.contains(ip) {
                    prop_assert_eq!(s, &VipState::Withheld(Withheld::NotReady(Readiness::NotApplied)));
                }
            }
        }

        #[test]
        fn l2_each_vip_is_announced_by_exactly_one_healthy_candidate(
            (vips, draining) in arb_vips_and_drains(),
            n in 1..6usize,
            seed in any::<u64>(),
        ) {
            let nodes: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
            let mut count: BTreeMap<IpAddr, usize> = BTreeMap::new();
            for (k, me) in nodes.iter().enumerate() {
                // Every node sees the same candidates, in its own order.
                let mut cands = nodes.clone();
                cands.rotate_left((seed as usize + k) % n);
                if (seed >> k) & 1 == 1 { cands.reverse(); }
                // Each draining VIP was announced by its owner when its drain began.
                let held: BTreeSet<IpAddr> = draining
                    .iter()
                    .filter(|ip| owner(**ip, &nodes) == Some(me.as_str()))
                    .copied()
                    .collect();
                let states = decide(&Inputs {
                    mode: Mode::L2,
                    me,
                    readiness: Readiness::Ready,
                    vips: &vips,
                    draining: &draining,
                    applied_is_head: true,
                    announced_now: &held,
                    unprogrammed: &BTreeSet::new(),
                    withdraw_when_no_backends: true,
                    l2_candidates: &cands,
                });
                for ip in announced(&states) {
                    *count.entry(ip).or_default() += 1;
                }
                for (ip, s) in &states {
                    if let VipState::OwnedBy(o) = s {
                        prop_assert_eq!(Some(o.as_str()), owner(*ip, &nodes));
                        prop_assert!(o != me);
                        // Only a VIP its owner serves has one to name.
                        prop_assert!(vips.get(ip).copied().unwrap_or(false) || draining.contains(ip), "{}", ip);
                    }
                }
            }
            for (ip, healthy) in &vips {
                let served = *healthy || draining.contains(ip);
                prop_assert_eq!(count.get(ip).copied().unwrap_or(0), usize::from(served), "{}", ip);
            }
            for ip in draining.iter().filter(|v| !vips.contains_key(v)) {
                prop_assert_eq!(count.get(ip).copied().unwrap_or(0), 1, "draining {}", ip);
            }
        }

        #[test]
        fn l2_owner_keeps_its_vips_when_another_candidate_leaves(
            vips in arb_vips(),
            n in 2..7usize,
            leaving in 0..7usize,
        ) {
            let nodes: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
            let gone = &nodes[leaving % n];
            let rest: Vec<String> = nodes.iter().filter(|x| *x != gone).cloned().collect();
            for ip in vips.keys() {
                let before = owner(*ip, &nodes).unwrap();
                let after = owner(*ip, &rest).unwrap();
                if before != gone {
                    prop_assert_eq!(before, after);
                }
            }
        }
    }
}
