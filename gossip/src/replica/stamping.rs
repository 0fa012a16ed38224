//! Stamping as the publisher: the version a new document gets, and the epoch reservations
//! that let a new term's first stamp leave without writing the epoch file (`reservation.rs`).

use super::{Action, NotPublisher, Replica, RESERVE_RETRY_MS};
use crate::election::Role;
use crate::head::{next_stamp, HeldAd, Stamp, StampState};
use crate::reservation;

impl Replica {
    /// The version a new document with `digest` gets, without committing to it (the shell may
    /// have to persist the epoch first). `Err` unless this node is the publisher.
    pub fn plan_stamp(&self, digest: &str) -> Result<Stamp, NotPublisher> {
        let role = self.role();
        if role != Role::Publisher {
            return Err(NotPublisher(role));
        }
        let head = self.effective_head();
        Ok(next_stamp(
            &self.me.id,
            &self.stamp,
            head.as_ref(),
            self.max_epoch_seen,
            digest,
        ))
    }

    /// Before a stamp of `epoch` leaves the node: `Some(target)` when the epoch file must first
    /// be written up to `target` (then [`Replica::handle_epoch_persisted`]); `None` when the
    /// reservation covers it, the usual case, so a new term's first stamp does no I/O.
    pub fn epoch_write_before_stamp(&self, epoch: u64) -> Option<u64> {
        reservation::write_before_stamp(self.reserved, epoch)
    }

    /// The epoch file now holds `target` (`ok`), or writing it failed (tried again in 1 s).
    pub fn handle_epoch_persisted(&mut self, now_ms: u64, target: u64, ok: bool) {
        if self.reserving == Some(target) {
            self.reserving = None;
        }
        if ok {
            self.reserved = self.reserved.max(target);
        } else {
            self.reserve_retry_at_ms = Some(now_ms + RESERVE_RETRY_MS);
        }
    }

    /// Commits a stamp made with [`Replica::plan_stamp`]: this node now holds it. The epoch
    /// file must already cover it ([`Replica::epoch_write_before_stamp`]).
    pub fn commit_stamp(&mut self, ad: HeldAd) {
        debug_assert!(
            ad.version.epoch <= self.reserved,
            "stamp {} beyond the epoch file's {}",
            ad.version,
            self.reserved
        );
        self.stamp = StampState {
            epoch: Some(ad.version.epoch),
            seq: ad.version.seq,
        };
        self.install(ad);
    }

    /// Asks for a reservation ahead of need (`reservation.rs`), at most one at a time.
    pub(super) fn reserve_epochs(&mut self, now_ms: u64) {
        if self.reserve_retry_at_ms.is_some_and(|at| now_ms < at) {
            return;
        }
        self.reserve_retry_at_ms = None;
        if let Some(target) =
            reservation::to_reserve(self.reserved, self.reserving, self.max_epoch_seen)
        {
            self.reserving = Some(target);
            self.actions.push_back(Action::ReserveEpoch(target));
        }
    }
}
