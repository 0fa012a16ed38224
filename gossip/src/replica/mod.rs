//! The replica core: every decision one mesh member makes, as a state machine with no I/O.
//!
//! Observations go in (`handle_*`: the members gossip reports, seeds resolved, a fetch that
//! ended, a document offered), time goes in as a number (`handle_tick(now_ms, now_unix_ms)`),
//! and actions come out (`poll_action`: gossip this key, the role changed, fetch this head from
//! these holders). `mesh.rs` is the tokio shell that feeds it from chitchat and QUIC; the chaos
//! crate's deterministic simulation feeds the same type from its simulated network, so a bug
//! here fails the simulation. The pure rules it applies live in `election.rs` and `head.rs`.
//!
//! Nothing here reads a clock, a socket or the environment.
//!
//! This file holds the state machine itself (its fields, the `handle_*` inputs, the tick and
//! `poll_action`); `follow.rs` follows members' heartbeats, `fetching.rs` plans and abandons
//! fetches, `redial.rs` asks a silent only holder again, `report.rs` shares deaths, `stamping.rs` stamps and reserves
//! epochs, `bug.rs` holds its deliberate defects (test builds), `tests/` its tests. The rules it applies are in `election.rs`, `head.rs`,
//! `liveness.rs` and `reservation.rs`. It is a little over 500 lines because the fields, the
//! inputs and the tick that reads them are one piece.

mod announce;
#[cfg(feature = "fault-injection")]
mod bug;
mod fetching;
mod follow;
mod redial;
mod report;
mod stamping;
#[cfg(test)]
mod tests;

#[cfg(feature = "fault-injection")]
pub use bug::Bug;
pub use redial::REDIAL_SOURCE_EVERY_MS;

use crate::election::{
    has_listened, is_caught_up, liveness_unjudged, must_hear_cluster, role_of, unheard_seeds,
    Listening, Role, RoleReason,
};
use crate::head::{should_adopt, HeadInfo, HeldAd, StampState};
use crate::incarnation::Incarnation;
use crate::liveness::{lost_after_tick, LivenessTiming};
use crate::version::{NodeId, Version};
use crate::view::{decide_at, Decisions, Member};
use follow::Followed;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;

/// The timing the core decides with (a subset of [`crate::Timing`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicaTiming {
    pub join_grace_ms: u64,
    pub startup_patience_ms: u64,
    pub stall_reset_ms: u64,
    /// After every holder failed to serve the head, wait this long before fetching again.
    pub fetch_retry_ms: u64,
    /// The hedged fetch's `fetch_hedge_ms`: a fetch's only holder that has not begun to send
    /// this long after it was asked gets a new connection (`redial.rs`).
    pub fetch_hedge_ms: u64,
    /// May run alone when seeds resolve but never answer (see `election::must_hear_cluster`).
    pub single_node: bool,
    /// How members are judged alive or dead at every tick (`liveness.rs`).
    pub liveness: LivenessTiming,
}

impl From<&crate::Timing> for ReplicaTiming {
    fn from(t: &crate::Timing) -> Self {
        ReplicaTiming {
            join_grace_ms: t.join_grace_ms,
            startup_patience_ms: t.startup_patience_ms,
            stall_reset_ms: t.stall_reset_ms,
            fetch_retry_ms: FETCH_RETRY_MS,
            fetch_hedge_ms: t.fetch_hedge_ms,
            single_node: t.single_node,
            liveness: LivenessTiming::from(t),
        }
    }
}

/// How long to wait before retrying when every holder failed to serve the head.
pub const FETCH_RETRY_MS: u64 = 200;
/// A stall at least this long also drops every connection ([`Action::ResetConnections`]):
/// the soak's freezes last 1 to 4 s, while a busy machine's stalls (which only make the node
/// catch up again) stay shorter, and dropping every link at each of those would disturb the
/// peers for nothing.
pub const RESET_CONNECTIONS_AFTER_MS: u64 = 1_000;
/// How long to wait before writing a reservation again after a write failed.
const RESERVE_RETRY_MS: u64 = 1_000;

/// Who this replica is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub id: NodeId,
    /// Start time in ms since the Unix epoch: rises on every restart.
    pub generation: u64,
    pub listen: SocketAddr,
}

/// What the shell must do on the core's behalf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Gossip that this node has caught up (`true`) or no longer counts as caught up.
    Ready(bool),
    /// Gossip that this node now holds this document.
    Held(HeldAd),
    /// The role changed (and why): gossip the claim [`crate::keys::PUBLISHING`] while it is
    /// [`Role::Publisher`], none otherwise.
    Role(RoleReason),
    /// Fetch the head (`wanted`) from these members, in this order, then report the outcome
    /// with [`Replica::handle_fetch_done`]. The first ones may not hold it yet: they are this
    /// node's parent and grandparent in the spread tree (`spread.rs`) and serve it once they do.
    Fetch {
        wanted: HeldAd,
        sources: Vec<(NodeId, SocketAddr)>,
    },
    /// A member whose heartbeat this core follows was judged dead (`alive: false`), or alive
    /// again after that (`true`): its connection went through the outage, so the shell drops
    /// it before anything is fetched over it (a cut's backed-off QUIC timers would hold the
    /// first fetch after a heal for the whole answer timeout).
    Judged {
        id: NodeId,
        generation: u64,
        listen: SocketAddr,
        alive: bool,
    },
    /// An incarnation was judged alive for the first time: the shell drops any dial backoff
    /// its address built up, so the next gossip to it dials at once. A new process is counted
    /// only once heard first-hand (`identity.rs`), and a node isolated while a member
    /// restarted had both ends backing off (up to 5 s) with no revival to clear it.
    FirstAlive {
        id: NodeId,
        generation: u64,
        listen: SocketAddr,
    },
    /// A member is known only second-hand (a restart's newer incarnation, or one this node
    /// never counted): gossip to it directly, so that its answer verifies it (`identity.rs`),
    /// instead of waiting for chitchat to pick it. Repeated while it stays unverified, a few
    /// per tick at most (`follow.rs`).
    Contact {
        id: NodeId,
        generation: u64,
        listen: SocketAddr,
    },
    /// This node's own loop stalled ([`RESET_CONNECTIONS_AFTER_MS`] without a tick: frozen). Every
    /// connection went through the pause, and one to a member that was cut off meanwhile has
    /// backed-off retransmission timers that no revival clears (a paused node judges nobody
    /// dead for its own pause): the shell drops them all, so what follows dials afresh.
    ResetConnections,
    /// The fetch's only holder of the head has not begun to send within the hedge time: its
    /// connection may have backed off through a loss nobody died of. Replace it; the fetch is
    /// abandoned and planned again right after, over a fresh dial (`redial.rs`).
    ResetConnection { id: NodeId, listen: SocketAddr },
    /// Stop the fetch of this version and report nothing: the head moved past it, or this node
    /// stalled while it ran. A new [`Action::Fetch`] may follow at once.
    AbandonFetch(Version),
    /// A head version this node had not announced yet: gossip to these members (its children
    /// in the head's spread tree, `spread::children`) now, so they learn of it within a round
    /// trip instead of a random gossip round (`announce.rs`). Once per head version.
    Announce { to: Vec<(NodeId, SocketAddr)> },
    /// The incarnations this node now judges dead (its `down` key, `report.rs`): write it,
    /// then gossip to these members at once (every live one when a death was added; none
    /// when an entry only expired or revived).
    ReportDown {
        down: Vec<(NodeId, u64)>,
        to: Vec<(NodeId, SocketAddr)>,
    },
    /// Write the epoch file up to this epoch (in the background, off the stamp path), then
    /// report with [`Replica::handle_epoch_persisted`] (see `reservation.rs`).
    ReserveEpoch(u64),
}

/// Why a stamp was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StampRefused {
    #[error("this node is not the publisher (role {0:?})")]
    NotPublisher(Role),
    #[error(transparent)]
    EpochsExhausted(#[from] crate::head::EpochsExhausted),
    /// A stamp that does not rank above the document this node holds (never committed).
    #[error(
        "stamp {stamp} does not rank above the held version {held:?}: refusing to go backwards"
    )]
    Behind {
        stamp: Version,
        held: Option<Version>,
    },
}

/// One member's decisions.
///
/// Invariants: the held version never decreases ([`Replica::handle_offer`] adopts only what
/// ranks above); a new stamp is above every epoch this process has seen or was told about
/// ([`Replica::new`]'s `epoch_floor`), so a restarted publisher never stamps a version twice.
#[derive(Clone, Debug)]
pub struct Replica {
    me: Identity,
    timing: ReplicaTiming,
    started_ms: u64,
    /// When the join grace started again after a stall (`None`: at start).
    grace_from_ms: Option<u64>,
    last_tick_ms: Option<u64>,
    caught_up: bool,
    role: Option<RoleReason>,
    stamp: StampState,
    max_epoch_seen: u64,
    /// The epoch file holds this (every stamp is at or below it; see `reservation.rs`).
    reserved: u64,
    /// A reservation on its way to disk, and when to try again after a failed one.
    reserving: Option<u64>,
    reserve_retry_at_ms: Option<u64>,
    /// The last write of the epoch file failed with this (cleared by a write that succeeds).
    reserve_error: Option<String>,
    held: Option<HeldAd>,
    seed_addrs: Vec<Vec<SocketAddr>>,
    /// Members as last reported (self included once a tick ran), `alive` as judged here.
    members: Vec<Member>,
    /// Per member id, each incarnation followed (`liveness.rs`).
    beats: HashMap<NodeId, Vec<Followed>>,
    /// Time this node's own loop lost to pauses (never counted against members).
    lost_ms: u64,
    /// The deaths this node reports (`report.rs`).
    reports: report::Reports,
    decisions: Option<Decisions>,
    dirty: bool,
    fetching: Option<fetching::InFlight>,
    fetch_retry_at_ms: Option<u64>,
    /// The newest head version announced to this node's children (`announce.rs`).
    announced: Option<Version>,
    /// When each source's connection was last replaced (`redial.rs`).
    redialed: HashMap<NodeId, u64>,
    /// Set while an older live process has this node's id: refuse to serve (`incarnation.rs`).
    refused_by: Option<Incarnation>,
    /// An older process with this node's id, judged alive here from its heartbeat (the same
    /// judgement as every member's, so it is seen no later than the members it would be
    /// compared with; chitchat's own verdict behind `refused_by` comes once per gossip round).
    older_alive: Option<Incarnation>,
    /// An older process with this node's id was heard and is not judged yet: fetch nothing
    /// and do not catch up until it is (it may be alive: then this node must not serve).
    older_unjudged: bool,
    actions: VecDeque<Action>,
    #[cfg(feature = "fault-injection")]
    bug: Option<Bug>,
}

impl Replica {
    /// A fresh process. `epoch_floor` is the highest epoch this node id stamped in an earlier
    /// life (persisted by the shell; 0 if unknown): every stamp of this process is above it.
    pub fn new(me: Identity, timing: ReplicaTiming, now_ms: u64, epoch_floor: u64) -> Self {
        Replica {
            me,
            timing,
            started_ms: now_ms,
            grace_from_ms: None,
            last_tick_ms: None,
            caught_up: false,
            role: None,
            stamp: StampState::default(),
            max_epoch_seen: epoch_floor,
            reserved: epoch_floor,
            reserving: None,
            reserve_retry_at_ms: None,
            reserve_error: None,
            held: None,
            seed_addrs: Vec::new(),
            members: Vec::new(),
            beats: HashMap::new(),
            lost_ms: 0,
            reports: report::Reports::default(),
            decisions: None,
            dirty: true,
            fetching: None,
            fetch_retry_at_ms: None,
            announced: None,
            redialed: HashMap::new(),
            refused_by: None,
            older_alive: None,
            older_unjudged: false,
            actions: VecDeque::new(),
            #[cfg(feature = "fault-injection")]
            bug: None,
        }
    }

    /// Turns on a deliberate defect (test builds only), to prove the simulation catches it.
    #[cfg(feature = "fault-injection")]
    pub fn with_bug(mut self, bug: Option<Bug>) -> Self {
        self.bug = bug;
        self
    }

    // ---- getters

    pub fn id(&self) -> &NodeId {
        &self.me.id
    }
    pub fn caught_up(&self) -> bool {
        self.caught_up
    }
    pub fn role_reason(&self) -> RoleReason {
        self.role.clone().unwrap_or(RoleReason::CatchingUp)
    }
    pub fn role(&self) -> Role {
        self.role_reason().role()
    }
    pub fn held(&self) -> Option<&HeldAd> {
        self.held.as_ref()
    }
    pub fn max_epoch_seen(&self) -> u64 {
        self.max_epoch_seen
    }
    pub fn members(&self) -> &[Member] {
        &self.members
    }
    pub fn head(&self) -> Option<&HeadInfo> {
        self.decisions.as_ref().and_then(|d| d.head.as_ref())
    }
    pub fn publisher(&self) -> Option<&NodeId> {
        self.decisions.as_ref().and_then(|d| d.publisher.as_ref())
    }
    pub(crate) fn decisions(&self) -> Option<&Decisions> {
        self.decisions.as_ref()
    }

    /// The members and decisions as the cluster counts them while this node is refused as a
    /// duplicate: `kept`, the older process with this node's id, in place of this node's own
    /// record. This node's own decisions keep its own record (what it holds, that it is not
    /// ready); shown to an operator they named another publisher than every other node did,
    /// since the real holder of the id was missing (a probe).
    pub fn cluster_beside(&self, kept: &Member, now_unix_ms: u64) -> (Vec<Member>, Decisions) {
        let mut members: Vec<Member> = self
            .members
            .iter()
            .filter(|m| m.id != kept.id)
            .cloned()
            .collect();
        members.push(kept.clone());
        let decisions = decide_at(&members, now_unix_ms, self.timing.startup_patience_ms);
        (members, decisions)
    }
    // ---- inputs

    /// The members gossip reports now (dead ones included; self may or may not be listed).
    /// A member whose heartbeat this core follows ([`Replica::handle_heartbeats`]) is judged
    /// alive or dead here at every tick; for the others `alive` is taken as reported.
    pub fn handle_members(&mut self, members: Vec<Member>) {
        self.members = members;
        self.dirty = true;
    }

    /// Another, older live process has this node's id (`Some`), or no longer (`None`): while
    /// it does, this node is not caught up and never publishes (see `incarnation.rs`).
    pub fn handle_duplicate(&mut self, older: Option<Incarnation>) {
        // Logged once whichever of the two ways (this, or the heartbeats) sees it first.
        if older.is_some() && self.refused_by.is_none() && self.older_alive.is_none() {
            tracing::error!(node = %self.me.id, other = ?older, "another, older live process runs with this node id: refusing to serve (not ready, not publishing) until it is gone");
        }
        self.refused_by = older;
        self.dirty = true;
    }

    /// The configured seeds' resolved addresses (empty while one does not resolve).
    pub fn handle_seeds(&mut self, seed_addrs: Vec<Vec<SocketAddr>>) {
        self.seed_addrs = seed_addrs;
    }

    /// A document was offered (fetched from a holder): whether to install it. Adopting queues
    /// [`Action::Held`]; the shell installs the bytes only when this returns `true`.
    pub fn handle_offer(&mut self, offered: &HeldAd) -> bool {
        let current = self.held.as_ref().map(|h| (&h.version, h.digest.as_str()));
        let adopt = should_adopt(current, (&offered.version, &offered.digest));
        #[cfg(feature = "fault-injection")]
        let adopt = bug::adopt(self.bug, adopt, self.held.as_ref(), offered);
        if adopt {
            self.install(offered.clone());
        }
        adopt
    }

    /// One step at `now_ms` (monotonic) / `now_unix_ms` (wall clock, compared with generations):
    /// stall detection, catching up, election, and what to fetch.
    pub fn handle_tick(&mut self, now_ms: u64, now_unix_ms: u64) {
        self.sync_self();
        self.detect_stall(now_ms);
        if let Some(prev) = self.last_tick_ms {
            let gap = now_ms.saturating_sub(prev);
            self.lost_ms = lost_after_tick(self.lost_ms, gap, &self.timing.liveness);
        }
        self.last_tick_ms = Some(now_ms);
        self.judge_liveness(now_ms);
        self.contact_unheard(now_ms);
        if self.refused().is_some() {
            if self.caught_up {
                self.caught_up = false;
                self.actions.push_back(Action::Ready(false));
            }
            // Once the other process is gone, listen again before serving.
            self.grace_from_ms = Some(now_ms);
            self.sync_self();
        }
        let patience_ms = self.timing.startup_patience_ms;
        // Who counts as starting depends on the clock, so while anyone starts, decide afresh.
        let starting = self.members.iter().any(|m| m.alive && !m.ready);
        let mut decisions = match &self.decisions {
            Some(last) if !self.dirty && !starting => last.clone(),
            _ => decide_at(&self.members, now_unix_ms, patience_ms),
        };
        self.dirty = false;
        let seen = self
            .members
            .iter()
            .flat_map(|m| {
                [
                    m.held.as_ref().map(|h| h.version.epoch),
                    m.applied.as_ref().map(|a| a.epoch),
                ]
            })
            .flatten()
            .max()
            .unwrap_or(0);
        self.max_epoch_seen = self.max_epoch_seen.max(seen);
        self.reserve_epochs(now_ms);

        if !self.caught_up
            && self.refused().is_none()
            && !self.older_unjudged
            && self.listened(now_ms)
        {
            let held = self.held.as_ref().map(|h| &h.version);
            let head = decisions.head.as_ref().map(|h| &h.version);
            if is_caught_up(false, true, held, head) {
                self.caught_up = true;
                self.actions.push_back(Action::Ready(true));
                self.sync_self();
                decisions = decide_at(&self.members, now_unix_ms, patience_ms);
            }
        }
        let head_origin = decisions.head.as_ref().map(|h| &h.version.origin);
        let reason = match self.refused() {
            Some(other) => RoleReason::DuplicateId {
                other_generation: other.generation,
                other_at: other.listen,
            },
            None if !self.caught_up
                && !self.heard_cluster()
                && self.listened_long_enough(now_ms) =>
            {
                RoleReason::AwaitingSeeds
            }
            None => role_of(
                &self.me.id,
                self.caught_up,
                decisions.publisher.as_ref(),
                head_origin,
            ),
        };
        if reason == RoleReason::AwaitingSeeds && self.role.as_ref() != Some(&reason) {
            tracing::warn!(node = %self.me.id, seeds = ?self.seed_addrs, "none of the seeds has answered since start: not ready and not publishing until one does (a cluster of one runs with --single-node)");
        }
        if self.role.as_ref().map(RoleReason::role) != Some(reason.role()) {
            if reason.role() == Role::Publisher {
                // A new term: the first stamp opens a new epoch.
                self.stamp = StampState::default();
            }
            self.actions.push_back(Action::Role(reason.clone()));
        }
        self.role = Some(reason);
        // This node's claim follows its role at once in its own view.
        self.sync_self();
        self.plan_fetch(now_ms, &decisions);
        self.announce_head(&decisions);
        self.decisions = Some(decisions);
    }

    // ---- outputs

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    // ---- internals

    fn install(&mut self, ad: HeldAd) {
        self.max_epoch_seen = self.max_epoch_seen.max(ad.version.epoch);
        self.held = Some(ad.clone());
        self.dirty = true;
        self.actions.push_back(Action::Held(ad));
    }

    /// This node's own facts are authoritative locally (the gossiped copy lags).
    fn sync_self(&mut self) {
        let me = match self.members.iter_mut().find(|m| m.id == self.me.id) {
            Some(me) => me,
            None => {
                self.members.push(Member {
                    id: self.me.id.clone(),
                    generation: self.me.generation,
                    listen: self.me.listen,
                    alive: true,
                    ready: false,
                    publishing: false,
                    held: None,
                    applied: None,
                    metadata: BTreeMap::new(),
                    app: Default::default(),
                    last_seen_ms: Some(0),
                    stand_down: None,
                    leaving: false,
                    down: Vec::new(),
                });
                self.dirty = true;
                let last = self.members.len() - 1;
                &mut self.members[last]
            }
        };
        // The role of the last tick: the claim this node gossips.
        let publishing = self.role.as_ref().map(RoleReason::role) == Some(Role::Publisher);
        if me.held != self.held
            || !me.alive
            || me.ready != self.caught_up
            || me.publishing != publishing
        {
            self.dirty = true;
        }
        me.held = self.held.clone();
        me.alive = true;
        me.ready = self.caught_up;
        me.publishing = publishing;
    }

    /// An older live process has this node's id: as chitchat's records show it (the shell's
    /// report), or as this core judges its heartbeat, whichever says so first.
    fn refused(&self) -> Option<Incarnation> {
        self.refused_by.or(self.older_alive)
    }

    /// A loop that did not tick for `stall_reset_ms` (frozen, starved) no longer trusts its
    /// view: it catches up again before acting. After [`RESET_CONNECTIONS_AFTER_MS`] it also
    /// drops its connections and the fetch that ran over them (planned again at this tick).
    fn detect_stall(&mut self, now_ms: u64) {
        let Some(prev) = self.last_tick_ms else {
            return;
        };
        let gap = now_ms.saturating_sub(prev);
        if gap < self.timing.stall_reset_ms {
            return;
        }
        if gap >= self.timing.stall_reset_ms.max(RESET_CONNECTIONS_AFTER_MS) {
            self.actions.push_back(Action::ResetConnections);
            self.abandon_fetch();
        }
        if self.caught_up {
            tracing::warn!(node = %self.me.id, stalled_ms = gap, "control loop stalled; catching up again before acting");
            self.caught_up = false;
            self.grace_from_ms = Some(now_ms);
            self.actions.push_back(Action::Ready(false));
            self.sync_self();
        }
    }

    /// Listened long enough, and heard the cluster if it must (see [`Self::heard_cluster`]).
    fn listened(&self, now_ms: u64) -> bool {
        self.listened_long_enough(now_ms) && self.heard_cluster()
    }

    /// A node given seeds it can resolve must hear one other member first-hand before it
    /// may publish: else a node cut off from its seeds (a partition, a handshake flood)
    /// would run as a cluster of its own and publish (see `must_hear_cluster`).
    fn heard_cluster(&self) -> bool {
        self.grace_from_ms.is_some()
            || self.timing.single_node
            || !must_hear_cluster(&self.seed_addrs, self.me.listen)
            || self.members.iter().any(|m| m.id != self.me.id)
    }

    fn listened_long_enough(&self, now_ms: u64) -> bool {
        let grace_from = self.grace_from_ms.unwrap_or(self.started_ms);
        let member_addrs: Vec<SocketAddr> = self.members.iter().map(|m| m.listen).collect();
        // Seeds matter at start only: after a stall the node already knows the mesh, and a
        // seed that never answered (a scaled-down replica) must not cost the full patience.
        let unheard = match self.grace_from_ms {
            None => unheard_seeds(&self.seed_addrs, &member_addrs),
            Some(_) => 0,
        };
        let listening = Listening {
            uptime_ms: now_ms.saturating_sub(grace_from),
            unheard_seeds: unheard,
            unjudged_members: self
                .members
                .iter()
                .filter(|m| liveness_unjudged(m.alive, m.last_seen_ms, self.timing.join_grace_ms))
                .count(),
        };
        has_listened(
            &listening,
            self.timing.join_grace_ms,
            self.timing.startup_patience_ms,
        )
    }

    /// The head from the last members with this node's holding as of now.
    fn effective_head(&self) -> Option<HeadInfo> {
        let mut members = self.members.clone();
        match members.iter_mut().find(|m| m.id == self.me.id) {
            Some(me) => {
                me.held = self.held.clone();
                me.alive = true;
            }
            None => members.push(Member {
                id: self.me.id.clone(),
                generation: self.me.generation,
                listen: self.me.listen,
                alive: true,
                ready: self.caught_up,
                publishing: false,
                held: self.held.clone(),
                applied: None,
                metadata: BTreeMap::new(),
                app: Default::default(),
                last_seen_ms: None,
                stand_down: None,
                leaving: false,
                down: Vec::new(),
            }),
        }
        decide_at(&members, 0, 0).head
    }
}
