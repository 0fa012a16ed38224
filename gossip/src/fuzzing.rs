//! Entry points for fuzzing the decoders that take bytes from the network (see fuzz/): each
//! takes arbitrary bytes, must never panic, and returns whether the input decoded.

use chitchat::{ChitchatMessage, Deserializable};

/// The gossip cap of the default timing (bytes after decompression).
const MAX_GOSSIP_MESSAGE_BYTES: usize = 128 << 10;

/// A gossip payload as it arrives on a stream: the framing and capped zstd decompression
/// (`transport/codec.rs`), chitchat's message decoder, and the identity check's digest reader
/// (`identity::claims`), which must agree with chitchat on what a SYN lists.
pub fn gossip_payload(bytes: &[u8]) -> bool {
    let Some(message) = crate::transport::codec::decode(bytes, MAX_GOSSIP_MESSAGE_BYTES) else {
        return false;
    };
    let decoded = ChitchatMessage::deserialize(&mut &message[..]);
    let claims = crate::identity::claims(&message);
    if let Ok(ChitchatMessage::Syn { .. } | ChitchatMessage::SynAck { .. }) = &decoded {
        // Whatever chitchat accepts as a SYN or SYN-ACK, the identity check can read.
        assert!(
            matches!(claims, Some(crate::identity::Claims::Digest(_))),
            "chitchat decoded a message whose digest identity::claims cannot read"
        );
    }
    decoded.is_ok()
}

/// One document-transfer control frame (`transfer.rs`: length prefix, bincode body), decoded as
/// a request and as a header.
pub fn transfer_frame(bytes: &[u8]) -> bool {
    crate::transfer::fuzz_control_frame(bytes)
}

/// Valid gossip payloads to start fuzzing from: SYNs listing a few nodes (raw and
/// zstd-compressed), a BAD_CLUSTER.
pub fn gossip_payload_seeds() -> Vec<Vec<u8>> {
    use chitchat::{ChitchatId, Serializable};
    let syn = |nodes: usize| {
        let mut buf = 45_139u16.to_le_bytes().to_vec();
        buf.extend([0u8, 0]);
        (nodes as u16).serialize(&mut buf);
        for i in 0..nodes {
            let addr = std::net::SocketAddr::from(([198, 18, 0, (i % 250) as u8 + 1], 7946));
            ChitchatId::new(format!("node-{i:03}"), 1_764_234_000_000 + i as u64, addr)
                .serialize(&mut buf);
            (i as u64 + 1).serialize(&mut buf); // heartbeat
            0u64.serialize(&mut buf); // last_gc_version
            (3 * i as u64).serialize(&mut buf); // max_version
        }
        "shoal".to_string().serialize(&mut buf);
        buf
    };
    let bad_cluster = ChitchatMessage::BadCluster.serialize_to_vec();
    [syn(1), syn(3), syn(40), bad_cluster]
        .iter()
        .map(|m| crate::transport::codec::encode(m))
        .collect()
}

/// Valid control frames to start fuzzing from (a request, both header kinds).
pub fn transfer_frame_seeds() -> Vec<Vec<u8>> {
    crate::transfer::fuzz_seeds()
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
        assert!(transfer_frame_seeds().iter().all(|s| transfer_frame(s)));
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
