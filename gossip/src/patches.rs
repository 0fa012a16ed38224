//! The bounded store behind delta transfers (`delta.rs`): the bytes of the last few versions
//! this node held (bases to patch from) and the patches between them, each computed at most
//! once per (base, new) pair: concurrent requests wait for the same computation, and a patch
//! this node received is served on as it came (its children in the spread tree hold the same
//! base), so in a spread only the publisher computes.
//!
//! Memory: at most [`KEEP_VERSIONS`] documents (one of them the one served anyway) and
//! [`KEEP_PATCHES`] patches, each at most half its document (`delta::worth_sending`).

use crate::delta::{self, Base, Known, Plan};
use crate::transfer::Blob;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;
use tracing::debug;

/// Versions kept to patch from: the one served and the two before it.
pub const KEEP_VERSIONS: usize = 3;
/// Patches kept (one per (base, new) pair).
pub const KEEP_PATCHES: usize = 8;

/// A patch once computed or learnt: `None` when not worth sending (or not computable).
type Cell = Arc<OnceCell<Option<Bytes>>>;

#[derive(Default)]
struct State {
    /// Oldest first; one entry per digest.
    recent: VecDeque<Arc<Blob>>,
    /// (base digest, new digest, patch), oldest first.
    patches: VecDeque<(String, String, Cell)>,
}

#[derive(Default)]
pub(crate) struct Patches {
    state: Mutex<State>,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Patches {
    /// Keeps `blob` (verified bytes this node holds or relays) as a possible base.
    pub fn remember(&self, blob: &Arc<Blob>) {
        let mut st = lock(&self.state);
        if st.recent.iter().any(|b| b.digest == blob.digest) {
            return;
        }
        st.recent.push_back(blob.clone());
        while st.recent.len() > KEEP_VERSIONS {
            st.recent.pop_front();
        }
    }

    fn held(&self, base: &Base) -> Option<Arc<Blob>> {
        lock(&self.state)
            .recent
            .iter()
            .find(|b| b.version == base.version && b.digest == base.digest)
            .cloned()
    }

    /// The cell of a pair, created if `create` (evicting the oldest beyond [`KEEP_PATCHES`]).
    fn cell(&self, base: &str, target: &str, create: bool) -> Option<Cell> {
        let mut st = lock(&self.state);
        let found = st
            .patches
            .iter()
            .find(|(b, t, _)| b == base && t == target)
            .map(|(_, _, c)| c.clone());
        if found.is_some() || !create {
            return found;
        }
        let cell = Cell::default();
        st.patches
            .push_back((base.to_string(), target.to_string(), cell.clone()));
        while st.patches.len() > KEEP_PATCHES {
            st.patches.pop_front();
        }
        Some(cell)
    }

    /// The patch to send for a request for `target` offering `base`, or `None` to send the full
    /// document (`delta::plan_answer`). Computes the patch on a blocking thread the first time.
    pub async fn answer(&self, base: Option<&Base>, target: &Arc<Blob>) -> Option<Bytes> {
        let held = base.and_then(|b| self.held(b));
        let cell = base.and_then(|b| self.cell(&b.digest, &target.digest, false));
        let known = match cell.as_ref().and_then(|c| c.get()) {
            None => Known::Unknown,
            Some(Some(_)) => Known::Worth,
            Some(None) => Known::Worthless,
        };
        let size = target.bytes.len() as u64;
        match delta::plan_answer(base, &target.digest, size, held.is_some(), known) {
            Plan::Full => None,
            Plan::Delta => cell?.get().cloned().flatten(),
            Plan::Compute => {
                let (base, held) = (base?, held?);
                let cell = self.cell(&base.digest, &target.digest, true)?;
                let target = target.clone();
                let patch = cell
                    .get_or_init(|| async move {
                        let made = tokio::task::spawn_blocking(move || {
                            let started = std::time::Instant::now();
                            let made = delta::make_patch(&held.bytes, &target.bytes);
                            let elapsed_ms = started.elapsed().as_millis() as u64;
                            (made, elapsed_ms, target)
                        })
                        .await;
                        match made {
                            Ok((Ok(patch), elapsed_ms, target)) => {
                                let worth = delta::worth_sending(patch.len(), target.bytes.len());
                                debug!(version = %target.version, patch_bytes = patch.len(), full_bytes = target.bytes.len(), elapsed_ms, worth, "patch computed");
                                worth.then(|| Bytes::from(patch))
                            }
                            Ok((Err(e), _, target)) => {
                                debug!(version = %target.version, error = %e, "no patch");
                                None
                            }
                            Err(e) => {
                                debug!(error = %e, "patch task failed");
                                None
                            }
                        }
                    })
                    .await;
                patch.clone()
            }
        }
    }

    /// Records what a holder sent this node for `target` when it offered `base`: the patch (to
    /// serve on as it came), or `None` when it sent the full document (so this node does not
    /// compute a patch its own holder found not worth it, or could not make).
    pub fn learn(&self, base: &Base, target_digest: &str, patch: Option<Bytes>) {
        if let Some(cell) = self.cell(&base.digest, target_digest, true) {
            let _ = cell.set(patch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::digest_hex;
    use crate::version::{NodeId, Version};

    fn blob(seq: u64, bytes: Vec<u8>) -> Arc<Blob> {
        Arc::new(Blob {
            version: Version::new(1, seq, NodeId::new("p")),
            digest: digest_hex(&bytes),
            bytes: Bytes::from(bytes),
        })
    }

    fn base_of(b: &Blob) -> Base {
        Base {
            version: b.version.clone(),
            digest: b.digest.clone(),
        }
    }

    fn doc(seed: u8) -> Vec<u8> {
        (0..100_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed)
            .collect()
    }

    fn edit(mut bytes: Vec<u8>, at: usize) -> Vec<u8> {
        bytes[at..at + 10].copy_from_slice(b"0123456789");
        bytes
    }

    /// A store holding v1 and v2 (v1 with 10 bytes edited), and v1 as a base.
    fn two_versions() -> (Patches, Arc<Blob>, Arc<Blob>, Base) {
        let store = Patches::default();
        let v1 = blob(1, doc(0));
        let v2 = blob(2, edit(doc(0), 50_000));
        store.remember(&v1);
        store.remember(&v2);
        let base = base_of(&v1);
        (store, v1, v2, base)
    }

    #[tokio::test]
    async fn a_held_base_gets_a_patch_that_applies_computed_once() {
        let (store, v1, v2, base) = two_versions();
        let (a, b) = tokio::join!(
            store.answer(Some(&base), &v2),
            store.answer(Some(&base), &v2)
        );
        let patch = a.unwrap();
        // Both requests share one computation: the very same bytes.
        assert_eq!(patch.as_ptr(), b.unwrap().as_ptr());
        assert!(patch.len() < 1_000, "{}", patch.len());
        let out = delta::apply_patch(&v1.bytes, &patch, v2.bytes.len()).unwrap();
        assert_eq!(digest_hex(&out), v2.digest);
        // No base offered (an old peer), or one not held: the full document.
        assert!(store.answer(None, &v2).await.is_none());
        let stranger = blob(0, doc(9));
        assert!(store.answer(Some(&base_of(&stranger)), &v2).await.is_none());
    }

    #[tokio::test]
    async fn a_new_random_document_goes_full_and_is_not_recomputed() {
        let store = Patches::default();
        let v1 = blob(1, doc(0));
        let mut random = vec![0u8; 100_000];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut random);
        let v2 = blob(2, random);
        store.remember(&v1);
        store.remember(&v2);
        let base = base_of(&v1);
        assert!(store.answer(Some(&base), &v2).await.is_none());
        let cell = store.cell(&base.digest, &v2.digest, false).unwrap();
        assert_eq!(cell.get(), Some(&None));
    }

    #[tokio::test]
    async fn learnt_patches_are_served_without_the_base_computation() {
        let (store, _, v2, base) = two_versions();
        store.learn(&base, &v2.digest, Some(Bytes::from_static(b"learnt")));
        assert_eq!(
            store.answer(Some(&base), &v2).await.as_deref(),
            Some(&b"learnt"[..])
        );
        // Learnt "full" for another pair: no patch is computed for it.
        let v3 = blob(3, edit(doc(0), 60_000));
        store.remember(&v3);
        store.learn(&base, &v3.digest, None);
        assert!(store.answer(Some(&base), &v3).await.is_none());
    }

    #[test]
    fn memory_is_bounded() {
        let store = Patches::default();
        for seq in 0..10u8 {
            store.remember(&blob(u64::from(seq), vec![seq; 10]));
            // Remembering the same bytes again keeps one entry.
            store.remember(&blob(u64::from(seq), vec![seq; 10]));
        }
        let st = lock(&store.state);
        assert_eq!(st.recent.len(), KEEP_VERSIONS);
        assert_eq!(st.recent.back().unwrap().bytes[0], 9);
        drop(st);
        for i in 0..20 {
            let base = base_of(&blob(0, vec![i; 3]));
            store.learn(&base, "t", None);
        }
        assert_eq!(lock(&store.state).patches.len(), KEEP_PATCHES);
    }
}
