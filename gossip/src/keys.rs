//! The chitchat keys each node gossips about itself, and how their values are encoded.
//!
//! Values arrive from the network: parsing never panics; a bad value reads as absent.

use crate::head::HeldAd;
use crate::version::{NodeId, Version};

/// The document this node holds: `<version>|<digest>|<size_bytes>`.
pub const HELD: &str = "held";
/// The version the application says its dataplane runs.
pub const APPLIED: &str = "applied";
/// Present once the node has caught up (election eligibility).
pub const READY: &str = "ready";
/// Present while the node holds the publisher role, stamped or not yet: the election keeps a
/// publisher that has not stamped over the head's origin restarted (`election.rs`).
pub const PUBLISHING: &str = "publishing";
/// Present while the node leaves gracefully: peers treat it as gone at once.
pub const LEAVING: &str = "leaving";
/// Present (value: the reason) while the node cannot do the publisher's work, e.g. its
/// source cannot reach the API server: the election passes it over (`Mesh::stand_down`).
pub const STAND_DOWN: &str = "stand-down";
/// The incarnations this node judged dead lately, `<id>@<generation>` separated by spaces
/// (`replica/report.rs`): a peer that finds one of them silent past its confirm bar judges it
/// dead at once instead of waiting for its own threshold.
pub const DOWN: &str = "down";
/// At most this many entries of a `down` value are read.
pub const MAX_DOWN_ENTRIES: usize = 32;
/// Prefix of static metadata keys (from `MeshConfig::metadata`).
pub const META_PREFIX: &str = "meta:";
/// Prefix of application keys (`Mesh::set_app_key`).
pub const APP_PREFIX: &str = "app:";

pub fn encode_held(ad: &HeldAd) -> String {
    format!("{}|{}|{}", ad.version, ad.digest, ad.size_bytes)
}

pub fn parse_held(value: &str) -> Option<HeldAd> {
    // The version's origin may itself contain '|', so split from the right.
    let (rest, size) = value.rsplit_once('|')?;
    let (version, digest) = rest.rsplit_once('|')?;
    let digest_ok = digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit());
    if !digest_ok {
        return None;
    }
    Some(HeldAd {
        version: Version::parse(version).ok()?,
        digest: digest.to_string(),
        size_bytes: size.parse().ok()?,
    })
}

pub fn encode_down(down: &[(NodeId, u64)]) -> String {
    let entries: Vec<String> = down.iter().map(|(id, g)| format!("{id}@{g}")).collect();
    entries.join(" ")
}

/// Entries that do not parse are skipped; at most [`MAX_DOWN_ENTRIES`] are kept.
pub fn parse_down(value: &str) -> Vec<(NodeId, u64)> {
    value
        .split(' ')
        .filter_map(|entry| {
            let (id, generation) = entry.rsplit_once('@')?;
            if id.is_empty() {
                return None;
            }
            Some((NodeId::new(id), generation.parse().ok()?))
        })
        .take(MAX_DOWN_ENTRIES)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn held_round_trips(e in 0..=crate::version::MAX_EPOCH, s in any::<u64>(), origin in "[a-z|@.]{1,10}", size in any::<u64>(), d in "[0-9a-f]{64}") {
            let ad = HeldAd { version: Version::new(e, s, NodeId::new(origin)), digest: d, size_bytes: size };
            prop_assert_eq!(parse_held(&encode_held(&ad)), Some(ad));
        }

        #[test]
        fn garbage_never_panics(value in ".{0,200}") {
            let _ = parse_held(&value);
            prop_assert!(parse_down(&value).len() <= MAX_DOWN_ENTRIES);
        }

        #[test]
        fn down_round_trips(entries in proptest::collection::vec(("[a-z0-9.@-]{1,12}", any::<u64>()), 0..MAX_DOWN_ENTRIES)) {
            let down: Vec<(NodeId, u64)> = entries.into_iter().map(|(id, g)| (NodeId::new(id), g)).collect();
            prop_assert_eq!(parse_down(&encode_down(&down)), down);
        }
    }

    #[test]
    fn short_digest_is_rejected() {
        assert_eq!(parse_held("1.1@a|abcd|10"), None);
    }

    /// An epoch above `MAX_EPOCH` in gossip is bad, hence absent: a peer cannot push the
    /// cluster's epochs to where stamping must refuse.
    #[test]
    fn an_epoch_beyond_the_last_is_absent() {
        let d = "a".repeat(64);
        let max = crate::version::MAX_EPOCH;
        assert!(parse_held(&format!("{max}.1@a|{d}|10")).is_some());
        assert_eq!(parse_held(&format!("{}.1@a|{d}|10", max + 1)), None);
        assert_eq!(parse_held(&format!("{}.1@a|{d}|10", u64::MAX)), None);
    }
}
