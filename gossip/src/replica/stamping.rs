//! Stamping as the publisher: the version a new document gets, and the epoch reservations
//! that let a new term's first stamp leave without writing the epoch file (`reservation.rs`).

use super::{Action, Replica, StampRefused, RESERVE_RETRY_MS};
use crate::election::Role;
use crate::head::{next_stamp, should_adopt, HeldAd, Stamp, StampState};
use crate::reservation;

impl Replica {
    /// The version a new document with `digest` gets, without committing to it (the shell may
    /// have to persist the epoch first). `Err` unless this node is the publisher, or when no
    /// epoch above the head is left (`head::EpochsExhausted`: never a wrapped, lower version).
    pub fn plan_stamp(&self, digest: &str) -> Result<Stamp, StampRefused> {
        let role = self.role();
        if role != Role::Publisher {
            return Err(StampRefused::NotPublisher(role));
        }
        let head = self.effective_head();
        Ok(next_stamp(
            &self.me.id,
            &self.stamp,
            head.as_ref(),
            self.max_epoch_seen,
            digest,
        )?)
    }

    /// Whether the publisher must publish its source's table again: it is the publisher and
    /// the head it sees is not the document this process last stamped in its current term.
    /// A head with another node's id, or with this node's id but stamped by an earlier process
    /// (a stale member that comes back after this node restarted with a wiped state folder
    /// holds one) or in an earlier term, or another copy of this process's last version: the
    /// cluster runs a table this publisher's source did not give it this term. Once it stamps
    /// the table again, the stamp is above that head (`head::next_stamp`), so this turns false:
    /// it asks once per foreign head, never in a loop.
    pub fn needs_republish(&self) -> bool {
        if self.role() != Role::Publisher {
            return false;
        }
        let Some(head) = self.effective_head() else {
            return false;
        };
        self.stamp.last.as_ref() != Some(&(head.version, head.digest))
    }

    /// Why this publisher cannot stamp a new document, if it cannot (every epoch above the
    /// head is used): a readiness reason, since its source's tables can no longer spread.
    /// Also when its next stamp needs an epoch the epoch file does not hold yet and the last
    /// write to that file failed (`--state-dir` unwritable): it would never publish, and every
    /// other surface still showed the old head as applied (an audit).
    pub fn stamp_refusal(&self) -> Option<String> {
        match self.plan_stamp("") {
            Err(StampRefused::EpochsExhausted(e)) => Some(e.to_string()),
            Ok(Stamp::New(version)) => {
                let target = self.epoch_write_before_stamp(version.epoch)?;
                self.reserve_error.as_ref().map(|e| {
                    format!("cannot write epoch {target} to the epoch file (--state-dir): {e}")
                })
            }
            _ => None,
        }
    }

    /// Before a stamp of `epoch` leaves the node: `Some(target)` when the epoch file must first
    /// be written up to `target` (then [`Replica::handle_epoch_persisted`]); `None` when the
    /// reservation covers it, the usual case, so a new term's first stamp does no I/O.
    pub fn epoch_write_before_stamp(&self, epoch: u64) -> Option<u64> {
        reservation::write_before_stamp(self.reserved, epoch)
    }

    /// The epoch file now holds `target` (`Ok`), or writing it failed (tried again in 1 s;
    /// the error is kept for [`Replica::stamp_refusal`] until a write succeeds).
    pub fn handle_epoch_persisted(
        &mut self,
        now_ms: u64,
        target: u64,
        written: Result<(), String>,
    ) {
        if self.reserving == Some(target) {
            self.reserving = None;
        }
        match written {
            Ok(()) => {
                self.reserved = self.reserved.max(target);
                self.reserve_error = None;
            }
            Err(e) => {
                self.reserve_retry_at_ms = Some(now_ms + RESERVE_RETRY_MS);
                self.reserve_error = Some(e);
            }
        }
    }

    /// Commits a stamp made with [`Replica::plan_stamp`]: this node now holds it. The epoch
    /// file must already cover it ([`Replica::epoch_write_before_stamp`]). A stamp that does not
    /// rank above what this node holds is refused (the held version never decreases): the
    /// shell must then install nothing.
    pub fn commit_stamp(&mut self, ad: HeldAd) -> Result<(), StampRefused> {
        debug_assert!(
            ad.version.epoch <= self.reserved,
            "stamp {} beyond the epoch file's {}",
            ad.version,
            self.reserved
        );
        let held = self.held.as_ref().map(|h| (&h.version, h.digest.as_str()));
        if !should_adopt(held, (&ad.version, &ad.digest)) {
            return Err(StampRefused::Behind {
                stamp: ad.version,
                held: self.held.as_ref().map(|h| h.version.clone()),
            });
        }
        self.stamp = StampState {
            epoch: Some(ad.version.epoch),
            seq: ad.version.seq,
            last: Some((ad.version.clone(), ad.digest.clone())),
        };
        self.install(ad);
        Ok(())
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
