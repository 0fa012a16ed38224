//! The actions the core asks of the shell's transport: a fetch the head moved past is
//! abandoned, a stall drops every connection, a member known only second-hand (a newer
//! incarnation, or one never counted) is contacted directly, a few a tick at most. The silent
//! only holder's new connection is tested in `redial.rs`.

use super::*;

fn holders(n1: HeldAd, n2: HeldAd) -> Vec<Member> {
    vec![
        member("n1", 1, true, true, Some(n1)),
        member("n2", 2, true, true, Some(n2)),
    ]
}

/// The fetch-related actions, in order (the others left out).
fn fetch_actions(r: &mut Replica) -> Vec<Action> {
    drain(r)
        .into_iter()
        .filter(|a| {
            matches!(
                a,
                Action::Fetch { .. } | Action::AbandonFetch(_) | Action::ResetConnections
            )
        })
        .map(|a| match a {
            // The sources are tested elsewhere.
            Action::Fetch { wanted, .. } => Action::Fetch {
                wanted,
                sources: Vec::new(),
            },
            other => other,
        })
        .collect()
}

fn fetch(wanted: HeldAd) -> Action {
    Action::Fetch {
        wanted,
        sources: Vec::new(),
    }
}

#[test]
fn a_fetch_the_head_moved_past_is_abandoned_and_the_new_head_fetched_at_once() {
    let (v21, v22) = (ad(2, 1, "n1"), ad(2, 2, "n1"));
    let mut r = replica("n3", 3, 0, 0);
    r.handle_members(holders(v21.clone(), v21.clone()));
    r.handle_tick(700, 700);
    assert_eq!(fetch_actions(&mut r), vec![fetch(v21.clone())]);
    // The same head: the fetch goes on.
    r.handle_members(holders(v21.clone(), v21.clone()));
    r.handle_tick(725, 725);
    assert_eq!(fetch_actions(&mut r), vec![]);
    // n1 stamps 2.2 while n3 still fetches 2.1: 2.1 is dropped and 2.2 fetched in the same tick.
    r.handle_members(holders(v22.clone(), v21.clone()));
    r.handle_tick(750, 750);
    assert_eq!(
        fetch_actions(&mut r),
        vec![
            Action::AbandonFetch(v21.version.clone()),
            fetch(v22.clone())
        ]
    );
    // The abandoned fetch's end is ignored: the fetch of 2.2 still counts as running.
    r.handle_fetch_done(760, &v21.version, true);
    r.handle_tick(775, 775);
    assert_eq!(fetch_actions(&mut r), vec![]);
    // The head goes back below the version wanted (its only holder died): the fetch goes on.
    r.handle_members(vec![
        member("n1", 1, false, true, Some(v22.clone())),
        member("n2", 2, true, true, Some(v21.clone())),
    ]);
    r.handle_tick(800, 800);
    assert_eq!(fetch_actions(&mut r), vec![]);
    // Its own end counts: a failure waits `fetch_retry_ms`, then the head is fetched again.
    r.handle_members(holders(v22.clone(), v22.clone()));
    r.handle_fetch_done(810, &v22.version, false);
    r.handle_tick(825, 825);
    assert_eq!(fetch_actions(&mut r), vec![]);
    r.handle_tick(1_010, 1_010);
    assert_eq!(fetch_actions(&mut r), vec![fetch(v22)]);
}

#[test]
fn a_stall_resets_every_connection_and_fetches_again_over_fresh_ones() {
    let v21 = ad(2, 1, "n1");
    let mut r = replica("n3", 3, 0, 0);
    r.handle_members(holders(v21.clone(), v21.clone()));
    r.handle_tick(700, 700);
    assert_eq!(fetch_actions(&mut r), vec![fetch(v21.clone())]);
    // A gap below `stall_reset_ms` (400) is no stall; one below RESET_CONNECTIONS_AFTER_MS
    // (a busy machine) only makes a caught-up node catch up again.
    r.handle_tick(1_090, 1_090);
    assert_eq!(fetch_actions(&mut r), vec![]);
    r.handle_tick(2_080, 2_080);
    assert_eq!(fetch_actions(&mut r), vec![]);
    r.handle_tick(2_090, 2_090);
    // Frozen for 2 s while catching up: connections dropped first, then the fetch that ran
    // over them, planned again at once.
    r.handle_tick(4_090, 4_090);
    assert_eq!(
        fetch_actions(&mut r),
        vec![
            Action::ResetConnections,
            Action::AbandonFetch(v21.version.clone()),
            fetch(v21.clone()),
        ]
    );
    // Caught up and frozen again: the connections go too, with no fetch to abandon.
    assert!(r.handle_offer(&v21));
    r.handle_fetch_done(4_100, &v21.version, true);
    r.handle_tick(4_700, 4_700);
    assert!(r.caught_up());
    drain(&mut r);
    r.handle_tick(6_700, 6_700);
    let actions = drain(&mut r);
    assert!(actions.contains(&Action::ResetConnections), "{actions:?}");
    assert!(actions.contains(&Action::Ready(false)), "{actions:?}");
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::AbandonFetch(_) | Action::Fetch { .. })),
        "{actions:?}"
    );
}

/// The contacts n2 asks for, as (ms, id, generation), while it ticks every 25 ms from `from` to
/// `until`; every 100 ms it first hears the heartbeats `beats(now)` returns.
fn contacts_with(
    r: &mut Replica,
    from: u64,
    until: u64,
    beats: impl Fn(u64) -> Vec<(NodeId, u64, SocketAddr, u64)>,
) -> Vec<(u64, String, u64)> {
    let mut out = Vec::new();
    for now in (from..=until).step_by(25) {
        if now % 100 == 0 {
            r.handle_heartbeats(now, beats(now));
        }
        r.handle_tick(now, now);
        for a in drain(r) {
            if let Action::Contact { id, generation, .. } = a {
                out.push((now, id.as_str().to_string(), generation));
            }
        }
    }
    out
}

/// The ms at which n2 contacted each incarnation, while n1 (generation 0) beats throughout, n3's
/// restarted process (generation 9) beats every 100 ms from 0 to `beats_until` and n2 ticks
/// every 25 ms up to `until`.
fn contacts(r: &mut Replica, from: u64, until: u64, beats_until: u64) -> Vec<(u64, String, u64)> {
    contacts_with(r, from, until, |now| {
        let mut beats = vec![(id("n1"), 0, addr(1), now / 100)];
        if now <= beats_until {
            beats.push((id("n3"), 9, addr(3), now / 100));
        }
        beats
    })
}

/// n2, with n1 and n3 counted at generation 0: gossip then relays n3's restarted process
/// (generation 9), which n2 has not heard first-hand, so the member list still holds 0.
fn with_n3_restarted() -> Replica {
    let mut r = replica("n2", 2, 0, 0);
    r.handle_members(vec![
        member("n1", 1, true, true, None),
        member("n3", 3, true, true, None),
    ]);
    r
}

#[test]
fn a_new_incarnation_known_second_hand_is_contacted_until_it_counts() {
    let mut r = with_n3_restarted();
    let n3 = |at: u64| (at, "n3".to_string(), 9);
    // At once, then every CONTACT_RETRY_MS while it beats.
    assert_eq!(
        contacts(&mut r, 0, 1_000, 1_000),
        vec![n3(0), n3(500), n3(1_000)]
    );
    // Heard first-hand (the member list holds generation 9): no more contacts.
    let mut restarted = member("n3", 3, true, true, None);
    restarted.generation = 9;
    r.handle_members(vec![member("n1", 1, true, true, None), restarted]);
    assert_eq!(contacts(&mut r, 1_025, 3_000, 3_000), vec![]);
}

#[test]
fn a_new_incarnation_that_stopped_beating_is_no_longer_contacted() {
    let mut r = with_n3_restarted();
    let n3 = |at: u64| (at, "n3".to_string(), 9);
    // Its last beat at 1,000: contacted until its heartbeat is older than the join grace.
    assert_eq!(
        contacts(&mut r, 0, 3_000, 1_000),
        vec![n3(0), n3(500), n3(1_000), n3(1_500)]
    );
}

#[test]
fn a_starting_node_contacts_the_beating_members_it_has_not_counted_yet() {
    // At start no member counts yet (issue #14: a restarted node counted a member it heard of
    // only second-hand seconds late): every beating member gossip reports is contacted, at
    // once and again every CONTACT_RETRY_MS until it counts.
    let mut r = replica("n2", 2, 0, 0);
    let (n1, n3) = (
        |at: u64| (at, "n1".to_string(), 0),
        |at: u64| (at, "n3".to_string(), 9),
    );
    assert_eq!(
        contacts(&mut r, 0, 1_000, 1_000),
        vec![n1(0), n3(0), n1(500), n3(500), n1(1_000), n3(1_000)]
    );
    // n1 counts (heard first-hand), n3 stops beating at 1,000: n3 until its heartbeat is older
    // than the join grace, n1 never again.
    r.handle_members(vec![member("n1", 1, true, true, None)]);
    assert_eq!(contacts(&mut r, 1_025, 3_000, 1_000), vec![n3(1_500)]);
}

/// Heartbeats of `n` members never counted, n4 onwards (generation 0), all beating.
fn beating(n: u8) -> impl Fn(u64) -> Vec<(NodeId, u64, SocketAddr, u64)> {
    move |now| {
        (4..4 + n)
            .map(|i| (id(&format!("n{i}")), 0, addr(i), now / 100))
            .collect()
    }
}

#[test]
fn a_starting_node_contacts_at_most_two_members_a_tick_the_longest_waiting_first() {
    let mut r = replica("n2", 2, 0, 0);
    let at = |ms: u64, name: &str| (ms, name.to_string(), 0);
    // Five never counted: two a tick (25 ms), by id, then again from 500 ms in the same order
    // (each at most every CONTACT_RETRY_MS).
    assert_eq!(
        contacts_with(&mut r, 0, 975, beating(5)),
        vec![
            at(0, "n4"),
            at(0, "n5"),
            at(25, "n6"),
            at(25, "n7"),
            at(50, "n8"),
            at(500, "n4"),
            at(500, "n5"),
            at(525, "n6"),
            at(525, "n7"),
            at(550, "n8"),
        ]
    );
}

#[test]
fn a_hundred_uncounted_members_are_contacted_two_a_tick_each_at_most_every_500_ms() {
    use crate::replica::follow::{CONTACT_RETRY_MS, MAX_CONTACTS_PER_TICK};
    let mut r = replica("n2", 2, 0, 0);
    let contacts = contacts_with(&mut r, 0, 5_000, beating(100));
    let mut per_tick: BTreeMap<u64, usize> = BTreeMap::new();
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for (now, name, _) in &contacts {
        *per_tick.entry(*now).or_default() += 1;
        if let Some(before) = last.insert(name.clone(), *now) {
            assert!(
                now - before >= CONTACT_RETRY_MS,
                "{name} contacted at {before} and {now}"
            );
        }
    }
    assert!(
        per_tick.values().all(|n| *n <= MAX_CONTACTS_PER_TICK),
        "{per_tick:?}"
    );
    // The cap is used in full (2 every 25 ms) and nobody is left out: all 100 within 1,250 ms.
    assert_eq!(per_tick.len(), 201);
    assert_eq!(last.len(), 100);
    assert!(
        contacts.iter().take(100).all(|(now, _, _)| *now < 1_250),
        "{contacts:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the head does, fetches end and the loop stalls: one fetch at a time, each
    /// abandoned before another starts, and after every tick the fetch in flight wants the head
    /// or a version above it (never one the head has moved past). A late end of an abandoned
    /// fetch changes nothing.
    #[test]
    fn a_fetch_never_runs_behind_the_head(
        steps in proptest::collection::vec((0u8..5, 0u64..2, 10u64..1_500), 1..60),
    ) {
        let mut r = replica("n3", 3, 0, 0);
        let mut head = ad(1, 1, "n1");
        let mut now = 700;
        let mut in_flight: Option<HeldAd> = None;
        let mut abandoned: Vec<Version> = Vec::new();
        for (kind, epoch_bump, gap) in steps {
            match kind {
                0 => head = ad(head.version.epoch + epoch_bump, head.version.seq + 1, "n1"),
                1 => {
                    if let Some(f) = in_flight.take() {
                        r.handle_fetch_done(now, &f.version, false);
                    }
                }
                2 => {
                    if let Some(f) = in_flight.take() {
                        r.handle_offer(&f);
                        r.handle_fetch_done(now, &f.version, true);
                    }
                }
                // The shell never reports an abandoned fetch (it stops it under the state
                // lock); an end for a version not in flight (a bug there) is ignored.
                3 => {
                    let stale = abandoned
                        .iter()
                        .find(|v| in_flight.as_ref().is_none_or(|f| f.version != **v));
                    if let Some(v) = stale {
                        r.handle_fetch_done(now, v, true);
                    }
                }
                _ => {}
            }
            r.handle_members(holders(head.clone(), head.clone()));
            now += gap;
            r.handle_tick(now, now);
            for a in drain(&mut r) {
                match a {
                    Action::AbandonFetch(v) => {
                        prop_assert_eq!(in_flight.take().map(|f| f.version), Some(v.clone()));
                        abandoned.push(v);
                    }
                    Action::Fetch { wanted, .. } => {
                        prop_assert!(in_flight.is_none(), "a second fetch at {}", now);
                        in_flight = Some(wanted);
                    }
                    _ => {}
                }
            }
            if let Some(f) = &in_flight {
                prop_assert!(f.version >= head.version, "fetching {} behind {}", f.version, head.version);
            }
        }
    }
}
