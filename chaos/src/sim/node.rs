//! One simulated replica: the shipping replica core (`shoal_gossip::replica::Replica`) and the
//! shipping health rules, fed by simulated gossip and fetches, with time passed in.
//!
//! What is simulated here is only what chitchat and QUIC do in the real mesh: spreading each
//! node's ad, judging liveness from the last message, and carrying fetch requests (a request
//! for a version newer than the one held waits for it, as `transfer::serve` does). Every
//! decision (catching up, stall reset, election, head, what to fetch, adopt, stamp) is the
//! core's, exactly as `gossip/src/mesh.rs` drives it.

use shoal_gossip::head::{HeldAd, Stamp};
use shoal_gossip::replica::{Action, Bug, Identity, Replica, ReplicaTiming, FETCH_RETRY_MS};
use shoal_gossip::version::{NodeId, Version};
use shoal_gossip::view::Member;
use shoal_node::health::assign::checkers;
use shoal_node::health::hysteresis::Hysteresis;
use shoal_node::health::verdict::verdict;
use shoal_node::health::{CheckState, Verdict};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;

/// What a node tells its peers on every gossip round (its chitchat keys, in the real mesh).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ad {
    /// Start time of the process (sim ms): rises on every restart.
    pub generation: u64,
    pub caught_up: bool,
    pub held: Option<HeldAd>,
    /// (backend index, this node's opinion) for the backends it checks.
    pub opinions: Vec<(usize, CheckState)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    /// Shared: one round sends the same ad to every peer.
    Gossip { from: usize, ad: Rc<Ad> },
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
        held: Option<HeldAd>,
    },
}

/// Timing knobs shared by all nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    pub gossip_ms: u64,
    /// A peer not heard from for this long is dead (the failure detector's job).
    pub fail_ms: u64,
    pub join_grace_ms: u64,
    /// How long unheard seeds (every other node is a seed) may hold a starting node back.
    pub startup_patience_ms: u64,
    /// A round this much later than the last one (a frozen process) resets catching up.
    pub stall_reset_ms: u64,
    /// A holder that does not answer a fetch within this long is skipped.
    pub fetch_timeout_ms: u64,
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
            // The simulation keeps the earlier start rule (run alone after the patience); the
            // "must hear the cluster" rule is tested on real nodes (gossip/tests/attacks.rs).
            single_node: true,
        }
    }
}

#[derive(Clone, Debug)]
struct Peer {
    last_heard_ms: u64,
    ad: Rc<Ad>,
}

/// A request for a version this node does not hold yet, answered once it does (as
/// `transfer::serve` waits for a copy it is about to hold): (from, generation, version, until).
type Parked = (usize, u64, Version, u64);

/// A fetch in flight: what is wanted, from whom now, who is left, until when.
#[derive(Clone, Debug)]
struct Fetch {
    wanted: HeldAd,
    asked: usize,
    rest: Vec<usize>,
    deadline_ms: u64,
}

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
    peers: BTreeMap<usize, Peer>,
    fetch: Option<Fetch>,
    parked: Vec<Parked>,
    checks: BTreeMap<usize, Hysteresis>,
    pub verdicts: Vec<Verdict>,
    pub bug: Option<Bug>,
    /// Checkers per backend for the last live set seen: rendezvous hashing is the costly part
    /// of a round and the live set rarely changes.
    assigned: Option<(Vec<usize>, Vec<Vec<NodeId>>)>,
}

/// What a node did in one round that the simulation must record or check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    pub stamped: Option<HeldAd>,
}

pub fn ids(n: usize) -> Vec<NodeId> {
    (0..n).map(|i| NodeId::new(format!("n{}", i + 1))).collect()
}

/// The simulated gossip address of node `index` (documentation range, never dialed).
pub fn addr(index: usize) -> SocketAddr {
    SocketAddr::from((
        [198, 18, (index / 250) as u8, (index % 250) as u8 + 1],
        7946,
    ))
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
            peers: BTreeMap::new(),
            fetch: None,
            parked: Vec::new(),
            checks: BTreeMap::new(),
            verdicts: vec![Verdict::Up; backends],
            bug,
            assigned: None,
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

    /// Indices of the members this node believes alive, itself included, sorted.
    pub fn live(&self, now_ms: u64, t: &Timing) -> Vec<usize> {
        let mut live: Vec<usize> = self
            .peers
            .iter()
            .filter(|(_, p)| now_ms.saturating_sub(p.last_heard_ms) <= t.fail_ms)
            .map(|(i, _)| *i)
            .collect();
        live.push(self.index);
        live.sort_unstable();
        live
    }

    fn ad(&self) -> Ad {
        Ad {
            generation: self.generation,
            caught_up: self.replica.caught_up(),
            held: self.replica.held().cloned(),
            opinions: self.checks.iter().map(|(b, h)| (*b, h.state())).collect(),
        }
    }

    /// What gossip reports about every member heard of, dead ones included.
    fn members(&self, now_ms: u64, t: &Timing, all: &[NodeId]) -> Vec<Member> {
        self.peers
            .iter()
            .map(|(&i, p)| {
                let age_ms = now_ms.saturating_sub(p.last_heard_ms);
                Member {
                    id: all[i].clone(),
                    generation: p.ad.generation,
                    listen: addr(i),
                    alive: age_ms <= t.fail_ms,
                    ready: p.ad.caught_up,
                    held: p.ad.held.clone(),
                    // A simulated node runs what it holds.
                    applied: p.ad.held.as_ref().map(|h| h.version.clone()),
                    metadata: BTreeMap::new(),
                    app: BTreeMap::new(),
                    last_seen_ms: Some(age_ms),
                    stand_down: None,
                }
            })
            .collect()
    }

    /// One round: the core decides; the node stamps, fetches, probes, judges and gossips.
    /// Returns the messages to send as (to, message).
    #[allow(clippy::too_many_arguments)]
    pub fn round(
        &mut self,
        now_ms: u64,
        t: &Timing,
        all: &[NodeId],
        content_digest: &str,
        backend_up: &[bool],
        effects: &mut Effects,
    ) -> Vec<(usize, Msg)> {
        let members = self.members(now_ms, t, all);
        self.replica.handle_members(members);
        self.replica.handle_tick(now_ms, now_ms);
        let mut out = Vec::new();
        if let Ok(Stamp::New(version)) = self.replica.plan_stamp(content_digest) {
            // Beyond the reservation, the epoch file is written before the version leaves.
            if let Some(target) = self.replica.epoch_write_before_stamp(version.epoch) {
                self.epoch_file = self.epoch_file.max(target);
                self.replica.handle_epoch_persisted(now_ms, target, true);
            }
            let ad = HeldAd {
                version,
                digest: content_digest.to_string(),
                size_bytes: 1,
            };
            self.replica.commit_stamp(ad.clone());
            effects.stamped = Some(ad);
        }
        while let Some(action) = self.replica.poll_action() {
            if let Action::ReserveEpoch(target) = action {
                // A reservation lands at once (a crash loses nothing the core counted on).
                self.epoch_file = self.epoch_file.max(target);
                self.replica.handle_epoch_persisted(now_ms, target, true);
            }
            if let Action::Fetch { wanted, sources } = action {
                let mut rest: Vec<usize> = sources
                    .iter()
                    .filter_map(|(id, _)| all.iter().position(|x| x == id))
                    .collect();
                rest.reverse();
                if let Some(first) = rest.pop() {
                    self.fetch = Some(Fetch {
                        wanted,
                        asked: first,
                        rest,
                        deadline_ms: now_ms + t.fetch_timeout_ms,
                    });
                    out.push((first, self.fetch_req(first)));
                }
            }
        }
        if self.fetch.as_ref().is_some_and(|f| now_ms >= f.deadline_ms) {
            out.extend(self.next_source(now_ms, t));
        }
        out.extend(self.answer_parked(now_ms));
        let live = self.live(now_ms, t);
        self.health(now_ms, t, all, &live, backend_up);
        let ad = Rc::new(self.ad());
        for (i, _) in all.iter().enumerate().filter(|(i, _)| *i != self.index) {
            out.push((
                i,
                Msg::Gossip {
                    from: self.index,
                    ad: Rc::clone(&ad),
                },
            ));
        }
        out
    }

    fn fetch_req(&self, _to: usize) -> Msg {
        let version = self
            .fetch
            .as_ref()
            .map(|f| f.wanted.version.clone())
            .unwrap_or_else(|| Version::new(0, 0, self.id.clone()));
        Msg::FetchReq {
            from: self.index,
            generation: self.generation,
            version,
        }
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

    /// The holder asked did not serve the head: ask the next one, or report the failure.
    fn next_source(&mut self, now_ms: u64, t: &Timing) -> Option<(usize, Msg)> {
        let fetch = self.fetch.as_mut()?;
        match fetch.rest.pop() {
            Some(next) => {
                fetch.asked = next;
                fetch.deadline_ms = now_ms + t.fetch_timeout_ms;
                Some((next, self.fetch_req(next)))
            }
            None => {
                self.fetch = None;
                self.replica.handle_fetch_done(now_ms, false);
                None
            }
        }
    }

    /// Probes the backends this node checks and judges every backend from live opinions.
    fn health(
        &mut self,
        now_ms: u64,
        t: &Timing,
        all: &[NodeId],
        live: &[usize],
        backend_up: &[bool],
    ) {
        if self
            .assigned
            .as_ref()
            .is_none_or(|(set, _)| set.as_slice() != live)
        {
            let live_ids: Vec<NodeId> = live.iter().map(|&i| all[i].clone()).collect();
            let per_backend = (0..backend_up.len())
                .map(|b| {
                    checkers(
                        &format!("sim|backend-{b}"),
                        &live_ids,
                        t.checkers_per_backend,
                    )
                })
                .collect();
            self.assigned = Some((live.to_vec(), per_backend));
        }
        let assigned_all = self.assigned.take().map(|(_, a)| a).unwrap_or_default();
        for (b, &truth) in backend_up.iter().enumerate() {
            let assigned = &assigned_all[b];
            if assigned.contains(&self.id) {
                let h = self
                    .checks
                    .entry(b)
                    .or_insert_with(|| Hysteresis::new(now_ms));
                h.observe(truth, t.rise, t.fall, now_ms);
            } else {
                self.checks.remove(&b);
            }
            let mut reports: Vec<(NodeId, CheckState)> = Vec::new();
            for &i in live {
                let opinion = if i == self.index {
                    self.checks.get(&b).map(|h| h.state())
                } else {
                    self.peers[&i]
                        .ad
                        .opinions
                        .iter()
                        .find(|(ob, _)| *ob == b)
                        .map(|(_, s)| *s)
                };
                if let Some(s) = opinion {
                    reports.push((all[i].clone(), s));
                }
            }
            self.verdicts[b] = verdict(&reports, assigned, Some(self.verdicts[b])).0;
        }
        self.assigned = Some((live.to_vec(), assigned_all));
    }

    /// Handles one message; returns replies as (to, message) and whether a document was
    /// adopted.
    pub fn receive(&mut self, now_ms: u64, t: &Timing, msg: Msg) -> (Vec<(usize, Msg)>, bool) {
        let mut out = Vec::new();
        match msg {
            Msg::Gossip { from, ad } => {
                let newer = self
                    .peers
                    .get(&from)
                    .is_none_or(|p| ad.generation >= p.ad.generation);
                if newer {
                    self.peers.insert(
                        from,
                        Peer {
                            last_heard_ms: now_ms,
                            ad,
                        },
                    );
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
                    let until = now_ms + t.fetch_timeout_ms / 2;
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
                            held,
                        },
                    ));
                }
            }
            Msg::FetchResp {
                from,
                generation,
                held,
            } => {
                let current = self
                    .fetch
                    .as_ref()
                    .is_some_and(|f| f.asked == from && generation == self.generation);
                if !current {
                    return (out, false);
                }
                let wanted = self.fetch.as_ref().map(|f| f.wanted.clone());
                // The real fetch checks the digest against the gossiped head.
                match held.filter(|h| Some(h) == wanted.as_ref()) {
                    Some(offer) => {
                        self.fetch = None;
                        let adopted = self.replica.handle_offer(&offer);
                        self.replica.handle_fetch_done(now_ms, true);
                        out.extend(self.answer_parked(now_ms));
                        return (out, adopted);
                    }
                    None => out.extend(self.next_source(now_ms, t)),
                }
            }
        }
        (out, false)
    }
}

/// A new process of node `index`: every other node is one of its seeds.
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
        .map(|i| vec![addr(i)])
        .collect();
    replica.handle_seeds(seeds);
    replica
}
