//! When a polled file may be read: only once it has held still across two polls.
//!
//! Pure: the static source feeds it one [`Stamp`] (size, mtime, inode) per poll and reads the
//! file only when told to. A file caught half-written (truncated, then written; or written in
//! pieces) changes between polls, so it is never read in that state; once the writer is done the
//! stamp holds still and the next poll reads it.

use std::time::SystemTime;

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
    /// The file changed since the last poll: wait for it to hold still.
    Settling,
    /// Same stamp as the previous poll and not read yet: read it now.
    Read,
}

#[derive(Debug, Default, Clone)]
pub struct Settle {
    /// The stamp seen at the previous poll.
    previous: Option<Stamp>,
    /// The stamp of the content last read (accepted or rejected).
    read: Option<Stamp>,
}

impl Settle {
    pub fn observe(&mut self, stamp: Stamp) -> Verdict {
        let previous = self.previous.replace(stamp);
        if self.read == Some(stamp) {
            Verdict::Unchanged
        } else if previous == Some(stamp) {
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
        self.previous = None;
        self.read = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn stamp(len: u64, t: u64) -> Stamp {
        Stamp {
            len,
            modified: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(t)),
            inode: 7,
        }
    }

    #[test]
    fn a_file_is_read_once_it_held_still_for_two_polls() {
        let mut s = Settle::default();
        assert_eq!(s.observe(stamp(10, 1)), Verdict::Settling);
        assert_eq!(s.observe(stamp(10, 1)), Verdict::Read);
        s.mark_read(stamp(10, 1));
        assert_eq!(s.observe(stamp(10, 1)), Verdict::Unchanged);
    }

    #[test]
    fn truncate_then_write_is_never_read_in_between() {
        let mut s = Settle::default();
        s.observe(stamp(10, 1));
        s.observe(stamp(10, 1));
        s.mark_read(stamp(10, 1));
        // Truncated at t=5, written at t=6 before the next poll could see the empty file twice.
        assert_eq!(s.observe(stamp(0, 5)), Verdict::Settling);
        assert_eq!(s.observe(stamp(12, 6)), Verdict::Settling);
        assert_eq!(s.observe(stamp(12, 6)), Verdict::Read);
    }

    #[test]
    fn a_replaced_file_of_the_same_size_and_time_is_read_again() {
        let mut s = Settle::default();
        s.observe(stamp(10, 1));
        s.observe(stamp(10, 1));
        s.mark_read(stamp(10, 1));
        let swapped = Stamp {
            inode: 8,
            ..stamp(10, 1)
        };
        assert_eq!(s.observe(swapped), Verdict::Settling);
        assert_eq!(s.observe(swapped), Verdict::Read);
    }

    #[test]
    fn forgetting_reads_a_returning_file_again() {
        let mut s = Settle::default();
        s.observe(stamp(10, 1));
        s.observe(stamp(10, 1));
        s.mark_read(stamp(10, 1));
        s.forget();
        assert_eq!(s.observe(stamp(10, 1)), Verdict::Settling);
        assert_eq!(s.observe(stamp(10, 1)), Verdict::Read);
    }

    proptest! {
        /// Whatever the sequence of stamps, `Read` comes only for a stamp equal to the one
        /// seen at the poll before, and never for the stamp last read.
        #[test]
        fn read_only_after_two_equal_polls(stamps in proptest::collection::vec((0u64..3, 0u64..3), 1..40)) {
            let mut s = Settle::default();
            let mut before: Option<Stamp> = None;
            let mut read: Option<Stamp> = None;
            for (len, t) in stamps {
                let st = stamp(len, t);
                if s.observe(st) == Verdict::Read {
                    prop_assert_eq!(before, Some(st));
                    prop_assert_ne!(read, Some(st));
                    s.mark_read(st);
                    read = Some(st);
                }
                before = Some(st);
            }
        }
    }
}
