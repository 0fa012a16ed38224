//! Property tests of the planner against the in-memory twin: its ops turn any actual state into
//! the desired one, leave unchanged and foreign entries alone, and a second pass is empty.

mod common;

use common::{case, shoal_vip};
use proptest::prelude::*;
use shoal_dataplane::model::*;
use shoal_dataplane::plan::{is_managed, SHOAL_FWMARK_BASE};
use shoal_dataplane::testing::{backend, tcp_service};
use shoal_dataplane::{plan, Actual, Dataplane, Desired, MemoryDataplane, Op, Reconciler};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A kernel read in any order, with a destination listed twice: the view built by moving
    /// the read equals the one built by copying it.
    #[test]
    fn a_read_moved_into_a_view_equals_its_copied_view(
        raw in proptest::collection::vec(
            (common::key(false), proptest::collection::vec(common::destination(), 0..8)),
            0..6,
        ),
        vips in proptest::collection::btree_set(0u8..4, 0..3),
    ) {
        let services = raw
            .into_iter()
            .map(|(key, destinations)| ObservedService {
                destinations: destinations
                    .iter()
                    .map(|d| ObservedDestination {
                        destination: d.clone(),
                        active_connections: 1,
                        inactive_connections: 2,
                        stats: Stats::default(),
                    })
                    .collect(),
                service: Service {
                    key,
                    scheduler: "mh".into(),
                    flags: SchedFlags::default(),
                    persistence_timeout_s: 0,
                    destinations,
                },
                stats: Stats::default(),
            })
            .collect();
        let actual = Actual { services, vips: vips.into_iter().map(shoal_vip).collect() };
        let copied = actual.view();
        prop_assert_eq!(actual.into_view(), copied);
    }

    /// The drift check's read straight into a view says what a whole read says.
    #[test]
    fn read_view_equals_the_view_of_a_read(c in case()) {
        let mut dp = c.start.clone();
        let ops = plan(&c.desired, &dp.read().unwrap());
        for op in &ops {
            dp.apply(op).unwrap();
        }
        prop_assert_eq!(dp.read_view().unwrap(), dp.read().unwrap().into_view());
        prop_assert_eq!(c.start.clone().read_view().unwrap(), c.start.clone().read().unwrap().view());
    }

    #[test]
    fn applying_the_plan_yields_desired(c in case()) {
        let mut dp = c.start.clone();
        let actual = dp.read().unwrap();
        let ops = plan(&c.desired, &actual);
        for op in &ops {
            dp.apply(op).unwrap_or_else(|e| panic!("{op}: {e}"));
        }
        let after = dp.read().unwrap();
        let want_vips = c.desired.vips();
        prop_assert_eq!(&after.vips, &want_vips);
        let managed_before: BTreeSet<IpAddr> = actual.vips.clone();
        let mut got = BTreeMap::new();
        let before = actual.services_by_key();
        let after_by_key = after.services_by_key();
        for (k, s) in after_by_key.clone() {
            if is_managed(&k, &want_vips, &managed_before) || c.desired.normalized().contains_key(&k) {
                got.insert(k, s);
            } else {
                // Foreign: exactly as it was.
                prop_assert_eq!(Some(&s), c.foreign.get(&k).or(before.get(&k)));
            }
        }
        prop_assert_eq!(got, c.desired.normalized());
        // Every foreign service survives untouched.
        for (k, s) in &c.foreign {
            prop_assert_eq!(after_by_key.get(k), Some(s));
        }
        // Converged: a second pass has nothing to do.
        prop_assert_eq!(plan(&c.desired, &after), Vec::<Op>::new());
    }

    #[test]
    fn unchanged_entries_get_no_op(c in case()) {
        let mut dp = c.start.clone();
        let actual = dp.read().unwrap();
        let have = actual.services_by_key();
        let want = c.desired.normalized();
        let ops = plan(&c.desired, &actual);
        for op in &ops {
            match op {
                Op::AddService(s) | Op::UpdateService(s) => {
                    if let Some(h) = have.get(&s.key) {
                        prop_assert!(h.scheduler != s.scheduler || h.flags != s.flags
                            || h.persistence_timeout_s != s.persistence_timeout_s, "needless {}", op);
                    }
                }
                Op::AddDest(k, d) | Op::UpdateDest(k, d) => {
                    let same = have.get(k).map(|h| h.destinations.contains(d)).unwrap_or(false);
                    prop_assert!(!same, "needless {}", op);
                }
                Op::DelDest(k, a, p) => {
                    let wanted = want.get(k).map(|s| s.destinations.iter().any(|d| d.addr == *a && d.port == *p)).unwrap_or(false);
                    prop_assert!(!wanted, "deletes a wanted destination: {}", op);
                }
                Op::DelService(k) => {
                    prop_assert!(!want.contains_key(k));
                    prop_assert!(!c.foreign.contains_key(k), "touches foreign {}", op);
                }
                Op::Flush => {
                    prop_assert!(want.is_empty(), "flush with a desired table");
                    prop_assert!(c.foreign.is_empty(), "flush over foreign services");
                    prop_assert!(have.len() >= 2);
                }
                Op::AddVip(v) => prop_assert!(!actual.vips.contains(v)),
                Op::DelVip(v) => prop_assert!(!c.desired.vips().contains(v)),
            }
        }
    }

    #[test]
    fn draining_reaches_desired_after_the_grace_time(c in case()) {
        let mut dp = c.start.clone();
        let drain = Duration::from_secs(10);
        let mut rec = Reconciler::new(drain);
        let t0 = Instant::now();
        for op in rec.step(&c.desired, &dp.read().unwrap(), t0) {
            dp.apply(&op).unwrap_or_else(|e| panic!("{op}: {e}"));
        }
        // Before the deadline nothing wanted is missing, and draining dests sit at weight 0.
        let mid = dp.read().unwrap();
        for (k, s) in c.desired.normalized() {
            let got = &mid.services_by_key()[&k];
            for d in &s.destinations {
                prop_assert!(got.destinations.contains(d));
            }
            for d in &got.destinations {
                if !s.destinations.iter().any(|w| w.addr == d.addr && w.port == d.port) {
                    prop_assert_eq!(d.weight, 0);
                }
            }
        }
        // A removed managed service is still there with every destination at weight 0, and
        // its VIP with it; foreign services are untouched.
        let start = c.start.clone().read().unwrap();
        let wanted = c.desired.normalized();
        let want_vips = c.desired.vips();
        let after = mid.services_by_key();
        for (k, s) in start.services_by_key() {
            if wanted.contains_key(&k) {
                continue;
            }
            if !is_managed(&k, &want_vips, &start.vips) {
                prop_assert_eq!(after.get(&k), Some(&s));
                continue;
            }
            let kept = after.get(&k);
            prop_assert!(kept.is_some(), "{} deleted before its drain", k);
            let kept = kept.unwrap();
            prop_assert_eq!(kept.destinations.len(), s.destinations.len());
            prop_assert!(kept.destinations.iter().all(|d| d.weight == 0));
            if let Some(v) = k.vip() {
                prop_assert!(mid.vips.contains(&v), "VIP {} of draining {} removed", v, k);
            }
        }
        // A second step before the deadline sends nothing.
        prop_assert_eq!(rec.step(&c.desired, &mid, t0 + Duration::from_secs(1)), vec![]);
        if let Some(deadline) = rec.next_deadline() {
            prop_assert_eq!(deadline, t0 + drain);
        }
        for op in rec.step(&c.desired, &mid, t0 + drain) {
            dp.apply(&op).unwrap_or_else(|e| panic!("{op}: {e}"));
        }
        let end = dp.read().unwrap();
        prop_assert_eq!(plan(&c.desired, &end), vec![]);
        // The deleted destinations are gone from the kernel, so the next step forgets them.
        let _ = rec.step(&c.desired, &end, t0 + drain);
        prop_assert_eq!(rec.next_deadline(), None::<Instant>);
    }
}

#[test]
fn one_destination_change_is_one_op() {
    let mut svc = tcp_service(shoal_vip(0), 80, (0..10).map(|i| backend(10 + i)));
    svc.flags = SchedFlags {
        port: true,
        fallback: false,
    };
    let mut dp = MemoryDataplane::new();
    let mut desired = Desired {
        services: vec![svc.clone()],
    };
    for op in plan(&desired, &dp.read().unwrap()) {
        dp.apply(&op).unwrap();
    }
    svc.destinations[3].weight = 5;
    desired.services = vec![svc.clone()];
    let ops = plan(&desired, &dp.read().unwrap());
    assert_eq!(
        ops,
        vec![Op::UpdateDest(svc.key.clone(), svc.destinations[3].clone())]
    );
}

#[test]
fn fwmark_outside_the_block_is_managed_only_while_desired() {
    let s = Service {
        key: ServiceKey::Fwmark {
            mark: 7,
            family: AddressFamily::Inet,
        },
        scheduler: "rr".into(),
        flags: SchedFlags::default(),
        persistence_timeout_s: 0,
        destinations: vec![],
    };
    let mut dp = MemoryDataplane::with_foreign(vec![s.clone()]);
    // Not desired and outside Shoal's block: left alone.
    assert_eq!(plan(&Desired::default(), &dp.read().unwrap()), vec![]);
    let mut changed = s.clone();
    changed.scheduler = "wrr".into();
    let ops = plan(
        &Desired {
            services: vec![changed.clone()],
        },
        &dp.read().unwrap(),
    );
    assert_eq!(ops, vec![Op::UpdateService(changed)]);
    dp.apply(&ops[0]).unwrap();
}

#[test]
fn memory_twin_refuses_like_the_kernel() {
    let mut dp = MemoryDataplane::new();
    let key = ServiceKey::Fwmark {
        mark: SHOAL_FWMARK_BASE,
        family: AddressFamily::Inet,
    };
    let err = dp.apply(&Op::DelService(key.clone())).unwrap_err();
    assert_eq!(err.errno(), Some(libc_esrch()));
    assert!(err.to_string().contains("fwmark"), "{err}");
    dp.fail_next(17);
    let err = dp.apply(&Op::AddVip(shoal_vip(0))).unwrap_err();
    assert!(err.to_string().contains("203.0.113.1"), "{err}");
    assert!(dp.apply(&Op::AddVip(shoal_vip(0))).is_ok());
}

fn libc_esrch() -> i32 {
    3
}
