//! A fetch's only holder that has not begun to send within the hedge time gets a new
//! connection and is asked again (`redial.rs`, issue #14), at most once a second per source.

use super::*;
use crate::replica::REDIAL_SOURCE_EVERY_MS;

/// n3 following `n` other members (n1 the publisher and only holder of `head`, the rest on an
/// older head), ticked to 700 ms where it plans the fetch; returns the holder's position among
/// the fetch's sources.
fn fetching_from_one_holder(n: u8, head: &HeldAd) -> (Replica, usize) {
    let older = ad(1, 1, "n1");
    let mut members = vec![member("n1", 1, true, true, Some(head.clone()))];
    members
        .extend((4..3 + n).map(|i| member(&format!("n{i}"), i, true, true, Some(older.clone()))));
    let mut r = replica("n3", 3, 0, 0);
    r.handle_members(members);
    r.handle_tick(700, 700);
    let sources = drain(&mut r)
        .into_iter()
        .find_map(|a| match a {
            Action::Fetch { wanted, sources } if wanted == *head => Some(sources),
            _ => None,
        })
        .expect("a fetch of the head at 700");
    let position = sources
        .iter()
        .position(|(id, _)| id.as_str() == "n1")
        .expect("the holder among the sources");
    (r, position)
}

/// The fetch and connection actions at each tick every 25 ms from `from` to `until`, as
/// (ms, action) with the sources left out.
fn redials(r: &mut Replica, from: u64, until: u64) -> Vec<(u64, Action)> {
    let mut out = Vec::new();
    for now in (from..=until).step_by(25) {
        r.handle_tick(now, now);
        for a in drain(r) {
            match a {
                Action::Fetch { wanted, .. } => out.push((
                    now,
                    Action::Fetch {
                        wanted,
                        sources: Vec::new(),
                    },
                )),
                a @ (Action::AbandonFetch(_)
                | Action::ResetConnection { .. }
                | Action::ResetConnections) => out.push((now, a)),
                _ => {}
            }
        }
    }
    out
}

fn reset_and_refetch(now: u64, head: &HeldAd) -> Vec<(u64, Action)> {
    vec![
        (
            now,
            Action::ResetConnection {
                id: id("n1"),
                listen: addr(1),
            },
        ),
        (now, Action::AbandonFetch(head.version.clone())),
        (
            now,
            Action::Fetch {
                wanted: head.clone(),
                sources: Vec::new(),
            },
        ),
    ]
}

#[test]
fn a_silent_only_holder_gets_a_new_connection_after_the_hedge_time_then_once_a_second() {
    let head = ad(2, 1, "n1");
    let hedge = timing().fetch_hedge_ms;
    let mut positions = Vec::new();
    // Alone, and among followers that may come before it in the fetch's sources.
    for n in [1, 4, 8, 16] {
        let (mut r, p) = fetching_from_one_holder(n, &head);
        positions.push(p);
        if p >= crate::hedge::MAX_IN_FLIGHT {
            continue;
        }
        // The race has asked it by 700 + hedge * (p + 1): nothing before.
        let due = 700 + hedge * (p as u64 + 1);
        assert_eq!(
            redials(&mut r, 725, due - 25),
            vec![],
            "{n} members, position {p}"
        );
        // Then its connection is replaced, and the fetch abandoned and planned again at once.
        assert_eq!(redials(&mut r, due, due), reset_and_refetch(due, &head));
        // Not again within REDIAL_SOURCE_EVERY_MS, although the new fetch is overdue too.
        let again = due + REDIAL_SOURCE_EVERY_MS;
        assert_eq!(redials(&mut r, due + 25, again - 25), vec![]);
        // A second time once it has passed.
        assert_eq!(
            redials(&mut r, again, again),
            reset_and_refetch(again, &head)
        );
    }
    // The holder came first and later among the sources.
    assert!(positions.contains(&0), "{positions:?}");
    assert!(positions.iter().any(|p| *p > 0), "{positions:?}");
}

#[test]
fn a_holder_that_began_to_send_keeps_its_connection() {
    let head = ad(2, 1, "n1");
    let (mut r, _) = fetching_from_one_holder(1, &head);
    // A report for another version changes nothing: the holder is still silent.
    r.handle_fetch_sending(&ad(1, 1, "n1").version);
    r.handle_tick(725, 725);
    r.handle_fetch_sending(&head.version);
    assert_eq!(redials(&mut r, 750, 5_000), vec![]);
}

#[test]
fn a_report_for_another_version_does_not_count_as_sending() {
    let head = ad(2, 1, "n1");
    let (mut r, p) = fetching_from_one_holder(1, &head);
    r.handle_fetch_sending(&ad(1, 1, "n1").version);
    let due = 700 + timing().fetch_hedge_ms * (p as u64 + 1);
    assert_eq!(redials(&mut r, 725, due), reset_and_refetch(due, &head));
}

#[test]
fn a_fetch_with_two_holders_is_left_to_the_hedged_race() {
    let head = ad(2, 1, "n1");
    let mut r = replica("n3", 3, 0, 0);
    r.handle_members(vec![
        member("n1", 1, true, true, Some(head.clone())),
        member("n2", 2, true, true, Some(head.clone())),
    ]);
    r.handle_tick(700, 700);
    assert!(drain(&mut r)
        .iter()
        .any(|a| matches!(a, Action::Fetch { .. })));
    assert_eq!(redials(&mut r, 725, 5_000), vec![]);
}
