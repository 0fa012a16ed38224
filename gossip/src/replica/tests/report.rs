//! Death reports (`report.rs`): a death another live member reports is confirmed at the lower
//! bar, never for a member heard from lately, never on the word of a member judged dead, and
//! not reported on; this node's own deaths are reported, pushed to the live members, and
//! withdrawn.

use super::*;

/// n1 and n3 followed until 2,000 ms (a beat every 100 ms); then n1 goes silent and n3 keeps
/// beating, with `members` handed in at `report_at_ms`. Returns when n1 was judged dead.
fn silence_n1(r: &mut Replica, report_at_ms: u64, members: Vec<Member>) -> u64 {
    let beat = follow_with_heartbeats(r, 2_000);
    silence_n1_from(r, 2_025, beat, report_at_ms, members)
}

/// From `from_ms` n1 is silent and n3 beats (numbered from `beat`), `members` handed in at
/// `report_at_ms`; when n1 was judged dead, at most 1,475 ms into the silence.
fn silence_n1_from(
    r: &mut Replica,
    from_ms: u64,
    mut beat: u64,
    report_at_ms: u64,
    members: Vec<Member>,
) -> u64 {
    let mut members = Some(members);
    for now in (from_ms..=from_ms + 1_475).step_by(25) {
        if now % 100 == 0 {
            r.handle_heartbeats(now, [(id("n3"), 0, addr(3), beat)]);
            beat += 1;
        }
        if now >= report_at_ms {
            if let Some(m) = members.take() {
                r.handle_members(m);
            }
        }
        r.handle_tick(now, now);
        if !alive(r, "n1") {
            return now;
        }
    }
    panic!("n1 still alive 1,475 ms into its silence");
}

/// n1 and n3 beat every 100 ms from `from_ms` to `to_ms`; the next beat number.
fn both_beat(r: &mut Replica, from_ms: u64, to_ms: u64, mut beat: u64) -> u64 {
    for now in (from_ms..=to_ms).step_by(25) {
        if now % 100 == 0 {
            r.handle_heartbeats(
                now,
                [(id("n1"), 0, addr(1), beat), (id("n3"), 0, addr(3), beat)],
            );
            beat += 1;
        }
        r.handle_tick(now, now);
    }
    beat
}

fn reporting(name: &str, i: u8, alive: bool, down: &[&str]) -> Member {
    let head = ad(4, 2, "n1");
    let mut m = member(name, i, alive, true, Some(head));
    m.down = down.iter().map(|d| (id(d), 0)).collect();
    m
}

/// n1 and n3, neither reporting anything.
fn unreported() -> Vec<Member> {
    vec![reporting("n1", 1, true, &[]), reporting("n3", 3, true, &[])]
}

/// When `silence_n1` judges n1 dead with no report believed: phi 8, ~800 ms of silence (see
/// `a_silent_member_is_judged_dead_at_a_tick_without_new_members`).
const UNREPORTED_DEATH_MS: std::ops::RangeInclusive<u64> = 2_800..=2_875;

/// The `ReportDown` actions queued since the last drain.
fn report_downs(r: &mut Replica) -> Vec<Action> {
    drain(r)
        .into_iter()
        .filter(|a| matches!(a, Action::ReportDown { .. }))
        .collect()
}

#[test]
fn a_death_reported_by_a_live_member_is_confirmed_at_the_lower_bar() {
    // Unreported, n1's death waits for phi 8.
    let mut alone = replica("n2", 2, 0, 0);
    let at = silence_n1(&mut alone, 2_100, unreported());
    assert!(UNREPORTED_DEATH_MS.contains(&at), "{at}");
    // n3 reports it at 2,100 ms, when n1 has been silent for 100 ms: not enough on its own;
    // n2 follows once n1's phi passes the confirm bar (5 here: ~500 ms of silence).
    let mut r = replica("n2", 2, 0, 0);
    let members = vec![
        reporting("n1", 1, true, &[]),
        reporting("n3", 3, true, &["n1"]),
    ];
    let at = silence_n1(&mut r, 2_100, members);
    assert!((2_500..=2_575).contains(&at), "confirmed at {at}");
    // A confirmed death is not reported on: one judge's word reaches the others once.
    assert!(r.down_list().is_empty());
    assert!(report_downs(&mut r).is_empty());
}

#[test]
fn a_report_never_kills_a_member_heard_from_lately() {
    let mut r = replica("n2", 2, 0, 0);
    let mut beat = follow_with_heartbeats(&mut r, 2_000);
    r.handle_members(vec![
        reporting("n1", 1, true, &[]),
        reporting("n3", 3, true, &["n1"]),
    ]);
    for now in (2_025..=5_000).step_by(25) {
        beat = both_beat(&mut r, now, now, beat);
        assert!(alive(&r, "n1"), "n1 beats, reported or not, at {now}");
    }
}

#[test]
fn a_report_from_a_member_judged_dead_counts_for_nothing() {
    let mut r = replica("n2", 2, 0, 0);
    // n4 is listed dead (and followed by no heartbeat): its word does not count.
    let members = vec![
        reporting("n1", 1, true, &[]),
        reporting("n3", 3, true, &[]),
        reporting("n4", 4, false, &["n1"]),
    ];
    let at = silence_n1(&mut r, 2_100, members);
    assert!(
        UNREPORTED_DEATH_MS.contains(&at),
        "judged at {at}, as unreported"
    );
}

#[test]
fn a_reporter_listing_many_deaths_counts_for_nothing() {
    // Three members listed: more than one judge in a cluster of 3 may list
    // (`report::believable`): more likely n3 is cut off or starved than right about them all.
    let mut r = replica("n2", 2, 0, 0);
    let mut n3 = reporting("n3", 3, true, &["n1"]);
    n3.down.extend([(id("n7"), 0), (id("n8"), 0)]);
    let members = vec![reporting("n1", 1, true, &[]), n3];
    let at = silence_n1(&mut r, 2_100, members);
    assert!(
        UNREPORTED_DEATH_MS.contains(&at),
        "judged at {at}, as unreported"
    );
}

#[test]
fn a_large_settled_cluster_reports_and_believes() {
    // 40 members, none judged wrongly: n3's report is believed as in a small cluster.
    let mut r = replica("n2", 2, 0, 0);
    let mut members = vec![
        reporting("n1", 1, true, &[]),
        reporting("n3", 3, true, &["n1"]),
    ];
    members.extend((0..38).map(|i| reporting(&format!("x{i:03}"), 9, true, &[])));
    let at = silence_n1(&mut r, 2_100, members);
    assert!((2_500..=2_575).contains(&at), "confirmed at {at}");
    // And a death judged here is reported.
    let mut r = replica("n2", 2, 0, 0);
    let mut members = unreported();
    members.extend((0..38).map(|i| reporting(&format!("x{i:03}"), 9, true, &[])));
    silence_n1(&mut r, 2_100, members);
    assert_eq!(r.down_list(), vec![(id("n1"), 0)]);
}

/// n1 is judged dead at its silence, then beats again: n2's judgement was wrong. Returns when
/// n1 is alive again, and the next beat number.
fn n1_comes_back(r: &mut Replica) -> (u64, u64) {
    let died = silence_n1(r, 2_100, unreported());
    let back = died + 1_000;
    let beat = both_beat(r, died + 25, back, 100);
    assert!(alive(r, "n1"));
    (back, beat)
}

#[test]
fn a_node_wrong_lately_neither_reports_nor_believes() {
    use super::super::report::WRONG_QUIET_MS;
    let n3_reports_n1 = || {
        vec![
            reporting("n1", 1, true, &[]),
            reporting("n3", 3, true, &["n1"]),
        ]
    };
    // 3 s after the wrong judgement n1 goes silent again and n3 reports it: n2 waits for its
    // own threshold and does not report its judgement.
    let mut r = replica("n2", 2, 0, 0);
    let (back, beat) = n1_comes_back(&mut r);
    let from = back + 3_000;
    let beat = both_beat(&mut r, back + 25, from - 25, beat);
    drain(&mut r);
    let own = silence_n1_from(&mut r, from, beat, from, n3_reports_n1()) - from;
    assert!(
        (800..=875).contains(&own),
        "judged {own} ms into the silence"
    );
    assert!(r.down_list().is_empty());
    assert!(report_downs(&mut r).is_empty());
    // The same once the quiet time has passed: the report is believed (the confirm bar, ~500
    // ms of silence) ...
    let mut r = replica("n2", 2, 0, 0);
    let (back, beat) = n1_comes_back(&mut r);
    let from = back + WRONG_QUIET_MS;
    let beat = both_beat(&mut r, back + 25, from - 25, beat);
    let confirmed = silence_n1_from(&mut r, from, beat, from, n3_reports_n1()) - from;
    assert!(
        (500..=575).contains(&confirmed),
        "confirmed {confirmed} ms into the silence"
    );
    // ... and a judgement of its own is reported again.
    let mut r = replica("n2", 2, 0, 0);
    let (back, beat) = n1_comes_back(&mut r);
    let from = back + WRONG_QUIET_MS;
    let beat = both_beat(&mut r, back + 25, from - 25, beat);
    silence_n1_from(&mut r, from, beat, from, unreported());
    assert_eq!(r.down_list(), vec![(id("n1"), 0)]);
}

#[test]
fn own_deaths_are_reported_pushed_to_live_members_and_withdrawn() {
    let mut r = replica("n2", 2, 0, 0);
    let died = silence_n1(&mut r, 2_100, unreported());
    assert_eq!(
        report_downs(&mut r),
        vec![Action::ReportDown {
            down: vec![(id("n1"), 0)],
            to: vec![(id("n3"), addr(3))],
        }]
    );
    assert_eq!(r.down_list(), vec![(id("n1"), 0)]);
    // n1 comes back (alive on its second beat): the report is withdrawn, pushed to nobody,
    // once a second has passed since the key last changed (`report::PUBLISH_EVERY_MS`).
    let mut withdrawn = None;
    let mut beat = 100;
    for now in (3_000..=4_500).step_by(25) {
        beat = both_beat(&mut r, now, now, beat);
        let out = report_downs(&mut r);
        if !out.is_empty() {
            assert_eq!(
                out,
                vec![Action::ReportDown {
                    down: Vec::new(),
                    to: Vec::new(),
                }]
            );
            assert!(withdrawn.is_none(), "withdrawn twice");
            withdrawn = Some(now);
        }
    }
    assert!(alive(&r, "n1"));
    assert_eq!(
        withdrawn,
        Some(died + super::super::report::PUBLISH_EVERY_MS)
    );
    assert!(r.down_list().is_empty());
}

#[test]
fn a_report_expires() {
    let mut r = replica("n2", 2, 0, 0);
    let died = silence_n1(&mut r, 2_100, unreported());
    drain(&mut r);
    let mut beat = 100;
    let mut withdrawn = None;
    for now in (died + 25..=died + 12_000).step_by(25) {
        if now % 100 == 0 {
            r.handle_heartbeats(now, [(id("n3"), 0, addr(3), beat)]);
            beat += 1;
        }
        r.handle_tick(now, now);
        if drain(&mut r).contains(&Action::ReportDown {
            down: Vec::new(),
            to: Vec::new(),
        }) {
            withdrawn = Some(now);
            break;
        }
    }
    assert_eq!(withdrawn, Some(died + super::super::report::DOWN_REPORT_MS));
    assert!(r.down_list().is_empty());
}
