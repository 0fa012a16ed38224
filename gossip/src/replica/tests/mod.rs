//! The core driven by hand: observations in, actions out, time as a number.
//!
//! Why this file is over 500 lines: one test per behaviour of one state machine, sharing the
//! helpers at the top (splitting it would split those). The actions the shell carries out for
//! the transport (abandoned fetches, stalls, direct contact) are tested in `actions.rs`, the
//! new connection to a fetch's silent only holder in `redial.rs`.

use super::*;
use crate::head::{HeldAd, Stamp};
use proptest::prelude::*;

mod actions;
mod duplicate;
mod redial;
mod report;
mod republish;

const D: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn id(s: &str) -> NodeId {
    NodeId::new(s)
}

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([198, 18, 0, i], 7946))
}

fn timing() -> ReplicaTiming {
    ReplicaTiming {
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
    }
}

fn replica(name: &str, i: u8, generation: u64, floor: u64) -> Replica {
    Replica::new(
        Identity {
            id: id(name),
            generation,
            listen: addr(i),
        },
        timing(),
        0,
        floor,
    )
}

fn ad(epoch: u64, seq: u64, origin: &str) -> HeldAd {
    HeldAd {
        version: Version::new(epoch, seq, id(origin)),
        digest: D.into(),
        size_bytes: 1,
    }
}

fn member(name: &str, i: u8, alive: bool, ready: bool, held: Option<HeldAd>) -> Member {
    Member {
        id: id(name),
        generation: 0,
        listen: addr(i),
        alive,
        ready,
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

/// The actions, with epoch reservations landed at once (and left out: see the tests below).
fn drain(r: &mut Replica) -> Vec<Action> {
    let mut out = Vec::new();
    while let Some(action) = r.poll_action() {
        match action {
            Action::ReserveEpoch(target) => r.handle_epoch_persisted(0, target, Ok(())),
            other => out.push(other),
        }
    }
    out
}

fn reservations(r: &mut Replica) -> Vec<u64> {
    std::iter::from_fn(|| r.poll_action())
        .filter_map(|a| match a {
            Action::ReserveEpoch(target) => Some(target),
            _ => None,
        })
        .collect()
}

#[test]
fn a_new_terms_first_stamp_is_covered_by_a_reservation_made_while_following() {
    use crate::reservation::{AHEAD, LOW_WATER};
    // An earlier life left 7 in the epoch file: the first tick reserves ahead of it.
    let mut r = replica("n2", 2, 0, 7);
    r.handle_members(vec![member("n1", 1, true, true, Some(ad(8, 3, "n1")))]);
    r.handle_tick(100, 100);
    assert_eq!(reservations(&mut r), vec![8 + AHEAD]);
    // One write at a time: while it is on its way, nothing more is asked.
    r.handle_tick(110, 110);
    assert_eq!(reservations(&mut r), Vec::<u64>::new());
    r.handle_epoch_persisted(120, 8 + AHEAD, Ok(()));
    // Follow the head, then n1 dies: n2 takes over and its first stamp (a new epoch) needs no
    // write on the stamp path.
    assert!(r.handle_offer(&ad(8, 3, "n1")));
    r.handle_tick(700, 700);
    r.handle_members(vec![member("n1", 1, false, true, Some(ad(8, 3, "n1")))]);
    r.handle_tick(800, 800);
    assert_eq!(r.role(), Role::Publisher);
    let Ok(Stamp::New(v)) = r.plan_stamp("b") else {
        panic!("no stamp")
    };
    assert_eq!(v.epoch, 9);
    assert_eq!(r.epoch_write_before_stamp(v.epoch), None);
    // The cluster's epoch jumps past the low-water mark: a new reservation, ahead of it.
    r.handle_members(vec![member(
        "n1",
        1,
        true,
        true,
        Some(ad(8 + AHEAD - LOW_WATER + 1, 1, "n1")),
    )]);
    r.handle_tick(900, 900);
    assert_eq!(
        reservations(&mut r),
        vec![8 + AHEAD - LOW_WATER + 1 + AHEAD]
    );
    // A failed write is tried again after a second, not on every tick.
    r.handle_epoch_persisted(
        910,
        8 + AHEAD - LOW_WATER + 1 + AHEAD,
        Err("read-only".into()),
    );
    r.handle_tick(920, 920);
    assert_eq!(reservations(&mut r), Vec::<u64>::new());
    r.handle_tick(1_910, 1_910);
    assert_eq!(reservations(&mut r).len(), 1);
    // Beyond the reservation (a jump between two steps), the stamp path must write first.
    assert_eq!(
        r.epoch_write_before_stamp(8 + AHEAD + 1),
        Some(8 + 2 * AHEAD + 1)
    );
}

/// A publisher whose next stamp needs an epoch the file does not hold, while the file cannot be
/// written (`--state-dir` turned into a file), says so: a readiness reason. It published nothing
/// and every surface looked healthy (an audit).
#[test]
fn a_publisher_that_cannot_write_its_epoch_file_says_why() {
    let mut r = replica("n1", 1, 0, 7);
    r.handle_tick(100, 100);
    r.handle_tick(700, 700);
    assert_eq!(r.role(), Role::Publisher);
    let Ok(Stamp::New(v)) = r.plan_stamp("x") else {
        panic!("no stamp")
    };
    let Some(target) = r.epoch_write_before_stamp(v.epoch) else {
        panic!(
            "epoch {} should need a write of the file (floor 7)",
            v.epoch
        )
    };
    assert_eq!(r.stamp_refusal(), None, "no write has failed yet");
    for t in reservations(&mut r) {
        r.handle_epoch_persisted(700, t, Err("Not a directory (os error 20)".into()));
    }
    r.handle_epoch_persisted(710, target, Err("Not a directory (os error 20)".into()));
    let why = r.stamp_refusal().expect("a readiness reason");
    assert!(
        why.contains("epoch file") && why.contains("Not a directory"),
        "{why}"
    );
    r.handle_epoch_persisted(720, target, Ok(()));
    assert_eq!(r.stamp_refusal(), None, "a write that succeeds clears it");
}

#[test]
fn alone_it_listens_then_publishes_and_stamps_above_the_floor() {
    let mut r = replica("n1", 1, 0, 7);
    r.handle_tick(100, 100);
    assert_eq!(r.role(), Role::CatchingUp);
    assert_eq!(drain(&mut r), vec![Action::Role(RoleReason::CatchingUp)]);
    r.handle_tick(700, 700);
    let actions = drain(&mut r);
    assert!(actions.contains(&Action::Ready(true)), "{actions:?}");
    assert!(actions.contains(&Action::Role(RoleReason::LowestCaughtUp)));
    let Ok(Stamp::New(v)) = r.plan_stamp(D) else {
        panic!("no stamp")
    };
    // The floor from an earlier life: never stamp an epoch used before.
    assert_eq!((v.epoch, v.seq), (8, 1));
    r.commit_stamp(HeldAd {
        version: v.clone(),
        digest: D.into(),
        size_bytes: 1,
    })
    .unwrap();
    assert_eq!(drain(&mut r), vec![Action::Held(ad(8, 1, "n1"))]);
    assert_eq!(r.plan_stamp(D), Ok(Stamp::Reuse(v)));
}

/// Issue #15: a node whose seeds resolve but never answer (a partition, a handshake flood)
/// must not run as a cluster of its own; once the startup patience has passed it says why it
/// waits, and a seed that answers ends the wait.
#[test]
fn a_node_whose_seeds_never_answer_awaits_them_and_never_stamps() {
    let mut r = Replica::new(
        Identity {
            id: id("n1"),
            generation: 0,
            listen: addr(1),
        },
        ReplicaTiming {
            single_node: false,
            ..timing()
        },
        0,
        0,
    );
    r.handle_seeds(vec![vec![addr(2)]]);
    r.handle_tick(100, 100);
    assert_eq!(r.role_reason(), RoleReason::CatchingUp);
    for t in [5_100, 6_000, 60_000] {
        r.handle_tick(t, t);
        assert_eq!(r.role_reason(), RoleReason::AwaitingSeeds, "at {t} ms");
        assert_eq!(r.role(), Role::CatchingUp);
        assert!(r.plan_stamp(D).is_err());
    }
    assert!(!drain(&mut r).contains(&Action::Ready(true)));
    r.handle_members(vec![member("n2", 2, true, true, None)]);
    r.handle_tick(60_100, 60_100);
    assert_ne!(r.role_reason(), RoleReason::AwaitingSeeds);
}

#[test]
fn a_follower_fetches_the_head_from_its_holders_and_never_goes_back() {
    let mut r = replica("n3", 3, 0, 0);
    r.handle_members(vec![
        member("n1", 1, true, true, Some(ad(2, 1, "n1"))),
        member("n2", 2, true, true, Some(ad(2, 1, "n1"))),
    ]);
    r.handle_tick(700, 700);
    let actions = drain(&mut r);
    let fetch = actions
        .iter()
        .find_map(|a| match a {
            Action::Fetch { wanted, sources } => Some((wanted.clone(), sources.clone())),
            _ => None,
        })
        .expect("a fetch");
    assert_eq!(fetch.0, ad(2, 1, "n1"));
    assert_eq!(fetch.1[0], (id("n1"), addr(1)));
    // Only one fetch at a time.
    r.handle_tick(710, 710);
    assert!(!drain(&mut r)
        .iter()
        .any(|a| matches!(a, Action::Fetch { .. })));
    assert!(r.handle_offer(&ad(2, 1, "n1")));
    assert!(!r.handle_offer(&ad(1, 9, "n1")), "adopted an older version");
    r.handle_fetch_done(720, &ad(2, 1, "n1").version, true);
    r.handle_tick(730, 730);
    let actions = drain(&mut r);
    assert!(actions.contains(&Action::Ready(true)), "{actions:?}");
    assert_eq!(r.publisher(), Some(&id("n1")));
}

#[test]
fn a_failed_fetch_waits_before_the_next() {
    let mut r = replica("n3", 3, 0, 0);
    r.handle_members(vec![member("n1", 1, true, true, Some(ad(1, 1, "n1")))]);
    r.handle_tick(700, 700);
    assert!(drain(&mut r)
        .iter()
        .any(|a| matches!(a, Action::Fetch { .. })));
    r.handle_fetch_done(710, &ad(1, 1, "n1").version, false);
    r.handle_tick(800, 800);
    assert!(!drain(&mut r)
        .iter()
        .any(|a| matches!(a, Action::Fetch { .. })));
    r.handle_tick(910, 910);
    assert!(drain(&mut r)
        .iter()
        .any(|a| matches!(a, Action::Fetch { .. })));
}

#[test]
fn a_stalled_loop_catches_up_again_before_acting() {
    let mut r = replica("n1", 1, 0, 0);
    r.handle_tick(700, 700);
    assert_eq!(r.role(), Role::Publisher);
    drain(&mut r);
    r.handle_tick(725, 725);
    assert_eq!(r.role(), Role::Publisher);
    // Frozen for 2 s: the view cannot be trusted.
    r.handle_tick(2_725, 2_725);
    let actions = drain(&mut r);
    assert!(actions.contains(&Action::Ready(false)), "{actions:?}");
    assert_eq!(r.role(), Role::CatchingUp);
    assert!(r.plan_stamp(D).is_err());
    // It listens for the join grace again (seeds no longer count), then resumes.
    r.handle_tick(2_750, 2_750);
    assert_eq!(r.role(), Role::CatchingUp);
    r.handle_tick(3_350, 3_350);
    assert_eq!(r.role(), Role::Publisher);
}

#[test]
fn a_lower_id_that_rejoins_does_not_take_the_role_back() {
    // n2 published epoch 4 while n1 was away; n1 restarts and catches up.
    let mut n2 = replica("n2", 2, 0, 0);
    n2.handle_members(vec![member("n3", 3, true, true, Some(ad(4, 2, "n2")))]);
    n2.handle_offer(&ad(4, 2, "n2"));
    n2.handle_tick(700, 700);
    assert_eq!(n2.role_reason(), RoleReason::Incumbent);
    drain(&mut n2);
    let rejoined = |ready: bool| {
        vec![
            Member {
                generation: 10_000,
                ..member("n1", 1, true, ready, ready.then(|| ad(4, 2, "n2")))
            },
            member("n3", 3, true, true, Some(ad(4, 2, "n2"))),
        ]
    };
    for (t, ready) in [(800, false), (900, false), (1_000, true), (1_100, true)] {
        n2.handle_members(rejoined(ready));
        n2.handle_tick(t, 10_000 + t);
        assert_eq!(n2.role_reason(), RoleReason::Incumbent, "at {t} ms");
    }
    assert!(drain(&mut n2).is_empty(), "no role change, so no new term");
}

/// n1 stamped the head and died; n2 took the role but has not stamped yet (its source still
/// lists, or rejects its input). n1's next process holds the head it never stamped: it neither
/// takes the role back nor sees itself as the publisher.
#[test]
fn the_heads_origin_restarted_does_not_take_the_role_from_a_publisher_yet_to_stamp() {
    let head = ad(4, 2, "n1");
    let mut n2 = replica("n2", 2, 0, 0);
    n2.handle_members(vec![
        Member {
            last_seen_ms: Some(60_000),
            ..member("n1", 1, false, true, Some(head.clone()))
        },
        member("n3", 3, true, true, Some(head.clone())),
    ]);
    n2.handle_offer(&head);
    n2.handle_tick(700, 700);
    assert_eq!(n2.role_reason(), RoleReason::LowestCaughtUp);
    let actions = drain(&mut n2);
    assert!(
        actions.contains(&Action::Role(RoleReason::LowestCaughtUp)),
        "the shell gossips the claim on this action: {actions:?}"
    );
    let restarted_n1 = |ready: bool| Member {
        generation: 10_000,
        ..member("n1", 1, true, ready, ready.then(|| head.clone()))
    };
    let n2_claiming = Member {
        publishing: true,
        ..member("n2", 2, true, true, Some(head.clone()))
    };
    for (t, ready) in [(800, false), (900, true), (1_000, true)] {
        n2.handle_members(vec![
            restarted_n1(ready),
            member("n3", 3, true, true, Some(head.clone())),
        ]);
        n2.handle_tick(t, 10_000 + t);
        assert_eq!(n2.role(), Role::Publisher, "at {t} ms");
    }
    assert!(drain(&mut n2).is_empty(), "no role change, so no new term");

    let mut n1 = replica("n1", 1, 10_000, 0);
    n1.handle_offer(&head);
    for t in [700, 800] {
        n1.handle_members(vec![
            n2_claiming.clone(),
            member("n3", 3, true, true, Some(head.clone())),
        ]);
        n1.handle_tick(t, 10_000 + t);
    }
    assert_eq!(
        n1.role_reason(),
        RoleReason::Follows {
            publisher: id("n2")
        }
    );
    // Were n2's claim not heard (an older build, or not spread yet), the origin would publish.
    n1.handle_members(vec![
        member("n2", 2, true, true, Some(head.clone())),
        member("n3", 3, true, true, Some(head.clone())),
    ]);
    n1.handle_tick(900, 10_900);
    assert_eq!(n1.role_reason(), RoleReason::Incumbent);
}

/// The first time an incarnation is judged alive the shell is told once (it drops the dial
/// backoff to it), also for one that is not a member yet (a restarted process not verified
/// first-hand, which only a direct exchange can verify).
#[test]
fn an_incarnation_judged_alive_the_first_time_is_reported_once() {
    let mut r = replica("n2", 2, 0, 0);
    r.handle_members(vec![member("n1", 1, false, true, None)]);
    let first_alive = |r: &mut Replica| -> Vec<(String, u64)> {
        let mut reported: Vec<(String, u64)> = drain(r)
            .into_iter()
            .filter_map(|a| match a {
                Action::FirstAlive { id, generation, .. } => {
                    Some((id.as_str().to_string(), generation))
                }
                _ => None,
            })
            .collect();
        reported.sort();
        reported
    };
    for (now, beat) in [(0, 1), (100, 2), (200, 3)] {
        r.handle_heartbeats(
            now,
            [(id("n1"), 0, addr(1), beat), (id("n5"), 7, addr(5), beat)],
        );
        r.handle_tick(now, now);
        let reported = first_alive(&mut r);
        match now {
            100 => assert_eq!(reported, vec![("n1".into(), 0), ("n5".into(), 7)]),
            _ => assert!(reported.is_empty(), "at {now}: {reported:?}"),
        }
    }
    assert!(alive(&r, "n1"));
}

/// n2 follows n1's head with n1 and n3 beating every 100 ms and a tick every 25 ms, up to
/// `until_ms`; returns the next heartbeat value.
fn follow_with_heartbeats(r: &mut Replica, until_ms: u64) -> u64 {
    let head = ad(4, 2, "n1");
    r.handle_members(vec![
        member("n1", 1, true, true, Some(head.clone())),
        member("n3", 3, true, true, Some(head.clone())),
    ]);
    assert!(r.handle_offer(&head));
    let mut beat = 0;
    for now in (0..=until_ms).step_by(25) {
        if now % 100 == 0 {
            beat += 1;
            r.handle_heartbeats(
                now,
                [(id("n1"), 0, addr(1), beat), (id("n3"), 0, addr(3), beat)],
            );
        }
        r.handle_tick(now, now);
    }
    drain(r);
    beat + 1
}

fn alive(r: &Replica, name: &str) -> bool {
    r.members().iter().any(|m| m.id == id(name) && m.alive)
}

#[test]
fn a_silent_member_is_judged_dead_at_a_tick_without_new_members() {
    let mut r = replica("n2", 2, 0, 0);
    let mut beat = follow_with_heartbeats(&mut r, 2_000);
    assert_eq!(r.publisher(), Some(&id("n1")));
    assert_eq!(r.role(), Role::Follower);
    // n1 goes silent after its beat at 2,000 ms; n3 keeps beating. No new member list comes:
    // the core judges at its own ticks, 8 mean intervals (~800 ms) after n1's last beat.
    let mut took_over_at = None;
    for now in (2_025..=3_500).step_by(25) {
        if now % 100 == 0 {
            r.handle_heartbeats(now, [(id("n3"), 0, addr(3), beat)]);
            beat += 1;
        }
        r.handle_tick(now, now);
        if took_over_at.is_none() && r.role() == Role::Publisher {
            took_over_at = Some(now);
        }
        assert!(alive(&r, "n3"), "n3 beats and stays alive at {now}");
    }
    assert!(!alive(&r, "n1"));
    assert_eq!(r.members()[0].last_seen_ms, Some(1_500));
    let judged: Vec<Action> = drain(&mut r)
        .into_iter()
        .filter(|a| matches!(a, Action::Judged { .. }))
        .collect();
    assert_eq!(
        judged,
        vec![Action::Judged {
            id: id("n1"),
            generation: 0,
            listen: addr(1),
            alive: false
        }]
    );
    // n1 comes back: alive again on its second beat (the first gap is the outage), and the
    // shell is told (it dials n1 afresh).
    r.handle_heartbeats(3_510, [(id("n1"), 0, addr(1), 100)]);
    r.handle_tick(3_510, 3_510);
    assert!(!alive(&r, "n1"));
    r.handle_heartbeats(3_610, [(id("n1"), 0, addr(1), 101)]);
    r.handle_tick(3_610, 3_610);
    assert!(alive(&r, "n1"));
    assert!(drain(&mut r).contains(&Action::Judged {
        id: id("n1"),
        generation: 0,
        listen: addr(1),
        alive: true
    }));
    let at = took_over_at.expect("n2 takes over");
    assert!((2_775..=2_875).contains(&at), "took over at {at}");
    assert_eq!(r.members()[0].last_seen_ms, Some(0));
}

#[test]
fn a_replica_whose_loop_stalled_does_not_judge_others_dead_from_its_stale_view() {
    let mut r = replica("n2", 2, 0, 0);
    let beat = follow_with_heartbeats(&mut r, 2_000);
    // The whole machine stops for 1.5 s: no tick, no heartbeat. At the first tick after it,
    // the members are as alive as before (the pause is this node's own), and the stall reset
    // sends the node back to catching up.
    r.handle_tick(3_500, 3_500);
    assert!(alive(&r, "n1") && alive(&r, "n3"));
    assert_eq!(r.publisher(), Some(&id("n1")));
    assert_eq!(r.role(), Role::CatchingUp);
    // Their heartbeats come again: still alive. A member that stays silent is judged dead
    // 8 intervals after its last beat, the pause not counted (beyond one tick allowance of
    // 100 ms): 2,000 + 1,400 lost + 800.
    for now in (3_525..=4_500).step_by(25) {
        if now % 100 == 0 {
            r.handle_heartbeats(now, [(id("n3"), 0, addr(3), beat + (now - 3_500) / 100)]);
        }
        r.handle_tick(now, now);
        assert!(alive(&r, "n3"));
        assert_eq!(alive(&r, "n1"), now <= 4_200, "n1 at {now}");
    }
}

#[test]
fn a_leaving_member_is_dead_whatever_its_heartbeat() {
    let mut r = replica("n2", 2, 0, 0);
    let beat = follow_with_heartbeats(&mut r, 1_000);
    let mut leaving = member("n1", 1, true, true, Some(ad(4, 2, "n1")));
    leaving.alive = false;
    leaving.leaving = true;
    r.handle_members(vec![
        leaving,
        member("n3", 3, true, true, Some(ad(4, 2, "n1"))),
    ]);
    r.handle_heartbeats(
        1_025,
        [(id("n1"), 0, addr(1), beat), (id("n3"), 0, addr(3), beat)],
    );
    r.handle_tick(1_025, 1_025);
    assert!(!alive(&r, "n1") && alive(&r, "n3"));
}

proptest! {
    /// Any sequence of offers: the held version never decreases, and a new stamp is above
    /// every epoch the replica has seen and above its floor.
    #[test]
    fn held_never_decreases_and_stamps_beat_everything(
        floor in 0u64..5,
        offers in proptest::collection::vec((0u64..6, 0u64..4, "[a-c]"), 0..20),
    ) {
        let mut r = replica("n1", 1, 0, floor);
        let mut best: Option<Version> = None;
        for (e, s, o) in offers {
            let before = r.held().map(|h| h.version.clone());
            r.handle_offer(&ad(e, s, &o));
            let after = r.held().map(|h| h.version.clone());
            prop_assert!(after >= before);
            best = best.max(after);
        }
        r.handle_tick(700, 700);
        if let Ok(Stamp::New(v)) = r.plan_stamp("other") {
            prop_assert!(v.epoch > floor);
            prop_assert!(Some(&v) > best.as_ref());
        }
    }

    /// Whatever the pause of the whole machine (this replica and every member stop alike),
    /// the first tick after it judges no member dead that was alive before it.
    #[test]
    fn a_pause_of_the_whole_machine_kills_nobody(pause in 0u64..20_000, at in 0u64..100) {
        let mut r = replica("n2", 2, 0, 0);
        follow_with_heartbeats(&mut r, 2_000);
        let before = 2_000 + (at / 25) * 25;
        r.handle_tick(before, before);
        prop_assume!(alive(&r, "n1") && alive(&r, "n3"));
        r.handle_tick(before + pause, before + pause);
        prop_assert!(alive(&r, "n1") && alive(&r, "n3"));
    }
}
