//! Gossip payload framing: one flag byte, then the chitchat message raw or zstd-compressed.
//!
//! Chitchat digests list every member with fixed-width integers, mostly zero bytes; compressing
//! them cuts the steady-state traffic several times (see docs/benchmarks.md).

use std::cell::RefCell;

/// Messages shorter than this are sent raw: compression would not pay for itself.
const COMPRESS_FROM_BYTES: usize = 256;
const RAW: u8 = 0;
const ZSTD: u8 = 1;
const ZSTD_LEVEL: i32 = 1;

thread_local! {
    // A zstd context costs a few hundred KB to set up: at 100 nodes, creating one per message
    // was a fifth of the mesh's CPU (docs/benchmarks.md), so each worker thread keeps its own.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

fn compress(message: &[u8]) -> Option<Vec<u8>> {
    COMPRESSOR.with_borrow_mut(|slot| {
        if slot.is_none() {
            *slot = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
        }
        slot.as_mut()?.compress(message).ok()
    })
}

fn decompress(body: &[u8], max_bytes: usize) -> Option<Vec<u8>> {
    // The frame header states the size; allocate that rather than the cap for every message.
    // A frame that lies about it fails to decompress, and nothing can exceed `max_bytes`.
    let capacity = match zstd::zstd_safe::get_frame_content_size(body) {
        Ok(Some(size)) if size <= max_bytes as u64 => size as usize,
        Ok(Some(_)) => return None,
        _ => max_bytes,
    };
    DECOMPRESSOR.with_borrow_mut(|slot| {
        if slot.is_none() {
            *slot = zstd::bulk::Decompressor::new().ok();
        }
        slot.as_mut()?.decompress(body, capacity).ok()
    })
}

/// Frames a chitchat message for the wire.
pub fn encode(message: &[u8]) -> Vec<u8> {
    encode_from(message, COMPRESS_FROM_BYTES)
}

/// Frames `message`, compressed when it is at least `min_bytes` long and compression helps.
pub fn encode_from(message: &[u8], min_bytes: usize) -> Vec<u8> {
    if message.len() >= min_bytes {
        if let Some(compressed) = compress(message) {
            if compressed.len() < message.len() {
                let mut out = Vec::with_capacity(compressed.len() + 1);
                out.push(ZSTD);
                out.extend_from_slice(&compressed);
                return out;
            }
        }
    }
    let mut out = Vec::with_capacity(message.len() + 1);
    out.push(RAW);
    out.extend_from_slice(message);
    out
}

/// Unframes a payload from the wire; `None` for anything malformed or above `max_bytes`
/// once decompressed (a small bomb cannot allocate more than the cap).
pub fn decode(payload: &[u8], max_bytes: usize) -> Option<Vec<u8>> {
    let (&flag, body) = payload.split_first()?;
    match flag {
        RAW if body.len() <= max_bytes => Some(body.to_vec()),
        ZSTD => decompress(body, max_bytes),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn repetitive_messages_shrink() {
        let message: Vec<u8> = (0..4_000u32)
            .map(|i| if i % 9 == 0 { (i % 251) as u8 } else { 0 })
            .collect();
        let framed = encode(&message);
        assert!(framed.len() < message.len() / 2, "{}", framed.len());
        assert_eq!(decode(&framed, 1 << 20), Some(message));
    }

    #[test]
    fn caps_and_garbage() {
        let big = vec![0u8; 10_000];
        assert_eq!(decode(&encode(&big), 5_000), None);
        assert_eq!(decode(&[], 100), None);
        assert_eq!(decode(&[7, 1, 2], 100), None);
        assert_eq!(decode(&[ZSTD, 1, 2, 3], 100), None);
    }

    proptest! {
        #[test]
        fn round_trip(message in proptest::collection::vec(any::<u8>(), 0..3_000)) {
            prop_assert_eq!(decode(&encode(&message), 1 << 20), Some(message));
        }

        /// The cap is exact: one byte over it is refused, not truncated.
        #[test]
        fn the_cap_is_exact(message in proptest::collection::vec(0u8..4, 400..3_000)) {
            let framed = encode(&message);
            prop_assume!(framed[0] == ZSTD);
            prop_assert_eq!(decode(&framed, message.len() - 1), None);
            prop_assert_eq!(decode(&framed, message.len()), Some(message));
        }

        #[test]
        fn garbage_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..500)) {
            let _ = decode(&payload, 1 << 16);
        }
    }
}
