//! Property tests of the incremental reconcile against the in-memory twin: the view kept
//! between full reads always equals the kernel, no desired update is lost, drift made behind
//! Shoal's back is repaired by the drift check (and not before), an error makes the next pass
//! read everything, and a flush never removes a foreign service unless the table is declared
//! Shoal's alone (`TableOwnership::Exclusive`).

mod common;

use common::{case, foreign_vip, service, shoal_vip};
use proptest::prelude::*;
use shoal_dataplane::model::*;
use shoal_dataplane::plan::normalize;
use shoal_dataplane::{
    plan, reconcile, reconcile_until, Dataplane, Desired, MemoryDataplane, Op, Reconciler,
    TableOwnership, View, MAX_DRIFT_GIVE_WAYS,
};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const DRIFT_CHECK: Duration = Duration::from_secs(60);

fn table() -> impl Strategy<Value = Desired> {
    proptest::collection::vec(service(false), 0..5).prop_map(|v| Desired {
        services: common::by_key(v).into_values().collect(),
    })
}

/// What the twin holds, as a view, read without counting as a full read.
fn kernel(dp: &MemoryDataplane) -> View {
    View {
        services: dp
            .services()
            .into_iter()
            .map(|s| (s.key.clone(), normalize(&s)))
            .collect(),
        vips: dp.vips(),
    }
}

/// Every desired service is in the kernel exactly, the VIPs are the desired ones, and every
/// foreign service is as it was.
fn holds(
    dp: &MemoryDataplane,
    desired: &Desired,
    foreign: &BTreeMap<ServiceKey, Service>,
) -> Result<(), TestCaseError> {
    let k = kernel(dp);
    for (key, s) in desired.normalized() {
        prop_assert_eq!(
            k.services.get(&key),
            Some(&s),
            "desired {} not in place",
            key
        );
    }
    for (key, s) in foreign {
        prop_assert_eq!(k.services.get(key), Some(s), "foreign {} touched", key);
    }
    prop_assert_eq!(k.vips, desired.vips());
    Ok(())
}

/// Drift an operator could make with ipvsadm or ip.
#[derive(Debug, Clone)]
enum Drift {
    RemoveService(usize),
    AddManagedService(Service),
    ChangeWeight(usize, u32),
    RemoveVip(usize),
}

fn drift() -> impl Strategy<Value = Drift> {
    prop_oneof![
        (0usize..8).prop_map(Drift::RemoveService),
        service(false).prop_map(Drift::AddManagedService),
        (0usize..8, 5u32..9).prop_map(|(i, w)| Drift::ChangeWeight(i, w)),
        (0usize..3).prop_map(Drift::RemoveVip),
    ]
}

/// Make `d` in the twin to Shoal's entries (foreign ones are not Shoal's to repair); false
/// when it changed nothing (nothing to pick, or already so).
fn make_drift(dp: &MemoryDataplane, d: &Drift, foreign: &BTreeMap<ServiceKey, Service>) -> bool {
    let services: Vec<Service> = dp
        .services()
        .into_iter()
        .filter(|s| !foreign.contains_key(&s.key))
        .collect();
    match d {
        Drift::RemoveService(i) => match services.get(i % services.len().max(1)) {
            Some(s) => dp.remove_service(&s.key),
            None => false,
        },
        Drift::AddManagedService(s) => {
            if dp.services().iter().any(|h| h.key == s.key) {
                return false;
            }
            dp.insert_service(s.clone());
            true
        }
        Drift::ChangeWeight(i, w) => {
            let Some(s) = services.get(i % services.len().max(1)) else {
                return false;
            };
            let mut s = s.clone();
            let Some(d) = s.destinations.first_mut() else {
                return false;
            };
            d.weight = *w;
            dp.insert_service(s);
            true
        }
        Drift::RemoveVip(i) => {
            let vips: Vec<_> = dp.vips().into_iter().collect();
            match vips.get(i % vips.len().max(1)) {
                Some(v) => {
                    dp.set_vip(*v, false);
                    true
                }
                None => false,
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A run of desired tables, each applied by one pass planned on the kept view: after every
    /// pass the view is exactly the kernel, the kernel holds the table, and only the first pass
    /// read the kernel whole.
    #[test]
    fn kept_view_follows_the_kernel_and_no_update_is_lost(
        c in case(),
        tables in proptest::collection::vec(table(), 1..6),
    ) {
        let mut dp = c.start.clone();
        let mut rec = Reconciler::new(Duration::ZERO).with_drift_check(DRIFT_CHECK);
        let t0 = Instant::now();
        for (i, desired) in tables.iter().enumerate() {
            let r = reconcile(&mut dp, &mut rec, desired, t0 + Duration::from_secs(i as u64))
                .unwrap_or_else(|e| panic!("pass {i}: {e}"));
            prop_assert_eq!(r.full_read, i == 0);
            prop_assert_eq!(rec.view(), Some(&kernel(&dp)), "view differs from the kernel after pass {}", i);
            holds(&dp, desired, &c.foreign)?;
        }
        prop_assert_eq!(dp.reads(), 1);
        // Converged: a full read finds nothing to do.
        let last = tables.last().expect("at least one table");
        prop_assert_eq!(plan(last, &dp.read().unwrap()), Vec::<Op>::new());
    }

    /// Drift made behind Shoal's back: a pass before the drift check trusts the view and sends
    /// nothing (or fails, which drops the view); the pass at the drift check reads everything
    /// and repairs it.
    #[test]
    fn drift_is_repaired_by_the_drift_check(
        c in case(),
        desired in table(),
        drifts in proptest::collection::vec(drift(), 1..4),
    ) {
        let mut dp = c.start.clone();
        let mut rec = Reconciler::new(Duration::ZERO).with_drift_check(DRIFT_CHECK);
        let t0 = Instant::now();
        reconcile(&mut dp, &mut rec, &desired, t0).unwrap();
        let mut changed = false;
        for d in &drifts {
            changed |= make_drift(&dp, d, &c.foreign);
        }
        let reads = dp.reads();
        let early = reconcile(&mut dp, &mut rec, &desired, t0 + Duration::from_secs(1)).unwrap();
        prop_assert!(!early.full_read);
        prop_assert_eq!(early.ops, vec![], "the view was converged, so nothing to send");
        prop_assert_eq!(dp.reads(), reads);
        let check = reconcile(&mut dp, &mut rec, &desired, t0 + DRIFT_CHECK).unwrap();
        prop_assert!(check.full_read);
        if !changed {
            prop_assert_eq!(check.ops, vec![]);
        }
        holds(&dp, &desired, &c.foreign)?;
        prop_assert_eq!(plan(&desired, &dp.read().unwrap()), Vec::<Op>::new());
        prop_assert_eq!(rec.view(), Some(&kernel(&dp)));
    }

    /// Drift checks that give way to changes (`stop` turning true at a random question: before
    /// the read, so the change waits already, or during it): a pass that gave way touched
    /// neither kernel nor view; a pass that did not read planned on the kept view because its
    /// check gave way or was put off; every pass that did not give way leaves the table in
    /// place (unless drift it cannot see is in the way), a read leaves the view equal to the
    /// kernel, and a check put off again and again reads in the end.
    #[test]
    fn a_drift_check_that_gives_way_loses_no_update(
        c in case(),
        passes in proptest::collection::vec((table(), 0usize..4, proptest::option::of(drift())), 1..8),
    ) {
        let mut dp = c.start.clone();
        let mut rec = Reconciler::new(Duration::ZERO).with_drift_check(DRIFT_CHECK);
        let t0 = Instant::now();
        reconcile(&mut dp, &mut rec, &Desired::default(), t0).unwrap();
        let mut last = Desired::default();
        let mut gave_way_before = false;
        let mut last_read = t0;
        let mut drifted = false;
        for (i, (desired, stop_at, d)) in passes.iter().enumerate() {
            if let Some(d) = d {
                drifted |= make_drift(&dp, d, &c.foreign);
            }
            let (kernel_before, view_before) = (kernel(&dp), rec.view().cloned());
            // Every pass comes when the drift check is due.
            let now = last_read + DRIFT_CHECK + Duration::from_millis(i as u64);
            let asked = std::cell::Cell::new(0usize);
            let stop = || {
                let n = asked.get();
                asked.set(n + 1);
                n >= *stop_at
            };
            let r = match reconcile_until(&mut dp, &mut rec, desired, now, &stop) {
                Ok(r) => r,
                // Only a pass planned on the kept view can trip on drift (an address deleted
                // behind its back); the view goes, and the next pass reads everything.
                Err(e) => {
                    prop_assert!(drifted, "pass {}: {}", i, e);
                    prop_assert!(rec.view().is_none());
                    gave_way_before = false;
                    continue;
                }
            };
            if r.gave_way {
                prop_assert!(*stop_at > 0 && !gave_way_before, "pass {}", i);
                prop_assert!(r.ops.is_empty() && !r.full_read);
                prop_assert_eq!(kernel(&dp), kernel_before);
                prop_assert_eq!(rec.view().cloned(), view_before);
            } else {
                // A due check reads unless it gave way before or was put off (`stop` true
                // from the start); after one that gave way, a pass reads only when drift made
                // the check before a flush fail.
                prop_assert!(r.full_read || gave_way_before || *stop_at == 0, "pass {}", i);
                if gave_way_before {
                    prop_assert!(!r.full_read || drifted, "pass {}", i);
                }
                // Drift is repaired by a read; a pass on the kept view does not see it.
                if r.full_read {
                    last_read = now;
                    drifted = false;
                    prop_assert_eq!(rec.view(), Some(&kernel(&dp)), "pass {} read and repaired", i);
                }
                if !drifted {
                    holds(&dp, desired, &c.foreign)?;
                }
                last = desired.clone();
            }
            gave_way_before = r.gave_way;
        }
        // A check that keeps being asked to give way reads in the end, and converges (a pass
        // on the kept view may trip on drift: then the view is gone and the next reads).
        let late = last_read + 2 * DRIFT_CHECK;
        let mut read = false;
        for _ in 0..2 * MAX_DRIFT_GIVE_WAYS + 2 {
            if let Ok(r) = reconcile_until(&mut dp, &mut rec, &last, late, &|| true) {
                if r.full_read {
                    read = true;
                    break;
                }
            }
        }
        prop_assert!(read, "the check never read");
        holds(&dp, &last, &c.foreign)?;
        prop_assert_eq!(rec.view(), Some(&kernel(&dp)));
    }

    /// A refused op drops the view; the next pass reads the kernel and finishes the job.
    #[test]
    fn an_error_makes_the_next_pass_read_everything(
        c in case(),
        first in table(),
        second in table(),
    ) {
        let mut dp = c.start.clone();
        let mut rec = Reconciler::new(Duration::ZERO).with_drift_check(DRIFT_CHECK);
        let t0 = Instant::now();
        reconcile(&mut dp, &mut rec, &first, t0).unwrap();
        dp.fail_next(5);
        let t1 = t0 + Duration::from_secs(1);
        let failed = match reconcile(&mut dp, &mut rec, &second, t1) {
            Err(_) => {
                prop_assert!(rec.view().is_none());
                true
            }
            // Nothing to send, so nothing failed.
            Ok(r) => {
                prop_assert_eq!(r.ops, vec![]);
                false
            }
        };
        let again = reconcile(&mut dp, &mut rec, &second, t1).unwrap();
        prop_assert_eq!(again.full_read, failed);
        prop_assert_eq!(dp.reads(), 1 + u64::from(failed));
        holds(&dp, &second, &c.foreign)?;
        prop_assert_eq!(rec.view(), Some(&kernel(&dp)));
    }

    /// Removing everything: one flush when every service is Shoal's. In a shared table (the
    /// default) a foreign service that appeared after the last full read is seen before the
    /// flush and survives; only a table declared Shoal's alone is flushed without that list.
    #[test]
    fn a_flush_never_removes_a_foreign_service_unless_the_table_is_declared_shoals(
        desired in table(),
        late_foreign in proptest::option::of(service(true)),
        exclusive in any::<bool>(),
    ) {
        let mut dp = MemoryDataplane::new();
        let ownership = if exclusive { TableOwnership::Exclusive } else { TableOwnership::Shared };
        let mut rec = Reconciler::new(Duration::ZERO)
            .with_drift_check(DRIFT_CHECK)
            .with_ownership(ownership);
        let t0 = Instant::now();
        reconcile(&mut dp, &mut rec, &desired, t0).unwrap();
        if let Some(f) = &late_foreign {
            dp.insert_service(f.clone());
        }
        let r = reconcile(&mut dp, &mut rec, &Desired::default(), t0 + Duration::from_secs(1)).unwrap();
        let flushed = r.ops.contains(&Op::Flush);
        let n = desired.normalized().len();
        let listed = !exclusive && n >= 2;
        prop_assert_eq!(dp.lists(), u64::from(listed));
        prop_assert_eq!(flushed, (exclusive || late_foreign.is_none()) && n >= 2, "{:?}", r.ops);
        prop_assert_eq!(r.full_read, listed && late_foreign.is_some());
        let left: Vec<Service> = dp.services();
        let want: Vec<Service> = if flushed {
            Vec::new()
        } else {
            late_foreign.iter().cloned().collect()
        };
        prop_assert_eq!(left, want);
        prop_assert!(dp.vips().is_empty());
        // The view knows the late service only if this pass read the table.
        if late_foreign.is_none() || r.full_read || flushed {
            prop_assert_eq!(rec.view(), Some(&kernel(&dp)));
        }
    }
}

/// The shape of the goal: at many services, a one-destination change is one op and no read.
#[test]
fn a_one_destination_change_reads_nothing_back() {
    let table = |w: u32| Desired {
        services: (0..300u16)
            .map(|i| Service {
                key: ServiceKey::Addr {
                    addr: shoal_vip((i / 100) as u8),
                    port: 1000 + i % 100,
                    protocol: Protocol::Tcp,
                },
                scheduler: "mh".into(),
                flags: SchedFlags::default(),
                persistence_timeout_s: 0,
                destinations: (0..10u8)
                    .map(|d| Destination {
                        addr: std::net::IpAddr::from([198, 18, 0, 10 + d]),
                        port: 80,
                        forwarding: Forwarding::Tunnel(Tunnel::Ipip),
                        weight: if i == 150 && d == 5 { w } else { 1 },
                        upper_threshold: 0,
                        lower_threshold: 0,
                    })
                    .collect(),
            })
            .collect(),
    };
    let mut dp = MemoryDataplane::with_foreign(vec![Service {
        key: ServiceKey::Addr {
            addr: foreign_vip(0),
            port: 80,
            protocol: Protocol::Tcp,
        },
        scheduler: "rr".into(),
        flags: SchedFlags::default(),
        persistence_timeout_s: 0,
        destinations: vec![],
    }]);
    let mut rec = Reconciler::new(Duration::ZERO);
    let t0 = Instant::now();
    let load = reconcile(&mut dp, &mut rec, &table(1), t0).unwrap();
    assert!(load.full_read);
    assert_eq!(load.ops.len(), 3 + 300 + 3000);
    let change = reconcile(&mut dp, &mut rec, &table(2), t0).unwrap();
    assert!(!change.full_read);
    assert!(matches!(&change.ops[..], [Op::UpdateDest(_, d)] if d.weight == 2));
    assert_eq!(dp.reads(), 1);
    // With a foreign service present, removal is one delete per service, never a flush.
    let remove = reconcile(&mut dp, &mut rec, &Desired::default(), t0).unwrap();
    assert!(!remove.ops.contains(&Op::Flush));
    assert_eq!(dp.services().len(), 1);
}
