//! Delta transfer of a new head: the rules and the patch format.
//!
//! A rule table's new version usually differs from the previous one by a few services. A
//! follower that holds an older version (its digest checked when it arrived) asks for the new one
//! "as a delta from" it; a holder that still has that base answers with a zstd patch: the new
//! document compressed with the base as a raw-content prefix (zstd's "patch-from"). The fetcher
//! decompresses against its own copy of the base into a buffer of exactly the announced size
//! (never above the document cap) and checks the gossiped digest as for a full copy, so a lying
//! holder can make a fetch fail, never make a node accept wrong bytes or allocate more than the
//! cap. On any delta failure the fetcher asks for the full document (`mesh/fetch.rs`).
//!
//! Pure decisions here ([`base_to_offer`], [`plan_answer`], [`worth_sending`]); the bounded store
//! of recent versions and computed patches is `patches.rs`; the wire is `transfer.rs`.

use crate::version::Version;
use serde::{Deserialize, Serialize};
use zstd::zstd_safe::{self, CCtx, CParameter, DCtx};

/// Documents smaller than this are always sent whole: a patch would save little.
pub const MIN_DELTA_BYTES: u64 = 16 << 10;

/// A patch is sent only when at most this fraction of the full document (1/2): otherwise the
/// full copy costs the fetcher less (no decompression) for about the same bytes.
const WORTH_DIVISOR: usize = 2;

/// zstd level of patches. With long-distance matching, level 1 made the smallest patch and was
/// the fastest on a 2 MB document with 164 bytes edited (release build: 335 bytes in 3 ms, level
/// 3: 2.8 KB in 17 ms; a wholly new random document: 11 ms either way, then sent whole).
const PATCH_LEVEL: i32 = 1;

/// The version a fetcher already holds and offers as the base of a delta.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Base {
    pub version: Version,
    /// Hex SHA-256 of the base's bytes (the gossiped digest it was checked against).
    pub digest: String,
}

/// The base a fetcher offers for `wanted`: what it holds (`held` = version, digest, size), when
/// that is a different, older version and the new document is large enough for a delta to pay.
pub fn base_to_offer(
    held: Option<(&Version, &str, u64)>,
    wanted: &Version,
    wanted_digest: &str,
    wanted_size: u64,
) -> Option<Base> {
    let (version, digest, size) = held?;
    let useful = version < wanted
        && digest != wanted_digest
        && wanted_size >= MIN_DELTA_BYTES
        && size >= MIN_DELTA_BYTES;
    useful.then(|| Base {
        version: version.clone(),
        digest: digest.to_string(),
    })
}

/// What a holder knows of the patch from a base to the document it serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Known {
    /// Not computed yet.
    Unknown,
    /// Computed (or received) and worth sending.
    Worth,
    /// Computed and too large, or not computable: send the full document.
    Worthless,
}

/// How a holder answers a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    Full,
    /// Compute the patch (once; concurrent requests share it), then decide again.
    Compute,
    Delta,
}

/// The holder's answer to a request for the document whose digest is `target_digest`, offering
/// `base` (`None`: an old peer, or nothing to offer). `base_held`: the holder still has the
/// base's bytes (same version and digest).
pub fn plan_answer(
    base: Option<&Base>,
    target_digest: &str,
    target_size: u64,
    base_held: bool,
    known: Known,
) -> Plan {
    let Some(base) = base else {
        return Plan::Full;
    };
    if base.digest == target_digest || target_size < MIN_DELTA_BYTES || !base_held {
        return Plan::Full;
    }
    match known {
        Known::Unknown => Plan::Compute,
        Known::Worth => Plan::Delta,
        Known::Worthless => Plan::Full,
    }
}

/// Whether a patch of `patch_len` bytes is worth sending instead of `full_len` bytes.
pub fn worth_sending(patch_len: usize, full_len: usize) -> bool {
    patch_len <= full_len / WORTH_DIVISOR
}

/// The smallest window (log2) that lets the new document refer back to any byte of the base.
fn window_log(base_len: usize, target_len: usize) -> u32 {
    let span = (base_len + target_len).max(1 << 10) as u64;
    let log = 64 - (span - 1).leading_zeros();
    // zstd's range on 64-bit targets.
    log.clamp(10, 31)
}

fn zstd_err(what: &str, code: usize) -> String {
    format!("{what}: {}", zstd_safe::get_error_name(code))
}

/// The patch turning `base` into `target`: one zstd frame of `target`, compressed with `base` as
/// a raw prefix and long-distance matching over a window that spans both.
pub fn make_patch(base: &[u8], target: &[u8]) -> Result<Vec<u8>, String> {
    let mut cctx = CCtx::try_create().ok_or("cannot create a zstd context")?;
    let params = [
        CParameter::CompressionLevel(PATCH_LEVEL),
        CParameter::WindowLog(window_log(base.len(), target.len())),
        CParameter::EnableLongDistanceMatching(true),
        CParameter::ContentSizeFlag(true),
        CParameter::ChecksumFlag(false),
    ];
    for p in params {
        cctx.set_parameter(p)
            .map_err(|c| zstd_err("zstd parameter", c))?;
    }
    cctx.ref_prefix(base)
        .map_err(|c| zstd_err("zstd prefix", c))?;
    let mut out = Vec::with_capacity(zstd_safe::compress_bound(target.len()));
    cctx.compress2(&mut out, target)
        .map_err(|c| zstd_err("zstd compression", c))?;
    Ok(out)
}

/// Applies `patch` to `base`; the result must be exactly `size_bytes` long (the size the holder
/// announced, already checked against the document cap). Never allocates more than
/// `size_bytes`; any malformed, mismatched or oversized patch is an error.
pub fn apply_patch(base: &[u8], patch: &[u8], size_bytes: usize) -> Result<Vec<u8>, String> {
    match zstd_safe::get_frame_content_size(patch) {
        Ok(Some(n)) if n == size_bytes as u64 => {}
        Ok(Some(n)) => {
            return Err(format!(
                "patch declares {n} bytes, the holder announced {size_bytes}"
            ))
        }
        Ok(None) => return Err("patch does not declare its size".into()),
        Err(_) => return Err("not a zstd frame".into()),
    }
    let mut dctx = DCtx::try_create().ok_or("cannot create a zstd context")?;
    dctx.ref_prefix(base)
        .map_err(|c| zstd_err("zstd prefix", c))?;
    let mut out = Vec::with_capacity(size_bytes);
    let written = dctx
        .decompress(&mut out, patch)
        .map_err(|c| zstd_err("patch does not apply", c))?;
    if written != size_bytes {
        return Err(format!(
            "patch produced {written} bytes, the holder announced {size_bytes}"
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, RngCore, SeedableRng};

    fn v(seq: u64) -> Version {
        Version::new(1, seq, crate::NodeId::new("p"))
    }

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut bytes);
        bytes
    }

    /// `base` with a few bytes changed at a random offset and a few inserted elsewhere.
    fn edited(base: &[u8], seed: u64) -> Vec<u8> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut out = base.to_vec();
        let at = rng.gen_range(0..out.len() - 100);
        for b in &mut out[at..at + 100] {
            *b = b.wrapping_add(1);
        }
        let at = rng.gen_range(0..out.len());
        out.splice(at..at, random(64, seed + 1));
        out
    }

    #[test]
    fn a_fetcher_offers_an_older_held_version_of_useful_size() {
        let big = MIN_DELTA_BYTES;
        let v1 = v(1);
        assert_eq!(
            base_to_offer(Some((&v1, "a", big)), &v(2), "b", big),
            Some(Base {
                version: v(1),
                digest: "a".into()
            })
        );
        // Nothing held, a newer or equal version held, the same bytes: no base.
        assert_eq!(base_to_offer(None, &v(2), "b", big), None);
        let v3 = v(3);
        assert_eq!(base_to_offer(Some((&v3, "a", big)), &v(2), "b", big), None);
        let v2 = v(2);
        assert_eq!(base_to_offer(Some((&v2, "a", big)), &v(2), "b", big), None);
        assert_eq!(base_to_offer(Some((&v1, "b", big)), &v(2), "b", big), None);
        // Small documents (new or held) go whole.
        assert_eq!(
            base_to_offer(Some((&v1, "a", big)), &v(2), "b", big - 1),
            None
        );
        assert_eq!(
            base_to_offer(Some((&v1, "a", big - 1)), &v(2), "b", big),
            None
        );
    }

    #[test]
    fn a_holder_sends_a_delta_only_for_a_held_base_and_a_worthwhile_patch() {
        let base = Base {
            version: v(1),
            digest: "a".into(),
        };
        let big = MIN_DELTA_BYTES;
        // Old peers (no base) and requests it cannot serve as a delta: full.
        assert_eq!(plan_answer(None, "b", big, true, Known::Worth), Plan::Full);
        assert_eq!(
            plan_answer(Some(&base), "b", big, false, Known::Worth),
            Plan::Full
        );
        assert_eq!(
            plan_answer(Some(&base), "a", big, true, Known::Worth),
            Plan::Full
        );
        assert_eq!(
            plan_answer(Some(&base), "b", big - 1, true, Known::Worth),
            Plan::Full
        );
        // A held base: compute once, then send the patch if it is worth it.
        assert_eq!(
            plan_answer(Some(&base), "b", big, true, Known::Unknown),
            Plan::Compute
        );
        assert_eq!(
            plan_answer(Some(&base), "b", big, true, Known::Worth),
            Plan::Delta
        );
        assert_eq!(
            plan_answer(Some(&base), "b", big, true, Known::Worthless),
            Plan::Full
        );
    }

    #[test]
    fn worth_is_at_most_half() {
        assert!(worth_sending(0, 100));
        assert!(worth_sending(50, 100));
        assert!(!worth_sending(51, 100));
        assert!(!worth_sending(200, 100));
    }

    #[test]
    fn window_spans_base_and_target() {
        assert_eq!(window_log(0, 0), 10);
        assert_eq!(window_log(1 << 20, 1 << 20), 21);
        assert_eq!(window_log((1 << 20) + 1, 1 << 20), 22);
        assert_eq!(window_log(2_000_000, 2_000_100), 22);
        assert!((1u64 << window_log(64 << 20, 64 << 20)) >= 128 << 20);
    }

    #[test]
    fn a_small_edit_of_a_2_mb_document_makes_a_small_patch() {
        let base = random(2_000_000, 1);
        let target = edited(&base, 2);
        let patch = make_patch(&base, &target).unwrap();
        // Under 0.5% of the document (a few hundred bytes for 164 bytes changed).
        assert!(patch.len() < 10_000, "patch of {} bytes", patch.len());
        assert_eq!(apply_patch(&base, &patch, target.len()).unwrap(), target);
    }

    #[test]
    fn a_wholly_new_random_document_is_not_worth_a_patch() {
        let base = random(200_000, 3);
        let target = random(200_000, 4);
        let patch = make_patch(&base, &target).unwrap();
        assert!(!worth_sending(patch.len(), target.len()));
        // It still applies: the fallback is a size decision, not a correctness one.
        assert_eq!(apply_patch(&base, &patch, target.len()).unwrap(), target);
    }

    #[test]
    fn a_patch_against_the_wrong_base_never_yields_the_target() {
        let base = random(100_000, 5);
        let target = edited(&base, 6);
        let patch = make_patch(&base, &target).unwrap();
        let other = random(100_000, 7);
        // Applies to garbage (or fails): the digest check then refuses it (transfer.rs).
        if let Ok(out) = apply_patch(&other, &patch, target.len()) {
            assert_ne!(out, target);
        }
        // A base of another length (so with other offsets): fails or yields garbage too.
        if let Ok(out) = apply_patch(&other[..50_000], &patch, target.len()) {
            assert_ne!(out, target);
        }
    }

    #[test]
    fn sizes_other_than_the_announced_one_are_refused() {
        let base = random(50_000, 8);
        let target = edited(&base, 9);
        let patch = make_patch(&base, &target).unwrap();
        // A holder announcing fewer bytes than the patch makes (an oversized output).
        let err = apply_patch(&base, &patch, target.len() - 1).unwrap_err();
        assert!(err.contains("declares"), "{err}");
        let err = apply_patch(&base, &patch, target.len() + 1).unwrap_err();
        assert!(err.contains("declares"), "{err}");
        // A frame that hides its size, then claims more than announced while decoding.
        let mut hidden = Vec::with_capacity(zstd_safe::compress_bound(target.len()));
        let mut stream = zstd::stream::Encoder::new(&mut hidden, 1).unwrap();
        std::io::Write::write_all(&mut stream, &target).unwrap();
        stream.finish().unwrap();
        let err = apply_patch(&base, &hidden, 10).unwrap_err();
        assert!(err.contains("size") || err.contains("declares"), "{err}");
        // Not zstd at all.
        assert!(apply_patch(&base, b"not a patch", 10).is_err());
        assert!(apply_patch(&base, &[], 10).is_err());
    }

    #[test]
    fn a_bomb_is_cut_at_the_announced_size() {
        // 64 MB of zeros declaring its size: refused before anything is allocated.
        let zeros = vec![0u8; 1 << 20];
        let mut bomb = Vec::new();
        let mut enc = zstd::stream::Encoder::new(&mut bomb, 1).unwrap();
        enc.set_pledged_src_size(Some(64 << 20)).unwrap();
        enc.include_contentsize(true).unwrap();
        for _ in 0..64 {
            std::io::Write::write_all(&mut enc, &zeros).unwrap();
        }
        enc.finish().unwrap();
        assert!(bomb.len() < 1 << 20);
        assert!(apply_patch(&[], &bomb, 1 << 20).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn patches_round_trip(
            base in proptest::collection::vec(any::<u8>(), 0..4_000),
            edits in proptest::collection::vec((any::<u16>(), any::<u8>()), 0..20),
        ) {
            let mut target = base.clone();
            for (at, byte) in edits {
                if target.is_empty() {
                    target.push(byte);
                } else {
                    let at = at as usize % target.len();
                    target[at] = byte;
                    target.insert(at, byte);
                }
            }
            let patch = make_patch(&base, &target).unwrap();
            prop_assert_eq!(apply_patch(&base, &patch, target.len()).unwrap(), target);
        }

        /// A holder flipping bytes of a real patch: an error or bytes of the announced size
        /// (which the digest check then judges), never a panic or a longer output.
        #[test]
        fn corrupted_patches_fail_cleanly(
            flips in proptest::collection::vec((any::<u16>(), 1u8..), 1..8),
        ) {
            let base = random(20_000, 10);
            let target = edited(&base, 11);
            let mut patch = make_patch(&base, &target).unwrap();
            for (at, x) in flips {
                let at = at as usize % patch.len();
                patch[at] ^= x;
            }
            if let Ok(out) = apply_patch(&base, &patch, target.len()) {
                prop_assert_eq!(out.len(), target.len());
            }
        }

        #[test]
        fn garbage_patches_never_panic_nor_exceed_the_size(
            base in proptest::collection::vec(any::<u8>(), 0..2_000),
            patch in proptest::collection::vec(any::<u8>(), 0..600),
            size in 0usize..10_000,
        ) {
            if let Ok(out) = apply_patch(&base, &patch, size) {
                prop_assert_eq!(out.len(), size);
            }
        }
    }
}
