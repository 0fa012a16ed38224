//! Document-transfer control frames (`gossip/src/transfer.rs`: a length prefix and a bincode
//! body), the requests and headers peers exchange before a document.

pub fn run(data: &[u8]) {
    shoal_gossip::fuzzing::transfer_frame(data);
}

pub fn seeds() -> Vec<Vec<u8>> {
    shoal_gossip::fuzzing::transfer_frame_seeds()
}
