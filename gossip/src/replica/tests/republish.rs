//! When the publisher stamps its source's table again, and that it never stamps backwards.
//!
//! F1 (audit): an epoch file near the u64 maximum made a takeover stamp `0.1@n1`: below the
//! head every other node held, so the publisher fetched the head back, saw a foreign origin,
//! republished `0.1` again, and so on, in a tight loop. F2 (audit): a stale member came back
//! with a head this node id stamped in an earlier process (`68.2@n1`, with another table);
//! the publisher took it for its own and never stamped its source's table again.

use super::*;
use crate::head::EpochsExhausted;
use crate::version::MAX_EPOCH;

/// n1 alone, caught up and publishing at 700 ms, with the epoch floor `floor`.
fn publishing_alone(floor: u64) -> Replica {
    let mut r = replica("n1", 1, 0, floor);
    r.handle_tick(100, 100);
    r.handle_tick(700, 700);
    drain(&mut r);
    assert_eq!(r.role(), Role::Publisher);
    r
}

fn stamp(r: &mut Replica, digest: &str) -> Version {
    let version = match r.plan_stamp(digest) {
        Ok(Stamp::New(v)) => v,
        other => panic!("no new stamp: {other:?}"),
    };
    if let Some(target) = r.epoch_write_before_stamp(version.epoch) {
        r.handle_epoch_persisted(0, target, Ok(()));
    }
    r.commit_stamp(HeldAd {
        version: version.clone(),
        digest: digest.into(),
        size_bytes: 1,
    })
    .unwrap();
    drain(r);
    version
}

#[test]
fn a_stale_head_with_this_id_from_an_earlier_process_is_republished_over() {
    // A fresh process of n1 (state folder wiped: floor 0) publishes 1.1 with only `web` ("b").
    let mut r = publishing_alone(0);
    let first = stamp(&mut r, "b");
    assert_eq!(first, Version::new(1, 1, id("n1")));
    assert!(!r.needs_republish(), "its own stamp is the head");
    // n4 comes back holding 68.2@n1: this id, but stamped by an earlier process, another table.
    r.handle_members(vec![member("n4", 4, true, true, Some(ad(68, 2, "n1")))]);
    r.handle_tick(800, 800);
    assert_eq!(
        r.head().map(|h| &h.version),
        Some(&Version::new(68, 2, id("n1")))
    );
    // Sticky: the head's origin is this id, so n1 stays the publisher...
    assert_eq!(r.role(), Role::Publisher);
    // ...and must stamp its source's table again: the head is not this process's.
    assert!(r.needs_republish());
    let again = stamp(&mut r, "b");
    assert_eq!(again, Version::new(69, 1, id("n1")));
    assert!(!r.needs_republish());
    // Even when the stale copy carries the very content, it was not stamped by this process.
    r.handle_members(vec![member("n4", 4, true, true, Some(ad(70, 1, "n1")))]);
    r.handle_tick(900, 900);
    assert!(r.needs_republish());
    assert_eq!(
        r.plan_stamp(D),
        Ok(Stamp::New(Version::new(71, 1, id("n1"))))
    );
}

#[test]
fn another_nodes_head_or_another_copy_of_this_version_is_republished_over() {
    let mut r = publishing_alone(0);
    let mine = stamp(&mut r, "b");
    // Another copy of this very version (an earlier process stamped it too, without its
    // epoch file) whose digest ranks above: the cluster settles on that copy.
    let mut copy = ad(mine.epoch, mine.seq, "n1");
    copy.digest = "c".into();
    r.handle_members(vec![member("n2", 2, true, true, Some(copy))]);
    r.handle_tick(800, 800);
    assert!(r.needs_republish());
    // Another node's head (the other side of a healed partition), while n1 keeps the role.
    let mut r = publishing_alone(0);
    stamp(&mut r, "b");
    r.handle_members(vec![member("n2", 2, false, true, Some(ad(1, 5, "n0")))]);
    r.handle_tick(800, 800);
    assert!(!r.needs_republish(), "a dead member's version is no head");
    r.handle_members(vec![member("n2", 2, true, false, Some(ad(1, 5, "n0")))]);
    r.handle_tick(900, 900);
    assert_eq!(r.role(), Role::Publisher);
    assert!(r.needs_republish());
    stamp(&mut r, "b");
    assert!(!r.needs_republish());
}

#[test]
fn only_the_publisher_republishes() {
    let mut r = replica("n2", 2, 0, 0);
    r.handle_members(vec![member("n1", 1, true, true, Some(ad(3, 1, "n1")))]);
    r.handle_tick(100, 100);
    r.handle_tick(700, 700);
    assert_ne!(r.role(), Role::Publisher);
    assert!(!r.needs_republish());
}

/// F1: with the highest epoch seen at the end of the epochs, a takeover refuses to stamp (it
/// used to wrap to `0.1@n1`, below the head), holds on to the head, and says why.
#[test]
fn a_takeover_at_the_last_epoch_refuses_to_stamp_instead_of_wrapping() {
    for floor in [u64::MAX, MAX_EPOCH] {
        let mut r = replica("n1", 1, 0, floor);
        r.handle_members(vec![
            member("n2", 2, true, true, Some(ad(66, 2, "n2"))),
            member("n3", 3, true, true, Some(ad(66, 2, "n2"))),
        ]);
        r.handle_tick(100, 100);
        assert!(r.handle_offer(&ad(66, 2, "n2")));
        r.handle_tick(700, 700);
        // The publisher n2 is killed: n1, the lowest, takes over.
        r.handle_members(vec![
            member("n2", 2, false, true, Some(ad(66, 2, "n2"))),
            member("n3", 3, true, true, Some(ad(66, 2, "n2"))),
        ]);
        r.handle_tick(800, 800);
        drain(&mut r);
        assert_eq!(r.role(), Role::Publisher, "floor {floor}");
        assert!(r.needs_republish());
        assert_eq!(
            r.plan_stamp("b"),
            Err(StampRefused::EpochsExhausted(EpochsExhausted {
                highest_seen: floor
            }))
        );
        let why = r.stamp_refusal().expect("a readiness reason");
        assert!(why.contains(&floor.to_string()), "{why}");
        // A wrapped stamp, had the shell made one, is refused too: held never goes back.
        let wrapped = HeldAd {
            version: Version::new(0, 1, id("n1")),
            digest: "b".into(),
            size_bytes: 1,
        };
        assert!(matches!(
            r.commit_stamp(wrapped),
            Err(StampRefused::Behind { .. })
        ));
        assert_eq!(r.held().map(|h| &h.version), Some(&ad(66, 2, "n2").version));
        // No reservation beyond the last epoch either.
        for t in [900, 2_000] {
            r.handle_tick(t, t);
            assert!(reservations(&mut r).iter().all(|&e| e <= MAX_EPOCH));
        }
    }
}

proptest! {
    /// The republish loop cannot spin: whatever head a publisher sees, one stamp of its table
    /// either makes `needs_republish` false (the stamp is the head) or is refused; a committed
    /// stamp never ranks below what it held.
    #[test]
    fn one_republish_settles_the_head(
        epoch in prop_oneof![0u64..100, (MAX_EPOCH - 3)..=MAX_EPOCH],
        seq in 0u64..5,
        origin in "n[0-4]",
        digest in "[a-c]",
    ) {
        let mut r = publishing_alone(0);
        stamp(&mut r, "b");
        let mut foreign = ad(epoch, seq, &origin);
        foreign.digest = digest;
        r.handle_members(vec![member("n5", 5, true, false, Some(foreign))]);
        r.handle_tick(800, 800);
        prop_assume!(r.role() == Role::Publisher);
        let before = r.held().cloned();
        match r.plan_stamp("b") {
            Ok(Stamp::New(v)) => {
                if let Some(target) = r.epoch_write_before_stamp(v.epoch) {
                    r.handle_epoch_persisted(0, target, Ok(()));
                }
                r.commit_stamp(HeldAd { version: v.clone(), digest: "b".into(), size_bytes: 1 }).unwrap();
                prop_assert!(Some(&v) > before.as_ref().map(|h| &h.version));
                prop_assert!(!r.needs_republish());
            }
            Ok(Stamp::Reuse(_)) => prop_assert!(!r.needs_republish()),
            Err(StampRefused::EpochsExhausted(_)) => prop_assert!(epoch == MAX_EPOCH),
            Err(other) => prop_assert!(false, "{}", other),
        }
    }
}
