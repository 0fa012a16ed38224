//! The transfer's tests: frames and the digest, requests from older and newer peers, the fuzz
//! seeds, a request for a version not held yet, a document that lies about a string's size.

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
        base: None,
    })
    .unwrap();
    let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
    assert_eq!(len, frame.len() - 4);
}

/// The request as the first release encoded it (before `base`).
#[derive(Serialize, Deserialize)]
struct OldFetchRequest {
    version: Version,
}

#[test]
fn requests_with_and_without_a_base_decode_both_ways() {
    let version = Version::new(4, 2, crate::NodeId::new("a"));
    let base = Base {
        version: Version::new(4, 1, crate::NodeId::new("a")),
        digest: digest_hex(b"v1"),
    };
    let body = |frame: Vec<u8>| frame[4..].to_vec();
    // An old peer's request: no base.
    let old = body(
        encode_frame(&OldFetchRequest {
            version: version.clone(),
        })
        .unwrap(),
    );
    let decoded = decode_request(&old).unwrap();
    assert_eq!((decoded.version, decoded.base), (version.clone(), None));
    // A new request: the base comes through.
    let new = body(
        encode_frame(&FetchRequest {
            version: version.clone(),
            base: Some(base.clone()),
        })
        .unwrap(),
    );
    let decoded = decode_request(&new).unwrap();
    assert_eq!(decoded.version, version);
    assert_eq!(decoded.base, Some(base));
    // An old peer reading a new request sees the version it asks for (and sends it whole).
    assert_eq!(
        decode_body::<OldFetchRequest>(&new).unwrap().version,
        version
    );
    // Bytes after the version that are not a base: refused, named.
    let mut bad = old.clone();
    bad.extend_from_slice(&[1, 0xFF, 0xFF]);
    let err = decode_request(&bad).unwrap_err();
    assert!(err.contains("base"), "{err}");
}

#[test]
fn every_seed_frame_decodes() {
    let seeds = fuzz_seeds();
    assert_eq!(seeds.len(), 6);
    assert!(seeds.iter().all(|s| fuzz_control_frame(s)));
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
