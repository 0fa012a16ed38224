//! The announce metrics: `shoal_announce_vips`, `shoal_bgp_session_up{peer}`,
//! `shoal_announce_changes_total`, `shoal_bird_up`, `shoal_bird_restarts_total`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: String,
}

#[derive(Clone, Default)]
pub struct AnnounceMetrics {
    pub vips: Gauge,
    pub bgp_session_up: Family<PeerLabel, Gauge>,
    pub changes: Counter,
    /// BGP: 1 while BIRD answered the last poll of its control socket.
    pub bird_up: Gauge,
    /// BGP: times shoal restarted BIRD (it exited, or it stopped answering its control socket).
    pub bird_restarts: Counter,
    /// Times the watchdog (`shoal announce-guard`) exited and shoal started it again.
    pub watchdog_restarts: Counter,
}

impl AnnounceMetrics {
    /// `bgp`: the node announces by BGP. BIRD's metrics exist only then (a `shoal_bird_up 0`
    /// on a node without BIRD read as "BIRD is down").
    pub fn register(&self, r: &mut Registry, bgp: bool) {
        r.register(
            "shoal_announce_vips",
            "VIPs this node announces now (BGP) or owns (L2)",
            self.vips.clone(),
        );
        r.register(
            "shoal_bgp_session_up",
            "1 while the BGP session to this peer is Established (as BIRD reports it)",
            self.bgp_session_up.clone(),
        );
        r.register(
            "shoal_announce_changes",
            "VIPs announced or withdrawn by this node, counted one per VIP and change",
            self.changes.clone(),
        );
        r.register(
            "shoal_announce_watchdog_restarts",
            "Times the announce watchdog (the child that withdraws when shoal freezes or dies) \
             exited and shoal started it again",
            self.watchdog_restarts.clone(),
        );
        if !bgp {
            return;
        }
        r.register(
            "shoal_bird_up",
            "BGP mode: 1 while BIRD answered the last poll of its control socket (every second)",
            self.bird_up.clone(),
        );
        r.register(
            "shoal_bird_restarts",
            "BGP mode: times shoal restarted BIRD (it exited, or stopped answering its control socket)",
            self.bird_restarts.clone(),
        );
    }

    pub fn session_up(&self, peer: &str, up: bool) {
        self.bgp_session_up
            .get_or_create(&PeerLabel {
                peer: peer.to_string(),
            })
            .set(i64::from(up));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_documented() {
        let m = AnnounceMetrics::default();
        let mut r = Registry::default();
        m.register(&mut r, true);
        m.session_up("peer1", true);
        m.changes.inc();
        m.bird_restarts.inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert!(text.contains("shoal_announce_vips 0"), "{text}");
        assert!(
            text.contains("shoal_bgp_session_up{peer=\"peer1\"} 1"),
            "{text}"
        );
        assert!(text.contains("shoal_announce_changes_total 1"), "{text}");
        assert!(text.contains("shoal_bird_up 0"), "{text}");
        assert!(text.contains("shoal_bird_restarts_total 1"), "{text}");

        let mut without_bgp = Registry::default();
        AnnounceMetrics::default().register(&mut without_bgp, false);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &without_bgp).unwrap();
        assert!(text.contains("shoal_announce_vips 0"), "{text}");
        assert!(!text.contains("shoal_bird"), "{text}");
    }
}
