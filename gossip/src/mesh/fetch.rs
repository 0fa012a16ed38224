//! Fetching a new head: a hedged race (`hedge.rs`) over the sources the core chose
//! (`spread.rs`), each asked for a patch against the version this node holds when that pays
//! (`delta.rs`), passing verified bytes on to this node's own fetchers before they are decoded.

use super::{lock, Inner, Stamped};
use crate::delta;
use crate::error::TransferError;
use crate::head::{should_adopt, HeldAd};
use crate::hedge::{Race, Step};
use crate::transfer::{self, Blob, Wanted};
use crate::version::NodeId;
use crate::Document;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

impl<D: Document> Inner<D> {
    /// Serves verified bytes of a newer head before they are decoded and adopted: peers waiting
    /// on this node for that version (its children in the spread tree) get them without waiting
    /// for the decode, which for a large table takes longer than the transfer. Never replaces a
    /// blob that ranks higher; the peers check the digest themselves.
    fn relay(&self, wanted: &HeldAd, bytes: &Bytes) {
        self.blob_tx.send_if_modified(|blob| {
            let current = blob.as_ref().map(|b| (&b.version, b.digest.as_str()));
            if !should_adopt(current, (&wanted.version, &wanted.digest)) {
                return false;
            }
            let relayed = Arc::new(Blob {
                version: wanted.version.clone(),
                digest: wanted.digest.clone(),
                bytes: bytes.clone(),
            });
            self.patches.remember(&relayed);
            *blob = Some(relayed);
            true
        });
    }

    /// The verified version this node holds, when it is worth offering as the base of a patch
    /// for `wanted` (`delta::base_to_offer`).
    fn base_for(&self, wanted: &Wanted, size_bytes: u64) -> Option<(delta::Base, Arc<Blob>)> {
        let held = self.blob_tx.borrow().clone()?;
        let base = delta::base_to_offer(
            Some((&held.version, &held.digest, held.bytes.len() as u64)),
            &wanted.version,
            &wanted.digest,
            size_bytes,
        )?;
        Some((base, held))
    }
}

/// Fetches the head from `sources` (in the order of `spread::sources`) as a hedged race
/// (`hedge.rs`): the next source is asked too when none has begun to send within
/// `fetch_hedge_ms`, the first verified copy that decodes is adopted, the other requests are
/// dropped. `stop` ends it early (the core abandoned it: `replica::Action::AbandonFetch`).
pub(super) async fn fetch_head<D: Document>(
    inner: Arc<Inner<D>>,
    wanted: HeldAd,
    sources: Vec<(NodeId, SocketAddr)>,
    stop: CancellationToken,
) {
    let started = Instant::now();
    let request = Wanted {
        version: wanted.version.clone(),
        digest: wanted.digest.clone(),
    };
    let mut race = Race::new(sources.len(), inner.timing.fetch_hedge_ms);
    let mut attempts: JoinSet<(usize, Result<Bytes, String>)> = JoinSet::new();
    let mut handles: Vec<Option<AbortHandle>> = vec![None; sources.len()];
    let (found_tx, mut found_rx) = mpsc::unbounded_channel::<usize>();
    let mut adopted = false;
    while !adopted {
        let now_ms = started.elapsed().as_millis() as u64;
        let until_ms = match race.step(now_ms) {
            Step::Ask(i) => {
                let (peer_id, addr) = sources[i].clone();
                let found_tx = found_tx.clone();
                let found = move || {
                    let _ = found_tx.send(i);
                };
                let one = fetch_one(
                    inner.clone(),
                    peer_id,
                    addr,
                    request.clone(),
                    wanted.size_bytes,
                    found,
                );
                handles[i] = Some(attempts.spawn(async move { (i, one.await) }));
                continue;
            }
            Step::GiveUp => break,
            Step::Wait => None,
            Step::WaitUntil(at) => Some(at),
        };
        let hedge = async {
            match until_ms {
                Some(at) => {
                    tokio::time::sleep_until((started + Duration::from_millis(at)).into()).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = hedge => {}
            Some(i) = found_rx.recv() => {
                for j in race.sending(i) {
                    if let Some(h) = handles[j].take() {
                        h.abort();
                    }
                }
                // The core replaces a silent only holder's connection (`replica/redial.rs`),
                // not one that sends. Under the state lock, as `AbandonFetch` stops this fetch:
                // once stopped, the same version may be in flight again and is not this one.
                let mut st = lock(&inner.state);
                if !stop.is_cancelled() {
                    st.replica.handle_fetch_sending(&wanted.version);
                }
            }
            Some(joined) = attempts.join_next() => {
                let (i, result) = match joined {
                    Ok(done) => done,
                    // Dropped by the race (aborted): already counted as over.
                    Err(e) if e.is_cancelled() => continue,
                    // A request that panicked failed.
                    Err(e) => {
                        let id = e.id();
                        let i = handles.iter().position(|h| h.as_ref().is_some_and(|h| h.id() == id));
                        match i {
                            Some(i) => (i, Err(format!("fetch task failed: {e}"))),
                            None => continue,
                        }
                    }
                };
                let (peer_id, _) = &sources[i];
                match result {
                    Ok(bytes) => adopted = adopt(&inner, &wanted, peer_id, bytes, started).await,
                    Err(e) => debug!(peer = %peer_id, error = %e, "fetch failed, trying the next source"),
                }
                if !adopted {
                    race.failed(i);
                }
            }
        }
    }
    // Dropping the set aborts the requests still running.
    drop(attempts);
    let mut st = lock(&inner.state);
    // Stopped under this lock by the core's `AbandonFetch`: not reported (the core may have
    // planned the same version again since, and that fetch runs on).
    if stop.is_cancelled() {
        return;
    }
    st.fetch = None;
    let now_ms = inner.now_ms();
    st.replica
        .handle_fetch_done(now_ms, &wanted.version, adopted);
}

/// One request of a fetch: checks the peer's identity and fetches the head from it, as a patch
/// against the version this node holds when that pays, and whole if the patch fails (or the
/// holder sends it whole); `found` is called when the bytes begin.
async fn fetch_one<D: Document>(
    inner: Arc<Inner<D>>,
    peer_id: NodeId,
    addr: SocketAddr,
    request: Wanted,
    size_bytes: u64,
    found: impl FnOnce() + Send,
) -> Result<Bytes, String> {
    inner
        .transport
        .verify_peer(addr, peer_id.as_str())
        .await
        .map_err(|e| format!("not fetching from this holder: {e}"))?;
    let max_bytes = inner.timing.max_document_bytes.min(size_bytes.max(1));
    let timeouts = transfer::FetchTimeouts {
        total_ms: inner.timing.fetch_timeout_ms,
        answer_ms: inner.timing.fetch_answer_timeout_ms,
    };
    // Called once, by whichever attempt gets to the bytes first.
    let found = std::sync::Mutex::new(Some(found));
    let signal = || {
        if let Some(f) = lock(&found).take() {
            f();
        }
    };
    let based = inner.base_for(&request, size_bytes);
    let base_blob = based.as_ref().map(|(_, blob)| &**blob);
    let first = transfer::fetch(
        &inner.transport,
        addr,
        &request,
        base_blob,
        max_bytes,
        timeouts,
        signal,
    )
    .await;
    match (first, based) {
        (Ok(fetched), Some((base, _))) => {
            // Served on as it came (or, sent whole, not computed here either).
            inner.patches.learn(&base, &request.digest, fetched.patch);
            Ok(fetched.bytes)
        }
        (Ok(fetched), None) => Ok(fetched.bytes),
        (Err(e @ TransferError::Patch { .. }), _) => {
            inner.served.delta_failures.fetch_add(1, Ordering::Relaxed);
            warn!(peer = %peer_id, error = %e, "patch failed; fetching the full document");
            let signal = || {
                if let Some(f) = lock(&found).take() {
                    f();
                }
            };
            transfer::fetch(
                &inner.transport,
                addr,
                &request,
                None,
                max_bytes,
                timeouts,
                signal,
            )
            .await
            .map(|fetched| fetched.bytes)
            .map_err(|e| e.to_string())
        }
        (Err(e), _) => Err(e.to_string()),
    }
}

/// Serves verified `bytes` on (relay), decodes them off the runtime's workers and hands them to
/// the core. Returns whether the fetch is over (adopted, or the core no longer wants it);
/// false when the bytes do not decode (the race goes on).
async fn adopt<D: Document>(
    inner: &Arc<Inner<D>>,
    wanted: &HeldAd,
    peer_id: &NodeId,
    bytes: Bytes,
    started: Instant,
) -> bool {
    inner.relay(wanted, &bytes);
    // Decoding a large table takes tens of milliseconds: off the runtime's workers, which
    // also carry this process's gossip and failure detection.
    let decoding = bytes.clone();
    let decoded =
        tokio::task::spawn_blocking(move || transfer::decode_document::<D>(&decoding)).await;
    let doc: D = match decoded.map_err(|e| e.to_string()).and_then(|r| r) {
        Ok(doc) => doc,
        Err(e) => {
            warn!(peer = %peer_id, version = %wanted.version, error = %e, "document does not decode");
            return false;
        }
    };
    let offered = HeldAd {
        version: wanted.version.clone(),
        digest: wanted.digest.clone(),
        size_bytes: bytes.len() as u64,
    };
    let mut st = lock(&inner.state);
    if st.replica.handle_offer(&offered) {
        inner.install(
            Stamped {
                version: offered.version,
                digest: offered.digest,
                size_bytes: offered.size_bytes,
                doc,
            },
            bytes,
        );
        inner.carry_out(&mut st);
        debug!(peer = %peer_id, version = %wanted.version, elapsed_ms = started.elapsed().as_millis() as u64, "adopted");
    }
    true
}
