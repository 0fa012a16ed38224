//! When a polled file may be read: only once it has held still for a quiet period.
//!
//! Pure: the static source feeds it one [`Stamp`] (size, mtime, inode) per poll with the time of
//! the poll, and reads the file only when told to. A file caught half-written (truncated, then
//! written; or written in pieces) changes between polls, so it is never read in that state; once
//! the writer is done the stamp holds still and the first poll a quiet period after it first
//! showed reads it. A writer that stops for longer than the quiet period in the middle of a file
//! cannot be told from one that is done: only a rename over the file is atomic.

use std::time::{Duration, Instant, SystemTime};

/// How long a stamp must hold still before the file is read. Longer than one poll so that a
/// writer's short pause between two pieces (a script writing service by service, a slow
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
    /// The file changed within the quiet period: wait for it to hold still.
    Settling,
    /// The stamp has held still for the quiet period and was not read yet: read it now.
    Read,
}

#[derive(Debug, Clone)]
pub struct Settle {
    quiet: Duration,
    /// The stamp seen at the previous poll, and the poll that first showed it.
    still: Option<(Stamp, Instant)>,
    /// The stamp of the content last read (accepted or rejected).
    read: Option<Stamp>,
}

impl Settle {
    pub fn new(quiet: Duration) -> Self {
        Self {
            quiet,
            still: None,
            read: None,
        }
    }

    /// `stamp` as a poll at `now` saw it.
    pub fn observe(&mut self, stamp: Stamp, now: Instant) -> Verdict {
        let since = match self.still {
            Some((held, since)) if held == stamp => since,
            _ => {
                self.still = Some((stamp, now));
                now
            }
        };
        if self.read == Some(stamp) {
            Verdict::Unchanged
        } else if now.saturating_duration_since(since) >= self.quiet {
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

    /// Polls every 250 ms from a fixed origin, the quiet period a second: 4 polls.
    struct Polls {
        settle: Settle,
        origin: Instant,
        n: u64,
    }

    impl Polls {
        fn new() -> Self {
            Self {
                settle: Settle::new(Duration::from_millis(1000)),
                origin: Instant::now(),
                n: 0,
            }
        }
        fn poll(&mut self, stamp: Stamp) -> Verdict {
            self.n += 1;
            let now = self.origin + Duration::from_millis(250 * self.n);
            self.settle.observe(stamp, now)
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
    fn a_file_is_read_once_it_held_still_for_the_quiet_period() {
        let mut p = Polls::new();
        for _ in 0..4 {
            assert_eq!(p.poll(stamp(10, 1)), Verdict::Settling);
        }
        assert_eq!(p.poll(stamp(10, 1)), Verdict::Read);
        p.settle.mark_read(stamp(10, 1));
        assert_eq!(p.poll(stamp(10, 1)), Verdict::Unchanged);
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

    #[test]
    fn a_replaced_file_of_the_same_size_and_time_is_read_again() {
        let mut p = Polls::new();
        p.polls_until_read(stamp(10, 1));
        let swapped = Stamp {
            inode: 8,
            ..stamp(10, 1)
        };
        assert_eq!(p.polls_until_read(swapped), 5);
    }

    #[test]
    fn forgetting_reads_a_returning_file_again() {
        let mut p = Polls::new();
        p.polls_until_read(stamp(10, 1));
        p.settle.forget();
        assert_eq!(p.polls_until_read(stamp(10, 1)), 5);
    }

    #[test]
    fn a_late_poll_counts_the_time_that_passed() {
        let mut s = Settle::new(Duration::from_millis(1000));
        let t0 = Instant::now();
        assert_eq!(s.observe(stamp(10, 1), t0), Verdict::Settling);
        assert_eq!(
            s.observe(stamp(10, 1), t0 + Duration::from_millis(999)),
            Verdict::Settling
        );
        assert_eq!(
            s.observe(stamp(10, 1), t0 + Duration::from_millis(1000)),
            Verdict::Read
        );
    }

    proptest! {
        /// Whatever the sequence of stamps and the times between polls, `Read` comes only for
        /// a stamp every poll of the last quiet period showed, and never for the stamp last read.
        #[test]
        fn read_only_after_a_quiet_period(
            polls in proptest::collection::vec((0u64..3, 0u64..3, 0u64..1_500), 1..60),
        ) {
            let quiet = Duration::from_millis(1000);
            let mut s = Settle::new(quiet);
            let origin = Instant::now();
            let mut now = origin;
            // (stamp, when it was first seen in the current run of equal stamps)
            let mut run: Option<(Stamp, Instant)> = None;
            let mut read: Option<Stamp> = None;
            for (len, t, gap_ms) in polls {
                now += Duration::from_millis(gap_ms);
                let st = stamp(len, t);
                run = match run {
                    Some((held, since)) if held == st => Some((held, since)),
                    _ => Some((st, now)),
                };
                if s.observe(st, now) == Verdict::Read {
                    let (_, since) = run.unwrap();
                    prop_assert!(now - since >= quiet);
                    prop_assert_ne!(read, Some(st));
                    s.mark_read(st);
                    read = Some(st);
                }
            }
        }
    }
}
