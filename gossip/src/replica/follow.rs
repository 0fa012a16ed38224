//! Following members' heartbeats: each incarnation gossip lists is judged alive or dead at
//! every tick (`liveness.rs`), flips are reported to the shell (`Action::Judged`,
//! `Action::FirstAlive`), and a member that gossip reports only second-hand (a newer
//! incarnation, or one never counted) is contacted directly (`Action::Contact`, capped per
//! tick). Records of this node's own id feed the duplicate check (`incarnation.rs`).

use super::{Action, Replica};
use crate::incarnation::Incarnation;
use crate::liveness::{Beats, LivenessTiming};
use crate::version::NodeId;
use std::collections::HashMap;
use std::net::SocketAddr;

/// What this core last judged of a member it follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Judged {
    /// Not alive yet since first heard of (no interval seen).
    New,
    Alive,
    Dead,
}

/// One incarnation whose heartbeat this core follows.
#[derive(Clone, Debug)]
pub(super) struct Followed {
    generation: u64,
    listen: SocketAddr,
    beats: Beats,
    judged: Judged,
    /// When gossip last listed it (its heartbeat advanced or not).
    seen_ms: u64,
    /// When it was last contacted directly ([`Action::Contact`]).
    contacted_ms: Option<u64>,
}

/// An incarnation gossip has not listed for this long is forgotten (chitchat garbage collected
/// it; the simulation lists only who sends). Heard again, it starts over as new.
const FORGET_AFTER_MS: u64 = 60_000;

impl Followed {
    /// Judges it now; the state it left when the judgement changed.
    /// `reported`: a live member reports it dead (`report.rs`).
    fn judge(
        &mut self,
        reported: bool,
        now_ms: u64,
        lost_ms: u64,
        t: &LivenessTiming,
    ) -> Option<Judged> {
        let alive = self.beats.alive_given(reported, now_ms, lost_ms, t);
        let was = self.judged;
        match (was, alive) {
            (Judged::Alive, false) => {
                self.beats.mark_dead();
                self.judged = Judged::Dead;
            }
            (Judged::Dead | Judged::New, true) => self.judged = Judged::Alive,
            _ => return None,
        }
        Some(was)
    }
}

/// A member heard of only second-hand is contacted again this often while it stays unverified
/// and its heartbeat advances (a lost first message, 80% loss).
pub(super) const CONTACT_RETRY_MS: u64 = 500;

/// At most this many direct contacts per tick (every 25 ms in the mesh: 80 a second at most).
pub(super) const MAX_CONTACTS_PER_TICK: usize = 2;

impl Replica {
    /// Heartbeat values as gossip shows them now: (member id, generation, listen address,
    /// heartbeat). Call it on every step (or whenever one arrives), before
    /// [`Replica::handle_tick`]. Records of this node's own id other than itself are followed
    /// too (a second process with this id, see `incarnation.rs`): the shell passes only those
    /// it verified (a forged record must not stop this node serving).
    pub fn handle_heartbeats(
        &mut self,
        now_ms: u64,
        beats: impl IntoIterator<Item = (NodeId, u64, SocketAddr, u64)>,
    ) {
        for (id, generation, listen, beat) in beats {
            if id == self.me.id && (generation == self.me.generation || listen == self.me.listen) {
                // Itself, or an earlier process of its own at this address (a restart).
                continue;
            }
            let lost = self.lost_ms;
            let per_id = self.beats.entry(id).or_default();
            match per_id.iter_mut().find(|f| f.generation == generation) {
                Some(f) => {
                    f.beats.observe(beat, now_ms, lost, &self.timing.liveness);
                    f.seen_ms = now_ms;
                }
                None => per_id.push(Followed {
                    generation,
                    listen,
                    beats: Beats::new(beat, now_ms, lost),
                    judged: Judged::New,
                    seen_ms: now_ms,
                    contacted_ms: None,
                }),
            }
        }
    }

    /// Whether this core has heard `id` at `generation` but not judged it yet (no interval
    /// seen since first heard: neither alive nor dead; a node's first view after its start).
    pub fn unjudged(&self, id: &NodeId, generation: u64) -> bool {
        self.beats.get(id).is_some_and(|per_id| {
            per_id
                .iter()
                .any(|f| f.generation == generation && f.judged == Judged::New)
        })
    }

    /// Judges every incarnation this core follows, now (`liveness.rs`), and applies the
    /// judgement to the members (a flip re-runs the election at this tick) and to this node's
    /// own id (an older process alive elsewhere: see `incarnation.rs`).
    pub(super) fn judge_liveness(&mut self, now_ms: u64) {
        let reported = self.reported_down(now_ms);
        let mut flips: Vec<(NodeId, u64, bool)> = Vec::new();
        let t = &self.timing.liveness;
        let (lost, me, join_grace_ms) = (self.lost_ms, &self.me, self.timing.join_grace_ms);
        let mine = Incarnation {
            generation: me.generation,
            listen: me.listen,
        };
        let actions = &mut self.actions;
        let mut older_alive: Option<Incarnation> = None;
        let mut older_unjudged = false;
        let mut wrong = false;
        self.beats.retain(|id, per_id| {
            // Chitchat forgot it (the shell lists every record at every step).
            per_id.retain(|f| now_ms.saturating_sub(f.seen_ms) < FORGET_AFTER_MS);
            for f in per_id.iter_mut() {
                let is_reported =
                    *id != me.id && reported.iter().any(|(r, g)| r == id && *g == f.generation);
                // Alive by this node's own threshold: a death now is a peer's, confirmed.
                let confirming = is_reported && f.beats.alive(now_ms, lost, t);
                let flip = f.judge(is_reported, now_ms, lost, t);
                let that = Incarnation {
                    generation: f.generation,
                    listen: f.listen,
                };
                if *id == me.id {
                    if that < mine {
                        match f.judged {
                            Judged::Alive => {
                                older_alive = Some(older_alive.map_or(that, |o| o.min(that)));
                            }
                            Judged::New => {
                                // This node's own pauses do not count: a starved
                                // process must not take them for the record's silence.
                                older_unjudged |= f.beats.silence_ms(now_ms, lost) < join_grace_ms;
                            }
                            Judged::Dead => {}
                        }
                    }
                } else if let Some(was) = flip {
                    // Judged dead, and it beat again: this node's judgement was wrong.
                    wrong |= was == Judged::Dead;
                    let (id, generation, listen) = (id.clone(), f.generation, f.listen);
                    if was != Judged::New && !confirming {
                        flips.push((id.clone(), generation, was == Judged::Dead));
                    }
                    actions.push_back(match was {
                        Judged::New => Action::FirstAlive {
                            id,
                            generation,
                            listen,
                        },
                        Judged::Alive | Judged::Dead => Action::Judged {
                            id,
                            generation,
                            listen,
                            alive: was == Judged::Dead,
                        },
                    });
                }
            }
            !per_id.is_empty()
        });
        // Logged once whichever of the two ways (this, or `handle_duplicate`) sees it first.
        if older_alive.is_some() && self.older_alive.is_none() && self.refused_by.is_none() {
            tracing::error!(node = %self.me.id, other = ?older_alive, "another, older live process runs with this node id (judged alive from its heartbeat): refusing to serve (not ready, not publishing) until it is gone");
        }
        if older_alive != self.older_alive {
            self.older_alive = older_alive;
            self.dirty = true;
        }
        self.older_unjudged = older_unjudged;
        if wrong {
            self.note_wrong(now_ms);
        }
        for m in &mut self.members {
            if m.id == self.me.id {
                continue;
            }
            let Some(f) = self
                .beats
                .get(&m.id)
                .and_then(|per_id| per_id.iter().find(|f| f.generation == m.generation))
            else {
                continue;
            };
            m.last_seen_ms = Some(f.beats.age_ms(now_ms));
            let alive = f.judged == Judged::Alive && !m.leaving;
            if m.alive != alive {
                m.alive = alive;
                self.dirty = true;
            }
        }
        for (id, generation, alive) in flips {
            self.note_judged(&id, generation, alive, now_ms);
        }
        self.report_deaths(now_ms);
    }

    /// A member that gossip reports only second-hand, its heartbeat advancing: a newer
    /// incarnation (a restart) while the member list still holds the older one, or a member this
    /// node has never counted (it is starting, or the member is new). A record counts only once
    /// heard first-hand (`identity.rs`), and chitchat picks its gossip targets from its own live
    /// set, so left alone that can take seconds (issue #14: a restarted node counted a member
    /// isolated or under loss seconds after the heal); the core asks the shell to gossip to it
    /// directly (its answer is first-hand), at once and again every [`CONTACT_RETRY_MS`].
    ///
    /// At most [`MAX_CONTACTS_PER_TICK`] per tick, the longest waiting first: a node starting
    /// beside 100 members it has never counted must not dial them all at once (nor should 100
    /// nodes started together), and one member is asked at most every [`CONTACT_RETRY_MS`].
    pub(super) fn contact_unheard(&mut self, now_ms: u64) {
        let join_grace_ms = self.timing.join_grace_ms;
        // (last contacted, id, generation): `None` (never) sorts first.
        let mut due: Vec<(Option<u64>, NodeId, u64)> = Vec::new();
        // One pass over the members, not one per followed id: at 100 nodes this runs every 25
        // ms on every node. The first record of an id counts, as a search would find it.
        let mut counted_by_id: HashMap<&NodeId, u64> = HashMap::with_capacity(self.members.len());
        for m in &self.members {
            counted_by_id.entry(&m.id).or_insert(m.generation);
        }
        for (id, per_id) in &self.beats {
            if *id == self.me.id {
                continue;
            }
            let counted = counted_by_id.get(id).copied();
            for f in per_id {
                let unheard = counted.is_none_or(|counted| f.generation > counted);
                let beating = f.judged != Judged::Dead && f.beats.age_ms(now_ms) < join_grace_ms;
                let retry = f
                    .contacted_ms
                    .is_none_or(|at| now_ms.saturating_sub(at) >= CONTACT_RETRY_MS);
                if unheard && beating && retry {
                    due.push((f.contacted_ms, id.clone(), f.generation));
                }
            }
        }
        // Sorted, so the choice does not depend on the map's order (the simulation replays).
        due.sort();
        for (_, id, generation) in due.into_iter().take(MAX_CONTACTS_PER_TICK) {
            let Some(f) = self
                .beats
                .get_mut(&id)
                .and_then(|per_id| per_id.iter_mut().find(|f| f.generation == generation))
            else {
                continue;
            };
            f.contacted_ms = Some(now_ms);
            let listen = f.listen;
            self.actions.push_back(Action::Contact {
                id,
                generation,
                listen,
            });
        }
    }
}
