//! Epoch reservations: how far ahead of need the epoch file is written. Pure; no I/O.
//!
//! A stamp with epoch `e` may leave the node only once the epoch file holds `e` or more (so a
//! restarted publisher never stamps a version twice). Writing the file when a new term's first
//! stamp needs it put a synced write on the takeover path, under the mesh's locks: the chaos
//! soak showed a new publisher frozen for up to 1.3 s (its control loop stalled, so it went
//! back to catching up and the takeover took 2.4 s) while another process filled the disk.
//! Instead the file holds a *reservation*: an epoch [`AHEAD`] above the highest epoch seen,
//! written in the background while the node follows, and renewed once fewer than
//! [`LOW_WATER`] epochs are left. A new term then stamps inside the reservation and touches no
//! file; only a jump of the cluster's epoch by more than [`LOW_WATER`] between two control
//! steps can still need a write on the stamp path ([`write_before_stamp`]).
//!
//! The price: a restarted node starts above its last reservation (and reserves [`AHEAD`] above
//! that), so the cluster's epoch may jump by up to [`AHEAD`] + 1 per start of that node when it
//! next publishes. Epochs only order versions; gaps are fine.

use crate::version::MAX_EPOCH;

/// How far above the highest epoch seen a reservation reaches.
pub const AHEAD: u64 = 32;
/// A reservation is renewed once fewer than this many epochs are left above the highest seen.
pub const LOW_WATER: u64 = 16;

/// The epoch to reserve now, if any: `reserved` is on disk, `in_flight` is being written,
/// `max_epoch_seen` is the highest epoch this node has seen (a new term stamps one above it).
/// `None` while what is on disk or on its way covers at least [`LOW_WATER`] more epochs, or
/// reaches [`MAX_EPOCH`] (no stamp goes above it, so no reservation does).
pub fn to_reserve(reserved: u64, in_flight: Option<u64>, max_epoch_seen: u64) -> Option<u64> {
    let covered = in_flight.map_or(reserved, |f| f.max(reserved));
    (covered < max_epoch_seen.saturating_add(LOW_WATER).min(MAX_EPOCH))
        .then(|| max_epoch_seen.saturating_add(AHEAD).min(MAX_EPOCH))
}

/// Before a stamp of `epoch` leaves the node: `Some(target)` when the file must first be written
/// up to `target` (the stamp is beyond the reservation), `None` when it is covered already.
pub fn write_before_stamp(reserved: u64, epoch: u64) -> Option<u64> {
    (epoch > reserved).then(|| epoch.saturating_add(AHEAD).min(MAX_EPOCH).max(epoch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reserves_ahead_and_renews_at_the_low_water_mark() {
        // A fresh node (nothing on disk, epoch 0 seen) reserves at once.
        assert_eq!(to_reserve(0, None, 0), Some(AHEAD));
        // Plenty left: nothing to do.
        assert_eq!(to_reserve(AHEAD, None, 0), None);
        assert_eq!(to_reserve(AHEAD, None, AHEAD - LOW_WATER), None);
        // Fewer than LOW_WATER left: renew, AHEAD above what is seen.
        assert_eq!(
            to_reserve(AHEAD, None, AHEAD - LOW_WATER + 1),
            Some(2 * AHEAD - LOW_WATER + 1)
        );
        // A write on its way counts as reserved; an outdated one does not.
        assert_eq!(to_reserve(0, Some(AHEAD), 0), None);
        assert_eq!(to_reserve(0, Some(AHEAD), 100), Some(100 + AHEAD));
    }

    #[test]
    fn a_stamp_inside_the_reservation_writes_nothing() {
        assert_eq!(write_before_stamp(40, 40), None);
        assert_eq!(write_before_stamp(40, 1), None);
        assert_eq!(write_before_stamp(40, 41), Some(41 + AHEAD));
    }

    #[test]
    fn reservations_stop_at_the_last_epoch() {
        assert_eq!(to_reserve(0, None, MAX_EPOCH - 1), Some(MAX_EPOCH));
        assert_eq!(to_reserve(MAX_EPOCH, None, MAX_EPOCH), None);
        assert_eq!(to_reserve(MAX_EPOCH, None, u64::MAX), None);
        assert_eq!(write_before_stamp(0, MAX_EPOCH), Some(MAX_EPOCH));
    }

    proptest! {
        /// After a reservation lands, a new term (max seen + 1) stamps without a write, and
        /// the reservation covers LOW_WATER more epochs.
        #[test]
        fn a_landed_reservation_covers_the_next_term(reserved in 0u64..1_000_000, seen in 0u64..1_000_000) {
            let reserved = match to_reserve(reserved, None, seen) {
                Some(target) => {
                    prop_assert!(target > seen);
                    target
                }
                None => reserved,
            };
            prop_assert!(reserved >= seen + LOW_WATER);
            prop_assert_eq!(write_before_stamp(reserved, seen + 1), None);
            prop_assert_eq!(to_reserve(reserved, None, seen), None);
        }

        /// A write on the stamp path always covers the stamp.
        #[test]
        fn a_write_before_a_stamp_covers_it(reserved in 0u64..1_000_000, epoch in 0u64..1_000_000) {
            match write_before_stamp(reserved, epoch) {
                Some(target) => prop_assert!(epoch > reserved && target >= epoch),
                None => prop_assert!(epoch <= reserved),
            }
        }
    }
}
