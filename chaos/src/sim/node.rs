//! One simulated replica: the shipping replica core (`shoal_gossip::replica::Replica`), the
//! shipping hedged fetch (`shoal_gossip::hedge::Race`, see `fetch.rs`) and the shipping health
//! rules, fed by simulated gossip and transfers, with time passed in.
//!
//! What is simulated here is only what chitchat and QUIC do in the real mesh: spreading each
//! node's ad (`gossip.rs`: a few peers per round, second-hand news included), judging liveness
//! from heartbeats, and carrying fetch requests (a request for a version newer than the one held
//! waits for it, as `transfer::serve` does). Every decision (catching up, stall reset, election,
//! head, what to fetch and from whom, adopt, stamp) is the core's, and the core is fed as
//! `gossip/src/mesh/shell.rs` feeds it: the members again only when something other than
//! heartbeats changed, and every heartbeat that advanced (the core judges liveness from them).
//!
//! Why this file is over 500 lines: it is one simulated node, whose `round`, `poll` and
//! `receive` play the part of the shell's single control loop over one shared state (the core,
//! the fetch in flight, parked fetch requests, the epoch file); the messages, ads and timing
//! at the top are that loop's vocabulary. Gossip spreading (`gossip.rs`), the fetch race
//! (`fetch.rs`) and the health rules (`health.rs`) already live next to it.

use super::fetch::{Fetching, Moves};
use super::gossip::{self, Knowledge, Table};
use rand::rngs::StdRng;
use shoal_gossip::election::Role;
use shoal_gossip::head::{HeldAd, Stamp};
use shoal_gossip::liveness::LivenessTiming;
use shoal_gossip::replica::{Action, Bug, Identity, Replica, ReplicaTiming, FETCH_RETRY_MS};
use shoal_gossip::version::{NodeId, Version};
use shoal_gossip::view::Member;
use shoal_node::health::hysteresis::Hysteresis;
use shoal_node::health::{CheckState, Verdict};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// What a node tells its peers (its chitchat keys, in the real mesh).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ad {
    pub caught_up: bool,
    /// It holds the publisher role (the mesh's `publishing` key).
    pub publishing: bool,
    pub held: Option<HeldAd>,
    /// (backend index, this node's opinion) for the backends it checks.
    pub opinions: Vec<(usize, CheckState)>,
    /// The incarnations it reports dead (the mesh's `down` key).
    pub down: Vec<(NodeId, u64)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    /// The sender's gossip table; `reply`: answer with ours (a push-pull exchange).
    Gossip {
        from: usize,
        table: Table,
        reply: bool,
    },
    /// Asks for one version, as the real transfer does.
    FetchReq {
        from: usize,
        generation: u64,
        version: Version,
    },
    /// The document if the holder still holds that version (`None`: not held).
    FetchResp {
        from: usize,
        generation: u64,
        /// The version asked for (the real fetch answers on the request's own stream).
        version: Version,
        held: Option<HeldAd>,
    },
}

/// Timing knobs shared by all nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    pub gossip_ms: u64,
    /// A peer whose heartbeat has not advanced for this long is dead (the failure detector's
    /// job).
    pub fail_ms: u64,
    pub join_grace_ms: u64,
    /// How long unheard seeds may hold a starting node back.
    pub startup_patience_ms: u64,
    /// A round this much later than the last one (a frozen process) resets catching up.
    pub stall_reset_ms: u64,
    /// The fetch asks the next source too when none has begun to send this long after the last
    /// was asked (`fetch_hedge_ms` of the mesh).
    pub fetch_hedge_ms: u64,
    /// A source that does not answer within this long has failed (`fetch_answer_timeout_ms`).
    pub fetch_answer_ms: u64,
    /// A holder asked for a version it is about to hold waits this long for it.
    pub serve_wait_ms: u64,
    pub checkers_per_backend: usize,
    pub rise: u32,
    pub fall: u32,
}

impl Timing {
    fn replica(&self) -> ReplicaTiming {
        ReplicaTiming {
            join_grace_ms: self.join_grace_ms,
            startup_patience_ms: self.startup_patience_ms,
            stall_reset_ms: self.stall_reset_ms,
            fetch_retry_ms: FETCH_RETRY_MS,
            fetch_hedge_ms: self.fetch_hedge_ms,
            // The simulation keeps the earlier start rule (run alone after the patience); the
            // "must hear the cluster" rule is tested on real nodes (gossip/tests/attacks.rs).
            single_node: true,
            // The core judges liveness from the heartbeats gossip carries, as in the mesh: phi
            // over a prior of one gossip round puts a steady member's death at `fail_ms`.
            // A peer's report of a death is confirmed at two thirds of it, as in `Timing`.
            liveness: LivenessTiming {
                phi_threshold: self.fail_ms as f64 / self.gossip_ms.max(1) as f64,
                confirm_phi: self.fail_ms as f64 / self.gossip_ms.max(1) as f64 * 2.0 / 3.0,
                prior_interval_ms: self.gossip_ms,
                max_interval_ms: (self.gossip_ms * 20).max(2_000),
                window: 1_000,
                pause_allowance_ms: self.gossip_ms,
            },
        }
    }
}

/// A node's seeds: the lowest-numbered other nodes, as a StatefulSet lists its first replicas.
const SEEDS: usize = 4;

/// A request for a version this node does not hold yet, answered once it does (as
/// `transfer::serve` waits for a copy it is about to hold): (from, generation, version, until).
type Parked = (usize, u64, Version, u64);

pub struct SimNode {
    pub index: usize,
    nodes: usize,
    pub id: NodeId,
    pub up: bool,
    /// Frozen (SIGSTOP) until this time: no rounds, messages to it are lost.
    pub frozen_until_ms: Option<u64>,
    pub generation: u64,
    pub replica: Replica,
    /// The epoch file: survives restarts.
    pub epoch_file: u64,
    pub(super) gossip: Knowledge,
    /// Who this node judged alive at its last round, by index (itself included).
    pub(super) alive: Vec<bool>,
    fetch: Option<Fetching>,
    parked: Vec<Parked>,
    pub(super) checks: BTreeMap<usize, Hysteresis>,
    pub verdicts: Vec<Verdict>,
    pub bug: Option<Bug>,
}

/// What a node did in one round that the simulation must record or check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    pub stamped: Option<HeldAd>,
}

pub fn ids(n: usize) -> Vec<NodeId> {
    (0..n).map(|i| NodeId::new(format!("n{}", i + 1))).collect()
}

/// The index of a simulated node's id (`n{index + 1}`).
pub fn index_of(id: &NodeId) -> Option<usize> {
    id.as_str()
        .strip_prefix('n')?
        .parse::<usize>()
        .ok()?
        .checked_sub(1)
}

/// The simulated gossip address of node `index` (documentation range, never dialed).
pub fn addr(index: usize) -> SocketAddr {
    SocketAddr::from((
        [198, 18, (index / 250) as u8, (index % 250) as u8 + 1],
        7946,
    ))
}

/// What one round needs from the world.
pub struct World<'a> {
    pub all: &'a [NodeId],
    pub content_digest: &'a str,
    pub backend_up: &'a [bool],
    pub rankings: &'a [Vec<usize>],
}

impl SimNode {
    /// Node `index` of `nodes`, checking `backends` backends.
    pub fn new(index: usize, nodes: usize, backends: usize, t: &Timing, bug: Option<Bug>) -> Self {
        let id = NodeId::new(format!("n{}", index + 1));
        SimNode {
            index,
            nodes,
            replica: fresh_replica(&id, index, nodes, 0, t, 0, bug),
            id,
            up: true,
            frozen_until_ms: None,
            generation: 0,
            epoch_file: 0,
            gossip: Knowledge::new(index, nodes),
            alive: Vec::new(),
            fetch: None,
            parked: Vec::new(),
            checks: BTreeMap::new(),
            verdicts: vec![Verdict::Up; backends],
            bug,
        }
    }

    /// Crash: the process and everything in memory are gone (the epoch file stays).
    pub fn crash(&mut self) {
        self.up = false;
    }

    /// A new process with a new generation and an empty memory, seeded from the epoch file.
    pub fn restart(&mut self, now_ms: u64, t: &Timing) {
        let epoch_file = self.epoch_file;
        let mut fresh = SimNode::new(self.index, self.nodes, self.verdicts.len(), t, self.bug);
        fresh.generation = now_ms;
        fresh.epoch_file = epoch_file;
        fresh.replica = fresh_replica(
            &fresh.id, self.index, self.nodes, now_ms, t, epoch_file, self.bug,
        );
        *self = fresh;
    }

    /// Whether this node runs at `now_ms` (up and not frozen).
    pub fn running(&self, now_ms: u64) -> bool {
        self.up && self.frozen_until_ms.is_none_or(|until| now_ms >= until)
    }

    /// Whether this node judges each member alive (by index, itself included).
    fn judge(&self, now_ms: u64, t: &Timing) -> Vec<bool> {
        let mut alive = vec![false; self.nodes];
        for (i, _) in self.gossip.entries() {
            alive[i] = self.gossip.age_ms(i, now_ms) <= t.fail_ms;
        }
        alive[self.index] = true;
        alive
    }

    /// Whether this node's core judges each member alive (by index, itself included).
    fn live(&self) -> Vec<bool> {
        let mut live = vec![false; self.nodes];
        for m in self.replica.members().iter().filter(|m| m.alive) {
            if let Some(i) = index_of(&m.id).filter(|&i| self.gossip.get(i).is_some()) {
                live[i] = true;
            }
        }
        live[self.index] = true;
        live
    }

    fn ad(&self) -> Ad {
        Ad {
            caught_up: self.replica.caught_up(),
            publishing: self.replica.role() == Role::Publisher,
            held: self.replica.held().cloned(),
            opinions: self.checks.iter().map(|(b, h)| (*b, h.state())).collect(),
            down: self.replica.down_list(),
        }
    }

    /// What gossip reports about every member heard of, dead ones included.
    fn members(&self, now_ms: u64, all: &[NodeId]) -> Vec<Member> {
        self.gossip
            .entries()
            .map(|(i, k)| Member {
                id: all[i].clone(),
                generation: k.generation,
                listen: addr(i),
                alive: self.alive[i],
                ready: k.ad.caught_up,
                publishing: k.ad.publishing,
                held: k.ad.held.clone(),
                // A simulated node runs what it holds.
                applied: k.ad.held.as_ref().map(|h| h.version.clone()),
                metadata: BTreeMap::new(),
                app: Default::default(),
                last_seen_ms: Some(self.gossip.age_ms(i, now_ms)),
                stand_down: None,
                leaving: false,
                down: k.ad.down.clone(),
            })
            .collect()
    }

    /// One round: the core decides; the node stamps, fetches, probes, judges and gossips.
    /// Returns the messages to send as (to, message).
    pub fn round(
        &mut self,
        now_ms: u64,
        t: &Timing,
        w: &World<'_>,
        rng: &mut StdRng,
        effects: &mut Effects,
    ) -> Vec<(usize, Msg)> {
        // As the shell: the members again only when more than heartbeats changed.
        let alive = self.judge(now_ms, t);
        let changed = self.gossip.take_changed();
        if changed || alive != self.alive {
            self.alive = alive;
            let members = self.members(now_ms, w.all);
            self.replica.handle_members(members);
        }
        self.replica.handle_tick(now_ms, now_ms);
        let mut out = Vec::new();
        let mut announce: Vec<usize> = Vec::new();
        if let Ok(Stamp::New(version)) = self.replica.plan_stamp(w.content_digest) {
            // Beyond the reservation, the epoch file is written before the version leaves.
            if let Some(target) = self.replica.epoch_write_before_stamp(version.epoch) {
                self.epoch_file = self.epoch_file.max(target);
                self.replica.handle_epoch_persisted(now_ms, target, Ok(()));
            }
            let ad = HeldAd {
                version,
                digest: w.content_digest.to_string(),
                size_bytes: 1,
            };
            if self.replica.commit_stamp(ad.clone()).is_ok() {
                effects.stamped = Some(ad);
            }
        }
        while let Some(action) = self.replica.poll_action() {
            if let Action::ReserveEpoch(target) = action {
                // A reservation lands at once (a crash loses nothing the core counted on).
                self.epoch_file = self.epoch_file.max(target);
                self.replica.handle_epoch_persisted(now_ms, target, Ok(()));
            }
            if let Action::AbandonFetch(version) = &action {
                // The real fetch is stopped; its late answers are ignored (`receive`).
                if self
                    .fetch
                    .as_ref()
                    .is_some_and(|f| f.wanted.version == *version)
                {
                    self.fetch = None;
                }
            }
            // An announcement (or a death report) is a gossip message sent now to the members
            // named (below, after this round's heartbeat, so that it carries this node's newest
            // record).
            if let Action::Announce { to } | Action::ReportDown { to, .. } = &action {
                announce.extend(to.iter().filter_map(|(id, _)| index_of(id)));
            }
            // `ResetConnections`, `ResetConnection` and `Contact` concern the real transport
            // only: the simulated network keeps no connections (the abandoned fetch and the new
            // one that follow a `ResetConnection` are what it models: the request asked again),
            // and every record here is heard first-hand.
            if let Action::Fetch { wanted, sources } = action {
                let sources = sources.iter().filter_map(|(id, _)| index_of(id)).collect();
                let (fetch, moves) =
                    Fetching::start(wanted, sources, t.fetch_hedge_ms, t.fetch_answer_ms, now_ms);
                self.fetch = Some(fetch);
                out.extend(self.carry_out(now_ms, moves));
            }
        }
        out.extend(self.answer_parked(now_ms));
        let live = self.live();
        self.health(now_ms, t, w, &live);
        self.gossip.beat(self.generation, self.ad());
        for to in gossip::targets(rng, self.index, self.nodes)
            .into_iter()
            .chain(announce)
        {
            out.push((
                to,
                Msg::Gossip {
                    from: self.index,
                    table: self.gossip.table(),
                    reply: true,
                },
            ));
        }
        out
    }

    /// Between rounds: the fetch's hedges and answer deadlines, and parked requests whose
    /// wait is over (the shell reacts to these at once, not at its next round).
    pub fn poll(&mut self, now_ms: u64) -> Vec<(usize, Msg)> {
        let mut out = Vec::new();
        if let Some(f) = self.fetch.as_mut().filter(|f| f.due(now_ms)) {
            let moves = f.poll(now_ms);
            out.extend(self.carry_out(now_ms, moves));
        }
        if self.parked.iter().any(|p| now_ms >= p.3) {
            out.extend(self.answer_parked(now_ms));
        }
        out
    }

    /// Requests to send for `moves`; ends the fetch when the race gave up.
    fn carry_out(&mut self, now_ms: u64, moves: Moves) -> Vec<(usize, Msg)> {
        let Some(f) = self.fetch.as_ref() else {
            return Vec::new();
        };
        let version = f.wanted.version.clone();
        let out = moves
            .ask
            .into_iter()
            .map(|to| {
                let req = Msg::FetchReq {
                    from: self.index,
                    generation: self.generation,
                    version: version.clone(),
                };
                (to, req)
            })
            .collect();
        if moves.done == Some(false) {
            self.fetch = None;
            self.replica.handle_fetch_done(now_ms, &version, false);
        }
        out
    }

    /// Answers the parked requests this node can answer now: with the document once it holds
    /// that version, "not held" once it holds a newer one or the wait is over.
    fn answer_parked(&mut self, now_ms: u64) -> Vec<(usize, Msg)> {
        let held = self.replica.held().cloned();
        let mut out = Vec::new();
        self.parked.retain(|(from, generation, version, until)| {
            let have = held.as_ref().map(|h| &h.version);
            let answer = match have {
                Some(v) if v == version => Some(held.clone()),
                Some(v) if v > version => Some(None),
                _ if now_ms >= *until => Some(None),
                _ => None,
            };
            match answer {
                Some(held) => {
                    out.push((
                        *from,
                        Msg::FetchResp {
                            from: self.index,
                            generation: *generation,
                            version: version.clone(),
                            held,
                        },
                    ));
                    false
                }
                None => true,
            }
        });
        out
    }

    /// Handles one message; returns replies as (to, message) and whether a document was
    /// adopted.
    pub fn receive(&mut self, now_ms: u64, t: &Timing, msg: Msg) -> (Vec<(usize, Msg)>, bool) {
        let mut out = Vec::new();
        match msg {
            Msg::Gossip { from, table, reply } => {
                let advanced = self.gossip.merge(&table, now_ms);
                let beats = advanced.into_iter().map(|(i, generation, beat)| {
                    (
                        NodeId::new(format!("n{}", i + 1)),
                        generation,
                        addr(i),
                        beat,
                    )
                });
                self.replica.handle_heartbeats(now_ms, beats);
                if reply {
                    out.push((
                        from,
                        Msg::Gossip {
                            from: self.index,
                            table: self.gossip.table(),
                            reply: false,
                        },
                    ));
                }
            }
            Msg::FetchReq {
                from,
                generation,
                version,
            } => {
                // A newer version than the one held: this node is about to fetch it (it is
                // the asker's parent in the spread tree), so the request waits for it.
                let newer = self.replica.held().is_none_or(|h| h.version < version);
                if newer {
                    let until = now_ms + t.serve_wait_ms;
                    self.parked.push((from, generation, version, until));
                } else {
                    let held = self
                        .replica
                        .held()
                        .filter(|h| h.version == version)
                        .cloned();
                    out.push((
                        from,
                        Msg::FetchResp {
                            from: self.index,
                            generation,
                            version,
                            held,
                        },
                    ));
                }
            }
            Msg::FetchResp {
                from,
                generation,
                version,
                held,
            } => {
                if generation != self.generation {
                    return (out, false);
                }
                // An answer to a fetch that was abandoned (its request's stream is gone).
                let Some(f) = self.fetch.as_mut().filter(|f| f.wanted.version == version) else {
                    return (out, false);
                };
                // The real fetch checks the digest against the gossiped head.
                let offer = held.filter(|h| *h == f.wanted);
                let moves = f.answer(from, offer.is_some(), now_ms);
                if moves.done == Some(true) {
                    self.fetch = None;
                    let adopted = offer.is_some_and(|o| self.replica.handle_offer(&o));
                    self.replica.handle_fetch_done(now_ms, &version, true);
                    out.extend(self.answer_parked(now_ms));
                    return (out, adopted);
                }
                out.extend(self.carry_out(now_ms, moves));
            }
        }
        (out, false)
    }
}

/// A new process of node `index`: its seeds are the lowest-numbered other nodes.
fn fresh_replica(
    id: &NodeId,
    index: usize,
    nodes: usize,
    now_ms: u64,
    t: &Timing,
    epoch_floor: u64,
    bug: Option<Bug>,
) -> Replica {
    let me = Identity {
        id: id.clone(),
        generation: now_ms,
        listen: addr(index),
    };
    let mut replica = Replica::new(me, t.replica(), now_ms, epoch_floor).with_bug(bug);
    let seeds = (0..nodes)
        .filter(|&i| i != index)
        .take(SEEDS)
        .map(|i| vec![addr(i)])
        .collect();
    replica.handle_seeds(seeds);
    replica
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_of_reads_back_ids() {
        for (i, id) in ids(1_200).iter().enumerate() {
            assert_eq!(index_of(id), Some(i));
        }
        assert_eq!(index_of(&NodeId::new("x1")), None);
        assert_eq!(index_of(&NodeId::new("n0")), None);
    }
}
