//! Node identity: a peer may only speak for the node id its certificate names. Pure; no I/O.
//!
//! Two checks, both fed by the transport (which knows the certificate of every connection):
//!
//! 1. Per message ([`judge`]): a chitchat SYN or SYN-ACK lists its sender's own state in its
//!    digest. The digest must hold an entry whose node id is the one the sender's certificate
//!    names, at the sender's address (the remote address of the connection, which is its
//!    advertised gossip address: one QUIC endpoint per node). Otherwise the message is dropped
//!    and counted as an identity mismatch: an impostor running `--node-id n0` with n4's
//!    certificate never gets its state into anyone's view. An ACK (no digest) is accepted only
//!    from an address this node has already verified for that certificate's id.
//! 2. Per member ([`FirstHand`]): chitchat relays other nodes' states, so a peer with a valid
//!    certificate could still relay a forged state for another id. A member (id, generation,
//!    address) counts for election, head, fetch sources and health reports only once this node
//!    has heard it first-hand: in a message judged by rule 1 from that address. The mesh reads
//!    [`FirstHand::contains`] when it builds its view.
//!
//! What stays possible for a holder of a valid node certificate: relaying forged key values of
//! a verified member's current generation (chitchat has no per-origin signatures). Documents
//! are only ever fetched from a holder's verified address and checked against their digest, so
//! this cannot inject rules; docs/security.md lists it as a residual risk.

use chitchat::{ChitchatId, Deserializable, Heartbeat};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

/// Chitchat message type codes (byte 3 of every message, after the magic and the version).
const SYN: u8 = 0;
const SYN_ACK: u8 = 1;
const ACK: u8 = 2;
const BAD_CLUSTER: u8 = 3;
/// A digest lists at most this many entries we look at (chitchat writes a u16 count).
const MAX_DIGEST_ENTRIES: usize = u16::MAX as usize;

/// What a chitchat message says about who sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Claims {
    /// SYN or SYN-ACK: every node the digest lists.
    Digest(Vec<ChitchatId>),
    /// ACK: a delta only, no digest.
    Ack,
    /// BAD_CLUSTER: carries nothing.
    Nothing,
}

/// Reads the node ids a serialized chitchat message lists in its digest. `None` when the bytes
/// are not a message this version of chitchat writes.
pub(crate) fn claims(message: &[u8]) -> Option<Claims> {
    let (header, mut rest) = (message.get(..4)?, message.get(4..)?);
    if header[2] != 0 {
        return None;
    }
    match header[3] {
        SYN | SYN_ACK => {
            let buf = &mut rest;
            let count = usize::from(u16::deserialize(buf).ok()?).min(MAX_DIGEST_ENTRIES);
            let mut ids = Vec::with_capacity(count.min(1_024));
            for _ in 0..count {
                let id = ChitchatId::deserialize(buf).ok()?;
                Heartbeat::deserialize(buf).ok()?;
                u64::deserialize(buf).ok()?; // last_gc_version
                u64::deserialize(buf).ok()?; // max_version
                ids.push(id);
            }
            Some(Claims::Digest(ids))
        }
        ACK => Some(Claims::Ack),
        BAD_CLUSTER => Some(Claims::Nothing),
        _ => None,
    }
}

/// The outcome of [`judge`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Deliver; `first_hand` lists the generations of the sender's own id at its address that the
    /// message vouches for.
    Accept { first_hand: Vec<u64> },
    /// Drop and count: the sender claims ids its certificate does not name.
    Mismatch { claimed: Vec<String> },
    /// This node's own gossip, come back from another address (a seed or peer address that
    /// leads back here: a UDP reflector, a NAT, this node under another name): dropped, but
    /// no impostor.
    Reflected,
}

/// Judges one message from a connection whose certificate names `cert_id`, from `remote`, to
/// this node listening at `local`. `known` says whether `remote` was already verified for
/// `cert_id` (see [`FirstHand::knows`]).
pub(crate) fn judge(
    cert_id: &str,
    remote: SocketAddr,
    local: SocketAddr,
    claims: &Claims,
    known: bool,
) -> Verdict {
    match claims {
        Claims::Digest(ids) => {
            let at_remote = ids.iter().filter(|id| id.gossip_advertise_addr == remote);
            let first_hand: Vec<u64> = at_remote
                .clone()
                .filter(|id| &*id.node_id == cert_id)
                .map(|id| id.generation_id)
                .collect();
            if !first_hand.is_empty() {
                return Verdict::Accept { first_hand };
            }
            // No entry of its own at the sender's address, but this node's own entry at this
            // node's address, under this node's certificate: its own message, sent back from
            // elsewhere (a twin with the same id speaks for itself at its own address and is
            // accepted above, as any sender). Looked for only here, off the accepted path.
            let own_sent_back = remote != local
                && ids
                    .iter()
                    .any(|id| id.gossip_advertise_addr == local && &*id.node_id == cert_id);
            if own_sent_back {
                Verdict::Reflected
            } else {
                let mut claimed: Vec<String> = at_remote.map(|id| id.node_id.to_string()).collect();
                claimed.sort();
                claimed.dedup();
                Verdict::Mismatch { claimed }
            }
        }
        Claims::Ack if known => Verdict::Accept {
            first_hand: Vec::new(),
        },
        Claims::Ack => Verdict::Mismatch {
            claimed: Vec::new(),
        },
        Claims::Nothing => Verdict::Accept {
            first_hand: Vec::new(),
        },
    }
}

/// Members (id, generation, address) this node has heard first-hand, with when it last did.
/// Bounded: past `cap` entries the least recently heard is forgotten.
#[derive(Debug)]
pub(crate) struct FirstHand {
    heard: HashMap<(String, u64, SocketAddr), Instant>,
    cap: usize,
    /// Rises whenever an entry is added, so readers can tell that the set changed.
    version: u64,
}

impl FirstHand {
    pub(crate) fn new(cap: usize) -> Self {
        FirstHand {
            heard: HashMap::new(),
            cap: cap.max(1),
            version: 0,
        }
    }

    pub(crate) fn record(&mut self, id: &str, generation: u64, addr: SocketAddr, now: Instant) {
        let key = (id.to_string(), generation, addr);
        if let Some(at) = self.heard.get_mut(&key) {
            *at = now;
            return;
        }
        if self.heard.len() >= self.cap {
            if let Some(oldest) = self
                .heard
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(k, _)| k.clone())
            {
                self.heard.remove(&oldest);
            }
        }
        self.heard.insert(key, now);
        self.version = self.version.wrapping_add(1);
    }

    pub(crate) fn contains(&self, id: &str, generation: u64, addr: SocketAddr) -> bool {
        self.heard.contains_key(&(id.to_string(), generation, addr))
    }

    /// Whether any generation of `id` was heard first-hand at `addr`.
    pub(crate) fn knows(&self, id: &str, addr: SocketAddr) -> bool {
        self.heard.keys().any(|(i, _, a)| i == id && *a == addr)
    }

    pub(crate) fn version(&self) -> u64 {
        self.version
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chitchat::{ChitchatMessage, Serializable};
    use proptest::prelude::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn id(node: &str, generation: u64, port: u16) -> ChitchatId {
        ChitchatId::new(node.to_string(), generation, addr(port))
    }

    /// A SYN built by hand, checked against chitchat's own codec: it must decode, and encode
    /// back to the same bytes (chitchat keeps its digest type private).
    fn syn(ids: &[ChitchatId]) -> Vec<u8> {
        let mut buf = 45_139u16.to_le_bytes().to_vec();
        buf.extend([0, SYN]);
        (ids.len() as u16).serialize(&mut buf);
        for id in ids {
            id.serialize(&mut buf);
            3u64.serialize(&mut buf); // heartbeat
            0u64.serialize(&mut buf);
            7u64.serialize(&mut buf);
        }
        "c".to_string().serialize(&mut buf);
        let message = ChitchatMessage::deserialize(&mut &buf[..]).unwrap();
        assert!(matches!(message, ChitchatMessage::Syn { .. }));
        assert_eq!(message.serialize_to_vec(), buf);
        buf
    }

    #[test]
    fn reads_the_digest_chitchat_writes() {
        let ids = vec![id("n0", 5, 2), id("n4", 7, 1)];
        let full = syn(&ids);
        assert_eq!(claims(&full), Some(Claims::Digest(ids)));
        assert_eq!(
            claims(&ChitchatMessage::BadCluster.serialize_to_vec()),
            Some(Claims::Nothing)
        );
        assert_eq!(claims(&[]), None);
        assert_eq!(claims(&[0xd3, 0xb0, 0, 9]), None);
        // A digest cut short is refused, not read past its end ("c" takes 3 bytes at the end).
        for cut in 4..full.len() - 3 {
            assert_eq!(claims(&full[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn judges_the_sender_by_its_own_entry() {
        let claims = Claims::Digest(vec![id("n0", 5, 2), id("n4", 7, 1), id("n1", 3, 3)]);
        // Certificate n4 at port 1: its own entry is there.
        assert_eq!(
            judge("n4", addr(1), addr(9), &claims, false),
            Verdict::Accept {
                first_hand: vec![7]
            }
        );
        // The impostor: n4's certificate, claiming n0 at its own address.
        let impostor = Claims::Digest(vec![id("n0", 9, 1), id("n1", 3, 3)]);
        assert_eq!(
            judge("n4", addr(1), addr(9), &impostor, false),
            Verdict::Mismatch {
                claimed: vec!["n0".into()]
            }
        );
        // Relaying n4's entry from another address does not vouch for the relay.
        assert_eq!(
            judge("n4", addr(3), addr(9), &claims, false),
            Verdict::Mismatch {
                claimed: vec!["n1".into()]
            }
        );
        assert!(matches!(
            judge("n4", addr(1), addr(9), &Claims::Ack, false),
            Verdict::Mismatch { .. }
        ));
        assert!(matches!(
            judge("n4", addr(1), addr(9), &Claims::Ack, true),
            Verdict::Accept { .. }
        ));
    }

    /// A seed that was a UDP echo sent this node's own gossip back: its own certificate,
    /// its own entry at its own address, from the echo's address. Counted as an impostor
    /// (~10 a second) until it was told apart; still dropped.
    #[test]
    fn this_nodes_own_gossip_sent_back_is_a_reflection_not_an_impostor() {
        // A twin (same id and certificate, another process at addr 5) relays this node's entry
        // next to its own: judged by its own entry, accepted, so duplicates are still seen.
        let twin = Claims::Digest(vec![id("n4", 8, 5), id("n4", 7, 9)]);
        assert_eq!(
            judge("n4", addr(5), addr(9), &twin, false),
            Verdict::Accept {
                first_hand: vec![8]
            }
        );
        let own = Claims::Digest(vec![id("n4", 7, 9)]);
        assert_eq!(
            judge("n4", addr(5), addr(9), &own, false),
            Verdict::Reflected
        );
        // Another node's certificate relaying this node's entry is no reflection.
        assert!(matches!(
            judge("n1", addr(5), addr(9), &own, false),
            Verdict::Mismatch { .. }
        ));
    }

    #[test]
    fn first_hand_is_bounded_and_versioned() {
        let now = Instant::now();
        let mut fh = FirstHand::new(2);
        fh.record("a", 1, addr(1), now);
        fh.record("a", 1, addr(1), now);
        assert_eq!(fh.version(), 1);
        fh.record("b", 1, addr(2), now + std::time::Duration::from_millis(1));
        fh.record("c", 1, addr(3), now + std::time::Duration::from_millis(2));
        assert!(!fh.contains("a", 1, addr(1)), "the oldest went");
        assert!(fh.contains("b", 1, addr(2)) && fh.contains("c", 1, addr(3)));
        assert!(fh.knows("c", addr(3)) && !fh.knows("c", addr(2)));
        assert!(!fh.contains("c", 2, addr(3)));
    }

    proptest! {
        #[test]
        fn claims_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = claims(&bytes);
        }
    }
}
