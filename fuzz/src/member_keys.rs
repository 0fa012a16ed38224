//! The values members gossip about themselves (`gossip/src/keys.rs`): held document ads and
//! applied versions. What parses re-encodes to itself.

pub fn run(data: &[u8]) {
    shoal_gossip::fuzzing::member_keys(data);
}

pub fn seeds() -> Vec<Vec<u8>> {
    shoal_gossip::fuzzing::member_keys_seeds()
}
