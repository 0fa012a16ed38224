//! One simulated replica: the real pure rules (election, head, catch-up, stamping, health
//! verdicts) around a toy state, fed by messages and time passed in.

use rand::rngs::StdRng;
use rand::Rng;
use shoal_gossip::election::{
    choose_publisher, has_listened, is_caught_up, role_of, Candidate, Listening, Role,
};
use shoal_gossip::head::{
    catch_up, next_stamp, select_head, should_adopt, CatchUp, HeadInfo, HeldAd, MemberHeld, Stamp,
    StampState,
};
use shoal_gossip::version::{NodeId, Version};
use shoal_node::health::assign::checkers;
use shoal_node::health::hysteresis::Hysteresis;
use shoal_node::health::verdict::verdict;
use shoal_node::health::{CheckState, Verdict};
use std::collections::BTreeMap;
use std::rc::Rc;

/// A deliberate defect, to prove the checkers catch real bugs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// Fetches from any peer that holds a different version and adopts whatever comes back,
    /// older or not (skips `should_adopt`).
    AdoptOlder,
}

/// What a node tells its peers on every gossip round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ad {
    pub generation: u32,
    pub caught_up: bool,
    pub held: Option<HeldAd>,
    /// (backend index, this node's opinion) for the backends it checks.
    pub opinions: Vec<(usize, CheckState)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    /// Shared: one round sends the same ad to every peer.
    Gossip {
        from: usize,
        ad: Rc<Ad>,
    },
    FetchReq {
        from: usize,
        generation: u32,
    },
    FetchResp {
        from: usize,
        generation: u32,
        held: Option<HeldAd>,
    },
}

/// Timing knobs shared by all nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    pub gossip_ms: u64,
    pub fail_ms: u64,
    pub join_grace_ms: u64,
    /// How long unheard seeds (every other node is a seed) may hold a starting node back.
    pub startup_patience_ms: u64,
    pub fetch_retry_ms: u64,
    pub checkers_per_backend: usize,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Clone, Debug)]
struct Peer {
    last_heard_ms: u64,
    ad: Rc<Ad>,
}

pub struct SimNode {
    pub index: usize,
    pub id: NodeId,
    pub up: bool,
    pub generation: u32,
    started_ms: u64,
    pub caught_up: bool,
    pub held: Option<HeldAd>,
    pub role: Role,
    pub publisher: Option<NodeId>,
    pub head: Option<HeadInfo>,
    stamp: StampState,
    max_epoch_seen: u64,
    peers: BTreeMap<usize, Peer>,
    fetch_sent_ms: Option<u64>,
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

impl SimNode {
    pub fn new(index: usize, backends: usize, bug: Option<Bug>) -> Self {
        SimNode {
            index,
            id: NodeId::new(format!("n{}", index + 1)),
            up: true,
            generation: 1,
            started_ms: 0,
            caught_up: false,
            held: None,
            role: Role::CatchingUp,
            publisher: None,
            head: None,
            stamp: StampState::default(),
            max_epoch_seen: 0,
            peers: BTreeMap::new(),
            fetch_sent_ms: None,
            checks: BTreeMap::new(),
            verdicts: vec![Verdict::Up; backends],
            bug,
            assigned: None,
        }
    }

    /// Crash: the process and everything in memory are gone.
    pub fn crash(&mut self) {
        self.up = false;
    }

    /// A new process with a new generation and an empty memory.
    pub fn restart(&mut self, now_ms: u64) {
        let fresh = SimNode::new(self.index, self.verdicts.len(), self.bug);
        let generation = self.generation + 1;
        *self = fresh;
        self.generation = generation;
        self.started_ms = now_ms;
    }

    /// Ids of the members this node believes alive, itself included, sorted.
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
            caught_up: self.caught_up,
            held: self.held.clone(),
            opinions: self.checks.iter().map(|(b, h)| (*b, h.state())).collect(),
        }
    }

    /// One round: elect, select the head, stamp or catch up, probe, judge, and gossip.
    /// Returns the messages to send as (to, message).
    #[allow(clippy::too_many_arguments)]
    pub fn round(
        &mut self,
        now_ms: u64,
        t: &Timing,
        all: &[NodeId],
        content_digest: &str,
        backend_up: &[bool],
        rng: &mut StdRng,
        effects: &mut Effects,
    ) -> Vec<(usize, Msg)> {
        let live = self.live(now_ms, t);
        // Like the mesh, remember epochs from every member heard of, dead ones included.
        for p in self.peers.values() {
            if let Some(h) = &p.ad.held {
                self.max_epoch_seen = self.max_epoch_seen.max(h.version.epoch);
            }
        }
        let mut members = Vec::with_capacity(live.len());
        let mut candidates = Vec::with_capacity(live.len());
        for &i in &live {
            let (held, caught_up) = if i == self.index {
                (self.held.clone(), self.caught_up)
            } else {
                let p = &self.peers[&i];
                (p.ad.held.clone(), p.ad.caught_up)
            };
            if let Some(h) = &held {
                self.max_epoch_seen = self.max_epoch_seen.max(h.version.epoch);
            }
            members.push(MemberHeld {
                id: all[i].clone(),
                alive: true,
                held,
            });
            candidates.push(Candidate {
                id: all[i].clone(),
                alive: true,
                caught_up,
            });
        }
        self.head = select_head(&members);
        let uptime_ms = now_ms.saturating_sub(self.started_ms);
        // Every other node is a seed; one never heard of is unheard. Liveness here is judged
        // from the first message, so no member is ever unjudged.
        let listening = Listening {
            uptime_ms,
            unheard_seeds: (all.len() - 1).saturating_sub(self.peers.len()),
            unjudged_members: 0,
        };
        self.caught_up = is_caught_up(
            self.caught_up,
            has_listened(&listening, t.join_grace_ms, t.startup_patience_ms),
            self.held.as_ref().map(|h| &h.version),
            self.head.as_ref().map(|h| &h.version),
        );
        // Our own flag may just have turned true: the candidate list must say so.
        if let Some(me) = candidates.iter_mut().find(|c| c.id == self.id) {
            me.caught_up = self.caught_up;
        }
        self.publisher = choose_publisher(&candidates);
        let role = role_of(&self.id, self.caught_up, self.publisher.as_ref()).role();
        if role == Role::Publisher && self.role != Role::Publisher {
            self.stamp = StampState::default();
        }
        self.role = role;
        let mut out = Vec::new();
        if self.role == Role::Publisher {
            match next_stamp(
                &self.id,
                &self.stamp,
                self.head.as_ref(),
                self.max_epoch_seen,
                content_digest,
            ) {
                Stamp::Reuse(_) => {}
                Stamp::New(v) => {
                    let ad = HeldAd {
                        version: v.clone(),
                        digest: content_digest.to_string(),
                        size_bytes: 1,
                    };
                    self.max_epoch_seen = self.max_epoch_seen.max(v.epoch);
                    self.stamp = StampState {
                        epoch: Some(v.epoch),
                        seq: v.seq,
                    };
                    self.held = Some(ad.clone());
                    effects.stamped = Some(ad);
                }
            }
        } else if self
            .fetch_sent_ms
            .is_none_or(|s| now_ms.saturating_sub(s) >= t.fetch_retry_ms)
        {
            let source = match self.bug {
                Some(Bug::AdoptOlder) => {
                    let mine = self.held.as_ref().map(|h| &h.version);
                    let differing: Vec<usize> = live
                        .iter()
                        .copied()
                        .filter(|&i| i != self.index)
                        .filter(|i| {
                            let theirs = self.peers[i].ad.held.as_ref().map(|h| &h.version);
                            theirs.is_some() && theirs != mine
                        })
                        .collect();
                    (!differing.is_empty()).then(|| differing[rng.gen_range(0..differing.len())])
                }
                None => match catch_up(
                    &self.id,
                    self.held.as_ref().map(|h| (&h.version, h.digest.as_str())),
                    self.head.as_ref(),
                    self.publisher.as_ref(),
                    rng.gen(),
                ) {
                    CatchUp::Fetch { sources } => all.iter().position(|id| *id == sources[0]),
                    CatchUp::UpToDate | CatchUp::NoSource => None,
                },
            };
            if let Some(s) = source {
                self.fetch_sent_ms = Some(now_ms);
                out.push((
                    s,
                    Msg::FetchReq {
                        from: self.index,
                        generation: self.generation,
                    },
                ));
            }
        }
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

    /// Handles one message; returns replies as (to, message).
    pub fn receive(&mut self, now_ms: u64, msg: Msg) -> (Vec<(usize, Msg)>, Option<Version>) {
        let mut adopted = None;
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
            Msg::FetchReq { from, generation } => {
                out.push((
                    from,
                    Msg::FetchResp {
                        from: self.index,
                        generation,
                        held: self.held.clone(),
                    },
                ));
            }
            Msg::FetchResp {
                generation, held, ..
            } => {
                if generation != self.generation {
                    return (out, None);
                }
                self.fetch_sent_ms = None;
                if let Some(offer) = held {
                    let take = match self.bug {
                        Some(Bug::AdoptOlder) => self.held.as_ref() != Some(&offer),
                        None => should_adopt(
                            self.held.as_ref().map(|h| (&h.version, h.digest.as_str())),
                            (&offer.version, &offer.digest),
                        ),
                    };
                    if take {
                        adopted = Some(offer.version.clone());
                        self.held = Some(offer);
                    }
                }
            }
        }
        (out, adopted)
    }
}
