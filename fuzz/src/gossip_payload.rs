//! Gossip payloads (`gossip/src/transport/codec.rs` framing and capped zstd decompression,
//! chitchat's message decoder, the identity check's digest reader): bytes from any peer that
//! completed a handshake.

pub fn run(data: &[u8]) {
    shoal_gossip::fuzzing::gossip_payload(data);
}

pub fn seeds() -> Vec<Vec<u8>> {
    shoal_gossip::fuzzing::gossip_payload_seeds()
}
