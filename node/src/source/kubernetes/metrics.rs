//! Prometheus metrics of the Kubernetes source (publisher only; zero elsewhere).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub kind: &'static str,
    /// `ok`, `conflict` (409: stale copy, retried), `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// `Normal` or `Warning`.
    pub r#type: &'static str,
    pub reason: &'static str,
    /// `ok` or `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    pub pool: String,
}

#[derive(Clone, Default)]
pub struct KubernetesMetrics {
    pub watch_errors: Family<KindLabel, Counter>,
    pub relists: Family<KindLabel, Counter>,
    pub status_writes: Family<WriteLabels, Counter>,
    pub events: Family<EventLabels, Counter>,
    pub pool_used: Family<PoolLabel, Gauge>,
    pub pool_free: Family<PoolLabel, Gauge>,
    pub source_restarts: Counter,
    pub stand_downs: Counter,
}

impl KubernetesMetrics {
    /// Creates the metrics and registers them (counters get the `_total` suffix).
    pub fn register(registry: &mut Registry) -> Self {
        let m = KubernetesMetrics::default();
        let r = registry;
        r.register(
            "shoal_kubernetes_watch_errors",
            "Watch or list errors by kind; each one restarts that watch after a backoff",
            m.watch_errors.clone(),
        );
        r.register(
            "shoal_kubernetes_relists",
            "Complete lists by kind (start, expired resourceVersion, restart)",
            m.relists.clone(),
        );
        r.register(
            "shoal_kubernetes_status_writes",
            "Status writes by kind and result",
            m.status_writes.clone(),
        );
        r.register(
            "shoal_kubernetes_events",
            "Events recorded by type, reason and result",
            m.events.clone(),
        );
        r.register(
            "shoal_kubernetes_pool_used_addresses",
            "Addresses of a ShoalPool held by Services",
            m.pool_used.clone(),
        );
        r.register(
            "shoal_kubernetes_pool_free_addresses",
            "Usable addresses of a ShoalPool not held (saturates at 2^63-1)",
            m.pool_free.clone(),
        );
        r.register(
            "shoal_kubernetes_source_restarts",
            "Times the source stopped with an error and was started again after a backoff",
            m.source_restarts.clone(),
        );
        r.register(
            "shoal_kubernetes_stand_downs",
            "Times this node gave up the publisher role because it could not reach the API server",
            m.stand_downs.clone(),
        );
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_have_the_shoal_prefix() {
        let mut registry = Registry::default();
        let m = KubernetesMetrics::register(&mut registry);
        m.relists
            .get_or_create(&KindLabel { kind: "Service" })
            .inc();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains("shoal_kubernetes_relists_total{kind=\"Service\"} 1"),
            "{out}"
        );
        for line in out.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            assert!(line.starts_with("shoal_"), "{line}");
        }
    }
}
