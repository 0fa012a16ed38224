//! Death reports: an incarnation this core judges dead at its own threshold goes on its `down`
//! list (gossiped as [`crate::keys::DOWN`]), pushed at once to up to [`PUSH_FANOUT`] members
//! judged alive (gossip carries it on; the key changes at most once per [`PUBLISH_EVERY_MS`]).
//! A member that another live member lists there is judged dead here as soon as its phi passes
//! the lower confirm bar (`LivenessTiming::confirm_phi`). A death confirmed on a report is not
//! reported again: one judge's word reaches the others once, and a node starved into false
//! judgements cannot set off a cascade of pushes.
//!
//! Why: each node judges by itself, and the victim's last heartbeat reaches some survivors a
//! gossip round later than others (relayed), so without reports the last survivor waits about a
//! round longer than the first. With them every survivor sees the death within a round trip of
//! the first judge (issue #16 goal 4). A report alone never kills a member heard from lately:
//! a forged or stale one only lowers the wait from the threshold to the confirm bar.

use super::{Action, Replica};
use crate::version::NodeId;

/// A death stays on this node's list this long: by then every peer has judged by its own
/// threshold (about half a second), and a short list keeps [`believable`] about deaths at once.
pub(super) const DOWN_REPORT_MS: u64 = 3_000;

/// A node that judged a member dead which then beat again (its judgement was wrong) neither
/// reports nor believes reports for this long. While a cluster forms on starved hosts (100
/// nodes starting on 2 cores) every node judges some members dead wrongly by its own threshold,
/// and the lower bar for a reported member spread each such judgement: measured flip by flip,
/// 7-12x the flips while forming and formation 2.5-7x longer (docs/benchmarks.md, "Death
/// reports"). Those runs showed no wrong judgement once the cluster had settled, so a node's own
/// recent wrong judgement tells a forming or starved cluster from a settled one: there it judges
/// on its own, as without reports; a settled cluster of any size keeps them.
pub(super) const WRONG_QUIET_MS: u64 = 10_000;

/// The key changes at most this often.
pub(super) const PUBLISH_EVERY_MS: u64 = 1_000;

/// A new death is pushed to at most this many live members (each push is a gossip exchange,
/// and a dial where no connection is open).
pub(super) const PUSH_FANOUT: usize = 8;

/// The most deaths a reporter may list for its word to count, in a cluster of `members`: one,
/// plus one per 4 members. A node that judges many members dead at once is more likely cut
/// off or starved of CPU itself (100 nodes starting on 2 cores) than right about them all;
/// its judgement stays its own.
pub(super) fn believable(members: usize) -> usize {
    1 + members / 4
}

/// Whether a list of `listed` deaths counts in a cluster of `members`: the one rule for what a
/// node believes and what it publishes.
fn believed(listed: usize, members: usize) -> bool {
    listed <= believable(members)
}

/// This node's own reports.
#[derive(Clone, Debug, Default)]
pub(super) struct Reports {
    /// (id, generation, judged dead at).
    down: Vec<(NodeId, u64, u64)>,
    /// The list as last written to the key, and when.
    published: Vec<(NodeId, u64)>,
    published_ms: Option<u64>,
    /// When a member this node had judged dead last beat again ([`WRONG_QUIET_MS`]).
    wrong_ms: Option<u64>,
}

impl Replica {
    /// A member this node had judged dead beat again: its judgement was wrong.
    pub(super) fn note_wrong(&mut self, now_ms: u64) {
        self.reports.wrong_ms = Some(now_ms);
    }

    /// Whether this node makes and believes reports now: not within [`WRONG_QUIET_MS`] of a
    /// wrong judgement of its own.
    fn reports_open(&self, now_ms: u64) -> bool {
        self.reports
            .wrong_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= WRONG_QUIET_MS)
    }

    /// Incarnations reported dead by members this core judges alive (never about itself), from
    /// reporters whose list is [`believed`]; none while this node's own reports are closed
    /// ([`WRONG_QUIET_MS`]).
    pub(super) fn reported_down(&self, now_ms: u64) -> Vec<(NodeId, u64)> {
        if !self.reports_open(now_ms) {
            return Vec::new();
        }
        let members = self.members.len();
        self.members
            .iter()
            .filter(|m| m.alive && m.id != self.me.id && believed(m.down.len(), members))
            .flat_map(|m| m.down.iter().cloned())
            .filter(|(id, _)| *id != self.me.id)
            .collect()
    }

    /// A member this core followed was judged dead (`alive: false`) at its own threshold, or
    /// alive again.
    pub(super) fn note_judged(&mut self, id: &NodeId, generation: u64, alive: bool, now_ms: u64) {
        let down = &mut self.reports.down;
        let listed = down
            .iter()
            .position(|(i, g, _)| i == id && *g == generation);
        match (alive, listed) {
            (false, None) => down.push((id.clone(), generation, now_ms)),
            (true, Some(at)) => {
                down.remove(at);
            }
            _ => {}
        }
    }

    /// Drops deaths older than [`DOWN_REPORT_MS`], and queues [`Action::ReportDown`] when the
    /// list to publish changed, at most once per [`PUBLISH_EVERY_MS`]: every change of the key
    /// makes every node re-read all members, so a cluster where judgements flap (100 nodes
    /// starting on 2 cores) must not pay that at every flip. A list peers would not believe
    /// ([`believed`]: too long) is published empty, and so is any list while this node was
    /// wrong lately ([`WRONG_QUIET_MS`]). Call after the members' `alive` flags are up to date.
    pub(super) fn report_deaths(&mut self, now_ms: u64) {
        let members = self.members.len();
        let open = self.reports_open(now_ms);
        let r = &mut self.reports;
        r.down
            .retain(|(_, _, at)| now_ms.saturating_sub(*at) < DOWN_REPORT_MS);
        let due = r
            .published_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= PUBLISH_EVERY_MS);
        if !due {
            return;
        }
        let down: Vec<(NodeId, u64)> = if open && believed(r.down.len(), members) {
            r.down.iter().map(|(id, g, _)| (id.clone(), *g)).collect()
        } else {
            Vec::new()
        };
        if down == r.published {
            return;
        }
        let added = down.iter().any(|d| !r.published.contains(d));
        r.published = down.clone();
        r.published_ms = Some(now_ms);
        let to = if added {
            self.push_targets()
        } else {
            Vec::new()
        };
        self.actions.push_back(Action::ReportDown { down, to });
    }

    /// The live members after this node in id order (wrapping), at most [`PUSH_FANOUT`]: in a
    /// small cluster every one; in a large one each judge covers its own stretch of the ring,
    /// and gossip carries the key to the rest.
    fn push_targets(&self) -> Vec<(NodeId, std::net::SocketAddr)> {
        let mut live: Vec<(NodeId, std::net::SocketAddr)> = self
            .members
            .iter()
            .filter(|m| m.alive && m.id != self.me.id)
            .map(|m| (m.id.clone(), m.listen))
            .collect();
        live.sort();
        let after = live.partition_point(|(id, _)| *id < self.me.id);
        live.rotate_left(after);
        live.truncate(PUSH_FANOUT);
        live
    }

    /// The incarnations this node reports dead now (its `down` key).
    pub fn down_list(&self) -> Vec<(NodeId, u64)> {
        self.reports.published.clone()
    }
}
