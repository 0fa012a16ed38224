//! The health wire format (`node/src/health/wire.rs`): values every peer gossips.

use shoal_node::health::wire::{decode, encode, Observation};
use shoal_node::health::{CheckState, ProbeResult};

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(observations) = decode(text) {
        // What decodes re-encodes to something that decodes to the same observations.
        let again = decode(&encode(&observations)).expect("an encoded value decodes");
        assert_eq!(again, observations, "health wire round trip");
    }
}

pub fn seeds() -> Vec<Vec<u8>> {
    let o = |address: &str, state, last_result| Observation {
        address: address.parse().expect("literal address"),
        port: 8080,
        state,
        last_result,
        last_probe_ms: 1_764_234_001_000,
        since_ms: 1_764_234_000_000,
    };
    vec![
        encode(&[]).into_bytes(),
        encode(&[o("198.18.0.1", CheckState::Up, ProbeResult::Ok)]).into_bytes(),
        encode(&[
            o("2001:db8::7", CheckState::Down, ProbeResult::Status(503)),
            o("198.18.0.2", CheckState::Unknown, ProbeResult::Pending),
            o("198.18.0.3", CheckState::Down, ProbeResult::Timeout),
            o("198.18.0.4", CheckState::Down, ProbeResult::Refused),
            o("198.18.0.5", CheckState::Down, ProbeResult::Error),
        ])
        .into_bytes(),
    ]
}
