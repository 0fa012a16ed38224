//! Prometheus metrics of the node (everything prefixed `shoal_`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone)]
pub struct NodeMetrics {
    pub reconciles: Family<ResultLabel, Counter>,
    pub reconcile_ops: Family<OpLabel, Counter>,
    pub reconcile_seconds: Histogram,
    pub is_publisher: Gauge,
    pub members_alive: Gauge,
    pub members_dead: Gauge,
    pub members_left: Gauge,
    pub head_epoch: Gauge,
    pub head_seq: Gauge,
    pub applied_epoch: Gauge,
    pub applied_seq: Gauge,
    pub applied_is_head: Gauge,
    /// 0 while the source-range filter cannot be programmed (services with source ranges are
    /// then withheld), else 1.
    pub source_filter_ok: Gauge,
    /// Services left out of the dataplane because their source-range filter failed.
    pub services_withheld: Gauge,
    /// Services left out of the dataplane because the kernel refused them.
    pub services_refused: Gauge,
    pub publishes: Counter,
    pub takeovers: Counter,
    /// Admin API requests and connections turned away, by reason (`unauthorized`,
    /// `connection_cap`, `source_cap`, `header_timeout`, `lifetime`, `evicted_idle`).
    pub admin_refused: Family<ReasonLabel, Counter>,
    /// Attacks on the mesh (handshakes, identities, duplicate ids).
    pub mesh: crate::mesh_metrics::MeshMetrics,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeMetrics {
    pub fn new() -> Self {
        NodeMetrics {
            reconciles: Family::default(),
            reconcile_ops: Family::default(),
            reconcile_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            is_publisher: Gauge::default(),
            members_alive: Gauge::default(),
            members_dead: Gauge::default(),
            members_left: Gauge::default(),
            head_epoch: Gauge::default(),
            head_seq: Gauge::default(),
            applied_epoch: Gauge::default(),
            applied_seq: Gauge::default(),
            applied_is_head: Gauge::default(),
            source_filter_ok: {
                let g = Gauge::default();
                g.set(1);
                g
            },
            services_withheld: Gauge::default(),
            services_refused: Gauge::default(),
            publishes: Counter::default(),
            takeovers: Counter::default(),
            admin_refused: Family::default(),
            mesh: Default::default(),
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        let r = registry;
        // `shoal_build_info{version="...",commit="..."} 1`: which build each replica runs (a
        // rolling upgrade); the version alone is the same for every build between releases.
        r.register(
            "shoal_build",
            "The shoal build this node runs",
            prometheus_client::metrics::info::Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", env!("SHOAL_COMMIT")),
            ]),
        );
        r.register(
            "shoal_reconciles",
            "Reconcile passes by result",
            self.reconciles.clone(),
        );
        r.register(
            "shoal_reconcile_ops",
            "Dataplane operations applied by kind",
            self.reconcile_ops.clone(),
        );
        r.register(
            "shoal_reconcile_duration_seconds",
            "Time of one reconcile pass (read, plan, apply)",
            self.reconcile_seconds.clone(),
        );
        r.register(
            "shoal_is_publisher",
            "1 while this node is the publisher",
            self.is_publisher.clone(),
        );
        r.register(
            "shoal_members_alive",
            "Members this node sees alive",
            self.members_alive.clone(),
        );
        r.register(
            "shoal_members_dead",
            "Members this node sees dead (not those that left on purpose)",
            self.members_dead.clone(),
        );
        r.register(
            "shoal_members_left",
            "Members that left on purpose (SIGTERM, a scale-down), listed until forgotten",
            self.members_left.clone(),
        );
        r.register(
            "shoal_head_epoch",
            "Epoch of the head",
            self.head_epoch.clone(),
        );
        r.register(
            "shoal_head_seq",
            "Sequence of the head",
            self.head_seq.clone(),
        );
        r.register(
            "shoal_applied_epoch",
            "Epoch of the version this node's dataplane holds",
            self.applied_epoch.clone(),
        );
        r.register(
            "shoal_applied_seq",
            "Sequence of the version this node's dataplane holds",
            self.applied_seq.clone(),
        );
        r.register(
            "shoal_applied_is_head",
            "1 when this node has applied the head",
            self.applied_is_head.clone(),
        );
        r.register(
            "shoal_source_filter_ok",
            "0 while the source-range filter cannot be programmed (services with source ranges withheld)",
            self.source_filter_ok.clone(),
        );
        r.register(
            "shoal_services_withheld",
            "Services not programmed because their source-range filter failed",
            self.services_withheld.clone(),
        );
        r.register(
            "shoal_services_refused",
            "Services not programmed because the kernel refused them (a scheduler it lacks); tried again every minute and when the table changes them",
            self.services_refused.clone(),
        );
        r.register(
            "shoal_publishes",
            "Versions this node stamped as publisher",
            self.publishes.clone(),
        );
        r.register(
            "shoal_takeovers",
            "Times this node became the publisher",
            self.takeovers.clone(),
        );
        r.register(
            "shoal_admin_refused",
            "Admin API requests and connections turned away, by reason",
            self.admin_refused.clone(),
        );
        self.mesh.register(r);
    }
}
