//! The admin HTTP API (JSON): cluster view, table, dataplane read-back, probes, metrics.
//!
//! It runs on a thread and runtime of its own so it keeps answering while the main runtime
//! is busy. Every error becomes an HTTP response in one place, [`AdminError`].

use crate::desired::desired_state;
use crate::health::HealthHandle;
use crate::metrics::NodeMetrics;
use crate::reconcile::{ReconcileStatus, SharedProgrammer};
use crate::source::SourceStatus;
use crate::status::{ClusterStatus, VersionRef};
use crate::table::RuleTable;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde::Serialize;
use shoal_dataplane::{plan, ObservedService};
use shoal_gossip::Mesh;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct AdminState {
    pub mesh: Mesh<RuleTable>,
    pub programmer: SharedProgrammer,
    pub health: HealthHandle,
    pub source: SourceStatus,
    pub reconcile: ReconcileStatus,
    pub metrics: NodeMetrics,
    pub registry: Arc<Registry>,
    pub announce: crate::announce::AnnounceHandle,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no rule table has been published yet")]
    NoHead,
    #[error("dataplane: {0}")]
    Dataplane(#[from] shoal_dataplane::DataplaneError),
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match self {
            AdminError::NoHead => StatusCode::NOT_FOUND,
            AdminError::Dataplane(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/v1/cluster", get(cluster))
        .route("/v1/table", get(table))
        .route("/v1/dataplane", get(dataplane))
        .route("/v1/node", get(node))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Binds now (so a taken port fails start-up) and serves on a thread of its own until `cancel`.
pub fn spawn(
    addr: SocketAddr,
    state: AdminState,
    cancel: CancellationToken,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("cannot bind the admin API on {addr}: {e}"))?;
    listener.set_nonblocking(true)?;
    let handle = std::thread::Builder::new()
        .name("shoal-admin".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "admin runtime failed to start");
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "admin listener failed");
                        return;
                    }
                };
                let served = axum::serve(listener, router(state))
                    .with_graceful_shutdown(async move { cancel.cancelled().await })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "admin API stopped");
                }
            });
        })?;
    Ok(handle)
}

async fn cluster(State(s): State<AdminState>) -> Json<ClusterStatus> {
    let health = serde_json::to_value(s.health.report()).unwrap_or_default();
    let mut status = ClusterStatus::from_view(&s.mesh.view(), health);
    let mut reports = crate::announce::reports(&s.mesh, &s.announce);
    for m in &mut status.members {
        m.announce = reports.remove(&m.id);
    }
    Json(status)
}

#[derive(Serialize)]
struct TableResponse {
    version: VersionRef,
    digest: String,
    size_bytes: u64,
    table: RuleTable,
}

async fn table(State(s): State<AdminState>) -> Result<Json<TableResponse>, AdminError> {
    let head = s.mesh.current().ok_or(AdminError::NoHead)?;
    Ok(Json(TableResponse {
        version: (&head.version).into(),
        digest: head.digest.clone(),
        size_bytes: head.size_bytes,
        table: head.doc.clone(),
    }))
}

#[derive(Serialize)]
struct DataplaneResponse {
    kind: &'static str,
    /// The table version this node's dataplane was last brought to (its applied version).
    version: Option<VersionRef>,
    /// The newest version this node adopted, which the dataplane is being brought to.
    head: Option<VersionRef>,
    /// True when what the dataplane holds equals the head's table with health applied.
    matches_table: bool,
    /// Operations that would bring the dataplane to the table (empty when it matches).
    pending_ops: Vec<shoal_dataplane::Op>,
    vips: Vec<IpAddr>,
    services: Vec<ObservedService>,
}

async fn dataplane(State(s): State<AdminState>) -> Result<Json<DataplaneResponse>, AdminError> {
    let actual = s.programmer.read().await?;
    let head = s.mesh.current();
    let verdicts = s.health.verdicts().borrow().clone();
    let desired = match &head {
        Some(h) => desired_state(&h.doc, &verdicts),
        None => desired_state(&RuleTable::default(), &verdicts),
    };
    let pending_ops = plan(&desired, &actual);
    Ok(Json(DataplaneResponse {
        kind: s.programmer.kind(),
        version: s.reconcile.get().applied,
        head: head.as_ref().map(|h| (&h.version).into()),
        matches_table: pending_ops.is_empty(),
        pending_ops,
        vips: actual.vips.iter().copied().collect(),
        services: actual.services,
    }))
}

#[derive(Serialize)]
struct NodeResponse {
    id: String,
    role: &'static str,
    dataplane: &'static str,
    source: crate::source::SourceState,
    reconcile: crate::reconcile::ReconcileState,
}

async fn node(State(s): State<AdminState>) -> Json<NodeResponse> {
    Json(NodeResponse {
        id: s.mesh.node_id().to_string(),
        role: crate::status::role_name(&s.mesh.role()),
        dataplane: s.programmer.kind(),
        source: s.source.get(),
        reconcile: s.reconcile.get(),
    })
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let applied = s.reconcile.get().applied;
    let head = s.mesh.current().map(|h| VersionRef::from(&h.version));
    match (&head, &applied) {
        (Some(h), Some(a)) if h == a => {
            (StatusCode::OK, format!("ready: applied {h}\n")).into_response()
        }
        (None, _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no rule table yet\n".to_string(),
        )
            .into_response(),
        (Some(h), a) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: head is {h}, applied {}\n",
                a.as_ref()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "nothing".into())
            ),
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    refresh_gauges(&s);
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

fn refresh_gauges(s: &AdminState) {
    let view = s.mesh.view();
    let alive = view.members.iter().filter(|m| m.alive).count();
    s.metrics.members_alive.set(alive as i64);
    s.metrics
        .members_dead
        .set((view.members.len() - alive) as i64);
    s.metrics
        .is_publisher
        .set(i64::from(view.publisher.as_ref() == Some(&view.self_id)));
    if let Some(head) = s.mesh.current() {
        s.metrics.head_epoch.set(head.version.epoch as i64);
        s.metrics.head_seq.set(head.version.seq as i64);
        let applied = s.reconcile.get().applied;
        s.metrics
            .applied_is_head
            .set(i64::from(applied == Some((&head.version).into())));
    }
}
