//! Entry points for fuzzing the decoders that take bytes from the network (see fuzz/): each
//! takes arbitrary bytes, must never panic, and returns whether the input decoded.

use chitchat::{ChitchatMessage, Deserializable, Serializable};

/// The gossip cap of the default timing (bytes after decompression).
const MAX_GOSSIP_MESSAGE_BYTES: usize = 128 << 10;

/// A gossip payload as it arrives on a stream: the framing and capped zstd decompression
/// (`transport/codec.rs`), chitchat's message decoder, and the identity check's digest reader
/// (`identity::claims`), which must agree with chitchat on what a SYN lists.
pub fn gossip_payload(bytes: &[u8]) -> bool {
    let Some(message) = crate::transport::codec::decode(bytes, MAX_GOSSIP_MESSAGE_BYTES) else {
        return false;
    };
    gossip_message(&message)
}

/// A decoded chitchat message: chitchat's decoder and the identity check's digest reader.
fn gossip_message(message: &[u8]) -> bool {
    let decoded = ChitchatMessage::deserialize(&mut &message[..]);
    let claims = crate::identity::claims(message);
    if let Ok(ChitchatMessage::Syn { .. } | ChitchatMessage::SynAck { .. }) = &decoded {
        // Whatever chitchat accepts as a SYN or SYN-ACK, the identity check can read.
        assert!(
            matches!(claims, Some(crate::identity::Claims::Digest(_))),
            "chitchat decoded a message whose digest identity::claims cannot read"
        );
    }
    decoded.is_ok()
}

/// A gossip session stream after its first byte (`transport/session.rs`): frames split off the
/// bytes and decoded in order against the stream's tables, each decoded message checked as in
/// [`gossip_payload`]. Returns whether every frame decoded.
pub fn gossip_session(bytes: &[u8]) -> bool {
    use crate::transport::session::{max_frame_bytes, next_frame, Decoder};
    let mut decoder = Decoder::default();
    let mut rest = bytes;
    loop {
        match next_frame(rest, max_frame_bytes(MAX_GOSSIP_MESSAGE_BYTES)) {
            Ok(Some((end, frame))) => {
                let Ok(message) = decoder.decode(&rest[frame], MAX_GOSSIP_MESSAGE_BYTES) else {
                    return false;
                };
                assert!(message.len() <= MAX_GOSSIP_MESSAGE_BYTES);
                assert!(decoder.table_len() <= crate::transport::session::MAX_IDS);
                gossip_message(&message);
                rest = &rest[end..];
            }
            Ok(None) => return rest.is_empty(),
            Err(_) => return false,
        }
    }
}

/// One document-transfer control frame (`transfer.rs`: length prefix, bincode body), decoded as
/// a request and as a header.
pub fn transfer_frame(bytes: &[u8]) -> bool {
    crate::transfer::fuzz_control_frame(bytes)
}

/// Valid gossip payloads to start fuzzing from: SYNs listing a few nodes (raw and
/// zstd-compressed), a BAD_CLUSTER.
pub fn gossip_payload_seeds() -> Vec<Vec<u8>> {
    let bad_cluster = ChitchatMessage::BadCluster.serialize_to_vec();
    [syn(1, 1), syn(3, 1), syn(40, 1), bad_cluster]
        .iter()
        .map(|m| crate::transport::codec::encode(m))
        .collect()
}

/// Valid session streams to start fuzzing from: SYNs of 3 and 40 nodes whose heartbeats rise,
/// with a BAD_CLUSTER between them.
pub fn gossip_session_seeds() -> Vec<Vec<u8>> {
    use crate::transport::session::{put_frame, Encoder};
    let stream = |messages: &[Vec<u8>]| {
        let mut encoder = Encoder::default();
        let mut out = Vec::new();
        for message in messages {
            put_frame(&mut out, &encoder.encode(message));
        }
        out
    };
    let bad_cluster = ChitchatMessage::BadCluster.serialize_to_vec();
    vec![
        stream(&[syn(3, 1), syn(3, 2), bad_cluster, syn(3, 5)]),
        stream(&[syn(40, 1), syn(40, 17), syn(40, 30)]),
    ]
}

/// A SYN listing `nodes` nodes, every heartbeat at least `beat`.
fn syn(nodes: usize, beat: u64) -> Vec<u8> {
    use chitchat::ChitchatId;
    let mut buf = 45_139u16.to_le_bytes().to_vec();
    buf.extend([0u8, 0]);
    (nodes as u16).serialize(&mut buf);
    for i in 0..nodes {
        let addr = std::net::SocketAddr::from(([198, 18, 0, (i % 250) as u8 + 1], 7946));
        ChitchatId::new(format!("node-{i:03}"), 1_764_234_000_000 + i as u64, addr)
            .serialize(&mut buf);
        (beat + i as u64).serialize(&mut buf); // heartbeat
        0u64.serialize(&mut buf); // last_gc_version
        (3 * i as u64).serialize(&mut buf); // max_version
    }
    "shoal".to_string().serialize(&mut buf);
    buf
}

/// A fetched document (`transfer::decode_document`, used by the mesh's fetcher): returns it
/// when the bytes decode as `D`.
pub fn document<D: crate::Document>(bytes: &[u8]) -> Option<D> {
    crate::transfer::decode_document(bytes).ok()
}

/// Valid control frames to start fuzzing from (a request, both header kinds).
pub fn transfer_frame_seeds() -> Vec<Vec<u8>> {
    crate::transfer::fuzz_seeds()
}

/// The values a member gossips about itself (`keys.rs`): what it holds (`<version>|<digest>|
/// <size>`) and what it applied (a version). A value that parses re-encodes to itself.
pub fn member_keys(bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    let held = crate::keys::parse_held(text);
    if let Some(ad) = &held {
        assert_eq!(
            crate::keys::parse_held(&crate::keys::encode_held(ad)).as_ref(),
            Some(ad),
            "held round trip"
        );
    }
    let applied = crate::version::Version::parse(text).ok();
    if let Some(v) = &applied {
        assert_eq!(
            crate::version::Version::parse(&v.to_string()).ok().as_ref(),
            Some(v),
            "version round trip"
        );
    }
    held.is_some() || applied.is_some()
}

/// Valid member values to start fuzzing from.
pub fn member_keys_seeds() -> Vec<Vec<u8>> {
    let v = crate::version::Version::new(3, 17, crate::version::NodeId::new("node-a|b@c"));
    let ad = crate::head::HeldAd {
        version: v.clone(),
        digest: crate::transfer::digest_hex(b"doc"),
        size_bytes: 1_234,
    };
    vec![
        crate::keys::encode_held(&ad).into_bytes(),
        v.to_string().into_bytes(),
    ]
}

/// The epoch file's contents (`epoch_file.rs`, read from disk at start-up).
pub fn epoch_file(bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    crate::epoch_file::parse(text).is_some()
}

/// Valid epoch files to start fuzzing from.
pub fn epoch_file_seeds() -> Vec<Vec<u8>> {
    vec![
        b"0\n".to_vec(),
        b"18446744073709551615\n".to_vec(),
        b"42".to_vec(),
    ]
}

/// PEM files a node loads (`certs.rs`: `ca.pem`, `node.pem`, `node.key`, and `ca.key` for
/// `shoal certs issue`), then the node id and validity read from each certificate. The bytes
/// are tried as every file at once, and as a DER certificate.
pub fn cert_pem(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let material = crate::certs::TlsMaterial {
        ca_pem: text.to_string(),
        cert_pem: text.to_string(),
        key_pem: text.to_string(),
    };
    let mut parsed_any = false;
    if let Ok(certs) = crate::certs::parse_certs(&text, "fuzz") {
        parsed_any = true;
        for der in &certs {
            let _ = crate::certs::cert_node_id(der);
            let _ = crate::certs::cert_dns_names(der);
            let _ = crate::certs::validity_of(der);
        }
    }
    let _ = material.node_id();
    let _ = material.check_cluster("shoal", std::path::Path::new("node.pem"));
    if material.parse().is_ok() {
        // A PEM holding a certificate and a key: the TLS configurations build or fail cleanly.
        let _ = crate::transport::tls::mutual(&material, "gossip.shoal");
    }
    let _ = crate::certs::ClusterCa::load(&text, &text);
    let _ = crate::certs::cert_node_id(bytes);
    let _ = crate::certs::validity_of(bytes);
    parsed_any
}

/// Valid PEM files to start fuzzing from: a CA, a node certificate with its key, a bundle.
pub fn cert_pem_seeds() -> Vec<Vec<u8>> {
    let Ok(ca) = crate::certs::create_ca("shoal") else {
        return Vec::new();
    };
    let Ok(node) = crate::certs::issue_node_cert(&ca, "node-1") else {
        return Vec::new();
    };
    let cert_der = rustls_pemfile::certs(&mut node.cert_pem.as_bytes())
        .flatten()
        .next()
        .map(|c| c.to_vec())
        .unwrap_or_default();
    vec![
        ca.cert_pem().as_bytes().to_vec(),
        format!("{}{}", node.cert_pem, node.key_pem).into_bytes(),
        format!("{}{}", ca.cert_pem(), node.cert_pem).into_bytes(),
        ca.key_pem().as_bytes().to_vec(),
        cert_der,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn seeds_decode() {
        let seeds = gossip_payload_seeds();
        assert!(seeds.iter().all(|s| gossip_payload(s)));
        assert!(seeds.iter().any(|s| s[0] == 1), "one seed is compressed");
        assert!(gossip_session_seeds().iter().all(|s| gossip_session(s)));
        assert!(transfer_frame_seeds().iter().all(|s| transfer_frame(s)));
        assert!(member_keys_seeds().iter().all(|s| member_keys(s)));
        assert!(epoch_file_seeds().iter().all(|s| epoch_file(s)));
        let pems = cert_pem_seeds();
        assert_eq!(pems.len(), 5);
        assert!(pems[..3].iter().all(|s| cert_pem(s)));
    }

    proptest! {
        /// A short stand-in for the fuzzers, run with the unit tests.
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            gossip_payload(&bytes);
            let mut framed = vec![0u8];
            framed.extend_from_slice(&bytes);
            gossip_payload(&framed);
            transfer_frame(&bytes);
        }
    }
}
