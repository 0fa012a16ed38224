//! When a polled file may be read: only once it has held still for a quiet period.
//!
//! Pure: the static source feeds it one [`Stamp`] (size, mtime, inode) per poll with the time of
//! the poll, and reads the file only when told to. A file caught half-written (truncated, then
//! written; or written in pieces) changes between polls, so it is never read in that state; once
//! the writer is done the stamp holds still and the first poll a quiet period after it first
//! showed reads it. A writer that stops for longer than the quiet period in the middle of a file
//! cannot be told from one that is done: only a rename over the file is atomic.
//!
//! Two quiet periods: a file changed in place waits [`QUIET_PERIOD`]; a file replaced (another
//! inode: a rename over it, a ConfigMap's symlink swap, or the first sight of a file whose last
//! change is older than the quiet period) was complete the moment it appeared, and waits only
//! for a second poll to see it the same, so that a tool renaming a new file over the rules
//! every half second still has each one published. A file first seen within the quiet period of
//! its last change may be in the middle of a write: it waits the quiet period.

use std::time::{Duration, Instant, SystemTime};

/// How long a file changed in place must hold still before it is read. Longer than one poll so
/// that a writer's short pause between two pieces (a script writing service by service, a slow
/// `cat` over the network) is not taken for the end of the file; short enough that an edit is
/// published about a second after it is saved.
pub const QUIET_PERIOD: Duration = Duration::from_secs(1);

/// What the file system says about the file, without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub len: u64,
    pub modified: Option<SystemTime>,
    /// Changes when a file is replaced by rename or a ConfigMap's symlink swap.
    pub inode: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The file is the one last read: nothing to do.
    Unchanged,
    /// The file changed within its quiet period: wait for it to hold still.
    Settling,
    /// The stamp has held still for its quiet period and was not read yet: read it now.
    Read,
}

/// The stamp the last polls showed: since when, and how long it must hold.
#[derive(Debug, Clone, Copy)]
struct Still {
    stamp: Stamp,
    since: Instant,
    quiet: Duration,
}

#[derive(Debug, Clone)]
pub struct Settle {
    in_place: Duration,
    replaced: Duration,
    still: Option<Still>,
    /// The stamp of the content last read (accepted or rejected).
    read: Option<Stamp>,
}

impl Settle {
    /// A file changed in place is read once it held still for `in_place`; a replaced one once
    /// for `replaced` (less than a poll: the second poll that sees it).
    pub fn new(in_place: Duration, replaced: Duration) -> Self {
        Self {
            in_place,
            replaced,
            still: None,
            read: None,
        }
    }

    /// `stamp` as a poll at `now` saw it, `wall` being the wall clock's time then.
    ///
    /// The first sight of a file counts as a replacement only when its last change is older
    /// than the in-place quiet period by `wall`: a source started (a takeover) while the file
    /// was being written in place read it at its second poll, and a new publisher published
    /// the first lines of a file a script was still writing (an operator's probe: two of three
    /// backends removed cluster-wide for 1.3 s).
    pub fn observe(&mut self, stamp: Stamp, now: Instant, wall: SystemTime) -> Verdict {
        let still = match self.still {
            Some(still) if still.stamp == stamp => still,
            previous => {
                let replaced = match previous {
                    Some(p) => p.stamp.inode != stamp.inode,
                    None => stamp
                        .modified
                        .and_then(|m| wall.duration_since(m).ok())
                        .is_some_and(|age| age >= self.in_place),
                };
                let still = Still {
                    stamp,
                    since: now,
                    quiet: if replaced {
                        self.replaced
                    } else {
                        self.in_place
                    },
                };
                self.still = Some(still);
                // Seen once: never read on the poll that first shows a stamp.
                if self.read != Some(stamp) {
                    return Verdict::Settling;
                }
                still
            }
        };
        if self.read == Some(stamp) {
            Verdict::Unchanged
        } else if now.saturating_duration_since(still.since) >= still.quiet {
            Verdict::Read
        } else {
            Verdict::Settling
        }
    }

    /// The file was read and still had `stamp` afterwards: do not read it again until it changes.
    pub fn mark_read(&mut self, stamp: Stamp) {
        self.read = Some(stamp);
    }

    /// The file vanished or could not be examined: start over once it is back.
    pub fn forget(&mut self) {
        self.still = None;
        self.read = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stamp(len: u64, t: u64) -> Stamp {
        Stamp {
            len,
            modified: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(t)),
            inode: 7,
        }
    }

    fn renamed(inode: u64, t: u64) -> Stamp {
        Stamp {
            inode,
            ..stamp(10, t)
        }
    }

    const IN_PLACE: Duration = Duration::from_millis(1000);
    const REPLACED: Duration = Duration::from_millis(125);
    /// A wall clock an hour after every stamp's change: files last changed long ago.
    fn later() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(3_600)
    }

    /// Polls every 250 ms from a fixed origin: a file changed in place is read on the fifth
    /// poll that shows it, a replaced one on the second.
    struct Polls {
        settle: Settle,
        origin: Instant,
        n: u64,
    }

    impl Polls {
        fn new() -> Self {
            Self {
                settle: Settle::new(IN_PLACE, REPLACED),
                origin: Instant::now(),
                n: 0,
            }
        }
        fn poll(&mut self, stamp: Stamp) -> Verdict {
            self.n += 1;
            let now = self.origin + Duration::from_millis(250 * self.n);
            self.settle.observe(stamp, now, later())
        }
        /// Polls `stamp` until it is read; how many polls that took.
        fn polls_until_read(&mut self, stamp: Stamp) -> usize {
            for n in 1..=100 {
                if self.poll(stamp) == Verdict::Read {
                    self.settle.mark_read(stamp);
                    return n;
                }
            }
            panic!("never read")
        }
    }

    #[test]
    fn a_file_first_seen_is_read_on_the_second_poll_and_an_edit_after_the_quiet_period() {
        let mut p = Polls::new();
        assert_eq!(p.polls_until_read(stamp(10, 1)), 2);
        assert_eq!(p.poll(stamp(10, 1)), Verdict::Unchanged);
        for _ in 0..4 {
            assert_eq!(p.poll(stamp(11, 2)), Verdict::Settling);
        }
        assert_eq!(p.poll(stamp(11, 2)), Verdict::Read);
    }

    /// A source that starts (a takeover) while the file is being written in place: its
    /// first sight of a file changed within the quiet period waits out the quiet period, as a
    /// change in place does; a file last changed longer ago is read at the second poll.
    #[test]
    fn a_file_first_seen_while_it_is_written_waits_out_the_quiet_period() {
        let t0 = Instant::now();
        let written = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let fresh = Stamp {
            len: 3,
            modified: Some(written),
            inode: 7,
        };
        let mut s = Settle::new(IN_PLACE, REPLACED);
        let wall = |after: Duration| written + Duration::from_millis(300) + after;
        assert_eq!(
            s.observe(fresh, t0, wall(Duration::ZERO)),
            Verdict::Settling
        );
        let early = t0 + Duration::from_millis(500);
        assert_eq!(
            s.observe(fresh, early, wall(Duration::from_millis(500))),
            Verdict::Settling
        );
        assert_eq!(
            s.observe(fresh, t0 + IN_PLACE, wall(IN_PLACE)),
            Verdict::Read
        );
        // Changed 1.3 s before the first poll: complete, read at the second.
        let mut s = Settle::new(IN_PLACE, REPLACED);
        let old = wall(Duration::from_millis(1_000));
        assert_eq!(s.observe(fresh, t0, old), Verdict::Settling);
        assert_eq!(s.observe(fresh, t0 + REPLACED, old), Verdict::Read);
        // A change time ahead of the clock (skew) is not taken as old.
        let mut s = Settle::new(IN_PLACE, REPLACED);
        let behind = written - Duration::from_secs(60);
        assert_eq!(s.observe(fresh, t0, behind), Verdict::Settling);
        assert_eq!(s.observe(fresh, t0 + REPLACED, behind), Verdict::Settling);
    }

    #[test]
    fn truncate_then_write_is_never_read_in_between() {
        let mut p = Polls::new();
        p.polls_until_read(stamp(10, 1));
        // Truncated at t=5, written at t=6 before the empty file held still.
        assert_eq!(p.poll(stamp(0, 5)), Verdict::Settling);
        assert_eq!(p.poll(stamp(12, 6)), Verdict::Settling);
        assert_eq!(p.polls_until_read(stamp(12, 6)), 4);
    }

    /// The audit of 2026-12-06: a file written in two pieces 0.45 s apart was published
    /// half-written when one still poll was enough.
    #[test]
    fn a_pause_shorter_than_the_quiet_period_is_not_the_end_of_the_file() {
        let mut p = Polls::new();
        p.polls_until_read(stamp(10, 1));
        // The first piece stands for three polls (0.75 s), then the rest comes.
        for _ in 0..3 {
            assert_eq!(p.poll(stamp(3, 5)), Verdict::Settling);
        }
        assert_eq!(p.polls_until_read(stamp(10, 9)), 5);
    }

    /// A tool that renames a new file over the rules every half second (the chaos workload
    /// does) has each one read: a replaced file was complete when it appeared.
    #[test]
    fn files_renamed_over_the_rules_are_each_read_at_the_second_poll() {
        let mut p = Polls::new();
        p.polls_until_read(stamp(10, 1));
        for inode in 8..20 {
            assert_eq!(p.poll(renamed(inode, inode)), Verdict::Settling);
            assert_eq!(p.poll(renamed(inode, inode)), Verdict::Read, "{inode}");
            p.settle.mark_read(renamed(inode, inode));
        }
        // A replaced file then changed in place waits the whole quiet period again.
        assert_eq!(
            p.polls_until_read(Stamp {
                len: 3,
                ..renamed(19, 40)
            }),
            5
        );
    }

    #[test]
    fn a_replaced_file_of_the_same_size_and_time_is_read_again() {
        let mut p = Polls::new();
        p.polls_until_read(stamp(10, 1));
        assert_eq!(p.polls_until_read(renamed(8, 1)), 2);
    }

    #[test]
    fn forgetting_reads_a_returning_file_again() {
        let mut p = Polls::new();
        p.polls_until_read(stamp(10, 1));
        p.settle.forget();
        assert_eq!(p.polls_until_read(stamp(10, 1)), 2);
    }

    #[test]
    fn a_late_poll_counts_the_time_that_passed() {
        let mut s = Settle::new(IN_PLACE, REPLACED);
        let t0 = Instant::now();
        assert_eq!(s.observe(stamp(10, 1), t0, later()), Verdict::Settling);
        assert_eq!(
            s.observe(stamp(10, 1), t0 + REPLACED, later()),
            Verdict::Read
        );
        s.mark_read(stamp(10, 1));
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(s.observe(stamp(11, 2), t1, later()), Verdict::Settling);
        assert_eq!(
            s.observe(stamp(11, 2), t1 + Duration::from_millis(999), later()),
            Verdict::Settling
        );
        assert_eq!(
            s.observe(stamp(11, 2), t1 + IN_PLACE, later()),
            Verdict::Read
        );
    }

    proptest! {
        /// Whatever the stamps and the times between polls: `Read` never comes on the poll that
        /// first shows a stamp, nor before the stamp held still for the quiet period of how it
        /// came (in place, or replaced), nor for the stamp last read.
        #[test]
        fn read_only_after_its_quiet_period(
            polls in proptest::collection::vec((0u64..3, 0u64..3, 7u64..9, 0u64..1_500), 1..60),
        ) {
            let mut s = Settle::new(IN_PLACE, REPLACED);
            let mut now = Instant::now();
            // (stamp, first seen, its quiet period) of the current run of equal stamps
            let mut run: Option<(Stamp, Instant, Duration)> = None;
            let mut read: Option<Stamp> = None;
            for (len, t, inode, gap_ms) in polls {
                now += Duration::from_millis(gap_ms);
                let st = Stamp { inode, ..stamp(len, t) };
                let first_sight = !matches!(run, Some((held, _, _)) if held == st);
                if first_sight {
                    let replaced = run.is_none_or(|(held, _, _)| held.inode != inode);
                    run = Some((st, now, if replaced { REPLACED } else { IN_PLACE }));
                }
                if s.observe(st, now, later()) == Verdict::Read {
                    let (_, since, quiet) = run.unwrap();
                    prop_assert!(!first_sight);
                    prop_assert!(now - since >= quiet);
                    prop_assert_ne!(read, Some(st));
                    s.mark_read(st);
                    read = Some(st);
                }
            }
        }
    }
}
