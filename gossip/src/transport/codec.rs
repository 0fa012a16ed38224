//! Gossip payload framing: one flag byte, then the chitchat message raw or zstd-compressed.
//!
//! Chitchat digests list every member with fixed-width integers, mostly zero bytes; compressing
//! them cuts the steady-state traffic several times (see docs/benchmarks.md).

/// Messages shorter than this are sent raw: compression would not pay for itself.
const COMPRESS_FROM_BYTES: usize = 256;
const RAW: u8 = 0;
const ZSTD: u8 = 1;
const ZSTD_LEVEL: i32 = 1;

/// Frames a chitchat message for the wire.
pub fn encode(message: &[u8]) -> Vec<u8> {
    if message.len() >= COMPRESS_FROM_BYTES {
        if let Ok(compressed) = zstd::bulk::compress(message, ZSTD_LEVEL) {
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
        ZSTD => zstd::bulk::decompress(body, max_bytes).ok(),
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

        #[test]
        fn garbage_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..500)) {
            let _ = decode(&payload, 1 << 16);
        }
    }
}
