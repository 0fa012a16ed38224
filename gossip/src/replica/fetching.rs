//! What to fetch and when: one fetch at a time, for the head the election derived, from the
//! holders `spread.rs` orders; a fetch whose version the head moved past is abandoned and the
//! newer head fetched at once (`Action::AbandonFetch`). A fetch its only holder leaves
//! unanswered is asked again over a new connection (`redial.rs`).

use super::{Action, Replica};
use crate::head::{catch_up, CatchUp, HeldAd};
use crate::version::{NodeId, Version};
use crate::view::Decisions;
use std::net::SocketAddr;

#[cfg(feature = "fault-injection")]
use super::bug;

/// The fetch in flight, as planned ([`Action::Fetch`]).
#[derive(Clone, Debug)]
pub(super) struct InFlight {
    pub(super) version: Version,
    pub(super) started_ms: u64,
    pub(super) sources: Vec<(NodeId, SocketAddr)>,
    /// A source began to send it ([`Replica::handle_fetch_sending`]).
    pub(super) sending: bool,
}

impl Replica {
    /// The fetch of `wanted` asked for by [`Action::Fetch`] ended; `adopted`: the head was
    /// installed. A fetch the core abandoned ([`Action::AbandonFetch`]) must not be reported
    /// (the same version may be fetched again since); the end of one for a version not in
    /// flight is ignored.
    pub fn handle_fetch_done(&mut self, now_ms: u64, wanted: &Version, adopted: bool) {
        if self.fetching.as_ref().map(|f| &f.version) != Some(wanted) {
            return;
        }
        self.fetching = None;
        if !adopted {
            self.fetch_retry_at_ms = Some(now_ms + self.timing.fetch_retry_ms);
        }
    }

    /// What to fetch now. A fetch in flight goes on while the head is still its version; once
    /// the head moved past it (a newer stamp, an epoch from a member that was cut off), it is
    /// abandoned and the new head planned at once: finishing it would cost a full pass over
    /// its holders (up to every member at scale) for a version already superseded.
    pub(super) fn plan_fetch(&mut self, now_ms: u64, decisions: &Decisions) {
        if let Some(f) = &self.fetching {
            let head = decisions.head.as_ref().map(|h| &h.version);
            // Still the head, and answered or not yet overdue: it goes on.
            if head.is_none_or(|head| *head <= f.version)
                && !self.redial_silent_source(now_ms, decisions)
            {
                return;
            }
            self.abandon_fetch();
        }
        if self.fetch_retry_at_ms.is_some_and(|at| now_ms < at)
            // Holding a document makes the node ready (it applies what it holds): not while
            // an older process with this id may be alive.
            || self.older_unjudged
            || self.refused().is_some()
        {
            return;
        }
        let live: Vec<NodeId> = self
            .members
            .iter()
            .filter(|m| m.alive)
            .map(|m| m.id.clone())
            .collect();
        let planned = match decisions.head.as_ref() {
            Some(head) => match catch_up(
                &self.me.id,
                self.held.as_ref().map(|h| (&h.version, h.digest.as_str())),
                Some(head),
                decisions.publisher.as_ref(),
                &live,
            ) {
                CatchUp::Fetch { sources } => Some((
                    HeldAd {
                        version: head.version.clone(),
                        digest: head.digest.clone(),
                        size_bytes: head.size_bytes,
                    },
                    sources,
                )),
                CatchUp::UpToDate | CatchUp::NoSource => None,
            },
            None => None,
        };
        #[cfg(feature = "fault-injection")]
        let planned = bug::plan_fetch(
            self.bug,
            planned,
            &self.me.id,
            self.held.as_ref(),
            &self.members,
            now_ms,
        );
        let Some((wanted, sources)) = planned else {
            return;
        };
        let sources: Vec<(NodeId, SocketAddr)> = sources
            .into_iter()
            .filter_map(|id| {
                let m = self.members.iter().find(|m| m.id == id)?;
                Some((id, m.listen))
            })
            .collect();
        if sources.is_empty() {
            return;
        }
        self.fetching = Some(InFlight {
            version: wanted.version.clone(),
            started_ms: now_ms,
            sources: sources.clone(),
            sending: false,
        });
        self.actions.push_back(Action::Fetch { wanted, sources });
    }

    /// Ends the fetch in flight, if any: the shell stops it and reports nothing.
    pub(super) fn abandon_fetch(&mut self) {
        if let Some(f) = self.fetching.take() {
            self.actions.push_back(Action::AbandonFetch(f.version));
        }
    }
}
