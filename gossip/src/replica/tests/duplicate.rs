//! Another process with this node's id (`incarnation.rs`): refused while it is alive, judged
//! from its heartbeat, waited for only the join grace while it is silent, and that grace counts
//! this node's own time only.

use super::*;

#[test]
fn a_duplicate_of_my_id_keeps_me_from_publishing() {
    let mut r = replica("n1", 1, 0, 0);
    r.handle_tick(700, 700);
    assert_eq!(r.role(), Role::Publisher);
    drain(&mut r);
    r.handle_duplicate(Some(crate::incarnation::Incarnation {
        generation: 1,
        listen: "127.0.0.1:7001".parse().unwrap(),
    }));
    r.handle_tick(725, 725);
    let actions = drain(&mut r);
    assert!(actions.contains(&Action::Ready(false)), "{actions:?}");
    assert_eq!(r.role(), Role::CatchingUp);
    assert!(r.plan_stamp(D).is_err());
    r.handle_tick(2_000, 2_000);
    assert_eq!(r.role(), Role::CatchingUp);
    // Once the other incarnation is gone, it listens again (a fresh join grace), then serves.
    r.handle_duplicate(None);
    r.handle_tick(2_025, 2_025);
    assert_eq!(r.role(), Role::CatchingUp);
    r.handle_tick(4_000, 4_000);
    assert_eq!(r.role(), Role::Publisher);
}

/// A second process started with n2's id: generation 5, at another address than the older n2
/// (generation 0 at `addr(2)`).
fn second_n2() -> Replica {
    let mut r = Replica::new(
        Identity {
            id: id("n2"),
            generation: 5,
            listen: addr(9),
        },
        timing(),
        0,
        0,
    );
    r.handle_members(vec![member("n1", 1, false, true, Some(ad(1, 1, "n1")))]);
    r
}

/// Ticks `r` every 25 ms from `from_ms` to `to_ms`, n1 beating every 100 ms and the older n2
/// showing `older(beat)`, and `extra` incarnations beating with n1; returns when it first asked
/// for a fetch and when it first refused to serve.
fn beside_older_n2(
    r: &mut Replica,
    (from_ms, to_ms): (u64, u64),
    older: impl Fn(u64) -> u64,
    extra: &[(NodeId, u64, SocketAddr)],
) -> (Option<u64>, Option<u64>) {
    let (mut fetched, mut refused) = (None, None);
    for now in (from_ms..=to_ms).step_by(25) {
        if now % 100 == 0 {
            let beat = now / 100 + 1;
            let mut beats = vec![
                (id("n1"), 0, addr(1), beat),
                (id("n2"), 0, addr(2), older(beat)),
            ];
            beats.extend(extra.iter().map(|(i, g, a)| (i.clone(), *g, *a, beat)));
            r.handle_heartbeats(now, beats);
        }
        r.handle_tick(now, now);
        if drain(r).iter().any(|a| matches!(a, Action::Fetch { .. })) {
            fetched.get_or_insert(now);
        }
        if matches!(r.role_reason(), RoleReason::DuplicateId { .. }) {
            refused.get_or_insert(now);
        }
    }
    (fetched, refused)
}

/// A second process with n2's id hears the older n2 at the same time as n1: it fetches nothing
/// while the older one is not judged yet, and refuses to serve as soon as its heartbeat says it
/// is alive, at the same tick n1 is judged alive, whatever chitchat's own (slower) verdict says.
#[test]
fn an_older_live_process_with_my_id_is_judged_from_its_heartbeat() {
    let mut r = second_n2();
    let (fetched, refused) = beside_older_n2(&mut r, (0, 1_000), |b| b, &[]);
    assert_eq!(refused, Some(100), "judged alive at its second beat");
    assert_eq!(fetched, None, "a refused process fetches nothing");
    // The older process stops: judged dead, then this one listens again and fetches.
    let (fetched, _) = beside_older_n2(&mut r, (1_025, 4_000), |_| 11, &[]);
    assert!(
        !matches!(r.role_reason(), RoleReason::DuplicateId { .. }),
        "{:?}",
        r.role_reason()
    );
    assert!(fetched.is_some(), "fetches once the older process is dead");
}

/// A record of an older n2 at another address that never advances (a process gone before this
/// one started) holds the fetch back for the join grace only. Its own record and an earlier
/// process of its own at its own address are never a duplicate, however they beat.
#[test]
fn a_silent_older_record_of_my_id_delays_the_fetch_by_the_join_grace_only() {
    let mut r = second_n2();
    let own = [(id("n2"), 5, addr(9)), (id("n2"), 3, addr(9))];
    let (fetched, refused) = beside_older_n2(&mut r, (0, 2_000), |_| 7, &own);
    assert_eq!(
        fetched,
        Some(600),
        "the join grace after it was first heard"
    );
    assert_eq!(refused, None);
}

/// The join grace for an older record of this node's id counts this node's time only: a
/// starved process (a 350 ms gap between ticks, 250 ms over the pause allowance) waits that much
/// longer before it fetches, instead of taking its own pause for the record's silence.
#[test]
fn this_nodes_own_pause_does_not_shorten_the_wait_for_an_older_record_of_my_id() {
    let mut r = second_n2();
    let own = [(id("n2"), 5, addr(9)), (id("n2"), 3, addr(9))];
    let (fetched, _) = beside_older_n2(&mut r, (0, 100), |_| 7, &own);
    assert_eq!(fetched, None);
    let (fetched, refused) = beside_older_n2(&mut r, (450, 2_000), |_| 7, &own);
    assert_eq!(
        fetched,
        Some(850),
        "the join grace plus this node's lost 250 ms"
    );
    assert_eq!(refused, None);
}

/// Refused as a duplicate, n2 answers for the cluster with the older n2 (the publisher here) in
/// its own record's place, while its own decisions keep its own record.
#[test]
fn a_refused_duplicate_shows_the_cluster_with_the_older_process() {
    let mut r = second_n2();
    let mut older = member("n2", 2, true, true, Some(ad(1, 1, "n2")));
    older.publishing = true;
    r.handle_duplicate(Some(crate::incarnation::Incarnation {
        generation: older.generation,
        listen: older.listen,
    }));
    r.handle_tick(700, 700);
    assert!(matches!(r.role_reason(), RoleReason::DuplicateId { .. }));
    let (members, decisions) = r.cluster_beside(&older, 700);
    assert_eq!(decisions.publisher, Some(id("n2")));
    let n2: Vec<&Member> = members.iter().filter(|m| m.id == id("n2")).collect();
    assert_eq!(n2.len(), 1, "one n2: {members:?}");
    assert_eq!(n2[0].listen, addr(2), "the older process, not this one");
    assert!(
        r.members()
            .iter()
            .any(|m| m.id == id("n2") && m.listen == addr(9)),
        "its own decisions keep its own record"
    );
}
