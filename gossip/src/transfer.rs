//! Document transfer over a QUIC bidirectional stream: request by version, answer with a
//! header and the document's bincode bytes, or a patch against a version the requester holds
//! (`delta.rs`). Every length is capped before anything is allocated.
//!
//! Wire format (each frame = u32 big-endian length + bincode 2 `standard()` body):
//! client -> `FetchRequest`, server -> `FetchHeader`, then for `Found` exactly `size_bytes` raw
//! bytes (the document's own bincode encoding, whose SHA-256 is the gossiped digest), for
//! `Delta` exactly `patch_bytes` bytes of patch.
//!
//! Versioning: the request's `base` was added after the first release. It is encoded after the
//! version, and older peers decode the version and ignore the bytes after it (so they answer
//! with the full document); a request without them (from an older peer) decodes with no base.
//! `FetchHeader::Delta` is only ever sent in answer to a request that offered a base.

use crate::delta::{self, Base};
use crate::error::TransferError;
use crate::patches::Patches;
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
    /// A version the requester holds and would take a patch against (see the versioning note
    /// above: absent in older peers' requests).
    base: Option<Base>,
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
    /// The document as a patch against the requester's `base` (`delta.rs`): `size_bytes` is
    /// the document's size once patched.
    Delta {
        version: Version,
        digest: String,
        size_bytes: u64,
        base: Base,
        patch_bytes: u64,
    },
}

/// What a holder sent, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Served {
    Nothing,
    Full { bytes: u64 },
    Delta { bytes: u64 },
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

/// Reads one control frame's body (its length capped at [`MAX_FRAME_BYTES`]).
async fn read_frame_body(
    recv: &mut RecvStream,
    peer: SocketAddr,
) -> Result<Vec<u8>, TransferError> {
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
    Ok(body)
}

async fn read_frame<T: serde::de::DeserializeOwned>(
    recv: &mut RecvStream,
    peer: SocketAddr,
) -> Result<T, TransferError> {
    let body = read_frame_body(recv, peer).await?;
    decode_body(&body).map_err(|detail| TransferError::Decode { peer, detail })
}

/// Decodes a request: the version, then the base if the requester sent one (see the
/// versioning note at the top).
fn decode_request(body: &[u8]) -> Result<FetchRequest, String> {
    let config = bincode::config::standard().with_limit::<MAX_FRAME_BYTES>();
    let (version, used) =
        bincode::serde::decode_from_slice::<Version, _>(body, config).map_err(|e| e.to_string())?;
    let rest = body.get(used..).unwrap_or_default();
    let base = if rest.is_empty() {
        None
    } else {
        decode_body::<Option<Base>>(rest).map_err(|e| format!("request's base: {e}"))?
    };
    Ok(FetchRequest { version, base })
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
    let base = Base {
        version: Version::new(3, 6, crate::version::NodeId::new("n0")),
        digest: digest_hex(b"old"),
    };
    let frames = [
        encode_frame(&FetchRequest {
            version: version.clone(),
            base: None,
        }),
        encode_frame(&FetchRequest {
            version: version.clone(),
            base: Some(base.clone()),
        }),
        encode_frame(&FetchHeader::Delta {
            version: version.clone(),
            digest: digest_hex(b"doc"),
            size_bytes: 3,
            base,
            patch_bytes: 2,
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
    let request = decode_request(body).is_ok();
    let header = decode_body::<FetchHeader>(body).is_ok();
    request || header
}

/// Writes `bytes` to the stream as the shared chunk it is: quinn splits it to the flow-control
/// window without copying, where a slice would be copied (2 MB per document served).
async fn write_all(
    send: &mut SendStream,
    bytes: impl Into<Bytes>,
    peer: SocketAddr,
) -> Result<(), TransferError> {
    send.write_chunk(bytes.into())
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

/// Answers one request on an inbound bidirectional stream, saying what it sent.
///
/// A request for a version newer than the one held waits up to `wait` for it: the requester
/// counts on this node as its parent in the spread tree (`spread.rs`), and this node fetches
/// that version itself as soon as gossip tells it of the new head. A request for an older
/// version is answered at once ("not held"). A request offering a base gets a patch when
/// `patches` has or can make one worth sending, else the full document.
pub(crate) async fn serve(
    mut blobs: watch::Receiver<Option<Arc<Blob>>>,
    patches: &Patches,
    peer: SocketAddr,
    mut send: SendStream,
    mut recv: RecvStream,
    wait: Duration,
) -> Result<Served, TransferError> {
    let work = async {
        let body = read_frame_body(&mut recv, peer).await?;
        let request =
            decode_request(&body).map_err(|detail| TransferError::Decode { peer, detail })?;
        let blob = held_by_then(&mut blobs, &request.version, wait).await;
        let encode_err = |detail| TransferError::Decode { peer, detail };
        let served = match blob {
            Some(blob) if blob.version == request.version => {
                let patch = patches.answer(request.base.as_ref(), &blob).await;
                let (header, payload) = match (patch, request.base) {
                    (Some(patch), Some(base)) => (
                        FetchHeader::Delta {
                            version: blob.version.clone(),
                            digest: blob.digest.clone(),
                            size_bytes: blob.bytes.len() as u64,
                            base,
                            patch_bytes: patch.len() as u64,
                        },
                        patch,
                    ),
                    _ => (
                        FetchHeader::Found {
                            version: blob.version.clone(),
                            digest: blob.digest.clone(),
                            size_bytes: blob.bytes.len() as u64,
                        },
                        blob.bytes.clone(),
                    ),
                };
                let delta = matches!(header, FetchHeader::Delta { .. });
                write_all(&mut send, encode_frame(&header).map_err(encode_err)?, peer).await?;
                let bytes = payload.len() as u64;
                write_all(&mut send, payload, peer).await?;
                if delta {
                    Served::Delta { bytes }
                } else {
                    Served::Full { bytes }
                }
            }
            other => {
                let header = FetchHeader::NotHeld {
                    held: other.map(|b| b.version.clone()),
                };
                write_all(&mut send, encode_frame(&header).map_err(encode_err)?, peer).await?;
                Served::Nothing
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

/// A verified document and how it came.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub bytes: Bytes,
    /// The patch it was made from, when the holder sent one against the offered base.
    pub patch: Option<Bytes>,
}

/// Fetches `wanted` from `peer` and checks it against the gossiped digest. With `base` (a
/// verified version this node holds), asks for it as a patch against that base; a patch that
/// does not apply or does not yield the digest is [`TransferError::Patch`] (the caller then asks
/// for the full document). A holder that does not answer within `answer_ms` has its connection
/// closed, so the next use dials afresh. `found` is called once the holder has said it sends
/// the document (before the bytes).
pub(crate) async fn fetch(
    transport: &QuicTransport,
    peer: SocketAddr,
    wanted: &Wanted,
    base: Option<&Blob>,
    max_bytes: u64,
    timeouts: FetchTimeouts,
    found: impl FnOnce(),
) -> Result<Fetched, TransferError> {
    let FetchTimeouts {
        total_ms: timeout_ms,
        answer_ms,
    } = timeouts;
    if transport.fault().drops_outbound(&peer) || transport.fault().drops_inbound(&peer) {
        return Err(TransferError::Blocked { peer });
    }
    let offered = base.map(|b| Base {
        version: b.version.clone(),
        digest: b.digest.clone(),
    });
    let stream_err = |e: quinn::ReadExactError| TransferError::Stream {
        peer,
        detail: e.to_string(),
    };
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
                base: offered.clone(),
            };
            let frame =
                encode_frame(&request).map_err(|detail| TransferError::Decode { peer, detail })?;
            write_all(&mut send, frame, peer).await?;
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
        let ours =
            |version: &Version, digest: &str| *version == wanted.version && digest == wanted.digest;
        // (document size, patch size if a patch against the offered base comes).
        let (size_bytes, patch_bytes) = match header {
            FetchHeader::Found {
                version,
                digest,
                size_bytes,
            } if ours(&version, &digest) => (size_bytes, None),
            FetchHeader::Delta {
                version,
                digest,
                size_bytes,
                base,
                patch_bytes,
            } if ours(&version, &digest) && offered.as_ref() == Some(&base) => {
                (size_bytes, Some(patch_bytes))
            }
            FetchHeader::Found { .. } | FetchHeader::Delta { .. } | FetchHeader::NotHeld { .. } => {
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
        // A patch is only worth sending below half the document (`delta::worth_sending`); one
        // above the document's own size is refused before it is read.
        if let Some(patch_bytes) = patch_bytes.filter(|p| *p > size_bytes) {
            return Err(TransferError::Patch {
                peer,
                detail: format!("a patch of {patch_bytes} bytes for a {size_bytes}-byte document"),
            });
        }
        found();
        let mut body = vec![0u8; patch_bytes.unwrap_or(size_bytes) as usize];
        recv.read_exact(&mut body).await.map_err(stream_err)?;
        let (body, patch) = match (patch_bytes, base) {
            (Some(_), Some(base)) => {
                let patched = delta::apply_patch(&base.bytes, &body, size_bytes as usize)
                    .map_err(|detail| TransferError::Patch { peer, detail })?;
                (patched, Some(Bytes::from(body)))
            }
            _ => (body, None),
        };
        let actual = digest_hex(&body);
        if actual != wanted.digest {
            if patch.is_some() {
                return Err(TransferError::Patch {
                    peer,
                    detail: format!(
                        "patched document has digest {actual}, not {}",
                        wanted.digest
                    ),
                });
            }
            return Err(TransferError::Digest {
                peer,
                expected: wanted.digest.clone(),
                actual,
            });
        }
        Ok(Fetched {
            bytes: Bytes::from(body),
            patch,
        })
    };
    tokio::time::timeout(Duration::from_millis(timeout_ms), work)
        .await
        .map_err(|_| TransferError::Timeout { peer, timeout_ms })?
}

#[cfg(test)]
mod tests;
