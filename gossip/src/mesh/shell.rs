//! The shell's machinery: the control loop that feeds the replica core and carries out its
//! actions, reading chitchat's members, resolving seeds and serving documents
//! (fetching a head is `fetch.rs`).

use super::{lock, unix_ms, Inner, KvOp, ServedCounters, Stamped, State};
use crate::election::Role;
use crate::keys;
use crate::patches::Patches;
use crate::replica::Action;
use crate::transfer::{self, Blob, Served};
use crate::transport::InboundStream;
use crate::version::NodeId;
use crate::view::{parse_member, parse_members_checked, RawMember};
use crate::Document;
use bytes::Bytes;
use chitchat::{Chitchat, ChitchatId};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

impl<D: Document> Inner<D> {
    pub(super) fn send(&self, op: KvOp) {
        // The control loop applies key writes under chitchat's lock, in order.
        let _ = self.cmd_tx.send(op);
    }

    pub(super) fn stop(&self) {
        self.cancel.cancel();
        if let Some(handle) = lock(&self.handle).take() {
            handle.abort();
        }
        self.transport.close();
    }

    /// Monotonic ms since this process joined: the core's clock.
    pub(super) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Makes a document the one this node holds and serves (the core already accepted it).
    pub(super) fn install(&self, stamped: Stamped<D>, bytes: Bytes) {
        let blob = Arc::new(Blob {
            version: stamped.version.clone(),
            digest: stamped.digest.clone(),
            bytes,
        });
        self.patches.remember(&blob);
        self.blob_tx.send_replace(Some(blob));
        self.doc_tx.send_replace(Some(Arc::new(stamped)));
    }

    /// Carries out what the core asked for.
    pub(super) fn carry_out(self: &Arc<Self>, st: &mut State) {
        while let Some(action) = st.replica.poll_action() {
            match action {
                Action::Ready(true) => self.send(KvOp::Set(keys::READY.into(), "1".into())),
                Action::Ready(false) => self.send(KvOp::Delete(keys::READY.into())),
                Action::Held(ad) => {
                    self.send(KvOp::Set(keys::HELD.into(), keys::encode_held(&ad)));
                }
                Action::Judged {
                    id,
                    generation,
                    listen,
                    alive,
                } => {
                    if alive {
                        info!(member = %id, generation, "member alive again");
                        // Its connection went through the outage: dial afresh.
                        self.transport.reset_connection(listen);
                    } else {
                        info!(member = %id, generation, "member judged dead");
                    }
                }
                Action::FirstAlive {
                    id,
                    generation,
                    listen,
                } => {
                    debug!(member = %id, generation, "member judged alive");
                    self.transport.clear_backoff(listen);
                }
                Action::Role(reason) => {
                    info!(node = %self.node_id, role = ?reason, "role changed");
                    let was = self.role_tx.send_replace(reason.role());
                    match (was == Role::Publisher, reason.role() == Role::Publisher) {
                        (false, true) => {
                            self.send(KvOp::Set(keys::PUBLISHING.into(), "1".into()));
                        }
                        // Only a key that exists is deleted (chitchat warns otherwise).
                        (true, false) => self.send(KvOp::Delete(keys::PUBLISHING.into())),
                        _ => {}
                    }
                }
                Action::Fetch { wanted, sources } => {
                    let stop = self.cancel.child_token();
                    if let Some((_, old)) = st.fetch.replace((wanted.version.clone(), stop.clone()))
                    {
                        // The core runs one fetch at a time; never leave one running unowned.
                        old.cancel();
                    }
                    tokio::spawn(super::fetch::fetch_head(
                        self.clone(),
                        wanted,
                        sources,
                        stop,
                    ));
                }
                Action::AbandonFetch(version) => {
                    if st.fetch.as_ref().is_some_and(|(v, _)| *v == version) {
                        if let Some((_, stop)) = st.fetch.take() {
                            debug!(%version, "fetch abandoned");
                            stop.cancel();
                        }
                    }
                }
                Action::ResetConnection { id, listen } => {
                    info!(member = %id, %listen, "the only holder of the head has not answered the fetch: replacing its connection and asking again");
                    self.transport.reset_connection(listen);
                }
                Action::ResetConnections => {
                    let reset = self.transport.reset_connections();
                    info!(node = %self.node_id, connections = reset, "control loop stalled: replacing every connection");
                }
                Action::Contact {
                    id,
                    generation,
                    listen,
                } => {
                    debug!(member = %id, generation, %listen, "member known second-hand: gossiping to it directly");
                    self.transport.clear_backoff(listen);
                    self.gossip_now(&[listen]);
                }
                // Through the key-write queue, so that the exchange carries the head key this
                // node just wrote (a publisher's own stamp).
                Action::Announce { to } => {
                    self.send(KvOp::Gossip(to.into_iter().map(|(_, a)| a).collect()))
                }
                // The key first, so that the exchanges pushed right after carry it.
                Action::ReportDown { down, to } => {
                    if down.is_empty() {
                        self.send(KvOp::Delete(keys::DOWN.into()));
                    } else {
                        self.send(KvOp::Set(keys::DOWN.into(), keys::encode_down(&down)));
                    }
                    if !to.is_empty() {
                        self.send(KvOp::Gossip(to.into_iter().map(|(_, a)| a).collect()));
                    }
                }
                Action::ReserveEpoch(target) => match &self.epoch_file {
                    Some(file) => {
                        tokio::spawn(reserve_epoch(self.clone(), file.clone(), target));
                    }
                    // Nothing persists across restarts: every epoch counts as reserved.
                    None => st
                        .replica
                        .handle_epoch_persisted(self.now_ms(), target, Ok(())),
                },
            }
        }
    }

    /// One control step: apply pending key writes, read membership, let the core decide, act.
    pub(super) async fn step(self: &Arc<Self>, ops: Vec<KvOp>) {
        let now = Instant::now();
        let (raw, beats, my_generation) = {
            let mut chitchat = self.chitchat.lock().await;
            for op in ops {
                match op {
                    KvOp::Set(k, v) => chitchat.self_node_state().set(k, v),
                    KvOp::Delete(k) => chitchat.self_node_state().delete(&k),
                    KvOp::Gossip(to) => self.gossip_now(&to),
                }
            }
            // Every step: the core judges liveness from these at every tick (`liveness.rs`);
            // one small record per member, against the full parse skipped below. Another
            // record of this node's own id goes in only once verified (`incarnation.rs` rule 1:
            // a forged one must not stop this node serving).
            let self_id = chitchat.self_chitchat_id();
            let enforce = self.transport.enforces_identity();
            let beats: Vec<(NodeId, u64, SocketAddr, u64)> = chitchat
                .node_states()
                .iter()
                .filter(|(id, _)| {
                    *id == self_id
                        || id.node_id != self_id.node_id
                        || !enforce
                        || self.transport.first_hand(
                            &id.node_id,
                            id.generation_id,
                            id.gossip_advertise_addr,
                        )
                })
                .map(|(id, state)| {
                    (
                        NodeId::new(&*id.node_id),
                        id.generation_id,
                        id.gossip_advertise_addr,
                        u64::from(state.heartbeat()),
                    )
                })
                .collect();
            (self.read_members(&chitchat), beats, self_id.generation_id)
        };
        let mut st = lock(&self.state);
        if let Some(raw) = raw {
            warn_if_shadowed(&mut st, &raw, my_generation);
            st.relayed_dead = crate::incarnation::relayed_dead(&raw)
                .into_iter()
                .map(parse_member)
                .collect();
            let (members, duplicates) = parse_members_checked(raw);
            st.replica.handle_members(members);
            for d in &duplicates {
                if !st
                    .duplicates
                    .iter()
                    .any(|old| old.id == d.id && old.refused == d.refused)
                {
                    st.duplicates_seen += 1;
                    warn!(node = %d.id, kept_generation = d.kept.generation, kept_at = %d.kept.listen, refused = ?d.refused, "duplicate node id: two live processes claim it; the cluster keeps the older");
                }
            }
            let refused = duplicates.iter().find(|d| d.refuses_me);
            st.replica.handle_duplicate(refused.map(|d| d.kept));
            st.refused_kept = refused
                .and_then(|d| d.kept_record.clone())
                .map(parse_member);
            st.duplicates = duplicates;
        }
        let now_ms = now.saturating_duration_since(self.started).as_millis() as u64;
        st.replica.handle_heartbeats(now_ms, beats);
        st.replica.handle_tick(now_ms, unix_ms());
        self.carry_out(&mut st);
        st.last_step = Some(Instant::now());
    }

    /// Reads chitchat's state; returns `None` when nothing but heartbeats changed.
    ///
    /// Runs on every control step (every 25 ms) over every node state, so the unchanged case
    /// neither allocates nor re-parses: at 100 nodes that pass was most of the mesh's CPU.
    fn read_members(&self, chitchat: &Chitchat) -> Option<Vec<RawMember>> {
        let self_id = chitchat.self_chitchat_id();
        let live: HashSet<&ChitchatId> = chitchat.live_nodes().collect();
        let states = chitchat.node_states();
        let mut st = lock(&self.state);
        let st = &mut *st;
        let first_hand_version = self.transport.first_hand_version();
        let mut unchanged = st.fingerprint.len() == states.len()
            && !st.replica.members().is_empty()
            && st.first_hand_version == first_hand_version;
        for (i, (id, state)) in states.iter().enumerate() {
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
        if unchanged {
            return None;
        }
        st.fingerprint = states
            .iter()
            .map(|(id, state)| (id.clone(), state.max_version(), live.contains(id)))
            .collect();
        st.first_hand_version = first_hand_version;
        let enforce = self.transport.enforces_identity();
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
                    verified: !enforce
                        || id == self_id
                        || self.transport.first_hand(
                            &id.node_id,
                            id.generation_id,
                            id.gossip_advertise_addr,
                        ),
                    me: id == self_id,
                })
                .collect(),
        )
    }
}

/// Peers gossip an incarnation of this node's id that started after this process, by the
/// generations (start times): this process started with its clock behind the previous one's
/// start (stepped back, no `--state-dir` to keep generations rising), and no seed told it so
/// within the join grace, when `Mesh::start` would have joined again above it (`rejoin.rs`).
/// Peers keep counting that dead incarnation (`incarnation.rs`, the newest generation) and
/// ignore this process, its health opinions and its documents, while it calls itself ready;
/// only its generation in `shoal status` showed it (an audit). Said once per such incarnation.
/// A later incarnation that is live is another case, said apart: a second process started with
/// this id while this one was frozen or cut off. The record may be unverified (a forgery can
/// cost a log line, nothing else).
fn warn_if_shadowed(st: &mut State, raw: &[RawMember], my_generation: u64) {
    let Some(me) = raw.iter().find(|r| r.me) else {
        return;
    };
    // This process's own record has `my_generation`, never above it.
    let records = raw.iter().map(|r| (r.id.as_str(), r.generation));
    let later = super::rejoin::newest_above(records, me.id.as_str(), my_generation);
    if let Some(later) = later.filter(|g| st.shadowed_by != Some(*g)) {
        st.shadowed_by = Some(later);
        let live = raw
            .iter()
            .any(|r| r.id == me.id && r.generation == later && r.live);
        if live {
            // Not the clock: a second process started with this id while this one was frozen
            // or cut off (the text below blamed the clock for that too: an operator's probe).
            warn!(node = %me.id, generation = my_generation, other_generation = later, "another live process with this node id started after this one (generation {later}, this one {my_generation}), most likely while this process was frozen or cut off: the cluster keeps the older process (this one) and the other refuses to serve; stop one of them");
        } else {
            warn!(node = %me.id, generation = my_generation, previous_generation = later, "peers know an incarnation of this node id that started after this process (generation {later}, this one {my_generation}): this node's clock was stepped back since the last run (or a process started with this id while this one was frozen has stopped since), no seed answered in time to join above it, and peers ignore this process (they see this node dead) until they forget that incarnation (dead_node_grace_ms); run with --state-dir, which keeps generations rising, or restart once the clock is past the previous start");
        }
    }
}

/// Answers peers' document requests with the document this node holds (or, for a newer
/// version, is about to hold: see `transfer::serve`), whole or as a patch against a version the
/// peer holds, counting what was sent in `served`.
pub(super) async fn serve_documents(
    blobs: watch::Receiver<Option<Arc<Blob>>>,
    patches: Arc<Patches>,
    mut streams: mpsc::Receiver<InboundStream>,
    cancel: CancellationToken,
    wait: Duration,
    served: Arc<ServedCounters>,
) {
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            s = streams.recv() => match s { Some(s) => s, None => return },
        };
        let blobs = blobs.clone();
        let served = served.clone();
        let patches = patches.clone();
        tokio::spawn(async move {
            let InboundStream { peer, send, recv } = stream;
            match transfer::serve(blobs, &patches, peer, send, recv, wait).await {
                Ok(Served::Full { bytes }) => {
                    served.copies.fetch_add(1, Ordering::Relaxed);
                    served.full_bytes.fetch_add(bytes, Ordering::Relaxed);
                }
                Ok(Served::Delta { bytes }) => {
                    served.copies.fetch_add(1, Ordering::Relaxed);
                    served.delta_copies.fetch_add(1, Ordering::Relaxed);
                    served.delta_bytes.fetch_add(bytes, Ordering::Relaxed);
                }
                Ok(Served::Nothing) => {}
                Err(e) => debug!(%peer, error = %e, "document request failed"),
            }
        });
    }
}

/// Resolves the seeds for the startup wait (see `has_listened`): again every 500 ms until each
/// resolves or the startup patience is over. Chitchat resolves them on its own for gossip.
pub(super) async fn resolve_seeds<D: Document>(inner: Weak<Inner<D>>, seeds: Vec<String>) {
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
        if over && !done {
            // A mistyped seed let the node start a cluster of its own, ready and publishing,
            // with only chitchat's lookup failure in the log (an operator's probe).
            let unresolved: Vec<&str> = seeds
                .iter()
                .zip(&resolved)
                .filter(|(_, addrs)| addrs.is_empty())
                .map(|(seed, _)| seed.as_str())
                .collect();
            warn!(seeds = ?unresolved, patience_ms = patience.as_millis() as u64, "seeds that do not resolve after the startup patience: this node no longer waits for them, and if no other seed answers it starts a cluster of its own (as the first pod of a StatefulSet does, whose peers have no DNS names yet); if it should join an existing cluster, check --seeds");
        }
        lock(&strong.state).replica.handle_seeds(resolved);
        if done || over {
            return;
        }
        drop(strong);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub(super) async fn control_loop<D: Document>(
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

/// Writes a reservation to the epoch file on a blocking thread, holding neither the state nor
/// chitchat's lock, then tells the core.
async fn reserve_epoch<D: Document>(
    inner: Arc<Inner<D>>,
    file: Arc<std::sync::Mutex<crate::epoch_file::EpochFile>>,
    target: u64,
) {
    let started = Instant::now();
    let written = tokio::task::spawn_blocking(move || lock(&file).ensure(target)).await;
    let result = match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            // Retried every second: one line a minute, with the count of the others (an
            // operator's probe found 33 lines in 40 s for a read-only state folder).
            let allowed = lock(&inner.state).warns.allow("epoch_file", Instant::now());
            if let Some(suppressed) = allowed {
                warn!(error = %e, target, suppressed, "could not reserve epochs in the epoch file; trying again every second (said once a minute)");
            }
            Err(e.to_string())
        }
        Err(e) => {
            warn!(error = %e, "the epoch file writer did not finish");
            Err(e.to_string())
        }
    };
    let ok = result.is_ok();
    debug!(
        target,
        ok,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "epoch reservation"
    );
    let now_ms = inner.now_ms();
    lock(&inner.state)
        .replica
        .handle_epoch_persisted(now_ms, target, result);
}
