//! Mesh configuration: identity, addresses, security and the tuned timing.

use crate::certs::TlsMaterial;
use crate::version::NodeId;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The cluster id when none is given (`shoal run --cluster`, `shoal certs init --cluster`).
pub const DEFAULT_CLUSTER_ID: &str = "shoal";

/// Everything a node needs to join the mesh.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    pub node_id: NodeId,
    /// Nodes of other clusters are refused by chitchat even if they hold a valid certificate.
    pub cluster_id: String,
    /// QUIC bind address, also advertised to peers: it must be an address peers can reach
    /// (not 0.0.0.0), since peers identify each other by it.
    pub listen: SocketAddr,
    /// "host:port" seeds; DNS names are re-resolved periodically (every 60 s, by chitchat).
    pub seeds: Vec<String>,
    pub security: Security,
    /// Small static key/values shown in the cluster view (e.g. "admin" => "127.0.0.1:9101").
    pub metadata: BTreeMap<String, String>,
    pub timing: Timing,
    /// Where the highest epoch this node stamped is kept across restarts (created if absent).
    /// `None`: a restarted publisher cut off from every holder of its old stamps may stamp one
    /// version twice (nodes still settle on one copy by digest); set it in production.
    pub epoch_file: Option<PathBuf>,
    /// Where the generation of this node id's last start is kept (created if absent): a start
    /// takes `max(now, last + 1)` (`generation_file::choose`), so a restart with the wall clock
    /// set back still gets a generation above its previous process's and is not taken for it.
    /// `None`: the generation is the clock's start time, as chitchat's.
    pub generation_file: Option<PathBuf>,
}

/// How peers authenticate each other.
#[derive(Clone, Debug)]
pub enum Security {
    /// Mutual TLS with node identity: every peer must present a certificate signed by the
    /// cluster CA that names its node id (`urn:shoal:node:<id>`), and may only speak for that
    /// id. This node's own certificate must name its `node_id`.
    MutualTls(TlsMaterial),
    /// Mutual TLS with cluster identity only (one certificate shared by all nodes): any holder
    /// of a cluster certificate can speak for any node id. Logged at start; see
    /// docs/security.md.
    ClusterIdentityOnly(TlsMaterial),
    /// Throwaway self-signed certificates and no peer authentication (logs a warning).
    /// For local experiments only: anyone who can reach the port can join.
    Insecure,
}

/// Timing and size limits. `Default` holds the tuned values (see docs/internals/gossip.md).
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    /// Chitchat gossip round: each node contacts up to 3 random live peers (+ seeds, dead ones).
    pub gossip_interval_ms: u64,
    /// Phi accrual threshold of chitchat's own detector (it only picks chitchat's gossip
    /// targets). In chitchat 0.11 phi = time since last heartbeat / mean interval.
    pub phi_threshold: f64,
    /// The replica core's phi threshold, the one that judges members (`liveness.rs`). The core
    /// reads heartbeats once per control tick, so a burst of advances a few ms apart (chitchat
    /// bumps a heartbeat on every message and relays it) counts once: its mean interval is about
    /// one gossip round (~100 ms) where chitchat's own detector sees ~55 ms. 4.5 against the
    /// tick-sampled mean waits as long as chitchat's 8 did (~450 ms); see docs/benchmarks.md.
    pub liveness_phi_threshold: f64,
    /// The lower bar at which a member that another live member reports dead is judged dead
    /// here too (`replica/report.rs`): the first judge's verdict reaches the others within a
    /// round trip, and a report alone never kills a member heard from lately.
    pub liveness_confirm_phi: f64,
    /// Prior mean heartbeat interval; must track `gossip_interval_ms` (the default 5 s of
    /// chitchat would make detection take 4 to 10 s).
    pub initial_interval_ms: u64,
    /// How long dead members stay listed (as not alive) before chitchat forgets them.
    pub dead_node_grace_ms: u64,
    /// A node listens this long before it may count as caught up (and so publish).
    pub join_grace_ms: u64,
    /// While a lower-id member has been up for less than this and has not caught up, higher
    /// members wait for it instead of electing themselves (see `choose_publisher_after_startup`).
    pub startup_patience_ms: u64,
    /// A control loop that stalled this long (the process was frozen or starved) no longer
    /// trusts its view: the node goes back to catching up, so a resumed node does not act as
    /// publisher on a view that says everyone else died while it slept.
    pub stall_reset_ms: u64,
    /// On graceful leave, how long the `leaving` mark is gossiped before the node stops.
    pub leave_linger_ms: u64,
    /// How often the control loop re-reads membership and re-runs the decisions.
    pub control_tick_ms: u64,
    /// QUIC idle timeout: a connection without traffic for this long is dropped (and re-dialed
    /// on demand), so dead peers do not hold state. At 100 nodes a pair may not talk for several
    /// seconds, and 5 s cost a third of the traffic in re-handshakes (docs/benchmarks.md).
    pub idle_timeout_ms: u64,
    /// Give up a document fetch from one holder after this long and try the next one.
    pub fetch_timeout_ms: u64,
    /// A holder must answer a fetch request (the header, before the document) within this
    /// long, or the connection is dropped as dead and the next holder is tried. A peer that
    /// restarted while this node was cut off leaves a cached connection that nothing answers.
    pub fetch_answer_timeout_ms: u64,
    /// A fetch asks the next source as well when none has begun to send the document this long
    /// after the last one was asked (a hedged fetch, `hedge.rs`): a parent in the spread tree
    /// slow to get its own copy, or a holder silent after a network cut, costs this, not
    /// `fetch_answer_timeout_ms`.
    pub fetch_hedge_ms: u64,
    /// Upper bound on the document's encoded size, checked on publish and on fetch.
    pub max_document_bytes: u64,
    /// Upper bound on one gossip message (chitchat's own cap is 65,507 bytes).
    pub max_gossip_message_bytes: usize,
    /// Bounded queue of outgoing gossip messages per peer: when full, messages are dropped
    /// (gossip is idempotent and repeats every round).
    pub peer_queue_len: usize,
    /// At most this many peers get a send queue / connection slot.
    pub max_peers: usize,
    /// At most this many incoming TLS handshakes in flight (after QUIC address validation);
    /// more are refused.
    pub max_concurrent_handshakes: usize,
    /// Of `max_concurrent_handshakes`, this many only for known sources (IPs that completed an
    /// authenticated handshake before), so members can reconnect during a handshake flood.
    pub handshake_reserve_for_known: usize,
    /// At most this many handshakes in flight from one unknown source IP.
    pub handshakes_per_source: usize,
    /// Handshakes one unknown source IP may start per second (also the burst).
    pub handshake_rate_per_source_per_s: f64,
    /// An incoming handshake that has not finished this long after address validation is dropped
    /// and its slot freed (a healthy one takes a few milliseconds).
    pub handshake_timeout_ms: u64,
    /// A node whose seeds resolve but never answer may still become ready and publish on its
    /// own, after `startup_patience_ms` (a configured single-node cluster). Off by default: such
    /// a node waits until it hears the cluster (see `election::must_hear_cluster`).
    pub single_node: bool,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            gossip_interval_ms: 100,
            phi_threshold: 8.0,
            liveness_phi_threshold: 4.5,
            liveness_confirm_phi: 3.0,
            initial_interval_ms: 100,
            dead_node_grace_ms: 3_600_000,
            join_grace_ms: 600,
            startup_patience_ms: 5_000,
            stall_reset_ms: 400,
            leave_linger_ms: 300,
            control_tick_ms: 25,
            idle_timeout_ms: 30_000,
            fetch_timeout_ms: 10_000,
            fetch_answer_timeout_ms: 2_000,
            fetch_hedge_ms: 300,
            max_document_bytes: 64 << 20,
            max_gossip_message_bytes: 128 << 10,
            peer_queue_len: 64,
            max_peers: 4_096,
            max_concurrent_handshakes: 64,
            handshake_reserve_for_known: 16,
            handshakes_per_source: 4,
            handshake_rate_per_source_per_s: 20.0,
            handshake_timeout_ms: 1_500,
            single_node: false,
        }
    }
}

impl Timing {
    pub(crate) fn validate(&self) -> Result<(), crate::MeshError> {
        let bad = |field: &'static str, detail: &str| {
            Err(crate::MeshError::Config {
                field,
                detail: detail.to_string(),
            })
        };
        if self.gossip_interval_ms == 0 {
            return bad("timing.gossip_interval_ms", "must be > 0");
        }
        if self.initial_interval_ms == 0 {
            return bad("timing.initial_interval_ms", "must be > 0");
        }
        if !(self.phi_threshold.is_finite() && self.phi_threshold > 0.0) {
            return bad("timing.phi_threshold", "must be a positive number");
        }
        if !(self.liveness_phi_threshold.is_finite() && self.liveness_phi_threshold > 0.0) {
            return bad("timing.liveness_phi_threshold", "must be a positive number");
        }
        if !(self.liveness_confirm_phi.is_finite()
            && self.liveness_confirm_phi > 0.0
            && self.liveness_confirm_phi <= self.liveness_phi_threshold)
        {
            return bad(
                "timing.liveness_confirm_phi",
                "must be a positive number no larger than timing.liveness_phi_threshold",
            );
        }
        if self.control_tick_ms == 0 {
            return bad("timing.control_tick_ms", "must be > 0");
        }
        if self.fetch_answer_timeout_ms == 0 || self.fetch_answer_timeout_ms > self.fetch_timeout_ms
        {
            return bad(
                "timing.fetch_answer_timeout_ms",
                "must be > 0 and at most timing.fetch_timeout_ms",
            );
        }
        if self.fetch_hedge_ms == 0 || self.fetch_hedge_ms > self.fetch_answer_timeout_ms {
            return bad(
                "timing.fetch_hedge_ms",
                "must be > 0 and at most timing.fetch_answer_timeout_ms",
            );
        }
        if self.idle_timeout_ms < 100 {
            return bad("timing.idle_timeout_ms", "must be >= 100");
        }
        if self.peer_queue_len == 0 || self.max_peers == 0 || self.max_concurrent_handshakes == 0 {
            return bad(
                "timing.peer_queue_len/max_peers/max_concurrent_handshakes",
                "must be > 0",
            );
        }
        if self.handshake_reserve_for_known >= self.max_concurrent_handshakes
            || self.handshakes_per_source == 0
        {
            return bad(
                "timing.handshake_reserve_for_known/handshakes_per_source",
                "the reserve must be below max_concurrent_handshakes, the per-source cap > 0",
            );
        }
        if !(self.handshake_rate_per_source_per_s.is_finite()
            && self.handshake_rate_per_source_per_s > 0.0)
        {
            return bad(
                "timing.handshake_rate_per_source_per_s",
                "must be a positive number",
            );
        }
        if !(100..=60_000).contains(&self.handshake_timeout_ms) {
            return bad("timing.handshake_timeout_ms", "must be 100 to 60000");
        }
        if self.max_gossip_message_bytes < 1_500 {
            return bad("timing.max_gossip_message_bytes", "must be >= 1500");
        }
        Ok(())
    }
}
