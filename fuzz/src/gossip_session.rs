//! Gossip session streams (`gossip/src/transport/session.rs`: frames split off a stream and
//! decoded against the stream's id and counter tables, then chitchat's message decoder and the
//! identity check's digest reader): bytes from any peer that completed a handshake.

pub fn run(data: &[u8]) {
    shoal_gossip::fuzzing::gossip_session(data);
}

pub fn seeds() -> Vec<Vec<u8>> {
    shoal_gossip::fuzzing::gossip_session_seeds()
}
