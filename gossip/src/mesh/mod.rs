//! The async shell around the replica core ([`crate::replica::Replica`]): starts chitchat over
//! the QUIC transport, feeds the core what gossip reports and the time, carries out its actions
//! (gossip a key, fetch a head, announce a role), serves documents to peers, and offers the
//! handle the application uses. Every decision is the core's; this folder only moves data.
//! `mod.rs`: the handle (`Mesh`) and start-up; `rejoin.rs`: at start-up, joining again above
//! a later incarnation of this node's id; `shell.rs`: the control loop and the tasks;
//! `fetch.rs`: fetching a new head.
//!
//! Why this file is over 500 lines: it is the one public handle, `Mesh`: `start` (wiring
//! chitchat, the transport and the shell's tasks together, ~150 lines) and the handle's
//! accessors, each a few lines over the shared state; the loop itself is in `shell.rs`.

mod directed;
mod fetch;
mod rejoin;
mod shell;

use crate::certs::{cluster_server_name, TlsMaterial};
use crate::config::{MeshConfig, Timing};
use crate::election::{Role, RoleReason};
use crate::epoch_file::EpochFile;
use crate::error::{MeshError, PublishError};
use crate::head::{HeldAd, Stamp};
use crate::keys;
use crate::patches::Patches;
use crate::replica::{Identity, Replica, ReplicaTiming, StampRefused};
use crate::security::Mode as SecurityMode;
use crate::transfer::{digest_hex, Blob};
use crate::transport::{FaultHook, GossipTransport, QuicTransport, Traffic};
use crate::version::{NodeId, Version};
use crate::view::{build_view, ClusterView, Decisions};
use crate::Document;
use bytes::Bytes;
use chitchat::{
    spawn_chitchat, Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig,
};
use shell::{control_loop, resolve_seeds, serve_documents};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// A document with the stamp it was published under.
#[derive(Clone, Debug, PartialEq)]
pub struct Stamped<D> {
    pub version: Version,
    /// Hex SHA-256 of the document's bincode bytes.
    pub digest: String,
    pub size_bytes: u64,
    pub doc: D,
}

/// Totals of what a node served (see [`Mesh::documents_served_by_form`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DocumentsServed {
    /// Copies sent, full or as a patch.
    pub copies: u64,
    /// Of those, sent as a patch.
    pub delta_copies: u64,
    /// Bytes of full copies.
    pub full_bytes: u64,
    /// Bytes of patches.
    pub delta_bytes: u64,
    /// Patches this node received that failed (it then fetched the full document).
    pub delta_failures: u64,
}

#[derive(Default)]
struct ServedCounters {
    copies: AtomicU64,
    delta_copies: AtomicU64,
    full_bytes: AtomicU64,
    delta_bytes: AtomicU64,
    delta_failures: AtomicU64,
}

/// Inbound document requests waiting to be served; more are refused by the transport.
const STREAM_QUEUE_LEN: usize = 64;
/// Gossip keys for tombstones are kept this long (deleted app keys).
const TOMBSTONE_GRACE: Duration = Duration::from_secs(600);

enum KvOp {
    Set(String, String),
    Delete(String),
    /// Gossip to these addresses now, after the key writes queued before it (`Action::Announce`).
    Gossip(Vec<SocketAddr>),
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
    security_mode: SecurityMode,
    /// The cluster id, which every reloaded certificate must be valid for.
    cluster_id: String,
    role_tx: watch::Sender<Role>,
    doc_tx: watch::Sender<Option<Arc<Stamped<D>>>>,
    blob_tx: watch::Sender<Option<Arc<Blob>>>,
    cmd_tx: mpsc::UnboundedSender<KvOp>,
    /// What this node sent to peers that fetched a document.
    served: Arc<ServedCounters>,
    /// Recent versions and patches between them (delta transfer), shared with the server.
    patches: Arc<Patches>,
    state: Mutex<State>,
    /// Written in the background (reservations) and, rarely, on the stamp path; its own lock,
    /// never held while waiting for `state` (see `reservation.rs`).
    epoch_file: Option<Arc<Mutex<EpochFile>>>,
    cancel: CancellationToken,
}

struct State {
    /// Every decision this node makes.
    replica: Replica,
    applied: Option<Version>,
    app_keys: BTreeMap<String, String>,
    /// Why this node passes on the publisher role, by cause (`Mesh::stand_down`).
    stand_downs: BTreeMap<&'static str, String>,
    /// Per chitchat node: (max_version, live) at the last parse, to skip re-parsing.
    fingerprint: Vec<(ChitchatId, u64, bool)>,
    /// The transport's first-hand set version at the last parse (verification changes views).
    first_hand_version: u64,
    /// Node ids with live incarnations at several addresses (see `incarnation.rs`).
    duplicates: Vec<crate::incarnation::Duplicate>,
    /// Dead members known only from peers' gossip, listed in the view, never counted
    /// (`incarnation::relayed_dead`).
    relayed_dead: Vec<crate::view::Member>,
    /// While an older live process has this node's id: the member the cluster counts for it,
    /// which the view shows in place of this process (`incarnation::Duplicate::kept_record`).
    refused_kept: Option<crate::view::Member>,
    /// Duplicate ids noticed so far (each new one counted once).
    duplicates_seen: u64,
    /// Warnings that would repeat every retry (an epoch file that cannot be written).
    warns: crate::transport::alarm::WarnGate,
    /// The generation of a later incarnation of this node's id that peers gossip, once warned
    /// about (`shell::warn_if_shadowed`).
    shadowed_by: Option<u64>,
    /// The fetch running now (the version it wants) and what stops it.
    fetch: Option<(Version, CancellationToken)>,
    /// When the control loop last took a step (`Mesh::wait_fresh`).
    last_step: Option<Instant>,
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

/// The generation to start with at wall clock `now_ms`: recorded in the generation file, and
/// above its last one, when there is a file (`generation_file::next`); the clock otherwise.
fn generation_at(file: Option<&std::path::Path>, now_ms: u64) -> Result<u64, MeshError> {
    match file {
        Some(path) => crate::generation_file::next(path, now_ms),
        None => Ok(now_ms),
    }
}

/// Chitchat's settings for one incarnation of this node.
fn chitchat_config(
    node_id: &NodeId,
    generation: u64,
    listen: SocketAddr,
    cluster_id: &str,
    seeds: &[String],
    timing: &Timing,
) -> ChitchatConfig {
    let gossip_interval = Duration::from_millis(timing.gossip_interval_ms);
    ChitchatConfig {
        chitchat_id: ChitchatId::new(node_id.as_str(), generation, listen),
        cluster_id: cluster_id.to_string(),
        gossip_interval,
        listen_addr: listen,
        seed_nodes: seeds.to_vec(),
        failure_detector_config: FailureDetectorConfig {
            phi_threshold: timing.phi_threshold,
            sampling_window_size: 1_000,
            // Longer gaps (a pause, a healed partition) are not averaged in, so the mean, and
            // with it the detection time, stays near the gossip interval.
            max_interval: (gossip_interval * 20).max(Duration::from_secs(2)),
            initial_interval: Duration::from_millis(timing.initial_interval_ms),
            dead_node_grace_period: Duration::from_millis(timing.dead_node_grace_ms),
        },
        marked_for_deletion_grace_period: TOMBSTONE_GRACE,
        catchup_callback: None,
        extra_liveness_predicate: None,
    }
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
    /// Binds the QUIC endpoint, starts gossiping with the seeds and the control loop. With
    /// seeds, returns once one has answered and two gossip rounds more have passed, or after
    /// the join grace, having joined again if a peer knows a later incarnation of this node id
    /// (`rejoin.rs`).
    pub async fn start(config: MeshConfig) -> Result<Self, MeshError> {
        let MeshConfig {
            node_id,
            cluster_id,
            listen,
            seeds,
            security,
            metadata,
            timing,
            epoch_file,
            generation_file,
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
        let (tls_configs, security_mode) =
            crate::security::start(&security, &node_id, &cluster_id, listen, &server_name)?;
        let epoch_file = epoch_file.as_deref().map(EpochFile::open).transpose()?;
        let (blob_tx, blob_rx) = watch::channel(None);
        let (streams_tx, streams_rx) = mpsc::channel(STREAM_QUEUE_LEN);
        let transport = QuicTransport::bind(
            listen,
            tls_configs,
            server_name,
            &timing,
            FaultHook::default(),
            streams_tx,
            security_mode == SecurityMode::NodeIdentity,
        )?;
        let listen = transport.local_addr();
        // Recorded before joining: the next start, whatever its clock says, goes above it.
        let mut generation = generation_at(generation_file.as_deref(), unix_ms())?;
        let gossip_interval = Duration::from_millis(timing.gossip_interval_ms);
        let initial: Vec<(String, String)> = metadata
            .iter()
            .map(|(k, v)| (format!("{}{k}", keys::META_PREFIX), v.clone()))
            .collect();
        let mut rejoins = 0;
        let (handle, started) = loop {
            let spawned = Instant::now();
            let handle = spawn_chitchat(
                chitchat_config(&node_id, generation, listen, &cluster_id, &seeds, &timing),
                initial.clone(),
                &GossipTransport(transport.clone()),
            )
            .await
            .map_err(|e| MeshError::Gossip {
                detail: e.to_string(),
            })?;
            if seeds.is_empty() || rejoins == rejoin::MAX_REJOINS {
                break (handle, spawned);
            }
            // The join grace is when the core listens before it acts; it counts from the spawn,
            // so this wait (the start returns later) does not delay when the node becomes
            // ready, unless it joins again (`rejoin.rs`).
            let later = rejoin::listen_for_later_incarnation(
                &handle.chitchat(),
                &initial,
                Duration::from_millis(timing.join_grace_ms),
                gossip_interval * rejoin::SETTLE_ROUNDS,
            )
            .await;
            let Some(later) = later else {
                break (handle, spawned);
            };
            let now = crate::generation_file::choose(unix_ms(), Some(later));
            let above = generation_at(generation_file.as_deref(), now)?;
            warn!(node = %node_id, generation, previous_generation = later, new_generation = above, "peers know an incarnation of this node id with this generation or a later one (this wall clock is behind that start, and no generation file, or one restored from an older copy): joining again above it, or peers would ignore this process, or take the old one's keys for its own, until they forget that incarnation");
            if let Err(e) = handle.shutdown().await {
                warn!(error = %e, "chitchat did not stop cleanly before joining again");
            }
            generation = above;
            rejoins += 1;
        };
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (role_tx, _) = watch::channel(Role::CatchingUp);
        let (doc_tx, _) = watch::channel(None);
        let identity = Identity {
            id: node_id.clone(),
            generation,
            listen,
        };
        let epoch_floor = epoch_file.as_ref().map_or(0, EpochFile::persisted);
        let replica = Replica::new(identity, ReplicaTiming::from(&timing), 0, epoch_floor);
        let inner = Arc::new(Inner {
            node_id: node_id.clone(),
            listen,
            timing,
            started,
            chitchat: handle.chitchat(),
            handle: Mutex::new(Some(handle)),
            transport,
            security_mode,
            cluster_id,
            role_tx,
            doc_tx,
            blob_tx,
            cmd_tx,
            served: Arc::default(),
            patches: Arc::default(),
            state: Mutex::new(State {
                replica,
                applied: None,
                app_keys: BTreeMap::new(),
                stand_downs: BTreeMap::new(),
                fingerprint: Vec::new(),
                first_hand_version: 0,
                duplicates: Vec::new(),
                relayed_dead: Vec::new(),
                refused_kept: None,
                duplicates_seen: 0,
                warns: crate::transport::alarm::WarnGate::new(Duration::from_secs(60)),
                shadowed_by: None,
                fetch: None,
                last_step: None,
            }),
            epoch_file: epoch_file.map(|f| Arc::new(Mutex::new(f))),
            cancel: CancellationToken::new(),
        });
        lock(&inner.state)
            .replica
            .handle_seeds(vec![Vec::new(); seeds.len()]);
        tokio::spawn(resolve_seeds(Arc::downgrade(&inner), seeds));
        tokio::spawn(serve_documents(
            blob_rx,
            inner.patches.clone(),
            streams_rx,
            inner.cancel.clone(),
            // Below the fetcher's answer timeout, so that a fetcher waiting on this node for a
            // version it is about to hold gets "not held" before it gives up on the connection.
            Duration::from_millis(inner.timing.fetch_answer_timeout_ms / 2),
            inner.served.clone(),
        ));
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

    /// The role and why (e.g. which member publishes).
    pub fn role_reason(&self) -> RoleReason {
        lock(&self.inner.state).replica.role_reason()
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
        let version = match st.replica.plan_stamp(&digest) {
            Err(StampRefused::NotPublisher(role)) => {
                return Err(PublishError::NotPublisher { role })
            }
            Err(refused) => {
                return Err(PublishError::Refused {
                    detail: refused.to_string(),
                })
            }
            Ok(Stamp::Reuse(version)) => return Ok(version),
            Ok(Stamp::New(version)) => version,
        };
        // Usually covered by the reservation written in the background (`reservation.rs`);
        // written here, under the lock, only when the cluster's epoch jumped past it.
        if let Some(target) = st.replica.epoch_write_before_stamp(version.epoch) {
            let now_ms = self.inner.now_ms();
            if let Some(file) = &self.inner.epoch_file {
                if let Err(e) = lock(file).ensure(target) {
                    st.replica
                        .handle_epoch_persisted(now_ms, target, Err(e.to_string()));
                    return Err(e);
                }
            }
            st.replica.handle_epoch_persisted(now_ms, target, Ok(()));
        }
        let ad = HeldAd {
            version: version.clone(),
            digest: digest.clone(),
            size_bytes,
        };
        st.replica
            .commit_stamp(ad)
            .map_err(|refused| PublishError::Refused {
                detail: refused.to_string(),
            })?;
        self.inner.install(
            Stamped {
                version: version.clone(),
                digest,
                size_bytes,
                doc,
            },
            Bytes::from(bytes),
        );
        self.inner.carry_out(&mut st);
        info!(%version, size_bytes, "published");
        Ok(version)
    }

    /// Whether this publisher must publish its source's table again: the head it sees is not
    /// the document this process last stamped (`Replica::needs_republish`). False unless it
    /// is the publisher.
    pub fn needs_republish(&self) -> bool {
        lock(&self.inner.state).replica.needs_republish()
    }

    /// Why this publisher cannot stamp a new document, if it cannot (`Replica::stamp_refusal`).
    pub fn stamp_refusal(&self) -> Option<String> {
        lock(&self.inner.state).replica.stamp_refusal()
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

    /// Returns once the control loop has taken a step recently (within four of its ticks),
    /// waiting up to a second for one: after a freeze or a starved spell, what the node knew
    /// before it (its role, its members) is answered only after the step that notices the gap.
    /// A publisher resumed after its successor took over answered "publisher" to requests
    /// queued during the freeze (an SRE's probe).
    pub async fn wait_fresh(&self) {
        let asked = Instant::now();
        let fresh = Duration::from_millis(self.inner.timing.control_tick_ms.saturating_mul(4));
        let stepped_since = |at: Instant| {
            lock(&self.inner.state)
                .last_step
                .is_some_and(|step| step >= at)
        };
        if stepped_since(asked.checked_sub(fresh).unwrap_or(asked)) {
            return;
        }
        let give_up = asked + Duration::from_secs(1);
        while !stepped_since(asked) && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn view(&self) -> ClusterView {
        let st = lock(&self.inner.state);
        let mut view = match &st.refused_kept {
            // Refused as a duplicate: the cluster as its members count it, the older process
            // under this id; `/readyz` and the role say why this one does not serve.
            Some(kept) => {
                let (members, decisions) = st.replica.cluster_beside(kept, unix_ms());
                build_view(&self.inner.node_id, &members, &st.relayed_dead, &decisions)
            }
            None => {
                let decisions = st.replica.decisions().cloned().unwrap_or(Decisions {
                    head: None,
                    publisher: None,
                });
                let mut view = build_view(
                    &self.inner.node_id,
                    st.replica.members(),
                    &st.relayed_dead,
                    &decisions,
                );
                if let Some(me) = view.members.iter_mut().find(|m| m.id == self.inner.node_id) {
                    // The node's own facts are known now; the gossiped copy may lag one tick.
                    me.applied = st.applied.clone();
                    me.held = self.current().map(|s| s.version.clone());
                    me.last_seen_ms = Some(0);
                }
                view
            }
        };
        // Members heard but not judged yet are `unjudged`, not dead.
        for m in view
            .members
            .iter_mut()
            .filter(|m| !m.alive && !m.relayed && !m.left)
        {
            m.unjudged = st.replica.unjudged(&m.id, m.generation);
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
    /// caught up) and says why in every view; `None`: `cause` no longer holds it back. Causes
    /// are independent (the Kubernetes source's give-up, an expired certificate): the node may
    /// be elected again only once none holds it back; the view shows every reason.
    pub fn stand_down(&self, cause: &'static str, reason: Option<&str>) {
        let joined = {
            let mut st = lock(&self.inner.state);
            match reason {
                Some(r) => st.stand_downs.insert(cause, r.to_string()),
                None => st.stand_downs.remove(cause),
            };
            (!st.stand_downs.is_empty()).then(|| {
                st.stand_downs
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            })
        };
        self.inner.send(match joined {
            Some(r) => KvOp::Set(keys::STAND_DOWN.into(), r),
            None => KvOp::Delete(keys::STAND_DOWN.into()),
        });
    }

    /// Why this node stands down for `cause`, if it does ([`Mesh::stand_down`]).
    pub fn stand_down_reason(&self, cause: &str) -> Option<String> {
        lock(&self.inner.state).stand_downs.get(cause).cloned()
    }

    pub fn delete_app_key(&self, key: &str) {
        lock(&self.inner.state).app_keys.remove(key);
        self.inner
            .send(KvOp::Delete(format!("{}{key}", keys::APP_PREFIX)));
    }

    /// Application keys starting with `prefix`, from live members including this node, sorted.
    ///
    /// The members' keys are copied after the mesh's lock is let go: under it, a copy of tens
    /// of thousands of health values on every health pass held back the control loop (a probe
    /// saw it stall, and members judged dead, at 32,000 health keys).
    pub fn app_keys(&self, prefix: &str) -> Vec<(NodeId, String, String)> {
        let (members, own) = {
            let st = lock(&self.inner.state);
            let members: Vec<(NodeId, Arc<BTreeMap<String, String>>)> = st
                .replica
                .members()
                .iter()
                .filter(|m| m.alive && m.id != self.inner.node_id)
                .map(|m| (m.id.clone(), m.app.clone()))
                .collect();
            let own: Vec<(String, String)> = st
                .app_keys
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (members, own)
        };
        let mut out: Vec<(NodeId, String, String)> = members
            .iter()
            .flat_map(|(id, app)| {
                app.range(prefix.to_string()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(k, v)| (id.clone(), k.clone(), v.clone()))
            })
            .collect();
        let me = &self.inner.node_id;
        out.extend(own.into_iter().map(|(k, v)| (me.clone(), k, v)));
        out.sort();
        out
    }

    /// Ids of live members, sorted, including this node.
    pub fn live_members(&self) -> Vec<NodeId> {
        let st = lock(&self.inner.state);
        let mut ids: Vec<NodeId> = st
            .replica
            .members()
            .iter()
            .filter(|m| m.alive)
            .map(|m| m.id.clone())
            .collect();
        ids.push(self.inner.node_id.clone());
        ids.sort();
        ids.dedup();
        ids
    }

    /// Node ids this node has seen with live processes at two addresses (each counted once).
    pub fn duplicate_ids_seen(&self) -> u64 {
        lock(&self.inner.state).duplicates_seen
    }

    /// Drops traffic with chosen peers (tests and benchmarks; `fault-injection` builds only).
    #[cfg(feature = "fault-injection")]
    pub fn fault_hook(&self) -> FaultHook {
        self.inner.transport.fault().clone()
    }

    /// Replaces this node's certificate, key and trusted CAs: handshakes from now on use them,
    /// established connections go on. Refused (the old material stays in use) when the files do
    /// not parse, the key does not match, the certificate is not valid for this node's cluster
    /// or does not name this node's id.
    pub fn reload_tls(&self, material: &TlsMaterial) -> Result<(), MeshError> {
        let configs = crate::security::configs(
            self.inner.security_mode,
            &self.inner.node_id,
            &self.inner.cluster_id,
            material,
        )?;
        self.inner.transport.set_tls(configs)
    }

    /// Copies of a document this node has sent to peers so far (each fetch it answered with the
    /// document).
    pub fn documents_served(&self) -> u64 {
        self.inner.served.copies.load(Ordering::Relaxed)
    }

    /// What this node has sent to peers that fetched a document, full copies and patches
    /// (delta transfer, `delta.rs`) apart.
    pub fn documents_served_by_form(&self) -> DocumentsServed {
        let s = &self.inner.served;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DocumentsServed {
            copies: get(&s.copies),
            delta_copies: get(&s.delta_copies),
            full_bytes: get(&s.full_bytes),
            delta_bytes: get(&s.delta_bytes),
            delta_failures: get(&s.delta_failures),
        }
    }

    /// Bytes this node's endpoint has sent and received so far.
    pub fn traffic(&self) -> Traffic {
        self.inner.transport.traffic()
    }

    /// The last dial to a peer that TLS refused, as `peer: error` (a certificate of another
    /// CA or cluster, on either side); `None` before any.
    pub fn last_dial_tls_failure(&self) -> Option<String> {
        self.inner.transport.last_dial_tls_failure()
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
        self.inner.gossip_now(&peers);
        tokio::time::sleep(Duration::from_millis(self.inner.timing.leave_linger_ms)).await;
        info!(node = %self.inner.node_id, "left the mesh");
        self.inner.stop();
    }

    /// Stops at once without announcing it, as a crash would (tests and benchmarks).
    pub async fn abort(self) {
        self.inner.stop();
    }
}
