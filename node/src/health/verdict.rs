//! The shared verdict: from the gossiped opinions every node sees, is a backend up or down?
//!
//! Rule, applied per backend with the checkers `assign::checkers` picks from the live view:
//! 1. Count the known (`Up`/`Down`) opinions of the live assigned checkers. A backend is down
//!    when a strict majority of them say down; a tie is up (draining a healthy backend on a
//!    split vote costs more than sending to a sick one for a moment).
//! 2. If no assigned checker has an opinion yet (new checkers after a membership change), use
//!    the opinions of the other live members that still publish one (former checkers hand over).
//! 3. If nobody has an opinion, keep this node's previous verdict, and a backend never judged is up.
//!    The previous verdict is looked up by the service's name and, failing that, by where the
//!    service listens (VIP, port, protocol): a service renamed in the table is the same service
//!    to its backends, and a backend found down under the old name stays down under the new
//!    one until its new checkers say otherwise (it came back up for (fall - 1) x interval: the
//!    audit of 2026-12-06).
//!
//! Steps 1-2 depend only on the view, so nodes with the same view agree; step 3 can differ
//! between a node that has judged the backend before and one that has not, until a checker reports.

use super::assign::Assignment;
use super::hysteresis::CheckState;
use super::wire::Observation;
use crate::table::VirtualService;
use serde::Serialize;
use shoal_dataplane::model::Protocol;
use shoal_gossip::version::NodeId;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Up,
    Down,
}

/// Why a verdict is what it is (which step of the rule decided).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum Basis {
    Checkers { up: usize, down: usize },
    FormerCheckers { up: usize, down: usize },
    Previous,
    NoReports,
}

/// Steps 1-3 of the rule for one backend. `reports` are opinions from live members only.
pub fn verdict(
    reports: &[(NodeId, CheckState)],
    assigned: &[NodeId],
    previous: Option<Verdict>,
) -> (Verdict, Basis) {
    let tally = |from_assigned: bool| {
        let mut up = 0;
        let mut down = 0;
        for (node, state) in reports {
            if assigned.contains(node) != from_assigned {
                continue;
            }
            match state {
                CheckState::Up => up += 1,
                CheckState::Down => down += 1,
                CheckState::Unknown => {}
            }
        }
        (up, down)
    };
    let majority = |up: usize, down: usize| {
        if down > up {
            Verdict::Down
        } else {
            Verdict::Up
        }
    };
    let (up, down) = tally(true);
    if up + down > 0 {
        return (majority(up, down), Basis::Checkers { up, down });
    }
    let (up, down) = tally(false);
    if up + down > 0 {
        return (majority(up, down), Basis::FormerCheckers { up, down });
    }
    match previous {
        Some(v) => (v, Basis::Previous),
        None => (Verdict::Up, Basis::NoReports),
    }
}

/// One backend of a service, as the data plane addresses it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct BackendRef {
    pub service: String,
    pub address: IpAddr,
    pub port: u16,
}

/// Where a service listens, whatever its name: (VIP, port, protocol).
pub type ServiceAt = (IpAddr, u16, Protocol);

/// The verdicts of every checked backend. Backends not listed (unchecked services, unknown
/// backends) are up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdicts {
    down: BTreeSet<BackendRef>,
    /// The same backends by where their service listens (rule step 3, a renamed service).
    down_at: BTreeSet<(ServiceAt, IpAddr, u16)>,
}

impl Verdicts {
    pub fn from_down(down: impl IntoIterator<Item = BackendRef>) -> Self {
        Verdicts {
            down: down.into_iter().collect(),
            down_at: BTreeSet::new(),
        }
    }

    pub fn is_down(&self, service: &str, address: IpAddr, port: u16) -> bool {
        // BTreeSet lookups need an owned key, so none is built in the usual case, nothing down:
        // the table's builder asks once per backend (9,000 allocations a pass at 9,000).
        !self.down.is_empty()
            && self.down.contains(&BackendRef {
                service: service.to_string(),
                address,
                port,
            })
    }

    /// [`Self::is_down`] by name, or by where `service` listens: a service renamed in the
    /// new table keeps its dead backends down from its first apply, before the runner has
    /// judged it under its new name (the dataplane put them back at full weight for up to
    /// 50 ms per rename, and an L2 VIP with no healthy backend was announced again: a probe).
    pub fn is_down_in(&self, service: &VirtualService, address: IpAddr, port: u16) -> bool {
        self.is_down(&service.name, address, port)
            || self.was_down_at((service.vip, service.port, service.protocol), address, port)
    }

    /// Whether the backend at `address:port` of the service listening `at` is down, whatever
    /// that service's name.
    pub fn was_down_at(&self, at: ServiceAt, address: IpAddr, port: u16) -> bool {
        self.down_at.contains(&(at, address, port))
    }

    pub fn down(&self) -> impl Iterator<Item = &BackendRef> {
        self.down.iter()
    }

    /// The verdict on `b` of its service at `at`: down under its name, or under any name the
    /// service at `at` had.
    fn get(&self, b: &BackendRef, at: ServiceAt) -> Verdict {
        if self.down.contains(b) || self.down_at.contains(&(at, b.address, b.port)) {
            Verdict::Down
        } else {
            Verdict::Up
        }
    }
}

/// Gossiped opinions indexed by backend: who said what about it.
pub type Opinions = BTreeMap<BackendRef, Vec<(NodeId, Observation)>>;

/// Indexes decoded values `(node, service, observations)`, keeping only live nodes.
pub fn index_opinions<'a>(
    live: &[NodeId],
    values: impl IntoIterator<Item = (NodeId, &'a str, Vec<Observation>)>,
) -> Opinions {
    let mut index = Opinions::new();
    for (node, service, observations) in values {
        if !live.contains(&node) {
            continue;
        }
        for o in observations {
            let key = BackendRef {
                service: service.to_string(),
                address: o.address,
                port: o.port,
            };
            index.entry(key).or_default().push((node.clone(), o));
        }
    }
    for list in index.values_mut() {
        // A backend moving between two chunks of a checker's opinions can be seen in both for
        // a moment: one opinion per checker, its latest.
        list.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then(b.1.last_probe_ms.cmp(&a.1.last_probe_ms))
        });
        list.dedup_by(|later, kept| later.0 == kept.0);
    }
    index
}

/// The verdict on one backend with everything the report shows about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendVerdict {
    pub backend: BackendRef,
    /// Where the backend's service listens.
    pub at: ServiceAt,
    pub verdict: Verdict,
    pub basis: Basis,
    pub checkers: Vec<NodeId>,
    /// Opinions of live members about this backend, assigned or not, sorted by node.
    pub opinions: Vec<(NodeId, Observation)>,
}

/// Judges every backend of one service (whether it has a health check or not), with the
/// checkers `assignment` gives in the live set it follows. `previous` is this node's last
/// answer, used only when nobody has an opinion (step 3). A service's verdicts depend only on
/// the live set, the opinions about its own backends and the previous verdicts, so a runner
/// judges again only the services whose opinions moved (`judged.rs`).
pub fn evaluate_service(
    service: &VirtualService,
    assignment: &mut Assignment,
    opinions: &Opinions,
    previous: &Verdicts,
) -> Vec<BackendVerdict> {
    let at = (service.vip, service.port, service.protocol);
    let mut out = Vec::with_capacity(service.backends.len());
    for b in &service.backends {
        let backend = BackendRef {
            service: service.name.clone(),
            address: b.address,
            port: b.port,
        };
        let assigned = assignment.checkers(&backend).to_vec();
        let live = assignment.live();
        let said: Vec<(NodeId, Observation)> = opinions
            .get(&backend)
            .map(|l| {
                l.iter()
                    .filter(|(n, _)| live.contains(n))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let states: Vec<(NodeId, CheckState)> =
            said.iter().map(|(n, o)| (n.clone(), o.state)).collect();
        let had_verdict = previous.get(&backend, at);
        // `previous` has no "never judged" marker: an absent backend is up, which is also
        // what step 3 answers for a backend never judged.
        let (verdict, basis) = verdict(&states, &assigned, Some(had_verdict));
        let basis = match basis {
            Basis::Previous if had_verdict == Verdict::Up => Basis::NoReports,
            other => other,
        };
        out.push(BackendVerdict {
            backend,
            at,
            verdict,
            basis,
            checkers: assigned,
            opinions: said,
        });
    }
    out
}

/// The down set of an evaluation.
pub fn verdicts_of<'a>(evaluated: impl IntoIterator<Item = &'a BackendVerdict>) -> Verdicts {
    let mut verdicts = Verdicts::default();
    for v in evaluated {
        if v.verdict == Verdict::Down {
            verdicts.down.insert(v.backend.clone());
            verdicts
                .down_at
                .insert((v.at, v.backend.address, v.backend.port));
        }
    }
    verdicts
}

/// A service and opinions for the tests of the pure health modules.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::health::result::ProbeResult;
    use crate::table::{Backend, HealthCheck, Probe, RuleTable};
    use shoal_dataplane::model::{Forwarding, SchedFlags, Tunnel};

    /// "web" on 203.0.113.1:80, TCP-checked, with backends 198.18.0.1.. on port 8080.
    pub(crate) fn service(backends: usize) -> VirtualService {
        VirtualService {
            name: "web".into(),
            vip: "203.0.113.1".parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
            scheduler: "rr".into(),
            flags: SchedFlags::default(),
            forwarding: Forwarding::Tunnel(Tunnel::Ipip),
            backends: (0..backends)
                .map(|i| Backend {
                    address: format!("198.18.0.{}", i + 1).parse().unwrap(),
                    port: 8080,
                    weight: 1,
                })
                .collect(),
            health: Some(HealthCheck {
                probe: Probe::Tcp,
                interval_ms: 1000,
                timeout_ms: 500,
                rise: 2,
                fall: 2,
                port: None,
            }),
            source_ranges: vec![],
        }
    }

    /// The rule over a whole table: [`evaluate_service`] for every service with a health check
    /// (the runner judges service by service; the tests state the rule over tables).
    pub(crate) fn evaluate(
        table: &RuleTable,
        assignment: &mut Assignment,
        opinions: &Opinions,
        previous: &Verdicts,
    ) -> Vec<BackendVerdict> {
        table
            .services
            .iter()
            .filter(|s| s.health.is_some())
            .flat_map(|s| evaluate_service(s, assignment, opinions, previous))
            .collect()
    }

    /// A checker's observation of `addr`:8080 in `state`.
    pub(crate) fn obs(addr: IpAddr, state: CheckState) -> Observation {
        Observation {
            address: addr,
            port: 8080,
            state,
            last_result: ProbeResult::Ok,
            last_probe_ms: 1,
            since_ms: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{evaluate, obs};
    use super::*;
    use crate::health::assign::{backend_key, checkers};
    use crate::health::wire;
    use crate::table::RuleTable;
    use proptest::prelude::*;

    fn n(i: usize) -> NodeId {
        NodeId::new(format!("lb-{i}"))
    }

    #[test]
    fn strict_majority_of_assigned_decides() {
        let assigned = [n(0), n(1), n(2)];
        let r = |s: [CheckState; 3]| -> Vec<(NodeId, CheckState)> {
            (0..3).map(|i| (n(i), s[i])).collect()
        };
        use CheckState::*;
        assert_eq!(
            verdict(&r([Down, Down, Up]), &assigned, None).0,
            Verdict::Down
        );
        assert_eq!(verdict(&r([Down, Up, Up]), &assigned, None).0, Verdict::Up);
        // Ties are up; unknown opinions do not count.
        assert_eq!(
            verdict(&r([Down, Up, Unknown]), &assigned, None).0,
            Verdict::Up
        );
        assert_eq!(
            verdict(&r([Down, Unknown, Unknown]), &assigned, None),
            (Verdict::Down, Basis::Checkers { up: 0, down: 1 })
        );
    }

    #[test]
    fn former_checkers_then_previous_then_up() {
        use CheckState::*;
        let assigned = [n(0), n(1)];
        let former = vec![(n(0), Unknown), (n(5), Down)];
        assert_eq!(
            verdict(&former, &assigned, None),
            (Verdict::Down, Basis::FormerCheckers { up: 0, down: 1 })
        );
        let none = vec![(n(0), Unknown)];
        assert_eq!(
            verdict(&none, &assigned, Some(Verdict::Down)),
            (Verdict::Down, Basis::Previous)
        );
        assert_eq!(
            verdict(&none, &assigned, None),
            (Verdict::Up, Basis::NoReports)
        );
        // A former checker's stale "up" never outvotes an assigned checker's "down".
        let mixed = vec![(n(1), Down), (n(5), Up), (n(6), Up)];
        assert_eq!(verdict(&mixed, &assigned, None).0, Verdict::Down);
    }

    fn table(backends: usize) -> RuleTable {
        RuleTable {
            services: vec![fixtures::service(backends)],
        }
    }

    #[test]
    fn evaluate_uses_assigned_checkers_and_skips_dead_reporters() {
        let t = table(1);
        let live: Vec<NodeId> = (0..4).map(n).collect();
        let addr = t.services[0].backends[0].address;
        let assigned = checkers(&backend_key("web", addr, 8080), &live, 2);
        let dead = n(9);
        let values = vec![
            (
                assigned[0].clone(),
                "web",
                vec![obs(addr, CheckState::Down)],
            ),
            (
                assigned[1].clone(),
                "web",
                vec![obs(addr, CheckState::Down)],
            ),
            (dead, "web", vec![obs(addr, CheckState::Up)]),
        ];
        let index = index_opinions(&live, values);
        let out = evaluate(
            &t,
            &mut Assignment::new(&live, 2),
            &index,
            &Verdicts::default(),
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].verdict, Verdict::Down);
        assert_eq!(out[0].opinions.len(), 2);
        assert!(verdicts_of(&out).is_down("web", addr, 8080));
        assert!(!verdicts_of(&out).is_down("web", addr, 8081));
    }

    /// A backend seen in two chunks of one checker's opinions (it moved between them, and the
    /// two values arrived at different times) counts once, with the later probe.
    #[test]
    fn one_opinion_per_checker_when_a_backend_is_in_two_chunks() {
        let live: Vec<NodeId> = (0..2).map(n).collect();
        let addr: IpAddr = "198.18.0.1".parse().unwrap();
        let older = obs(addr, CheckState::Up);
        let newer = Observation {
            last_probe_ms: 5,
            ..obs(addr, CheckState::Down)
        };
        for values in [
            vec![
                (n(0), "web", vec![older.clone()]),
                (n(0), "web", vec![newer.clone()]),
            ],
            vec![
                (n(0), "web", vec![newer.clone()]),
                (n(0), "web", vec![older.clone()]),
            ],
        ] {
            let index = index_opinions(&live, values);
            let said = &index[&BackendRef {
                service: "web".into(),
                address: addr,
                port: 8080,
            }];
            assert_eq!(said, &vec![(n(0), newer.clone())]);
        }
    }

    /// The audit of 2026-12-06: renaming a health-checked service (same VIP, port, protocol)
    /// put a backend found down back into service until its new checkers had failed it `fall`
    /// times.
    #[test]
    fn a_renamed_service_keeps_its_down_backends_until_checkers_report() {
        let t = table(1);
        let live: Vec<NodeId> = (0..3).map(n).collect();
        let addr = t.services[0].backends[0].address;
        let assigned = checkers(&backend_key("web", addr, 8080), &live, 2);
        let values = assigned
            .iter()
            .map(|c| (c.clone(), "web", vec![obs(addr, CheckState::Down)]))
            .collect::<Vec<_>>();
        let index = index_opinions(&live, values);
        // One assignment for every pass, as the runner keeps it: a new name is a new backend.
        let mut assignment = Assignment::new(&live, 2);
        let before = verdicts_of(&evaluate(&t, &mut assignment, &index, &Verdicts::default()));
        assert!(before.is_down("web", addr, 8080));
        let mut renamed = t.clone();
        renamed.services[0].name = "Web".into();
        // The new table is applied with the verdicts judged under the old one (the runner has
        // not judged it yet): the backend stays down there too, in the dataplane's weights and
        // the announcements (a probe: back at full weight for up to 50 ms per rename).
        assert!(before.is_down_in(&renamed.services[0], addr, 8080));
        let weights = crate::desired::desired_state(&renamed, &before);
        assert_eq!(weights.services[0].destinations[0].weight, 0);
        // Nobody has an opinion under the new name yet (the old checkers' keys name "web").
        let after = evaluate(&renamed, &mut assignment, &index, &before);
        assert_eq!(
            (after[0].verdict, &after[0].basis),
            (Verdict::Down, &Basis::Previous)
        );
        let next = verdicts_of(&after);
        assert!(next.is_down("Web", addr, 8080));
        // It stays down on the passes after, whose previous verdicts name it "Web" already.
        let again = evaluate(&renamed, &mut assignment, &Opinions::new(), &next);
        assert_eq!(again[0].verdict, Verdict::Down);
        // Checkers that find it up under the new name bring it back.
        let up: Vec<_> = checkers(&backend_key("Web", addr, 8080), &live, 2)
            .into_iter()
            .map(|c| (c, "Web", vec![obs(addr, CheckState::Up)]))
            .collect();
        let back = evaluate(&renamed, &mut assignment, &index_opinions(&live, up), &next);
        assert_eq!(back[0].verdict, Verdict::Up);
        // A service listening elsewhere with the same backend is another service.
        let mut elsewhere = renamed.clone();
        elsewhere.services[0].port = 81;
        let other = evaluate(&elsewhere, &mut assignment, &Opinions::new(), &before);
        assert_eq!(other[0].verdict, Verdict::Up);
        assert!(!before.is_down_in(&elsewhere.services[0], addr, 8080));
    }

    #[test]
    fn services_without_health_are_never_judged() {
        let mut t = table(2);
        t.services[0].health = None;
        let out = evaluate(
            &t,
            &mut Assignment::new(&[n(0)], 2),
            &Opinions::new(),
            &Verdicts::default(),
        );
        assert!(out.is_empty());
    }

    fn arb_state() -> impl Strategy<Value = CheckState> {
        prop_oneof![
            Just(CheckState::Up),
            Just(CheckState::Down),
            Just(CheckState::Unknown)
        ]
    }

    proptest! {
        /// Two nodes with the same view (same live set, same gossiped values, in any order)
        /// reach the same verdicts, whatever their own previous verdicts were, as long as some
        /// live member has an opinion.
        #[test]
        fn same_view_same_verdicts(
            nodes in 1usize..12,
            k in 1usize..4,
            states in prop::collection::vec(prop::collection::vec(arb_state(), 6), 12),
            prev_a in prop::collection::vec(any::<bool>(), 6),
            rotate in 0usize..12,
        ) {
            let t = table(6);
            let live: Vec<NodeId> = (0..nodes).map(n).collect();
            let values: Vec<(NodeId, String)> = (0..nodes).map(|i| {
                let o: Vec<Observation> = t.services[0].backends.iter().enumerate()
                    .map(|(b, be)| obs(be.address, states[i][b])).collect();
                (n(i), wire::encode(&o))
            }).collect();
            let decode_all = |vals: &[(NodeId, String)]| -> Opinions {
                index_opinions(&live, vals.iter().map(|(node, v)| (node.clone(), "web", wire::decode(v).unwrap())))
            };
            let mut rotated = values.clone();
            rotated.rotate_left(rotate % nodes);
            let mut live_b = live.clone();
            live_b.reverse();
            let prev = Verdicts::from_down(t.services[0].backends.iter().zip(&prev_a)
                .filter(|(_, d)| **d)
                .map(|(b, _)| BackendRef { service: "web".into(), address: b.address, port: b.port }));
            let a = evaluate(&t, &mut Assignment::new(&live, k), &decode_all(&values), &prev);
            let b = evaluate(&t, &mut Assignment::new(&live_b, k), &decode_all(&rotated), &Verdicts::default());
            for (x, y) in a.iter().zip(&b) {
                let anyone_knows = x.opinions.iter().any(|(_, o)| o.state != CheckState::Unknown);
                if anyone_knows {
                    prop_assert_eq!(x.verdict, y.verdict);
                    prop_assert_eq!(&x.checkers, &y.checkers);
                }
            }
        }

        /// A service's verdicts depend on the opinions about its own backends only (the runner
        /// judges again only the services whose values moved): opinions about another
        /// service, whatever they say, change nothing.
        #[test]
        fn a_service_is_judged_by_its_own_opinions_only(
            nodes in 1usize..6,
            k in 1usize..4,
            mine in prop::collection::vec(arb_state(), 6),
            theirs in prop::collection::vec(arb_state(), 6),
            others in prop::collection::vec(arb_state(), 6),
            previous_down in prop::collection::vec(any::<bool>(), 6),
        ) {
            let mut t = table(3);
            let mut db = t.services[0].clone();
            db.name = "db".into();
            db.port = 5432;
            t.services.push(db);
            let live: Vec<NodeId> = (0..nodes).map(n).collect();
            let says = |service: &'static str, states: &[CheckState]| -> Vec<(NodeId, &str, Vec<Observation>)> {
                let backends = &t.services[0].backends;
                (0..nodes)
                    .map(|i| (n(i), service, vec![obs(backends[i % 3].address, states[i])]))
                    .collect()
            };
            let with = index_opinions(&live, [says("web", &mine), says("db", &theirs)].concat());
            let without = index_opinions(&live, [says("web", &mine), says("db", &others)].concat());
            let previous = Verdicts::from_down(t.services.iter().flat_map(|s| {
                s.backends.iter().map(|b| BackendRef { service: s.name.clone(), address: b.address, port: b.port })
            }).zip(&previous_down).filter(|(_, d)| **d).map(|(b, _)| b));
            let mut assignment = Assignment::new(&live, k);
            let web = &t.services[0];
            prop_assert_eq!(
                evaluate_service(web, &mut assignment, &with, &previous),
                evaluate_service(web, &mut assignment, &without, &previous)
            );
        }

        /// The verdict moves only when some opinion moves: feeding one checker a flapping
        /// outcome stream through its hysteresis, the verdict changes no more often than that
        /// checker's state does, which the hysteresis bounds by rise/fall.
        #[test]
        fn flapping_report_bounded_by_hysteresis(
            outcomes in prop::collection::vec(any::<bool>(), 1..150),
            rise in 1u32..4, fall in 1u32..4,
            other in arb_state(),
        ) {
            use crate::health::hysteresis::Hysteresis;
            let assigned = [n(0), n(1)];
            let mut h = Hysteresis::new(0);
            let mut last = verdict(&[(n(0), h.state()), (n(1), other)], &assigned, None).0;
            let mut state_changes = 0;
            let mut verdict_changes = 0;
            let mut run_len = 0usize;
            let mut last_ok = None;
            for (i, &ok) in outcomes.iter().enumerate() {
                run_len = if last_ok == Some(ok) { run_len + 1 } else { 1 };
                last_ok = Some(ok);
                if h.observe(ok, rise, fall, i as u64) { state_changes += 1; }
                let now = verdict(&[(n(0), h.state()), (n(1), other)], &assigned, Some(last)).0;
                if now != last {
                    verdict_changes += 1;
                    let need = if ok { rise } else { fall } as usize;
                    prop_assert!(run_len >= need, "verdict flipped after {} equal outcomes, need {}", run_len, need);
                }
                last = now;
            }
            prop_assert!(verdict_changes <= state_changes);
        }
    }
}
