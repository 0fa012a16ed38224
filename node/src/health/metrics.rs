//! Prometheus metrics of the health runner: probes sent, verdict changes, probe latency,
//! probes waiting for room.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabel {
    pub verdict: &'static str,
}

#[derive(Clone)]
pub struct HealthMetrics {
    pub probes: Family<ProbeLabels, Counter>,
    /// Health-checked backends by this node's verdict, at the last pass.
    pub backends: Family<VerdictLabel, Gauge>,
    pub verdict_changes: Counter,
    pub probe_duration_seconds: Histogram,
    pub probes_waiting: Gauge,
}

impl HealthMetrics {
    /// Creates the metrics and registers them (names get the `_total` suffix for counters).
    pub fn register(registry: &mut Registry) -> Self {
        let m = HealthMetrics {
            probes: Family::default(),
            backends: Family::default(),
            verdict_changes: Counter::default(),
            // 0.25 ms .. 4 s: loopback connects up to probe timeouts.
            probe_duration_seconds: Histogram::new(exponential_buckets(0.000_25, 2.0, 15)),
            probes_waiting: Gauge::default(),
        };
        registry.register(
            "shoal_health_probes",
            "Health probes finished by this node, by result",
            m.probes.clone(),
        );
        registry.register(
            "shoal_health_backends",
            "Health-checked backends by this node's verdict (up, down) at its last pass",
            m.backends.clone(),
        );
        registry.register(
            "shoal_health_verdict_changes",
            "Backends whose shared verdict changed (up to down or back) on this node",
            m.verdict_changes.clone(),
        );
        registry.register(
            "shoal_health_probe_duration_seconds",
            "Time from starting a health probe to its result",
            m.probe_duration_seconds.clone(),
        );
        registry.register(
            "shoal_health_probes_waiting",
            "Health probes due but not started at the last pass: this node's probes in flight \
             are at their cap (a quarter of its open-file limit, 64-4096), so checks run \
             later than their interval",
            m.probes_waiting.clone(),
        );
        m
    }

    /// Sets `shoal_health_backends` from one pass's counts.
    pub fn set_backends(&self, up: usize, down: usize) {
        for (verdict, n) in [("up", up), ("down", down)] {
            self.backends
                .get_or_create(&VerdictLabel { verdict })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_have_the_shoal_prefix() {
        let mut registry = Registry::default();
        let m = HealthMetrics::register(&mut registry);
        m.probes
            .get_or_create(&ProbeLabels {
                result: "ok".into(),
            })
            .inc();
        m.verdict_changes.inc();
        m.probe_duration_seconds.observe(0.001);
        m.set_backends(7, 2);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("shoal_health_probes_total{result=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("shoal_health_backends{verdict=\"down\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("shoal_health_backends{verdict=\"up\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("shoal_health_verdict_changes_total 1"),
            "{text}"
        );
        assert!(
            text.contains("shoal_health_probe_duration_seconds_count 1"),
            "{text}"
        );
    }
}
