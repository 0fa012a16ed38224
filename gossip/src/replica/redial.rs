//! Asking the head's only holder again over a new connection (issue #14).
//!
//! After 80% loss into the publisher, or a one-way cut from it, the publisher is often the only
//! holder of the newest head, and nobody judges it dead (its heartbeat still reaches everyone
//! through the others), so no revival replaces the connection whose retransmission timers
//! backed off during the loss: the fetch over it crawls, and the answer timeout (2 s) is the
//! only way out. The hedged race (`hedge.rs`) cannot help: there is no other holder to ask.
//! So when the fetch's only holder has had `fetch_hedge_ms` to begin sending and has not, the
//! core asks the shell to replace that connection ([`Action::ResetConnection`]) and abandons
//! the fetch, which is planned again at the same tick and asks over a fresh dial.

use super::{Action, Replica};
use crate::hedge::MAX_IN_FLIGHT;
use crate::version::{NodeId, Version};
use crate::view::Decisions;

/// One source's connection is replaced at most this often: under a loss that goes on, a new
/// handshake needs time to finish too (and the peer counts every reset). Still below the 2 s
/// answer timeout that would otherwise be the first to drop it.
pub const REDIAL_SOURCE_EVERY_MS: u64 = 1_000;

impl Replica {
    /// A source of the fetch of `wanted` began to send it (the hedged race's `sending`): the
    /// connection works, whatever the transfer then takes. A report for a fetch no longer in
    /// flight (abandoned) is ignored.
    pub fn handle_fetch_sending(&mut self, wanted: &Version) {
        if let Some(f) = self.fetching.as_mut().filter(|f| f.version == *wanted) {
            f.sending = true;
        }
    }

    /// Whether the fetch in flight, of the head itself, has a single holder among its sources
    /// that should have begun to send by now and has not: then its connection is replaced
    /// (queued here) and the caller abandons the fetch and plans it again.
    pub(super) fn redial_silent_source(&mut self, now_ms: u64, decisions: &Decisions) -> bool {
        let (Some(f), Some(head)) = (&self.fetching, decisions.head.as_ref()) else {
            return false;
        };
        if f.sending || head.version != f.version {
            return false;
        }
        let mut holding = f
            .sources
            .iter()
            .enumerate()
            .filter(|(_, (id, _))| head.holders.contains(id));
        let (Some((position, (id, listen))), None) = (holding.next(), holding.next()) else {
            // No holder (the parents may get it), or several: the race asks the next one.
            return false;
        };
        // The race asks source i by i * hedge at the latest while fewer than MAX_IN_FLIGHT
        // wait (a failure only makes the next one due sooner); beyond that it is asked only
        // once an earlier one fails, and a fetch restarted every second would never reach it.
        if position >= MAX_IN_FLIGHT {
            return false;
        }
        let hedge_ms = self.timing.fetch_hedge_ms;
        let answer_by = f
            .started_ms
            .saturating_add(hedge_ms.saturating_mul(position as u64 + 1));
        let recently = self
            .redialed
            .get(id)
            .is_some_and(|at| now_ms.saturating_sub(*at) < REDIAL_SOURCE_EVERY_MS);
        if now_ms < answer_by || recently {
            return false;
        }
        let (id, listen): (NodeId, _) = (id.clone(), *listen);
        self.redialed
            .retain(|_, at| now_ms.saturating_sub(*at) < REDIAL_SOURCE_EVERY_MS);
        self.redialed.insert(id.clone(), now_ms);
        tracing::debug!(node = %self.me.id, source = %id, version = %f.version, "the only holder of the head has not answered: replacing its connection and asking again");
        self.actions
            .push_back(Action::ResetConnection { id, listen });
        true
    }
}
