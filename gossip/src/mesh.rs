//! The async shell: starts chitchat over the QUIC transport, runs the control loop that feeds
//! membership into the pure decisions (election, head, catch-up), fetches and adopts documents,
//! and offers the handle the application uses.

use crate::certs::cluster_server_name;
use crate::config::{MeshConfig, Security, Timing};
use crate::election::{
    has_listened, is_caught_up, liveness_unjudged, role_of, unheard_seeds, Listening, Role,
    RoleReason,
};
use crate::error::{MeshError, PublishError};
use crate::head::{
    catch_up, next_stamp, should_adopt, CatchUp, HeadInfo, HeldAd, Stamp, StampState,
};
use crate::keys;
use crate::transfer::{self, digest_hex, Blob, Wanted};
use crate::transport::{tls, FaultHook, GossipTransport, QuicTransport, Traffic};
use crate::version::{NodeId, Version};
use crate::view::{
    build_view, decide_at, parse_members, ClusterView, Decisions, Member, RawMember,
};
use crate::Document;
use bytes::Bytes;
use chitchat::{
    spawn_chitchat, Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// A document with the stamp it was published under.
#[derive(Clone, Debug, PartialEq)]
pub struct Stamped<D> {
    pub version: Version,
    /// Hex SHA-256 of the document's bincode bytes.
    pub digest: String,
    pub size_bytes: u64,
    pub doc: D,
}

/// How long to wait before retrying when every holder failed to serve the head.
const FETCH_RETRY: Duration = Duration::from_millis(200);
/// Gossip keys for tombstones are kept this long (deleted app keys).
const TOMBSTONE_GRACE: Duration = Duration::from_secs(600);

enum KvOp {
    Set(String, String),
    Delete(String),
}

/// Cheap clonable handle to this node's membership in the mesh.
pub struct Mesh<D: Document> {
    inner: Arc<Inner<D>>,
}

impl<D: Document> Clone for Mesh<D> {
    fn clone(&self) -> Self {
        Mesh {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<D> {
    node_id: NodeId,
    listen: SocketAddr,
    timing: Timing,
    started: Instant,
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    handle: Mutex<Option<ChitchatHandle>>,
    transport: QuicTransport,
    role_tx: watch::Sender<Role>,
    doc_tx: watch::Sender<Option<Arc<Stamped<D>>>>,
    blob_tx: watch::Sender<Option<Arc<Blob>>>,
    cmd_tx: mpsc::UnboundedSender<KvOp>,
    state: Mutex<State>,
    cancel: CancellationToken,
}

#[derive(Default)]
struct State {
    role: Option<RoleReason>,
    stamp: StampState,
    max_epoch_seen: u64,
    caught_up: bool,
    /// When the join grace started: at start, and again after a stall.
    grace_from: Option<Instant>,
    /// Each configured seed's addresses (empty until it resolves), to tell whether it was heard.
    seed_addrs: Vec<Vec<SocketAddr>>,
    /// When the control loop last stepped, to notice stalls.
    last_step: Option<Instant>,
    applied: Option<Version>,
    app_keys: BTreeMap<String, String>,
    /// Last parsed members (self included) and what was decided from them.
    members: Vec<Member>,
    decisions: Option<Decisions>,
    fetching: Option<Version>,
    fetch_retry_at: Option<Instant>,
    /// Per chitchat node: last heartbeat and when it last advanced. Keyed by chitchat's own id so
    /// the per-step pass over every node state allocates nothing.
    heartbeats: HashMap<ChitchatId, (u64, Instant)>,
    /// Per chitchat node: (max_version, live) at the last parse, to skip re-parsing.
    fingerprint: Vec<(ChitchatId, u64, bool)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl<D> Drop for Inner<D> {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(handle) = lock(&self.handle).take() {
            handle.abort();
        }
        self.transport.close();
    }
}

impl<D: Document> Mesh<D> {
    /// Binds the QUIC endpoint, starts gossiping with the seeds and the control loop.
    pub async fn start(config: MeshConfig) -> Result<Self, MeshError> {
        let MeshConfig {
            node_id,
            cluster_id,
            listen,
            seeds,
            security,
            metadata,
            timing,
        } = config;
        timing.validate()?;
        if node_id.as_str().is_empty() {
            return Err(MeshError::Config {
                field: "node_id",
                detail: "must not be empty".into(),
            });
        }
        if cluster_id.is_empty() {
            return Err(MeshError::Config {
                field: "cluster_id",
                detail: "must not be empty".into(),
            });
        }
        if listen.ip().is_unspecified() {
            return Err(MeshError::Config {
                field: "listen",
                detail: format!(
                    "{listen}: peers identify a node by this address, use a reachable IP"
                ),
            });
        }
        let server_name = cluster_server_name(&cluster_id);
        let tls_configs = match &security {
            Security::MutualTls(material) => tls::mutual(material)?,
            Security::Insecure => {
                warn!("mesh security is Insecure: any host that reaches {listen} can join and inject rules");
                tls::insecure(&server_name)?
            }
        };
        let (blob_tx, blob_rx) = watch::channel(None);
        let transport = QuicTransport::bind(
            listen,
            tls_configs,
            server_name,
            &timing,
            FaultHook::default(),
            blob_rx,
        )?;
        let listen = transport.local_addr();
        let generation = unix_ms();
        let chitchat_id = ChitchatId::new(node_id.as_str(), generation, listen);
        let gossip_interval = Duration::from_millis(timing.gossip_interval_ms);
        let failure_detector_config = FailureDetectorConfig {
            phi_threshold: timing.phi_threshold,
            sampling_window_size: 1_000,
            // Longer gaps (a pause, a healed partition) are not averaged in, so the mean, and
            // with it the detection time, stays near the gossip interval.
            max_interval: (gossip_interval * 20).max(Duration::from_secs(2)),
            initial_interval: Duration::from_millis(timing.initial_interval_ms),
            dead_node_grace_period: Duration::from_millis(timing.dead_node_grace_ms),
        };
        let chitchat_config = ChitchatConfig {
            chitchat_id,
            cluster_id,
            gossip_interval,
            listen_addr: listen,
            seed_nodes: seeds.clone(),
            failure_detector_config,
            marked_for_deletion_grace_period: TOMBSTONE_GRACE,
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let initial: Vec<(String, String)> = metadata
            .iter()
            .map(|(k, v)| (format!("{}{k}", keys::META_PREFIX), v.clone()))
            .collect();
        let handle = spawn_chitchat(
            chitchat_config,
            initial,
            &GossipTransport(transport.clone()),
        )
        .await
        .map_err(|e| MeshError::Gossip {
            detail: e.to_string(),
        })?;
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (role_tx, _) = watch::channel(Role::CatchingUp);
        let (doc_tx, _) = watch::channel(None);
        let inner = Arc::new(Inner {
            node_id: node_id.clone(),
            listen,
            timing,
            started: Instant::now(),
            chitchat: handle.chitchat(),
            handle: Mutex::new(Some(handle)),
            transport,
            role_tx,
            doc_tx,
            blob_tx,
            cmd_tx,
            state: Mutex::new(State {
                seed_addrs: vec![Vec::new(); seeds.len()],
                ..State::default()
            }),
            cancel: CancellationToken::new(),
        });
        tokio::spawn(resolve_seeds(Arc::downgrade(&inner), seeds));
        let live_rx = inner.chitchat.lock().await.live_nodes_watcher();
        tokio::spawn(control_loop(
            Arc::downgrade(&inner),
            inner.cancel.clone(),
            cmd_rx,
            live_rx,
        ));
        info!(node = %node_id, %listen, generation, "joined the mesh");
        Ok(Mesh { inner })
    }

    pub fn node_id(&self) -> &NodeId {
        &self.inner.node_id
    }

    /// The QUIC/gossip address this node listens on and advertises.
    pub fn listen_addr(&self) -> SocketAddr {
        self.inner.listen
    }

    pub fn role(&self) -> Role {
        self.role_reason().role()
    }

    /// The role and why (e.g. which lower member publishes).
    pub fn role_reason(&self) -> RoleReason {
        lock(&self.inner.state)
            .role
            .clone()
            .unwrap_or(RoleReason::CatchingUp)
    }

    pub fn role_watch(&self) -> watch::Receiver<Role> {
        self.inner.role_tx.subscribe()
    }

    /// Stamps and spreads a new document. Err(NotPublisher) unless this node is the publisher.
    /// The first publish after gaining the role uses epoch = max epoch seen + 1; later ones
    /// seq + 1. If the content equals the head's and the head was stamped by this node in its
    /// current epoch, returns the existing version without a new stamp.
    pub fn publish(&self, doc: D) -> Result<Version, PublishError> {
        if self.inner.cancel.is_cancelled() {
            return Err(PublishError::Stopped);
        }
        let bytes =
            bincode::serde::encode_to_vec(&doc, bincode::config::standard()).map_err(|e| {
                PublishError::Encode {
                    detail: e.to_string(),
                }
            })?;
        let size_bytes = bytes.len() as u64;
        if size_bytes > self.inner.timing.max_document_bytes {
            return Err(PublishError::TooLarge {
                size_bytes,
                max_bytes: self.inner.timing.max_document_bytes,
            });
        }
        let digest = digest_hex(&bytes);
        let mut st = lock(&self.inner.state);
        let role = st
            .role
            .as_ref()
            .map(RoleReason::role)
            .unwrap_or(Role::CatchingUp);
        if role != Role::Publisher {
            return Err(PublishError::NotPublisher { role });
        }
        let head = self.inner.effective_head(&st);
        match next_stamp(
            &self.inner.node_id,
            &st.stamp,
            head.as_ref(),
            st.max_epoch_seen,
            &digest,
        ) {
            Stamp::Reuse(version) => Ok(version),
            Stamp::New(version) => {
                st.stamp = StampState {
                    epoch: Some(version.epoch),
                    seq: version.seq,
                };
                st.max_epoch_seen = st.max_epoch_seen.max(version.epoch);
                let stamped = Stamped {
                    version: version.clone(),
                    digest,
                    size_bytes,
                    doc,
                };
                self.inner
                    .adopt_locked(&mut st, stamped, Bytes::from(bytes));
                info!(%version, size_bytes, "published");
                Ok(version)
            }
        }
    }

    /// The newest adopted document.
    pub fn current(&self) -> Option<Arc<Stamped<D>>> {
        self.inner.doc_tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Stamped<D>>>> {
        self.inner.doc_tx.subscribe()
    }

    /// Records (and gossips) the version this node's dataplane now runs.
    pub fn set_applied(&self, version: &Version) {
        lock(&self.inner.state).applied = Some(version.clone());
        self.inner
            .send(KvOp::Set(keys::APPLIED.into(), version.to_string()));
    }

    pub fn view(&self) -> ClusterView {
        let mut st = lock(&self.inner.state);
        refresh_last_seen(&mut st, Instant::now());
        let decisions = st.decisions.clone().unwrap_or(Decisions {
            head: None,
            publisher: None,
        });
        let mut view = build_view(&self.inner.node_id, &st.members, &decisions);
        if let Some(me) = view.members.iter_mut().find(|m| m.id == self.inner.node_id) {
            // The node's own facts are known now; the gossiped copy may lag one tick.
            me.applied = st.applied.clone();
            me.held = self.current().map(|s| s.version.clone());
            me.last_seen_ms = Some(0);
        }
        view
    }

    /// Sets an application key (e.g. a health result), gossiped to every member.
    pub fn set_app_key(&self, key: &str, value: &str) {
        lock(&self.inner.state)
            .app_keys
            .insert(key.to_string(), value.to_string());
        self.inner.send(KvOp::Set(
            format!("{}{key}", keys::APP_PREFIX),
            value.to_string(),
        ));
    }

    /// `Some(reason)`: this node passes on the publisher role (the election treats it as not
    /// caught up) and says why in every view; `None`: it may be elected again.
    pub fn stand_down(&self, reason: Option<&str>) {
        self.inner.send(match reason {
            Some(r) => KvOp::Set(keys::STAND_DOWN.into(), r.to_string()),
            None => KvOp::Delete(keys::STAND_DOWN.into()),
        });
    }

    pub fn delete_app_key(&self, key: &str) {
        lock(&self.inner.state).app_keys.remove(key);
        self.inner
            .send(KvOp::Delete(format!("{}{key}", keys::APP_PREFIX)));
    }

    /// Application keys starting with `prefix`, from live members including this node, sorted.
    pub fn app_keys(&self, prefix: &str) -> Vec<(NodeId, String, String)> {
        let st = lock(&self.inner.state);
        let mut out: Vec<(NodeId, String, String)> = st
            .members
            .iter()
            .filter(|m| m.alive && m.id != self.inner.node_id)
            .flat_map(|m| {
                m.app
                    .iter()
                    .filter(|(k, _)| k.starts_with(prefix))
                    .map(|(k, v)| (m.id.clone(), k.clone(), v.clone()))
            })
            .collect();
        out.extend(
            st.app_keys
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (self.inner.node_id.clone(), k.clone(), v.clone())),
        );
        out.sort();
        out
    }

    /// Ids of live members, sorted, including this node.
    pub fn live_members(&self) -> Vec<NodeId> {
        let st = lock(&self.inner.state);
        let mut ids: Vec<NodeId> = st
            .members
            .iter()
            .filter(|m| m.alive)
            .map(|m| m.id.clone())
            .collect();
        ids.push(self.inner.node_id.clone());
        ids.sort();
        ids.dedup();
        ids
    }

    pub fn fault_hook(&self) -> FaultHook {
        self.inner.transport.fault().clone()
    }

    /// Bytes this node's endpoint has sent and received so far.
    pub fn traffic(&self) -> Traffic {
        self.inner.transport.traffic()
    }

    /// Graceful leave: marks this node as leaving, pushes that to every live peer at once, lets
    /// it spread for `leave_linger_ms`, then stops. Peers see the node gone at once.
    pub async fn shutdown(self) {
        let peers: Vec<SocketAddr> = {
            let mut chitchat = self.inner.chitchat.lock().await;
            chitchat.self_node_state().set(keys::LEAVING, "1");
            let me = chitchat.self_chitchat_id().clone();
            chitchat
                .live_nodes()
                .filter(|id| **id != me)
                .map(|id| id.gossip_advertise_addr)
                .collect()
        };
        if let Some(handle) = lock(&self.inner.handle).as_ref() {
            for peer in &peers {
                let _ = handle.gossip(*peer);
            }
        }
        tokio::time::sleep(Duration::from_millis(self.inner.timing.leave_linger_ms)).await;
        info!(node = %self.inner.node_id, "left the mesh");
        self.inner.stop();
    }

    /// Stops at once without announcing it, as a crash would (tests and benchmarks).
    pub async fn abort(self) {
        self.inner.stop();
    }
}

impl<D: Document> Inner<D> {
    fn send(&self, op: KvOp) {
        // The control loop applies key writes under chitchat's lock, in order.
        let _ = self.cmd_tx.send(op);
    }

    fn stop(&self) {
        self.cancel.cancel();
        if let Some(handle) = lock(&self.handle).take() {
            handle.abort();
        }
        self.transport.close();
    }

    fn held_ad(&self) -> Option<HeldAd> {
        self.doc_tx.borrow().as_ref().map(|s| HeldAd {
            version: s.version.clone(),
            digest: s.digest.clone(),
            size_bytes: s.size_bytes,
        })
    }

    /// The head from the last members, with this node's own holding taken as of now.
    fn effective_head(&self, st: &State) -> Option<HeadInfo> {
        let mut members = st.members.clone();
        let held = self.held_ad();
        match members.iter_mut().find(|m| m.id == self.node_id) {
            Some(me) => {
                me.held = held;
                me.alive = true;
            }
            None => members.push(Member {
                id: self.node_id.clone(),
                generation: 0,
                listen: self.listen,
                alive: true,
                ready: st.caught_up,
                held,
                applied: None,
                metadata: BTreeMap::new(),
                app: BTreeMap::new(),
                last_seen_ms: None,
                stand_down: None,
            }),
        }
        decide_at(&members, 0, 0).head
    }

    /// Installs a document if it is newer than the one held (never backwards).
    fn adopt_locked(&self, st: &mut State, stamped: Stamped<D>, bytes: Bytes) -> bool {
        let adopt = {
            let current = self.doc_tx.borrow();
            let current = current.as_ref().map(|s| (&s.version, s.digest.as_str()));
            should_adopt(current, (&stamped.version, &stamped.digest))
        };
        if !adopt {
            return false;
        }
        st.max_epoch_seen = st.max_epoch_seen.max(stamped.version.epoch);
        let ad = HeldAd {
            version: stamped.version.clone(),
            digest: stamped.digest.clone(),
            size_bytes: stamped.size_bytes,
        };
        self.blob_tx.send_replace(Some(Arc::new(Blob {
            version: stamped.version.clone(),
            digest: stamped.digest.clone(),
            bytes,
        })));
        self.doc_tx.send_replace(Some(Arc::new(stamped)));
        self.send(KvOp::Set(keys::HELD.into(), keys::encode_held(&ad)));
        true
    }

    /// One control step: apply pending key writes, read membership, decide, act.
    async fn step(self: &Arc<Self>, ops: Vec<KvOp>) {
        let now = Instant::now();
        let raw = {
            let mut chitchat = self.chitchat.lock().await;
            for op in ops {
                match op {
                    KvOp::Set(k, v) => chitchat.self_node_state().set(k, v),
                    KvOp::Delete(k) => chitchat.self_node_state().delete(&k),
                }
            }
            self.read_members(&chitchat, now)
        };
        let mut st = lock(&self.state);
        // Whether the decisions must be made again, or the last ones still hold.
        let mut dirty = raw.is_some() || st.decisions.is_none();
        if let Some(raw) = raw {
            st.members = parse_members(raw);
        }
        // Heartbeat ages matter only while catching up (`liveness_unjudged`) and to the view.
        if !st.caught_up {
            refresh_last_seen(&mut st, now);
        }
        // This node's own facts are authoritative locally (the gossiped copy lags one step).
        let held = self.held_ad();
        if let Some(me) = st.members.iter_mut().find(|m| m.id == self.node_id) {
            let alive = !self.cancel.is_cancelled();
            dirty |= me.held != held || me.alive != alive;
            me.held = held.clone();
            me.alive = alive;
        }
        if let Some(prev) = st.last_step {
            let gap = now.saturating_duration_since(prev);
            if gap >= Duration::from_millis(self.timing.stall_reset_ms) && st.caught_up {
                warn!(node = %self.node_id, stalled_ms = gap.as_millis() as u64, "control loop stalled; catching up again before acting");
                st.caught_up = false;
                dirty = true;
                st.grace_from = Some(now);
                self.send(KvOp::Delete(keys::READY.into()));
                if let Some(me) = st.members.iter_mut().find(|m| m.id == self.node_id) {
                    me.ready = false;
                }
            }
        }
        st.last_step = Some(now);
        let now_unix_ms = unix_ms();
        let patience_ms = self.timing.startup_patience_ms;
        // Who counts as starting depends on the clock, so while anyone starts, decide afresh.
        let starting = st.members.iter().any(|m| m.alive && !m.ready);
        let mut decisions = match &st.decisions {
            Some(last) if !dirty && !starting => last.clone(),
            _ => decide_at(&st.members, now_unix_ms, patience_ms),
        };
        let seen = st
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
        st.max_epoch_seen = st.max_epoch_seen.max(seen);

        let grace_from = st.grace_from.unwrap_or(self.started);
        let uptime_ms = now.saturating_duration_since(grace_from).as_millis() as u64;
        let listened = !st.caught_up && {
            let member_addrs: Vec<SocketAddr> = st.members.iter().map(|m| m.listen).collect();
            // Seeds matter at start only: after a stall the node already knows the mesh, and a
            // seed that never answered (a scaled-down replica) must not cost the full patience.
            let unheard = match st.grace_from {
                None => unheard_seeds(&st.seed_addrs, &member_addrs),
                Some(_) => 0,
            };
            let listening = Listening {
                uptime_ms,
                unheard_seeds: unheard,
                unjudged_members: st
                    .members
                    .iter()
                    .filter(|m| {
                        liveness_unjudged(m.alive, m.last_seen_ms, self.timing.join_grace_ms)
                    })
                    .count(),
            };
            has_listened(&listening, self.timing.join_grace_ms, patience_ms)
        };
        let caught_up = is_caught_up(
            st.caught_up,
            listened,
            held.as_ref().map(|h| &h.version),
            decisions.head.as_ref().map(|h| &h.version),
        );
        if caught_up && !st.caught_up {
            st.caught_up = true;
            self.send(KvOp::Set(keys::READY.into(), "1".into()));
            if let Some(me) = st.members.iter_mut().find(|m| m.id == self.node_id) {
                me.ready = true;
            }
            decisions = decide_at(&st.members, now_unix_ms, patience_ms);
        }
        let reason = role_of(&self.node_id, st.caught_up, decisions.publisher.as_ref());
        let old_role = st.role.as_ref().map(RoleReason::role);
        if old_role.as_ref() != Some(&reason.role()) {
            if reason.role() == Role::Publisher {
                // A new term: the first stamp opens a new epoch.
                st.stamp = StampState::default();
            }
            info!(node = %self.node_id, role = ?reason, "role changed");
            self.role_tx.send_replace(reason.role());
        }
        st.role = Some(reason);

        let spread = self
            .node_id
            .as_str()
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
        let decision = catch_up(
            &self.node_id,
            held.as_ref().map(|h| (&h.version, h.digest.as_str())),
            decisions.head.as_ref(),
            decisions.publisher.as_ref(),
            spread,
        );
        let retry_ok = st.fetch_retry_at.is_none_or(|at| now >= at);
        if let (CatchUp::Fetch { sources }, Some(head)) = (decision, decisions.head.as_ref()) {
            if st.fetching.is_none() && retry_ok {
                let addrs: Vec<(NodeId, SocketAddr)> = sources
                    .iter()
                    .filter_map(|id| {
                        st.members
                            .iter()
                            .find(|m| &m.id == id)
                            .map(|m| (id.clone(), m.listen))
                    })
                    .collect();
                st.fetching = Some(head.version.clone());
                let wanted = Wanted {
                    version: head.version.clone(),
                    digest: head.digest.clone(),
                };
                tokio::spawn(fetch_head(self.clone(), wanted, head.size_bytes, addrs));
            }
        }
        st.decisions = Some(decisions);
    }

    /// Reads chitchat's state; returns `None` when nothing but heartbeats changed.
    ///
    /// Runs on every control step (every 25 ms) over every node state, so the unchanged case
    /// neither allocates nor re-parses: at 100 nodes that pass was most of the mesh's CPU.
    fn read_members(&self, chitchat: &Chitchat, now: Instant) -> Option<Vec<RawMember>> {
        let self_id = chitchat.self_chitchat_id();
        let live: HashSet<&ChitchatId> = chitchat.live_nodes().collect();
        let states = chitchat.node_states();
        let mut st = lock(&self.state);
        let st = &mut *st;
        let mut unchanged = st.fingerprint.len() == states.len() && !st.members.is_empty();
        for (i, (id, state)) in states.iter().enumerate() {
            let beat = u64::from(state.heartbeat());
            match st.heartbeats.get_mut(id) {
                Some(entry) if entry.0 == beat => {}
                Some(entry) => *entry = (beat, now),
                None => {
                    st.heartbeats.insert(id.clone(), (beat, now));
                }
            }
            unchanged = unchanged
                && st
                    .fingerprint
                    .get(i)
                    .is_some_and(|(fid, version, was_live)| {
                        fid == id
                            && *version == state.max_version()
                            && *was_live == live.contains(id)
                    });
        }
        if states.len() * 2 < st.heartbeats.len() {
            // Forget heartbeats of nodes chitchat has garbage collected.
            st.heartbeats.retain(|id, _| states.contains_key(id));
        }
        if unchanged {
            return None;
        }
        st.fingerprint = states
            .iter()
            .map(|(id, state)| (id.clone(), state.max_version(), live.contains(id)))
            .collect();
        Some(
            states
                .iter()
                .map(|(id, state)| RawMember {
                    id: NodeId::new(&*id.node_id),
                    generation: id.generation_id,
                    listen: id.gossip_advertise_addr,
                    live: id == self_id || live.contains(id),
                    keys: state
                        .key_values()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    last_seen_ms: None,
                })
                .collect(),
        )
    }
}

/// Sets each member's `last_seen_ms` from the heartbeat ages.
fn refresh_last_seen(st: &mut State, now: Instant) {
    let ages: HashMap<(&str, u64), Instant> = st
        .heartbeats
        .iter()
        .map(|(id, (_, at))| ((&*id.node_id, id.generation_id), *at))
        .collect();
    for m in st.members.iter_mut() {
        m.last_seen_ms = ages
            .get(&(m.id.as_str(), m.generation))
            .map(|at| now.saturating_duration_since(*at).as_millis() as u64);
    }
}

/// Resolves the seeds for the startup wait (see `has_listened`): again every 500 ms until each
/// resolves or the startup patience is over. Chitchat resolves them on its own for gossip.
async fn resolve_seeds<D: Document>(inner: Weak<Inner<D>>, seeds: Vec<String>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let patience = Duration::from_millis(strong.timing.startup_patience_ms);
        let over = strong.started.elapsed() >= patience;
        drop(strong);
        let mut resolved = Vec::with_capacity(seeds.len());
        for seed in &seeds {
            let addrs = tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::lookup_host(seed.as_str()),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .map(Iterator::collect)
            .unwrap_or_default();
            resolved.push(addrs);
        }
        let done = resolved.iter().all(|a: &Vec<SocketAddr>| !a.is_empty());
        let Some(strong) = inner.upgrade() else {
            return;
        };
        lock(&strong.state).seed_addrs = resolved;
        if done || over {
            return;
        }
        drop(strong);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn control_loop<D: Document>(
    inner: Weak<Inner<D>>,
    cancel: CancellationToken,
    mut cmd_rx: mpsc::UnboundedReceiver<KvOp>,
    mut live_rx: watch::Receiver<std::collections::BTreeMap<ChitchatId, chitchat::NodeState>>,
) {
    let tick_ms = inner
        .upgrade()
        .map(|i| i.timing.control_tick_ms)
        .unwrap_or(100);
    let mut tick = tokio::time::interval(Duration::from_millis(tick_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut live_open = true;
    loop {
        let mut ops = Vec::new();
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
            changed = live_rx.changed(), if live_open => {
                if changed.is_err() { live_open = false; }
            }
            op = cmd_rx.recv() => match op {
                Some(op) => ops.push(op),
                None => return,
            },
        }
        while let Ok(op) = cmd_rx.try_recv() {
            ops.push(op);
        }
        let Some(inner) = inner.upgrade() else { return };
        inner.step(ops).await;
    }
}

async fn fetch_head<D: Document>(
    inner: Arc<Inner<D>>,
    wanted: Wanted,
    size_bytes: u64,
    sources: Vec<(NodeId, SocketAddr)>,
) {
    let mut adopted = false;
    for (peer_id, addr) in sources {
        if inner.cancel.is_cancelled() {
            break;
        }
        let started = Instant::now();
        let result = transfer::fetch(
            &inner.transport,
            addr,
            &wanted,
            inner.timing.max_document_bytes.min(size_bytes.max(1)),
            transfer::FetchTimeouts {
                total_ms: inner.timing.fetch_timeout_ms,
                answer_ms: inner.timing.fetch_answer_timeout_ms,
            },
        )
        .await;
        let bytes = match result {
            Ok(bytes) => bytes,
            Err(e) => {
                debug!(peer = %peer_id, error = %e, "fetch failed, trying the next holder");
                continue;
            }
        };
        let config = bincode::config::standard();
        let doc: D = match bincode::serde::decode_from_slice(&bytes, config) {
            Ok((doc, _)) => doc,
            Err(e) => {
                warn!(peer = %peer_id, version = %wanted.version, error = %e, "document does not decode");
                continue;
            }
        };
        let stamped = Stamped {
            version: wanted.version.clone(),
            digest: wanted.digest.clone(),
            size_bytes: bytes.len() as u64,
            doc,
        };
        let mut st = lock(&inner.state);
        if inner.adopt_locked(&mut st, stamped, bytes) {
            debug!(peer = %peer_id, version = %wanted.version, elapsed_ms = started.elapsed().as_millis() as u64, "adopted");
        }
        adopted = true;
        break;
    }
    let mut st = lock(&inner.state);
    st.fetching = None;
    if !adopted {
        st.fetch_retry_at = Some(Instant::now() + FETCH_RETRY);
    }
}
