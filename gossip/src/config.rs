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
    /// Phi accrual threshold. In chitchat 0.11 phi = time since last heartbeat / mean interval.
    pub phi_threshold: f64,
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

/// A gap between two heartbeats longer than this many gossip rounds is an outage (a pause, a
/// cut, a freeze), not a sample of the heartbeat interval: see [`failure_detector_config`].
pub(crate) const OUTAGE_ROUNDS: u32 = 10;

/// Chitchat's failure detector for this timing.
///
/// Chitchat 0.11 judges a member dead when the time since its heartbeat last advanced exceeds
/// `phi_threshold` times the mean of its recent heartbeat intervals. On death it forgets the
/// intervals but not the last heartbeat's time, so the first interval after the member comes
/// back is the whole outage; the window is then nearly empty (a prior of 5 samples at
/// `initial_interval`), and any outage up to `max_interval` dominates the mean for the next
/// seconds. With `max_interval` at 2 s the chaos soak saw a member that came back from a
/// 1.4 s cut judged dead 1.1 s after it died again, twice the usual time, and publisher
/// takeovers over 1 s. Gaps of more than [`OUTAGE_ROUNDS`] rounds are therefore left out
/// (shorter ones still count: a member that is slow but alive should raise the mean).
pub(crate) fn failure_detector_config(timing: &Timing) -> chitchat::FailureDetectorConfig {
    let gossip_interval = std::time::Duration::from_millis(timing.gossip_interval_ms);
    chitchat::FailureDetectorConfig {
        phi_threshold: timing.phi_threshold,
        sampling_window_size: 1_000,
        max_interval: gossip_interval * OUTAGE_ROUNDS,
        initial_interval: std::time::Duration::from_millis(timing.initial_interval_ms),
        dead_node_grace_period: std::time::Duration::from_millis(timing.dead_node_grace_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chitchat 0.11.2's sampling window (failure_detector.rs), in milliseconds: intervals
    /// above `max_interval` are dropped, the mean is smoothed toward the prior with weight 5,
    /// and a death clears the intervals but keeps the last heartbeat's time.
    struct Window {
        intervals: Vec<f64>,
        last: f64,
        max_interval: f64,
        prior: f64,
    }

    impl Window {
        fn beat(&mut self, at: f64) {
            let gap = at - self.last;
            if gap <= self.max_interval {
                self.intervals.push(gap);
            }
            self.last = at;
        }
        fn mean(&self) -> f64 {
            (self.intervals.iter().sum::<f64>() + 5.0 * self.prior)
                / (self.intervals.len() as f64 + 5.0)
        }
        /// When the member is judged dead if it stops beating now (checked every round).
        fn judged_dead_after(&self, phi: f64, round: f64) -> f64 {
            let mut t = self.last;
            while (t - self.last) / self.mean() <= phi {
                t += round;
            }
            t - self.last
        }
    }

    /// Beats every `every` ms for `ms`, a cut of `outage` ms (judged dead, intervals cleared),
    /// beats again for `after` ms, then dies: how long until it is judged dead.
    fn detection_after_outage(cfg: &chitchat::FailureDetectorConfig, outage: f64) -> f64 {
        let every = 40.0;
        let mut w = Window {
            intervals: Vec::new(),
            last: 0.0,
            max_interval: cfg.max_interval.as_secs_f64() * 1e3,
            prior: cfg.initial_interval.as_secs_f64() * 1e3,
        };
        let mut t = 0.0;
        for _ in 0..500 {
            t += every;
            w.beat(t);
        }
        w.intervals.clear();
        t += outage;
        for _ in 0..25 {
            w.beat(t);
            t += every;
        }
        w.judged_dead_after(cfg.phi_threshold, 100.0)
    }

    #[test]
    fn an_outage_does_not_slow_the_next_detection() {
        let timing = Timing::default();
        let cfg = failure_detector_config(&timing);
        let steady = detection_after_outage(&cfg, 0.0);
        for outage in [1_100.0, 1_400.0, 1_900.0, 4_000.0] {
            let after = detection_after_outage(&cfg, outage);
            assert!(
                after <= steady + 100.0,
                "after a {outage} ms outage a death takes {after} ms to judge, steady {steady} ms"
            );
        }
        // The old setting (outages up to 2 s averaged in) nearly doubled it: the model bites.
        let old = chitchat::FailureDetectorConfig {
            max_interval: std::time::Duration::from_secs(2),
            ..cfg
        };
        assert!(detection_after_outage(&old, 1_400.0) > 1.5 * steady);
    }
}
