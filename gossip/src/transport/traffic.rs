//! Byte and event counters of one node's endpoint.

use std::sync::atomic::{AtomicU64, Ordering};

/// Byte counters of one node's endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// UDP payload bytes sent / received by QUIC (all traffic, headers and handshakes included).
    pub udp_tx_bytes: u64,
    pub udp_rx_bytes: u64,
    /// Gossip payload bytes (after compression) handed to / received from QUIC.
    pub gossip_tx_bytes: u64,
    pub gossip_rx_bytes: u64,
    /// Gossip messages dropped: per-peer queue full, no connection, inbound queue full.
    pub dropped_queue_full: u64,
    pub dropped_no_connection: u64,
    pub dropped_inbound_full: u64,
    /// Failed dials and refused incoming handshakes (all reasons).
    pub dial_failures: u64,
    pub handshakes_refused: u64,
    /// Refused incoming handshakes by reason (see [`Refusal`]).
    pub handshakes_refused_full: u64,
    pub handshakes_refused_source_busy: u64,
    pub handshakes_refused_source_rate: u64,
    /// Incoming handshakes from a validated address that did not finish within the deadline.
    pub handshakes_timed_out: u64,
    /// Stateless Retry packets sent to sources that had not proven their address yet.
    pub handshakes_retried: u64,
    /// Connections and gossip messages dropped because the peer's certificate did not name the
    /// node id it spoke for (or named none while node identity is enforced).
    pub identity_mismatches: u64,
    /// Gossip messages that were this node's own, sent back from another address (a seed or
    /// peer address that leads back here), dropped.
    pub reflected_gossip: u64,
    /// Gossip messages above the size cap (sent or received), dropped.
    pub oversized_messages: u64,
    /// Gossip messages sent (each a frame of the peer's session stream, see `session.rs`).
    pub sent_on_stream: u64,
    /// Gossip payloads or session frames received that did not decode (a session stream that
    /// sends one is stopped).
    pub malformed_gossip: u64,
    /// Connections replaced after an outage (a healed cut): closed here because their peer,
    /// judged dead, was alive again, or closed by the peer for the same reason about this node.
    pub connections_reset: u64,
    /// Handshakes started over because the peer was reachable again while they ran (see
    /// `QuicTransport::redial`).
    pub dials_restarted: u64,
    /// Syns of this node's own gossip rounds not sent: the peer already had its burst (the
    /// rounds a freeze made chitchat miss, run back to back; see `pace.rs`).
    pub rounds_paced: u64,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) dropped_queue_full: AtomicU64,
    pub(super) dropped_no_connection: AtomicU64,
    pub(super) dropped_inbound_full: AtomicU64,
    pub(super) dial_failures: AtomicU64,
    pub(super) handshakes_refused: AtomicU64,
    pub(super) handshakes_refused_full: AtomicU64,
    pub(super) handshakes_refused_source_busy: AtomicU64,
    pub(super) handshakes_refused_source_rate: AtomicU64,
    pub(super) handshakes_timed_out: AtomicU64,
    pub(super) handshakes_retried: AtomicU64,
    pub(super) identity_mismatches: AtomicU64,
    pub(super) reflected_gossip: AtomicU64,
    pub(super) oversized_messages: AtomicU64,
    pub(super) sent_on_stream: AtomicU64,
    pub(super) malformed_gossip: AtomicU64,
    pub(super) connections_reset: AtomicU64,
    pub(super) dials_restarted: AtomicU64,
    pub(super) rounds_paced: AtomicU64,
}

pub(super) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
