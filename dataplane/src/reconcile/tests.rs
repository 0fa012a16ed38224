//! Tests of the reconciler (the parent module) against the memory twin.

use super::*;
use crate::memory::MemoryDataplane;
use crate::model::{Protocol, Service};
use crate::testing::{backend, tcp_service};

fn desired(backends: &[u8]) -> Desired {
    let vip = IpAddr::from([203, 0, 113, 1]);
    Desired {
        services: vec![tcp_service(vip, 80, backends.iter().map(|&b| backend(b)))],
    }
}

/// The kept view holds what a full read would, without the spare room of one insert at a
/// time; a deletion at the end of a drain is counted as such, a drift repair is not.
#[test]
fn the_kept_view_is_compact_and_drained_deletions_are_counted() {
    let mut dp = MemoryDataplane::new();
    let mut rec = Reconciler::new(Duration::from_secs(30));
    let t0 = Instant::now();
    let report = reconcile(&mut dp, &mut rec, &desired(&[1, 2, 3, 4, 5]), t0).unwrap();
    assert_eq!(report.drained, 0);
    let dests = &rec
        .view()
        .unwrap()
        .services
        .values()
        .next()
        .unwrap()
        .destinations;
    assert_eq!((dests.len(), dests.capacity()), (5, 5));
    assert_eq!(rec.view().cloned(), Some(dp.read().unwrap().into_view()));

    let report = reconcile(&mut dp, &mut rec, &desired(&[1, 2, 3, 4]), t0).unwrap();
    assert_eq!((report.ops.len(), report.drained), (1, 0), "weight 0 first");
    let later = t0 + Duration::from_secs(31);
    let report = reconcile(&mut dp, &mut rec, &desired(&[1, 2, 3, 4]), later).unwrap();
    assert!(
        matches!(&report.ops[..], [Op::DelDest(..)]),
        "{:?}",
        report.ops
    );
    assert_eq!(report.drained, 1);

    // Drift: a destination deleted behind Shoal's back is added again, not "drained".
    let key = desired(&[]).services[0].key.clone();
    dp.apply(&Op::DelDest(key, IpAddr::from([198, 18, 0, 1]), 80))
        .unwrap();
    rec.invalidate();
    let report = reconcile(&mut dp, &mut rec, &desired(&[1, 2, 3, 4]), later).unwrap();
    assert!(
        matches!(&report.ops[..], [Op::AddDest(..)]),
        "{:?}",
        report.ops
    );
    assert_eq!(report.drained, 0);
}

/// Only a flush on a kept view in a shared table is listed first; everything else goes
/// out as planned.
#[test]
fn only_a_flush_on_a_kept_view_of_a_shared_table_is_checked() {
    use TableOwnership::{Exclusive, Shared};
    let vip = Op::DelVip(IpAddr::from([203, 0, 113, 1]));
    let key = desired(&[]).services[0].key.clone();
    let flush = [Op::Flush, vip.clone()];
    assert!(list_before_sending(&flush, false, Shared));
    assert!(list_before_sending(&[Op::Flush], false, Shared));
    // A pass that just read everything already knows every foreign service.
    assert!(!list_before_sending(&flush, true, Shared));
    // Declared ownership: nobody else's service can be in the table.
    assert!(!list_before_sending(&flush, false, Exclusive));
    assert!(!list_before_sending(&flush, true, Exclusive));
    // Deletes by key never touch what Shoal does not know of.
    for ownership in [Shared, Exclusive] {
        assert!(!list_before_sending(
            &[Op::DelService(key.clone()), vip.clone()],
            false,
            ownership
        ));
        assert!(!list_before_sending(&[], false, ownership));
    }
    assert_eq!(TableOwnership::default(), Shared);
}

fn two_services(backends: &[u8]) -> Desired {
    let mut d = desired(backends);
    let mut second = d.services[0].clone();
    second.key = ServiceKey::Addr {
        addr: "203.0.113.1".parse().unwrap(),
        port: 81,
        protocol: Protocol::Tcp,
    };
    d.services.push(second);
    d
}

fn late_foreign() -> Service {
    Service {
        key: ServiceKey::Addr {
            addr: "192.0.2.9".parse().unwrap(),
            port: 443,
            protocol: Protocol::Tcp,
        },
        ..desired(&[7]).services[0].clone()
    }
}

/// Shared (the default): a foreign service created after the last full read is seen by
/// the list before the flush, and survives.
#[test]
fn a_shared_table_lists_before_a_flush_and_keeps_a_late_foreign_service() {
    let mut dp = MemoryDataplane::new();
    let mut rec = Reconciler::new(Duration::ZERO);
    let t0 = Instant::now();
    reconcile(&mut dp, &mut rec, &two_services(&[1, 2]), t0).unwrap();
    assert_eq!(dp.lists(), 0);
    dp.insert_service(late_foreign());
    let r = reconcile(&mut dp, &mut rec, &Desired::default(), t0).unwrap();
    assert_eq!(dp.lists(), 1);
    assert!(r.full_read, "the list differed: the pass read everything");
    assert!(!r.ops.contains(&Op::Flush), "{:?}", r.ops);
    assert_eq!(dp.services(), vec![late_foreign()]);

    // Without a foreign service: the list matches and the flush goes out.
    let mut dp = MemoryDataplane::new();
    let mut rec = Reconciler::new(Duration::ZERO);
    reconcile(&mut dp, &mut rec, &two_services(&[1, 2]), t0).unwrap();
    let r = reconcile(&mut dp, &mut rec, &Desired::default(), t0).unwrap();
    assert_eq!((dp.lists(), r.full_read), (1, false));
    assert!(r.ops.contains(&Op::Flush), "{:?}", r.ops);
    assert!(dp.services().is_empty() && dp.vips().is_empty());
}

/// Exclusive: removal is a bare flush (no list), which is what the declaration accepts:
/// a service created behind Shoal's back since the last full read goes with it. A foreign
/// service seen by a full read is still never flushed (the plan deletes by key).
#[test]
fn an_exclusive_table_flushes_without_a_list() {
    let t0 = Instant::now();
    let mut dp = MemoryDataplane::new();
    let mut rec = Reconciler::new(Duration::ZERO).with_ownership(TableOwnership::Exclusive);
    reconcile(&mut dp, &mut rec, &two_services(&[1, 2]), t0).unwrap();
    dp.insert_service(late_foreign());
    let r = reconcile(&mut dp, &mut rec, &Desired::default(), t0).unwrap();
    assert_eq!((dp.lists(), dp.reads(), r.full_read), (0, 1, false));
    assert!(r.ops.contains(&Op::Flush), "{:?}", r.ops);
    assert!(dp.services().is_empty());

    let mut dp = MemoryDataplane::with_foreign(vec![late_foreign()]);
    let mut rec = Reconciler::new(Duration::ZERO).with_ownership(TableOwnership::Exclusive);
    reconcile(&mut dp, &mut rec, &two_services(&[1, 2]), t0).unwrap();
    let r = reconcile(&mut dp, &mut rec, &Desired::default(), t0).unwrap();
    assert!(!r.ops.contains(&Op::Flush), "{:?}", r.ops);
    assert_eq!(dp.services(), vec![late_foreign()]);
}

/// Issue #15, broken behaviour 5: `now + drain` panicked for a huge drain.
#[test]
fn a_huge_drain_does_not_overflow() {
    let mut dp = MemoryDataplane::new();
    let mut rec = Reconciler::new(Duration::MAX);
    let now = Instant::now();
    reconcile(&mut dp, &mut rec, &desired(&[1, 2]), now).unwrap();
    let report = reconcile(&mut dp, &mut rec, &desired(&[1]), now).unwrap();
    assert!(
        matches!(&report.ops[..], [Op::UpdateDest(_, d)] if d.weight == 0),
        "{:?}",
        report.ops
    );
    assert!(rec.next_deadline().unwrap() > now + Duration::from_secs(365 * 86_400));
}
