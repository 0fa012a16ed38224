//! Tests of the reconciler (the parent module) against the memory twin.

use super::*;
use crate::memory::MemoryDataplane;
use crate::model::{Protocol, Service};
use crate::plan::plan;
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

fn key_of(d: &Desired, i: usize) -> ServiceKey {
    d.services[i].key.clone()
}

fn weights(dp: &MemoryDataplane, key: &ServiceKey) -> Option<Vec<u32>> {
    dp.services()
        .into_iter()
        .find(|s| &s.key == key)
        .map(|s| s.destinations.iter().map(|d| d.weight).collect())
}

/// Audit finding A: a removed service was deleted at once (its connections reset) even with a
/// drain. Now it drains like a removed destination: every destination at weight 0 (no new
/// connections, established ones still forwarded), deleted when the drain ends; the VIP stays
/// while any of its services drains.
#[test]
fn a_removed_service_drains_and_its_vip_stays_until_the_last_one_is_deleted() {
    let drain = Duration::from_secs(10);
    let mut dp = MemoryDataplane::new();
    let mut rec = Reconciler::new(drain);
    let t0 = Instant::now();
    let both = two_services(&[1, 2]);
    let (a, b) = (key_of(&both, 0), key_of(&both, 1));
    let vip = a.vip().unwrap();
    reconcile(&mut dp, &mut rec, &both, t0).unwrap();
    assert_eq!(rec.next_deadline(), None);

    // Remove `a` (port 80): weight 0, not deleted.
    let only_b = Desired {
        services: vec![both.services[1].clone()],
    };
    let r = reconcile(&mut dp, &mut rec, &only_b, t0).unwrap();
    assert!(
        r.ops
            .iter()
            .all(|op| matches!(op, Op::UpdateDest(k, d) if *k == a && d.weight == 0)),
        "{:?}",
        r.ops
    );
    assert_eq!(r.ops.len(), 2);
    assert_eq!(weights(&dp, &a), Some(vec![0, 0]));
    assert_eq!(rec.next_deadline(), Some(t0 + drain));
    assert_eq!(rec.draining_vips(t0), BTreeSet::from([vip]));
    // Nothing more to send while it waits.
    let r = reconcile(&mut dp, &mut rec, &only_b, t0 + Duration::from_secs(5)).unwrap();
    assert_eq!(r.ops, vec![]);

    // Remove `b` too, 5 s later: nothing is desired, yet neither a flush nor the VIP's removal.
    let t5 = t0 + Duration::from_secs(5);
    let r = reconcile(&mut dp, &mut rec, &Desired::default(), t5).unwrap();
    assert!(
        r.ops
            .iter()
            .all(|op| matches!(op, Op::UpdateDest(k, d) if *k == b && d.weight == 0)),
        "{:?}",
        r.ops
    );
    assert!(dp.vips().contains(&vip));
    assert_eq!(weights(&dp, &b), Some(vec![0, 0]));

    // `a`'s drain ends: `a` goes, the VIP stays for `b`.
    let r = reconcile(&mut dp, &mut rec, &Desired::default(), t0 + drain).unwrap();
    assert_eq!(r.ops, vec![Op::DelService(a.clone())]);
    assert_eq!(r.drained, 1);
    assert_eq!(weights(&dp, &a), None);
    assert!(dp.vips().contains(&vip));
    assert_eq!(
        rec.draining_vips(t0 + drain),
        BTreeSet::from([vip]),
        "b still drains"
    );
    // The next pass sees `a` gone and forgets it.
    let r = reconcile(&mut dp, &mut rec, &Desired::default(), t0 + drain).unwrap();
    assert_eq!(r.ops, vec![]);
    assert_eq!(rec.next_deadline(), Some(t5 + drain));

    // `b`'s drain ends: `b` and the VIP go.
    let r = reconcile(&mut dp, &mut rec, &Desired::default(), t5 + drain).unwrap();
    assert_eq!(r.ops, vec![Op::DelService(b), Op::DelVip(vip)]);
    assert_eq!(r.drained, 2, "the end of a drain, not drift");
    assert!(dp.services().is_empty() && dp.vips().is_empty());
    assert!(
        rec.draining_vips(t5 + drain).is_empty(),
        "ended drains hold no VIP"
    );
    reconcile(&mut dp, &mut rec, &Desired::default(), t5 + drain).unwrap();
    assert_eq!(rec.next_deadline(), None);
    assert!(rec.draining_vips(t5 + drain).is_empty());
}

/// A service removed and added again during its drain gets its weights back and is never
/// deleted; removed again later, its drain starts over.
#[test]
fn a_service_added_back_during_its_drain_is_restored() {
    let drain = Duration::from_secs(10);
    let mut dp = MemoryDataplane::new();
    let mut rec = Reconciler::new(drain);
    let t0 = Instant::now();
    let want = desired(&[1, 2]);
    let key = key_of(&want, 0);
    reconcile(&mut dp, &mut rec, &want, t0).unwrap();
    reconcile(&mut dp, &mut rec, &Desired::default(), t0).unwrap();
    assert_eq!(weights(&dp, &key), Some(vec![0, 0]));
    assert_eq!(dp.vips().len(), 1);

    let t3 = t0 + Duration::from_secs(3);
    let r = reconcile(&mut dp, &mut rec, &want, t3).unwrap();
    assert_eq!(r.ops.len(), 2, "two weights restored: {:?}", r.ops);
    assert_eq!(weights(&dp, &key), Some(vec![1, 1]));
    assert_eq!(rec.next_deadline(), None);
    let r = reconcile(&mut dp, &mut rec, &want, t0 + drain).unwrap();
    assert_eq!(r.ops, vec![]);

    // Removed again: a new drain from then.
    let t20 = t0 + Duration::from_secs(20);
    reconcile(&mut dp, &mut rec, &Desired::default(), t20).unwrap();
    assert_eq!(rec.next_deadline(), Some(t20 + drain));
    let r = reconcile(&mut dp, &mut rec, &Desired::default(), t20 + drain).unwrap();
    assert_eq!(r.ops, vec![Op::DelService(key), Op::DelVip(backend_vip())]);
}

fn backend_vip() -> IpAddr {
    IpAddr::from([203, 0, 113, 1])
}

/// Without a drain a removed service goes at once, as before; with one, the services the node
/// withholds (`set_delete_at_once`) go at once too, and take their VIP when no other drains.
#[test]
fn no_drain_or_delete_at_once_removes_a_service_at_once() {
    let t0 = Instant::now();
    let mut dp = MemoryDataplane::new();
    let mut rec = Reconciler::new(Duration::ZERO);
    let want = desired(&[1, 2]);
    let key = key_of(&want, 0);
    reconcile(&mut dp, &mut rec, &want, t0).unwrap();
    let r = reconcile(&mut dp, &mut rec, &Desired::default(), t0).unwrap();
    assert_eq!(
        r.ops,
        vec![Op::DelService(key.clone()), Op::DelVip(backend_vip())]
    );

    let mut dp = MemoryDataplane::new();
    let mut rec = Reconciler::new(Duration::from_secs(10));
    let both = two_services(&[1, 2]);
    reconcile(&mut dp, &mut rec, &both, t0).unwrap();
    rec.set_delete_at_once([key.clone()].into());
    let only_b = Desired {
        services: vec![both.services[1].clone()],
    };
    let r = reconcile(&mut dp, &mut rec, &only_b, t0).unwrap();
    assert_eq!(r.ops, vec![Op::DelService(key.clone())]);
    assert_eq!(r.drained, 0);
    // Both withheld: a flush would do, the one that drains keeps the VIP.
    let r = reconcile(&mut dp, &mut rec, &Desired::default(), t0).unwrap();
    assert!(
        r.ops
            .iter()
            .all(|op| matches!(op, Op::UpdateDest(_, d) if d.weight == 0)),
        "{:?}",
        r.ops
    );
    assert_eq!(dp.vips().len(), 1);
}

/// Audit finding B: during a drain the read-back differs from the table only by entries at
/// weight 0 waiting for their deadline. `pending` lists them as draining, not as ops; anything
/// else (drift in a draining entry, a missing service) stays pending.
#[test]
fn pending_tells_a_drain_apart_from_a_mismatch() {
    let drain = Duration::from_secs(10);
    let mut dp = MemoryDataplane::new();
    let mut rec = Reconciler::new(drain);
    let t0 = Instant::now();
    let both = two_services(&[1, 2, 3]);
    let (a, b) = (key_of(&both, 0), key_of(&both, 1));
    reconcile(&mut dp, &mut rec, &both, t0).unwrap();
    // `b` loses a destination, then `a` is removed.
    let mut next = both.clone();
    next.services[1].destinations.pop();
    reconcile(&mut dp, &mut rec, &next, t0).unwrap();
    next.services.remove(0);
    reconcile(&mut dp, &mut rec, &next, t0).unwrap();
    let have = dp.read().unwrap().into_view();
    assert!(
        !plan(&next, &dp.read().unwrap()).is_empty(),
        "a plain plan sees a mismatch"
    );
    let p = rec.pending(&next, &have);
    assert_eq!(p.ops, vec![]);
    type Entry = (ServiceKey, Option<(IpAddr, u16)>, Instant);
    let mut seen: Vec<Entry> = p
        .draining
        .iter()
        .map(|d| (d.service.clone(), d.destination, d.due))
        .collect();
    seen.sort();
    let mut want = vec![
        (a.clone(), None, t0 + drain),
        (
            b.clone(),
            Some((crate::testing::backend(3), 80)),
            t0 + drain,
        ),
    ];
    want.sort();
    assert_eq!(seen, want);

    // Nothing desired any more: the plan's flush waits for `a`, `b` must still be handled.
    let p = rec.pending(&Desired::default(), &have);
    assert_eq!(p.ops, vec![Op::DelService(b.clone())]);

    // Drift: a draining destination's weight put back behind Shoal's back is a mismatch.
    let mut drifted = have.clone();
    let s = drifted.services.get_mut(&b).unwrap();
    s.destinations[2].weight = 1;
    let p = rec.pending(&next, &drifted);
    assert_eq!(p.ops, vec![Op::DelDest(b, crate::testing::backend(3), 80)]);
    assert_eq!(p.draining.len(), 1);

    // Without a drain there is nothing to tell apart.
    let rec = Reconciler::new(Duration::ZERO);
    assert!(rec.pending(&next, &have).draining.is_empty());
    assert_eq!(
        rec.pending(&next, &have).ops,
        plan(&next, &dp.read().unwrap())
    );
}

/// A restart resumes the drains the previous process kept: the deadline stays where it was
/// (not a full drain again), a destination restored meanwhile is not deleted, and a deadline
/// beyond the new drain setting is brought in to it.
#[test]
fn resumed_drains_keep_their_deadlines() {
    let drain = Duration::from_secs(30);
    let t0 = Instant::now();
    let want = desired(&[1, 2]);
    let key = key_of(&want, 0);
    let one_left = Desired {
        services: vec![Service {
            destinations: want.services[0].destinations[..1].to_vec(),
            ..want.services[0].clone()
        }],
    };
    let gone = &want.services[0].destinations[1];
    // The kernel as the previous process left it: the second destination at weight 0.
    let mut dp = MemoryDataplane::new();
    let mut first = Reconciler::new(drain);
    reconcile(&mut dp, &mut first, &want, t0).unwrap();
    reconcile(&mut dp, &mut first, &one_left, t0).unwrap();
    assert_eq!(weights(&dp, &key), Some(vec![1, 0]));
    let kept: Vec<Draining> = first.draining().collect();
    assert_eq!(kept.len(), 1);

    // Restarted 10 s later: the drain ends at t0 + 30 s, not t10 + 30 s.
    let t10 = t0 + Duration::from_secs(10);
    let mut rec = Reconciler::new(drain);
    rec.resume(kept.clone(), t10);
    let r = reconcile(&mut dp, &mut rec, &one_left, t10).unwrap();
    assert_eq!(r.ops, vec![]);
    assert_eq!(rec.next_deadline(), Some(t0 + drain));
    let r = reconcile(&mut dp, &mut rec, &one_left, t0 + drain).unwrap();
    assert_eq!(r.ops, vec![Op::DelDest(key.clone(), gone.addr, gone.port)]);

    // Restarted with a shorter drain: the deadline is brought in to the new setting.
    let mut dp = MemoryDataplane::new();
    let mut first = Reconciler::new(drain);
    reconcile(&mut dp, &mut first, &want, t0).unwrap();
    reconcile(&mut dp, &mut first, &one_left, t0).unwrap();
    let short = Duration::from_secs(5);
    let mut rec = Reconciler::new(short);
    rec.resume(first.draining().collect::<Vec<_>>(), t0);
    reconcile(&mut dp, &mut rec, &one_left, t0).unwrap();
    assert_eq!(rec.next_deadline(), Some(t0 + short));

    // A destination put back while the node was down is restored, never deleted.
    let mut rec = Reconciler::new(drain);
    rec.resume(kept, t10);
    let r = reconcile(&mut dp, &mut rec, &want, t10).unwrap();
    assert_eq!(r.ops.len(), 1, "{:?}", r.ops);
    assert_eq!(weights(&dp, &key), Some(vec![1, 1]));
    assert_eq!(rec.next_deadline(), None);
}

/// The schedule of full reads: none before the drift check is due, then a check that may give
/// way, up to `MAX_DRIFT_GIVE_WAYS` times in a row however late it is (a whole read may outlast
/// the interval), a whole read after that or without a view; the pass after one that gave way
/// plans on the kept view, and a completed read starts the count again.
#[test]
fn a_drift_check_gives_way_a_bounded_number_of_times() {
    let every = Duration::from_secs(10);
    let mut dp = MemoryDataplane::new();
    let mut rec = Reconciler::new(Duration::ZERO).with_drift_check(every);
    let t0 = Instant::now();
    assert_eq!(rec.read_before(t0), ReadBefore::Everything, "no view yet");
    reconcile(&mut dp, &mut rec, &desired(&[1, 2]), t0).unwrap();
    let at = |s: u64| t0 + Duration::from_secs(s);
    assert_eq!(rec.read_before(at(9)), ReadBefore::Nothing);
    assert_eq!(rec.read_before(at(10)), ReadBefore::DriftCheck);
    assert_eq!(
        rec.read_before(at(500)),
        ReadBefore::DriftCheck,
        "late is no matter"
    );
    for _ in 0..MAX_DRIFT_GIVE_WAYS {
        assert_eq!(rec.read_before(at(12)), ReadBefore::DriftCheck);
        rec.drift_check_gave_way();
        assert_eq!(
            rec.read_before(at(12)),
            ReadBefore::Nothing,
            "the change's pass"
        );
    }
    assert_eq!(
        rec.read_before(at(12)),
        ReadBefore::Everything,
        "given way enough"
    );
    reconcile(&mut dp, &mut rec, &desired(&[1, 2]), at(12)).unwrap();
    assert_eq!(
        rec.read_before(at(22)),
        ReadBefore::DriftCheck,
        "counted again"
    );
    rec.drift_check_gave_way();
    rec.invalidate();
    assert_eq!(
        rec.read_before(at(23)),
        ReadBefore::Everything,
        "no view, whatever gave way"
    );
}

/// A change that arrives during a drift check makes it give way (nothing sent, the view kept)
/// and goes in on the kept view at the next pass; a change already waiting when the check is
/// due goes in first, in that pass; drift made meanwhile is repaired by the check taken up
/// later, and a check put off `MAX_DRIFT_GIVE_WAYS` times in a row reads whatever comes.
#[test]
fn a_change_during_a_drift_check_goes_in_on_the_kept_view() {
    let every = Duration::from_secs(10);
    let mut dp = MemoryDataplane::new();
    let mut rec = Reconciler::new(Duration::ZERO).with_drift_check(every);
    let t0 = Instant::now();
    reconcile(&mut dp, &mut rec, &desired(&[1, 2]), t0).unwrap();
    // Drift behind Shoal's back: backend 2 deleted.
    let key = desired(&[]).services[0].key.clone();
    dp.apply(&Op::DelDest(key.clone(), IpAddr::from([198, 18, 0, 2]), 80))
        .unwrap();
    let kept = rec.view().cloned();

    let due = t0 + Duration::from_secs(11);
    // `stop` turns true once the read has begun (the backend asks before it, then per service).
    let asked = std::cell::Cell::new(0);
    let arrives_during = || {
        asked.set(asked.get() + 1);
        asked.get() > 1
    };
    let r = reconcile_until(&mut dp, &mut rec, &desired(&[1, 2]), due, &arrives_during).unwrap();
    assert!(r.gave_way && r.ops.is_empty() && !r.full_read, "{r:?}");
    assert_eq!(rec.view().cloned(), kept, "the view stays");

    // The change (backend 3 added) goes in on the kept view: one op, no read.
    let reads = dp.reads();
    let r = reconcile_until(&mut dp, &mut rec, &desired(&[1, 2, 3]), due, &|| false).unwrap();
    assert!(!r.gave_way && !r.full_read, "{r:?}");
    assert!(matches!(&r.ops[..], [Op::AddDest(..)]), "{:?}", r.ops);
    // A change already waiting as the check falls due goes in first, in that very pass.
    let r = reconcile_until(&mut dp, &mut rec, &desired(&[1, 2, 3, 4]), due, &|| true).unwrap();
    assert!(!r.gave_way && !r.full_read, "{r:?}");
    assert!(matches!(&r.ops[..], [Op::AddDest(..)]), "{:?}", r.ops);
    assert_eq!(dp.reads(), reads, "no read for either change");

    // The check taken up: the drift is found and repaired.
    let four = desired(&[1, 2, 3, 4]);
    let r = reconcile_until(&mut dp, &mut rec, &four, due, &|| false).unwrap();
    assert!(r.full_read && !r.gave_way, "{r:?}");
    assert!(matches!(&r.ops[..], [Op::AddDest(..)]), "{:?}", r.ops);
    assert_eq!(rec.view().cloned(), Some(dp.read().unwrap().into_view()));

    // Put off `MAX_DRIFT_GIVE_WAYS` times in a row, the check reads whatever `stop` says.
    let late = due + 2 * every;
    for _ in 0..MAX_DRIFT_GIVE_WAYS {
        let r = reconcile_until(&mut dp, &mut rec, &four, late, &|| true).unwrap();
        assert!(!r.gave_way && !r.full_read, "{r:?}");
    }
    let r = reconcile_until(&mut dp, &mut rec, &four, late, &|| true).unwrap();
    assert!(r.full_read && !r.gave_way, "{r:?}");
}

/// A destination of a protocol in `set_cut_protocols` (UDP, for the node) is deleted at once
/// when the table leaves it out, while removed destinations of other protocols drain (at
/// weight 0 a UDP client stays on its backend for as long as it sends), a destination that
/// comes back is added again, and a removed service of that protocol still drains.
#[test]
fn a_removed_destination_of_a_cut_protocol_is_deleted_at_once_while_others_drain() {
    let t0 = Instant::now();
    let mut dp = MemoryDataplane::new();
    let mut rec = Reconciler::new(Duration::from_secs(30));
    rec.set_cut_protocols([Protocol::Udp].into());
    let vip = IpAddr::from([203, 0, 113, 1]);
    let with = |udp: &[u8], tcp: &[u8]| {
        let mut dns = tcp_service(vip, 53, udp.iter().map(|&b| backend(b)));
        dns.key = ServiceKey::Addr {
            addr: vip,
            port: 53,
            protocol: Protocol::Udp,
        };
        Desired {
            services: vec![dns, tcp_service(vip, 80, tcp.iter().map(|&b| backend(b)))],
        }
    };
    let want = with(&[1, 2, 3], &[1, 2, 3]);
    let (udp, tcp) = (key_of(&want, 0), key_of(&want, 1));
    reconcile(&mut dp, &mut rec, &want, t0).unwrap();
    let r = reconcile(&mut dp, &mut rec, &with(&[1, 3], &[1, 3]), t0).unwrap();
    assert!(
        r.ops.contains(&Op::DelDest(udp.clone(), backend(2), 80)),
        "{:?}",
        r.ops
    );
    assert!(
        r.ops
            .iter()
            .any(|op| matches!(op, Op::UpdateDest(k, d) if *k == tcp && d.weight == 0)),
        "tcp drains: {:?}",
        r.ops
    );
    assert_eq!(r.drained, 0, "a cut is not the end of a drain");
    assert_eq!(
        rec.draining().map(|d| d.service).collect::<Vec<_>>(),
        vec![tcp.clone()]
    );
    assert_eq!(weights(&dp, &udp), Some(vec![1, 1]));
    // Back: added again.
    let r = reconcile(&mut dp, &mut rec, &want, t0).unwrap();
    assert!(
        r.ops
            .iter()
            .any(|op| matches!(op, Op::AddDest(k, d) if *k == udp && d.addr == backend(2))),
        "{:?}",
        r.ops
    );
    // The whole UDP service removed: it drains (its backends still serve).
    let only_tcp = Desired {
        services: vec![want.services[1].clone()],
    };
    reconcile(&mut dp, &mut rec, &only_tcp, t0).unwrap();
    assert_eq!(weights(&dp, &udp), Some(vec![0, 0, 0]));
}
