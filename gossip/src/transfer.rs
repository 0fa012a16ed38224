//! Document transfer over a QUIC bidirectional stream: request by version, answer with a
//! header and the document's bincode bytes. Every length is capped before anything is allocated.
//!
//! Wire format (each frame = u32 big-endian length + bincode 2 `standard()` body):
//! client -> `FetchRequest`, server -> `FetchHeader`, then for `Found` exactly `size_bytes` raw
//! bytes (the document's own bincode encoding, whose SHA-256 is the gossiped digest).

use crate::error::TransferError;
use crate::transport::QuicTransport;
use crate::version::Version;
use bytes::Bytes;
use quinn::{RecvStream, SendStream};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Control frames are tiny: a version and a digest.
const MAX_FRAME_BYTES: usize = 4_096;
const SERVE_TIMEOUT: Duration = Duration::from_secs(30);

/// The encoded document this node can serve.
#[derive(Debug)]
pub(crate) struct Blob {
    pub version: Version,
    pub digest: String,
    pub bytes: Bytes,
}

#[derive(Debug, Serialize, Deserialize)]
struct FetchRequest {
    version: Version,
}

#[derive(Debug, Serialize, Deserialize)]
enum FetchHeader {
    Found {
        version: Version,
        digest: String,
        size_bytes: u64,
    },
    NotHeld {
        held: Option<Version>,
    },
}

/// Hex SHA-256: the digest gossiped with each version.
pub fn digest_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    let body = bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| e.to_string())?;
    let len = u32::try_from(body.len()).map_err(|e| e.to_string())?;
    let mut frame = len.to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    Ok(frame)
}

async fn read_frame<T: serde::de::DeserializeOwned>(
    recv: &mut RecvStream,
    peer: SocketAddr,
) -> Result<T, TransferError> {
    let stream_err = |e: quinn::ReadExactError| TransferError::Stream {
        peer,
        detail: e.to_string(),
    };
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.map_err(stream_err)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(TransferError::Decode {
            peer,
            detail: format!("control frame of {len} bytes above {MAX_FRAME_BYTES}"),
        });
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(stream_err)?;
    decode_body(&body).map_err(|detail| TransferError::Decode { peer, detail })
}

/// Decodes a control frame's body (bincode 2, capped at [`MAX_FRAME_BYTES`]).
fn decode_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let config = bincode::config::standard().with_limit::<MAX_FRAME_BYTES>();
    let (value, _) = bincode::serde::decode_from_slice(body, config).map_err(|e| e.to_string())?;
    Ok(value)
}

/// Documents above this many encoded bytes are never decoded (the publish and fetch caps are
/// far below it).
const MAX_DOCUMENT_DECODE_BYTES: usize = 1 << 30;

/// Decodes a fetched document (bincode 2 `standard()`). bincode allocates a string or byte
/// vector of the length its prefix claims before reading it, so without a limit a few crafted
/// bytes could ask for any amount of memory (found by fuzzing: a capacity-overflow panic, or an
/// allocation failure that aborts the process). The limit is the smallest of a few sizes that is
/// at least four times the input: what a document claims stays within a small multiple of what
/// arrived.
pub(crate) fn decode_document<D: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<D, String> {
    fn with_limit<D: serde::de::DeserializeOwned, const LIMIT: usize>(
        bytes: &[u8],
    ) -> Result<D, String> {
        let config = bincode::config::standard().with_limit::<LIMIT>();
        bincode::serde::decode_from_slice(bytes, config)
            .map(|(doc, _)| doc)
            .map_err(|e| e.to_string())
    }
    match bytes.len() {
        0..=0x3FFF => with_limit::<D, { 1 << 16 }>(bytes),
        0x4000..=0x3_FFFF => with_limit::<D, { 1 << 20 }>(bytes),
        0x4_0000..=0x3F_FFFF => with_limit::<D, { 1 << 24 }>(bytes),
        0x40_0000..=0x3FF_FFFF => with_limit::<D, { 1 << 28 }>(bytes),
        n if n <= MAX_DOCUMENT_DECODE_BYTES => {
            with_limit::<D, { MAX_DOCUMENT_DECODE_BYTES * 4 }>(bytes)
        }
        n => Err(format!(
            "document of {n} bytes above {MAX_DOCUMENT_DECODE_BYTES}"
        )),
    }
}

/// Valid control frames of each kind (the fuzzers' starting corpus).
#[doc(hidden)]
pub fn fuzz_seeds() -> Vec<Vec<u8>> {
    let version = Version::new(3, 7, crate::version::NodeId::new("n0"));
    let frames = [
        encode_frame(&FetchRequest {
            version: version.clone(),
        }),
        encode_frame(&FetchHeader::Found {
            version: version.clone(),
            digest: digest_hex(b"doc"),
            size_bytes: 3,
        }),
        encode_frame(&FetchHeader::NotHeld {
            held: Some(version),
        }),
        encode_frame(&FetchHeader::NotHeld { held: None }),
    ];
    frames.into_iter().filter_map(Result::ok).collect()
}

/// Fuzzing entry: decodes `bytes` as one control frame of each kind (length prefix, then body),
/// the way `read_frame` does off a stream. Never panics; returns whether any kind decoded.
#[doc(hidden)]
pub fn fuzz_control_frame(bytes: &[u8]) -> bool {
    let Some((len, body)) = bytes.split_first_chunk::<4>() else {
        return false;
    };
    let len = u32::from_be_bytes(*len) as usize;
    if len > MAX_FRAME_BYTES || body.len() < len {
        return false;
    }
    let body = &body[..len];
    let request = decode_body::<FetchRequest>(body).is_ok();
    let header = decode_body::<FetchHeader>(body).is_ok();
    request || header
}

async fn write_all(
    send: &mut SendStream,
    bytes: &[u8],
    peer: SocketAddr,
) -> Result<(), TransferError> {
    send.write_all(bytes)
        .await
        .map_err(|e| TransferError::Stream {
            peer,
            detail: e.to_string(),
        })
}

/// The document held once it is `version` or newer, waiting up to `wait` for it.
async fn held_by_then(
    blobs: &mut watch::Receiver<Option<Arc<Blob>>>,
    version: &Version,
    wait: Duration,
) -> Option<Arc<Blob>> {
    let caught_up = |b: &Option<Arc<Blob>>| b.as_ref().is_some_and(|b| b.version >= *version);
    // Timing out is an answer too: whatever is held by then ("not held" unless it is this one).
    let _ = tokio::time::timeout(wait, blobs.wait_for(caught_up)).await;
    let held = blobs.borrow().clone();
    held
}

/// Answers one request on an inbound bidirectional stream; `Ok(true)` when it sent the document.
///
/// A request for a version newer than the one held waits up to `wait` for it: the requester
/// counts on this node as its parent in the spread tree (`spread.rs`), and this node fetches
/// that version itself as soon as gossip tells it of the new head. A request for an older
/// version is answered at once ("not held").
pub(crate) async fn serve(
    mut blobs: watch::Receiver<Option<Arc<Blob>>>,
    peer: SocketAddr,
    mut send: SendStream,
    mut recv: RecvStream,
    wait: Duration,
) -> Result<bool, TransferError> {
    let work = async {
        let request: FetchRequest = read_frame(&mut recv, peer).await?;
        let blob = held_by_then(&mut blobs, &request.version, wait).await;
        let encode_err = |detail| TransferError::Decode { peer, detail };
        let served = match blob {
            Some(blob) if blob.version == request.version => {
                let header = FetchHeader::Found {
                    version: blob.version.clone(),
                    digest: blob.digest.clone(),
                    size_bytes: blob.bytes.len() as u64,
                };
                write_all(&mut send, &encode_frame(&header).map_err(encode_err)?, peer).await?;
                write_all(&mut send, &blob.bytes, peer).await?;
                true
            }
            other => {
                let header = FetchHeader::NotHeld {
                    held: other.map(|b| b.version.clone()),
                };
                write_all(&mut send, &encode_frame(&header).map_err(encode_err)?, peer).await?;
                false
            }
        };
        let _ = send.finish();
        // Wait until the peer has read everything (or gone), so the stream is not cut short.
        let _ = send.stopped().await;
        Ok(served)
    };
    tokio::time::timeout(SERVE_TIMEOUT, work)
        .await
        .map_err(|_| TransferError::Timeout {
            peer,
            timeout_ms: SERVE_TIMEOUT.as_millis() as u64,
        })?
}

/// What a fetcher expects, from the gossiped head.
#[derive(Clone, Debug)]
pub(crate) struct Wanted {
    pub version: Version,
    pub digest: String,
}

/// How long a fetch may take in all, and how long the holder has to answer the request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FetchTimeouts {
    pub total_ms: u64,
    pub answer_ms: u64,
}

/// Fetches `wanted` from `peer` and checks it against the gossiped digest. A holder that does
/// not answer within `answer_ms` has its connection closed, so the next use dials afresh.
/// `found` is called once the holder has said it sends the document (before the bytes).
pub(crate) async fn fetch(
    transport: &QuicTransport,
    peer: SocketAddr,
    wanted: &Wanted,
    max_bytes: u64,
    timeouts: FetchTimeouts,
    found: impl FnOnce(),
) -> Result<Bytes, TransferError> {
    let FetchTimeouts {
        total_ms: timeout_ms,
        answer_ms,
    } = timeouts;
    if transport.fault().drops_outbound(&peer) || transport.fault().drops_inbound(&peer) {
        return Err(TransferError::Blocked { peer });
    }
    let work = async {
        let conn = transport
            .connection(peer)
            .await
            .map_err(|detail| TransferError::Connect { peer, detail })?;
        let ask = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| TransferError::Stream {
                peer,
                detail: e.to_string(),
            })?;
            let request = FetchRequest {
                version: wanted.version.clone(),
            };
            let frame =
                encode_frame(&request).map_err(|detail| TransferError::Decode { peer, detail })?;
            write_all(&mut send, &frame, peer).await?;
            let _ = send.finish();
            let header: FetchHeader = read_frame(&mut recv, peer).await?;
            Ok::<_, TransferError>((header, recv))
        };
        let (header, mut recv) =
            match tokio::time::timeout(Duration::from_millis(answer_ms), ask).await {
                Ok(answer) => answer?,
                Err(_) => {
                    conn.close(0u32.into(), b"no answer to a fetch");
                    return Err(TransferError::Timeout {
                        peer,
                        timeout_ms: answer_ms,
                    });
                }
            };
        let size_bytes = match header {
            FetchHeader::Found {
                version,
                digest,
                size_bytes,
            } if version == wanted.version && digest == wanted.digest => size_bytes,
            FetchHeader::Found { .. } | FetchHeader::NotHeld { .. } => {
                return Err(TransferError::NotHeld { peer })
            }
        };
        if size_bytes > max_bytes {
            return Err(TransferError::TooLarge {
                peer,
                size_bytes,
                max_bytes,
            });
        }
        found();
        let mut body = vec![0u8; size_bytes as usize];
        recv.read_exact(&mut body)
            .await
            .map_err(|e| TransferError::Stream {
                peer,
                detail: e.to_string(),
            })?;
        let actual = digest_hex(&body);
        if actual != wanted.digest {
            return Err(TransferError::Digest {
                peer,
                expected: wanted.digest.clone(),
                actual,
            });
        }
        Ok(Bytes::from(body))
    };
    tokio::time::timeout(Duration::from_millis(timeout_ms), work)
        .await
        .map_err(|_| TransferError::Timeout { peer, timeout_ms })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_hex_sha256() {
        assert_eq!(
            digest_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn frames_carry_length_and_body() {
        let frame = encode_frame(&FetchRequest {
            version: Version::new(1, 2, crate::NodeId::new("a")),
        })
        .unwrap();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
    }

    fn blob(version: Version) -> Option<Arc<Blob>> {
        Some(Arc::new(Blob {
            version,
            digest: String::new(),
            bytes: Bytes::new(),
        }))
    }

    #[tokio::test]
    async fn a_request_for_a_newer_version_waits_for_it_an_older_one_does_not() {
        let v = |seq| Version::new(1, seq, crate::NodeId::new("a"));
        let (tx, mut rx) = watch::channel(blob(v(2)));
        // Older than held: answered at once with what is held (not after the long wait).
        let started = std::time::Instant::now();
        let held = held_by_then(&mut rx, &v(1), Duration::from_secs(20)).await;
        assert_eq!(held.map(|b| b.version.clone()), Some(v(2)));
        assert!(started.elapsed() < Duration::from_secs(10));
        // Newer: waits until it arrives (v2 was held when asked).
        let arrives = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.send_replace(blob(v(3)));
            tx
        });
        let held = held_by_then(&mut rx, &v(3), Duration::from_secs(20)).await;
        assert_eq!(held.map(|b| b.version.clone()), Some(v(3)));
        let _tx = arrives.await.unwrap();
        // Never arrives: gives up after the wait with what is held.
        let started = std::time::Instant::now();
        let held = held_by_then(&mut rx, &v(4), Duration::from_millis(200)).await;
        assert_eq!(held.map(|b| b.version.clone()), Some(v(3)));
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[test]
    fn a_document_claiming_a_huge_string_is_refused_not_allocated() {
        // A string whose varint length prefix claims 2^40 bytes, in a 10-byte document.
        let mut bytes = vec![253u8];
        bytes.extend_from_slice(&(1u64 << 40).to_le_bytes());
        bytes.push(b'x');
        let err = decode_document::<String>(&bytes).unwrap_err();
        assert!(err.contains("LimitExceeded"), "{err}");
        // Real documents of every size class still decode.
        for len in [0usize, 100, 20_000, 300_000] {
            let doc = "d".repeat(len);
            let bytes = bincode::serde::encode_to_vec(&doc, bincode::config::standard()).unwrap();
            assert_eq!(decode_document::<String>(&bytes).unwrap(), doc);
        }
    }
}
