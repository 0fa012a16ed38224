//! The admin HTTP API (JSON): cluster view, table, dataplane read-back, probes, metrics.
//!
//! It runs on a thread and runtime of its own so it keeps answering while the main runtime
//! is busy. Every error becomes an HTTP response in one place, [`AdminError`].
//!
//! Hardening: with a token (`--admin-token-file`) every request needs
//! `Authorization: Bearer <token>`, while `/healthz`, `/readyz` and `/metrics` stay open to
//! probes and Prometheus. Each connection must send its request headers within
//! [`HEADER_TIMEOUT`] and lives at most [`CONNECTION_LIFETIME`]; at most
//! [`MAX_CONNECTIONS`] are served at once, at most [`MAX_CONNECTIONS_PER_SOURCE`] of them from
//! one address; when all are taken a newcomer takes an idle connection's place
//! (`connections.rs` says which), or is closed at accept. Refusals are
//! counted in `shoal_admin_refused_total{reason}` and logged at WARN, rate-limited.

use crate::health::HealthHandle;
use crate::log_gate::LogGate;
use crate::metrics::NodeMetrics;
use crate::metrics::ReasonLabel;
use crate::reconcile::{ReconcileStatus, SharedProgrammer};
use crate::source::SourceStatus;
use crate::status::VersionRef;
use crate::table::RuleTable;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde::Serialize;
use sha2::{Digest, Sha256};
use shoal_gossip::Mesh;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

mod cluster;
mod connections;
mod dataplane;
mod readiness;
mod snapshots;
pub use connections::MAX_CONNECTIONS_PER_SOURCE;
pub use dataplane::snapshots as dataplane_snapshots;
pub(crate) use dataplane::{DataplaneTotals, DrainingEntry};
use readiness::{announce_ready, dataplane_ready, publisher_ready, readiness};

/// A client must send a request's headers within this (slowloris defence).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// No connection lives longer than this, idle or not; clients reconnect.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// A connection past its lifetime that is still writing a response gets this long to finish
/// (an idle one is closed at once): a `/v1/cluster` of tens of MB at 150,000 checked backends,
/// started near the end of the lifetime, was cut mid-body after 5 s, with status 200 already
/// sent (a probe). A reader slow on purpose holds a connection at most this much longer.
pub const RESPONSE_GRACE: Duration = Duration::from_secs(60);
/// Connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 64;
const WARN_EVERY: Duration = Duration::from_secs(10);

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
    /// `Some`: `/v1/*` needs `Authorization: Bearer <token>` (compared as SHA-256 digests, so
    /// the comparison's time does not depend on how much of a guess is right).
    pub token: Option<Arc<TokenCheck>>,
    /// The whole dataplane reads `/v1/dataplane` keeps for the pages after the first.
    pub snapshots: Arc<Mutex<dataplane::DataplaneSnapshots>>,
}

/// The admin token, kept as its digest, and the rate limit of the warnings about bad ones.
pub struct TokenCheck {
    digest: Mutex<[u8; 32]>,
    warn: Mutex<LogGate>,
    /// The file it was read from, read again every [`TOKEN_RELOAD_EVERY`]: a rotated token (a
    /// Kubernetes Secret updated in place) was refused until a restart (an operator's probe).
    file: Option<std::path::PathBuf>,
}

/// How often the token file is read again.
pub const TOKEN_RELOAD_EVERY: Duration = Duration::from_secs(5);

impl TokenCheck {
    pub fn new(token: &str) -> Self {
        TokenCheck {
            digest: Mutex::new(Sha256::digest(token.as_bytes()).into()),
            warn: Mutex::new(LogGate::new(WARN_EVERY)),
            file: None,
        }
    }

    /// A token read from `file`, which [`serve`] reads again every [`TOKEN_RELOAD_EVERY`].
    pub fn from_file(token: &str, file: std::path::PathBuf) -> Self {
        TokenCheck {
            file: Some(file),
            ..TokenCheck::new(token)
        }
    }

    /// Takes `token` from now on; whether it differs from the one before.
    fn replace(&self, token: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut held = self.digest.lock().unwrap_or_else(|p| p.into_inner());
        let changed = *held != digest;
        *held = digest;
        changed
    }

    /// Whether an `Authorization` header value carries the token (the scheme's name is
    /// case-insensitive, RFC 9110 section 11.1).
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(given) = authorization.and_then(|v| {
            let (scheme, token) = v.split_at_checked(b"Bearer ".len())?;
            scheme.eq_ignore_ascii_case(b"Bearer ").then_some(token)
        }) else {
            return false;
        };
        let given: [u8; 32] = Sha256::digest(given).into();
        given == *self.digest.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reads the token file again every [`TOKEN_RELOAD_EVERY`]: a new token is taken at once; a
/// file that cannot be read or holds no valid token keeps the token in use, with a WARN when
/// that problem first shows (and an INFO when it is gone).
async fn reload_token(check: Arc<TokenCheck>, cancel: CancellationToken) {
    let Some(file) = check.file.clone() else {
        return;
    };
    let mut problem: Option<String> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(TOKEN_RELOAD_EVERY) => {}
        }
        let read = {
            let file = file.clone();
            tokio::task::spawn_blocking(move || crate::config::read_token(&file)).await
        };
        match read {
            Ok(Ok(token)) => {
                if check.replace(&token) {
                    tracing::info!(file = %file.display(), "admin token changed in its file: the new one is required from now on");
                } else if problem.is_some() {
                    tracing::info!(file = %file.display(), "admin token file readable again; token unchanged");
                }
                problem = None;
            }
            Ok(Err(e)) => {
                let e = e.to_string();
                if problem.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, "admin token file: keeping the token in use");
                }
                problem = Some(e);
            }
            Err(e) => tracing::warn!(error = %e, "admin token reader did not finish"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no rule table has been published yet")]
    NoHead,
    /// The cluster has a head this node does not hold (catching up, or refused as a duplicate
    /// id, which never fetches): "no table yet" would be false.
    #[error("this node does not hold the head {head} ({why}); ask another node")]
    NotHeld { head: VersionRef, why: String },
    #[error("dataplane: {0}")]
    Dataplane(#[from] shoal_dataplane::DataplaneError),
    #[error("{0}")]
    BadQuery(String),
    #[error(
        "snapshot {id}: unknown or expired (a read is kept {ttl_s} s, the newest {kept} at \
         most); start again with `snapshot=new`"
    )]
    SnapshotGone { id: String, ttl_s: u64, kept: usize },
    #[error("no such endpoint: {0} (see docs/admin-api.md)")]
    NotFound(String),
    #[error("{0} is not served here: the admin API answers GET and HEAD")]
    MethodNotAllowed(Method),
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match self {
            AdminError::NoHead => StatusCode::NOT_FOUND,
            AdminError::NotHeld { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::Dataplane(_) => StatusCode::INTERNAL_SERVER_ERROR,
            AdminError::BadQuery(_) => StatusCode::BAD_REQUEST,
            AdminError::SnapshotGone { .. } => StatusCode::GONE,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
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
        .route("/v1/cluster", get(cluster::cluster))
        .route("/v1/table", get(table))
        .route("/v1/dataplane", get(dataplane::dataplane))
        .route("/v1/node", get(node))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // Errors are JSON everywhere, not only from the handlers (axum's own are empty).
        .fallback(|request: Request| async move {
            // Only GET and HEAD are served anywhere: a CONNECT (whose target has no path) or a
            // POST to an unknown path is a 405 like any other method, not a 404.
            let method = request.method();
            if method != Method::GET && method != Method::HEAD {
                let refused = AdminError::MethodNotAllowed(method.clone());
                return ([(header::ALLOW, "GET,HEAD")], refused).into_response();
            }
            AdminError::NotFound(request.uri().path().chars().take(200).collect()).into_response()
        })
        .method_not_allowed_fallback(|method: Method| async move {
            AdminError::MethodNotAllowed(method)
        })
        // Over every path, the fallback's too: with a token, which `/v1/*` paths exist is not
        // told to whoever has none (an unknown one was a 404 without the token).
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

/// The paths served without the token: probes and Prometheus.
const OPEN_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

async fn require_token(State(s): State<AdminState>, request: Request, next: Next) -> Response {
    let Some(check) = &s.token else {
        return next.run(request).await;
    };
    if OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if check.accepts(authorization) {
        return next.run(request).await;
    }
    s.metrics
        .admin_refused
        .get_or_create(&ReasonLabel {
            reason: "unauthorized",
        })
        .inc();
    let gate = check
        .warn
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .allow(Instant::now());
    if let Some(suppressed) = gate {
        tracing::warn!(
            path = %request.uri().path(),
            suppressed,
            "admin API request without a valid bearer token refused"
        );
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(serde_json::json!({ "error": "this endpoint needs Authorization: Bearer <token>" })),
    )
        .into_response()
}

/// What to warn about an admin API that answers on every address of the host without a token:
/// whoever reaches any of them reads the members, the rule table and the dataplane (the
/// manifests bind the pod IP; docs/admin-api.md, "Hardening").
pub fn exposure_warning(addr: SocketAddr, has_token: bool) -> Option<String> {
    (addr.ip().is_unspecified() && !has_token).then(|| {
        format!(
            "the admin API listens on {addr}, every address of this host, without \
             --admin-token-file: anyone who reaches it reads the cluster's members, rule table \
             and dataplane; bind it to the pod or host IP (or 127.0.0.1), or set a token"
        )
    })
}

/// Binds the admin address, before the node joins the mesh: a taken port must fail the start
/// before peers have seen the node (it used to join, then vanish).
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("cannot bind the admin API on {addr}: {e}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves on `listener` (from [`bind`]) on a thread of its own until `cancel`.
pub fn spawn(
    listener: std::net::TcpListener,
    state: AdminState,
    cancel: CancellationToken,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
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
                serve(listener, state, cancel).await;
            });
        })?;
    Ok(handle)
}

/// The accept loop: a connection cap, a header deadline and a lifetime for every connection.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    cancel: CancellationToken,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    tokio::spawn(dataplane::expire_snapshots(
        state.snapshots.clone(),
        cancel.clone(),
    ));
    if let Some(check) = &state.token {
        tokio::spawn(reload_token(check.clone(), cancel.clone()));
    }
    let app = router(state.clone());
    let mut cap_warn = LogGate::new(WARN_EVERY);
    let connections = connections::Connections::default();
    let mut source_warn = LogGate::new(WARN_EVERY);
    let refused = |reason: &'static str| {
        state
            .metrics
            .admin_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    };
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: do not spin.
                tracing::warn!(error = %e, "admin API accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match connections.admit(peer.ip(), Instant::now()) {
            Ok((slot, admitted)) => {
                if admitted == connections::Admitted::Evicted {
                    refused("evicted_idle");
                }
                slot
            }
            Err(why) => {
                let (reason, gate, max, what) = match why {
                    connections::Refused::SourceCap => (
                        "source_cap",
                        &mut source_warn,
                        MAX_CONNECTIONS_PER_SOURCE,
                        "admin API connections from one source at their cap; closing its new connections",
                    ),
                    connections::Refused::ConnectionCap => (
                        "connection_cap",
                        &mut cap_warn,
                        MAX_CONNECTIONS,
                        "admin API connection cap reached and no idle connection may make way; closing new connections",
                    ),
                };
                refused(reason);
                if let Some(suppressed) = gate.allow(Instant::now()) {
                    tracing::warn!(%peer, suppressed, max, "{what}");
                }
                drop(stream);
                continue;
            }
        };
        let service = counting_requests(app.clone(), slot.in_request.clone());
        let cancel = cancel.clone();
        let metrics = state.metrics.clone();
        tokio::spawn(async move {
            let evicted = slot.evict.clone();
            // Read below in this same poll (the admin runtime has one thread): from here on
            // the connection is idle only if no request came.
            slot.started
                .store(true, std::sync::atomic::Ordering::SeqCst);
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let lifetime = tokio::time::sleep(CONNECTION_LIFETIME);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = lifetime => {
                    metrics.admin_refused.get_or_create(&ReasonLabel { reason: "lifetime" }).inc();
                    conn.as_mut().graceful_shutdown();
                    // An idle connection closes at once and one still sending its request
                    // meets the header timeout: the grace is for a response being written.
                    tokio::time::timeout(RESPONSE_GRACE, conn.as_mut()).await.unwrap_or(Ok(()))
                }
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(HEADER_TIMEOUT, conn.as_mut()).await.unwrap_or(Ok(()))
                }
                // Idle when chosen (no request in progress): closed at once.
                _ = evicted.cancelled() => Ok(()),
            };
            if let Err(e) = result {
                if e.is_timeout() {
                    metrics
                        .admin_refused
                        .get_or_create(&ReasonLabel {
                            reason: "header_timeout",
                        })
                        .inc();
                }
                tracing::debug!(%peer, error = %e, "admin API connection ended");
            }
        });
        // Let the connection just spawned read its request before the next accept can choose
        // an idle connection to close (`connections.rs`).
        tokio::task::yield_now().await;
    }
}

/// The router as one connection's service, counting its requests in progress in `in_request`
/// (a connection with none is idle and may make way for a newcomer, `connections.rs`). A
/// request counts until its response's body is sent or dropped, not only until the handler
/// returns: a large table streaming to a slow reader is not idle.
fn counting_requests(
    app: Router,
    in_request: Arc<std::sync::atomic::AtomicUsize>,
) -> hyper_util::service::TowerToHyperService<
    impl tower::Service<
            axum::http::Request<hyper::body::Incoming>,
            Response = Response,
            Error = std::convert::Infallible,
            Future = impl Send,
        > + Clone,
> {
    use tower::ServiceExt;
    hyper_util::service::TowerToHyperService::new(tower::service_fn(
        move |request: axum::http::Request<hyper::body::Incoming>| {
            let busy = connections::InRequest::enter(&in_request);
            let app = app.clone();
            async move {
                use http_body_util::BodyExt;
                let response = app.oneshot(request).await?;
                Ok(response.map(|body| {
                    axum::body::Body::new(body.map_frame(move |frame| {
                        let _in_request = &busy;
                        frame
                    }))
                }))
            }
        },
    ))
}

/// `why` there is no table yet, and when the publisher rejects its input, that input's error
/// (an audit found the reason only in `shoal status`).
fn with_rejected_input(mesh: &shoal_gossip::Mesh<crate::table::RuleTable>, why: String) -> String {
    let publisher = mesh.view().publisher.map(|p| p.to_string());
    match publisher_source_error(mesh, publisher.as_deref()) {
        Some(e) => format!("{why}: the publisher's input is rejected: {e}"),
        None => why,
    }
}

/// The problem the publisher gossips with its source's input, if any.
fn publisher_source_error(
    mesh: &shoal_gossip::Mesh<crate::table::RuleTable>,
    publisher: Option<&str>,
) -> Option<String> {
    let publisher = publisher?;
    mesh.app_keys(crate::source::ERROR_KEY)
        .into_iter()
        .find(|(id, key, _)| key == crate::source::ERROR_KEY && id.to_string() == publisher)
        .map(|(_, _, error)| error)
}

#[derive(Serialize)]
struct TableResponse {
    version: VersionRef,
    digest: String,
    size_bytes: u64,
    table: RuleTable,
}

async fn table(State(s): State<AdminState>) -> Result<Json<TableResponse>, AdminError> {
    let Some(head) = s.mesh.current() else {
        let view = s.mesh.view();
        return Err(match &view.head {
            Some(head) => AdminError::NotHeld {
                head: (&head.version).into(),
                why: ready_state(&s, &view)
                    .err()
                    .unwrap_or_else(|| "fetching it".into()),
            },
            None => AdminError::NoHead,
        });
    };
    Ok(Json(TableResponse {
        version: (&head.version).into(),
        digest: head.digest.clone(),
        size_bytes: head.size_bytes,
        table: head.doc.clone(),
    }))
}

#[derive(Serialize)]
struct NodeResponse {
    id: String,
    role: &'static str,
    dataplane: &'static str,
    source: crate::source::SourceState,
    reconcile: crate::reconcile::ReconcileState,
    /// What this node announces and why not the rest, as in `/v1/cluster` (`null` when it
    /// announces nothing: `--announce none`).
    announce: Option<crate::announce::Report>,
}

async fn node(State(s): State<AdminState>) -> Json<NodeResponse> {
    Json(NodeResponse {
        id: s.mesh.node_id().to_string(),
        role: crate::status::role_name(&s.mesh.role()),
        dataplane: s.programmer.kind(),
        source: s.source.get(),
        reconcile: s.reconcile.get(),
        announce: s.announce.get(),
    })
}

async fn readyz(State(s): State<AdminState>) -> Response {
    s.mesh.wait_fresh().await;
    match ready_state(&s, &s.mesh.view()) {
        Ok(why) => (StatusCode::OK, format!("ready: {why}\n")).into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

/// Whether this node serves, with what (`Ok`) or the most important reason it does not, by
/// `view` (the caller's: `/v1/cluster` answers with the same one).
fn ready_state(s: &AdminState, view: &shoal_gossip::ClusterView) -> Result<String, String> {
    let head = cluster_head(view, &s.mesh);
    let reconciled = s.reconcile.get();
    let role = s.mesh.role_reason();
    let dataplane = dataplane_ready(&reconciled, Instant::now());
    readiness(&role, head.as_ref(), reconciled.applied.as_ref())
        // Failing passes are why a head is not applied, or why one applied is not served.
        .map_err(|why| match &dataplane {
            Err(failing) if head.is_some() => format!("{why}; {failing}"),
            _ => why,
        })
        .and_then(|why| dataplane.map(|()| why))
        .map_err(|why| match head {
            None => with_rejected_input(&s.mesh, why),
            Some(_) => why,
        })
        .map_err(|why| match (&role, s.mesh.last_dial_tls_failure()) {
            // Its own seeds refuse it: say why here, not only in the log (an SRE's probe: a
            // node with another CA's certificate said only that no seed answered).
            (shoal_gossip::RoleReason::AwaitingSeeds, Some(tls)) => {
                format!("{why}; the last dial TLS refused: {tls}")
            }
            _ => why,
        })
        .and_then(|why| publisher_ready(s.mesh.stamp_refusal().as_deref()).map(|()| why))
        .and_then(|why| crate::tls_reload::out_of_validity(&s.mesh).map_or(Ok(why), Err))
        .and_then(|why| announce_ready(s.announce.get().as_ref()).map(|()| why))
}

async fn metrics(State(s): State<AdminState>) -> Response {
    s.mesh.wait_fresh().await;
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
    s.metrics.mesh.refresh(&s.mesh);
    let view = s.mesh.view();
    let alive = view.members.iter().filter(|m| m.alive).count();
    let left = view.members.iter().filter(|m| !m.alive && m.left).count();
    // Not judged yet is not dead: a restarted node's first scrapes said 4 dead of 5 (a probe).
    let unjudged = view.members.iter().filter(|m| m.unjudged).count();
    s.metrics.members_alive.set(alive as i64);
    s.metrics.members_left.set(left as i64);
    s.metrics
        .members_dead
        .set((view.members.len() - alive - left - unjudged) as i64);
    s.metrics
        .is_publisher
        .set(i64::from(view.publisher.as_ref() == Some(&view.self_id)));
    if let Some(head) = cluster_head(&view, &s.mesh) {
        s.metrics.head_epoch.set(head.epoch as i64);
        s.metrics.head_seq.set(head.seq as i64);
        let applied = s.reconcile.get().applied;
        s.metrics
            .applied_is_head
            .set(i64::from(applied == Some(head)));
    }
}

/// The cluster's head as this node sees it (the newest version a live member holds), or, before
/// the view has one, the version this node holds. While this node fetches a new head it still
/// holds the one before: `/readyz` and the head gauges went by that and said "applied the
/// head" for the whole fetch (16 s over a slow link in a probe) while `/v1/cluster` showed the
/// node behind.
fn cluster_head(
    view: &shoal_gossip::ClusterView,
    mesh: &shoal_gossip::Mesh<RuleTable>,
) -> Option<VersionRef> {
    newest(
        mesh.current().map(|h| VersionRef::from(&h.version)),
        view.head.as_ref().map(|h| VersionRef::from(&h.version)),
    )
}

/// The newer of the version this node holds and the head its view shows.
fn newest(held: Option<VersionRef>, seen: Option<VersionRef>) -> Option<VersionRef> {
    held.max(seen)
}

#[cfg(test)]
mod tests {
    use super::{exposure_warning, newest};
    use crate::status::VersionRef;

    /// A node fetching a new head still holds the one before: the head it answers for is the
    /// newer one its view shows, so readiness and the head gauges say it is behind.
    #[test]
    fn the_head_is_the_newest_held_or_seen() {
        let v = |epoch, seq| VersionRef {
            epoch,
            seq,
            origin: "n1".into(),
        };
        assert_eq!(newest(Some(v(1, 4)), Some(v(1, 5))), Some(v(1, 5)));
        assert_eq!(newest(Some(v(2, 1)), Some(v(1, 9))), Some(v(2, 1)));
        assert_eq!(newest(None, Some(v(1, 5))), Some(v(1, 5)));
        assert_eq!(newest(Some(v(1, 4)), None), Some(v(1, 4)));
        assert_eq!(newest(None, None), None);
    }

    #[test]
    fn only_every_address_without_a_token_is_warned_about() {
        for open in ["0.0.0.0:9100", "[::]:9100"] {
            let warning = exposure_warning(open.parse().unwrap(), false).expect(open);
            assert!(warning.contains(open) && warning.contains("--admin-token-file"));
            assert_eq!(exposure_warning(open.parse().unwrap(), true), None);
        }
        for bound in ["127.0.0.1:9100", "198.18.0.7:9100", "[::1]:9100"] {
            assert_eq!(exposure_warning(bound.parse().unwrap(), false), None);
        }
    }
}
