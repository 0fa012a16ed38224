//! The epoch file (`gossip/src/epoch_file.rs`), read from disk when the node starts.

pub fn run(data: &[u8]) {
    shoal_gossip::fuzzing::epoch_file(data);
}

pub fn seeds() -> Vec<Vec<u8>> {
    shoal_gossip::fuzzing::epoch_file_seeds()
}
