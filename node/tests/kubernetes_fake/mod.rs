//! A fake Kubernetes API server for tests: list + watch of Services, EndpointSlices and
//! ShoalPools (cluster-wide or in one namespace), Service status PUT, ShoalPool status PATCH,
//! Event POST, and a request log per listener.
//!
//! One shared object store, any number of listeners on 127.0.0.1 ("nodes"), so a test can
//! give each Shoal node its own port and count who talked to the API server.
//!
//! Real API server semantics it keeps (each has a test in kubernetes_source.rs):
//! - a watch from a resourceVersion older than the compacted history gets a `410 Gone`
//!   ERROR event ([`FakeApi::compact`]), and the client must relist;
//! - `allowWatchBookmarks=true` watches get BOOKMARK events carrying the newest
//!   resourceVersion ([`FakeApi::bookmark`]);
//! - a watch ends after its `timeoutSeconds` (the client watches on from where it was);
//! - lists honour `limit` and `continue` (and a server-side page cap, [`FakeApi::max_page`]);
//! - per listener: a required bearer token (401 otherwise), a switch that answers 403 to
//!   everything, and a namespace restriction that answers 403 to anything outside it, as a
//!   namespaced Role does, and a list of kinds it answers 403 for (a Role missing one resource).
//!
//! And one misbehaviour: watches of a kind that are accepted and then send nothing, never
//! ending ([`FakeApi::stall_watches`]).
//!
//! Why this file is over 500 lines: it is one fake server (store, list, watch with compaction and
//! bookmarks, status writes), whose parts share the store and the resourceVersion counter.

#![allow(dead_code)]

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    ShoalPool,
}

impl Kind {
    fn api_version(self) -> &'static str {
        match self {
            Kind::Service => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::ShoalPool => "shoal.io/v1alpha1",
        }
    }
    fn list_kind(self) -> &'static str {
        match self {
            Kind::Service => "ServiceList",
            Kind::EndpointSlice => "EndpointSliceList",
            Kind::ShoalPool => "ShoalPoolList",
        }
    }
}

#[derive(Clone, Debug)]
pub struct RequestLog {
    pub node: String,
    pub method: String,
    pub path: String,
    pub status: u16,
}

#[derive(Clone, Debug)]
enum Change {
    Object {
        rv: u64,
        kind: Kind,
        type_: &'static str,
        object: Value,
    },
    /// Every open watch sends a BOOKMARK with this resourceVersion.
    Bookmark { rv: u64 },
    /// Every open watch ends (as when the API server restarts).
    CloseAll,
}

#[derive(Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<(Kind, String, String), Value>,
    /// Object changes with their resourceVersion, oldest first; older ones are compacted away.
    history: Vec<(u64, Kind, &'static str, Value)>,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted_rv: u64,
    requests: Vec<RequestLog>,
    events: Vec<Value>,
    status_writes: Vec<Value>,
    pool_status_writes: Vec<Value>,
}

/// Access rules of one listener.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// Requests without `Authorization: Bearer <token>` get 401.
    pub token: Option<String>,
    /// Everything gets 403.
    pub forbidden: bool,
    /// Only requests under `/namespaces/<ns>/` are allowed (403 otherwise), as with a Role.
    pub namespace: Option<String>,
    /// Lists and watches of these kinds get 403, as with a Role that lacks their resource.
    pub forbidden_kinds: Vec<Kind>,
}

#[derive(Clone)]
pub struct FakeApi {
    store: Arc<Mutex<Store>>,
    changes: broadcast::Sender<Change>,
    open_watches: Arc<Mutex<BTreeMap<String, Arc<AtomicUsize>>>>,
    list_delays: Arc<Mutex<BTreeMap<Kind, Duration>>>,
    access: Arc<Mutex<BTreeMap<String, Access>>>,
    max_page: Arc<Mutex<Option<usize>>>,
    stalled: Arc<Mutex<Vec<Kind>>>,
    /// Kinds whose next watch gets one ERROR event with a 500 Status, then ends.
    fail_next: Arc<Mutex<Vec<Kind>>>,
    /// Service status writes still to answer with a 500 (then they work again).
    failing_status_writes: Arc<AtomicUsize>,
    /// Kinds whose lists never end: every page's continue token leads back to the first.
    endless_lists: Arc<Mutex<Vec<Kind>>>,
}

#[derive(Clone)]
struct Listener {
    api: FakeApi,
    node: String,
}

impl Default for FakeApi {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeApi {
    pub fn new() -> Self {
        let (changes, _) = broadcast::channel(1 << 16);
        FakeApi {
            store: Arc::new(Mutex::new(Store::default())),
            changes,
            open_watches: Arc::default(),
            list_delays: Arc::default(),
            access: Arc::default(),
            max_page: Arc::default(),
            stalled: Arc::default(),
            fail_next: Arc::default(),
            failing_status_writes: Arc::default(),
            endless_lists: Arc::default(),
        }
    }

    /// Starts a listener on 127.0.0.1 whose requests are logged under `node`.
    pub async fn listen(&self, node: &str) -> SocketAddr {
        self.listen_with(node, Access::default()).await
    }

    /// A listener with access rules.
    pub async fn listen_with(&self, node: &str, access: Access) -> SocketAddr {
        self.access.lock().unwrap().insert(node.to_string(), access);
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let app = Router::new().fallback(handle).with_state(Listener {
            api: self.clone(),
            node: node.to_string(),
        });
        tokio::spawn(async move {
            let _ = axum::serve(socket, app).await;
        });
        addr
    }

    /// Turns the 403-everything switch of `node`'s listener on or off.
    pub fn set_forbidden(&self, node: &str, forbidden: bool) {
        self.access
            .lock()
            .unwrap()
            .entry(node.to_string())
            .or_default()
            .forbidden = forbidden;
    }

    /// Makes every list of `kind` answer only after `delay` (a slow API server).
    pub fn delay_lists(&self, kind: Kind, delay: Duration) {
        self.list_delays.lock().unwrap().insert(kind, delay);
    }

    /// New watches of `kind` are answered (200) and then send nothing and never end, whatever
    /// their `timeoutSeconds`: a stuck API server or proxy. Lists still work.
    pub fn stall_watches(&self, kind: Kind) {
        self.stalled.lock().unwrap().push(kind);
    }

    /// The next watch of `kind` is answered 200 and then sends one ERROR event with a 500
    /// Status (an etcd leader change, as a real API server reports it) and ends; the ones
    /// after it work.
    pub fn fail_next_watch(&self, kind: Kind) {
        self.fail_next.lock().unwrap().push(kind);
    }

    /// The next `n` Service status writes are answered 500 (an API server having trouble).
    pub fn fail_status_writes(&self, n: usize) {
        self.failing_status_writes.store(n, Ordering::SeqCst);
    }

    /// Lists of `kind` never end: each page's continue token leads back to the first page.
    pub fn endless_lists(&self, kind: Kind) {
        self.endless_lists.lock().unwrap().push(kind);
    }

    /// Lists return at most `n` items per page, with a continue token, whatever `limit` asks.
    pub fn max_page(&self, n: usize) {
        *self.max_page.lock().unwrap() = Some(n);
    }

    /// Forgets the history up to now: a watch from an older resourceVersion gets 410 Gone.
    pub fn compact(&self) {
        let mut s = self.lock();
        s.compacted_rv = s.rv;
        s.history.clear();
    }

    /// An etcd restore from a backup taken at `rv`: the resourceVersion counter goes back to
    /// it (the objects stay as they are, the changes after it are forgotten) and every open
    /// watch ends. A watch from a newer resourceVersion then gets what a real API server sends:
    /// 200, then one ERROR event, a 504 "Too large resource version" Status.
    pub fn restore_to(&self, rv: u64) {
        {
            let mut s = self.lock();
            s.rv = rv;
            s.history.retain(|(at, ..)| *at <= rv);
        }
        let _ = self.changes.send(Change::CloseAll);
    }

    /// Sends a BOOKMARK with the newest resourceVersion to every watch that allows them.
    pub fn bookmark(&self) -> u64 {
        let rv = self.lock().rv;
        let _ = self.changes.send(Change::Bookmark { rv });
        rv
    }

    /// Ends every open watch (the clients re-watch from their last resourceVersion).
    pub fn close_watches(&self) {
        let _ = self.changes.send(Change::CloseAll);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap()
    }

    /// Creates or replaces an object; `resourceVersion` is set by the server.
    pub fn apply(&self, kind: Kind, mut object: Value) {
        let mut s = self.lock();
        s.rv += 1;
        let rv = s.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = key_of(kind, &object);
        let type_ = if s.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        s.objects.insert(key, object.clone());
        self.record(&mut s, rv, kind, type_, object);
    }

    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) {
        let mut s = self.lock();
        let Some(mut object) = s
            .objects
            .remove(&(kind, namespace.to_string(), name.to_string()))
        else {
            return;
        };
        s.rv += 1;
        let rv = s.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(&mut s, rv, kind, "DELETED", object);
    }

    fn record(&self, s: &mut Store, rv: u64, kind: Kind, type_: &'static str, object: Value) {
        s.history.push((rv, kind, type_, object.clone()));
        let _ = self.changes.send(Change::Object {
            rv,
            kind,
            type_,
            object,
        });
    }

    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&(kind, namespace.to_string(), name.to_string()))
            .cloned()
    }

    pub fn requests(&self, node: &str) -> Vec<RequestLog> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.node == node)
            .cloned()
            .collect()
    }

    pub fn request_count(&self, node: &str) -> usize {
        self.requests(node).len()
    }

    pub fn events(&self) -> Vec<Value> {
        self.lock().events.clone()
    }

    pub fn status_writes(&self) -> Vec<Value> {
        self.lock().status_writes.clone()
    }

    pub fn pool_status_writes(&self) -> Vec<Value> {
        self.lock().pool_status_writes.clone()
    }

    /// Watches currently streaming to `node`.
    pub fn open_watches(&self, node: &str) -> usize {
        self.open_watches
            .lock()
            .unwrap()
            .get(node)
            .map(|c| c.load(Ordering::SeqCst))
            .unwrap_or(0)
    }

    fn watch_counter(&self, node: &str) -> Arc<AtomicUsize> {
        self.open_watches
            .lock()
            .unwrap()
            .entry(node.to_string())
            .or_default()
            .clone()
    }
}

fn key_of(kind: Kind, object: &Value) -> (Kind, String, String) {
    let m = &object["metadata"];
    (
        kind,
        m["namespace"].as_str().unwrap_or("").to_string(),
        m["name"].as_str().unwrap_or("").to_string(),
    )
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        axum::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": reason, "message": message, "code": code.as_u16(),
        })),
    )
        .into_response()
}

/// The kind and namespace (if namespaced path) of a list/watch path.
fn collection(segs: &[&str]) -> Option<(Kind, Option<String>)> {
    match segs {
        ["api", "v1", "services"] => Some((Kind::Service, None)),
        ["api", "v1", "namespaces", ns, "services"] => Some((Kind::Service, Some(ns.to_string()))),
        ["apis", "discovery.k8s.io", "v1", "endpointslices"] => Some((Kind::EndpointSlice, None)),
        ["apis", "discovery.k8s.io", "v1", "namespaces", ns, "endpointslices"] => {
            Some((Kind::EndpointSlice, Some(ns.to_string())))
        }
        ["apis", "shoal.io", "v1alpha1", "shoalpools"] => Some((Kind::ShoalPool, None)),
        _ => None,
    }
}

/// The namespace a path is under, if any.
fn path_namespace<'a>(segs: &[&'a str]) -> Option<&'a str> {
    segs.iter()
        .position(|s| *s == "namespaces")
        .and_then(|i| segs.get(i + 1).copied())
}

async fn handle(
    State(l): State<Listener>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let response = route(&l, &method, &uri, &headers, body).await;
    l.api.lock().requests.push(RequestLog {
        node: l.node.clone(),
        method: method.to_string(),
        path: uri.to_string(),
        status: response.status().as_u16(),
    });
    response
}

async fn route(
    l: &Listener,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query: BTreeMap<String, String> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();

    let access = l
        .api
        .access
        .lock()
        .unwrap()
        .get(&l.node)
        .cloned()
        .unwrap_or_default();
    if let Some(token) = &access.token {
        let sent = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if sent != Some(token.as_str()) {
            return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
        }
    }
    if access.forbidden {
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "forbidden: the fake API server refuses this listener",
        );
    }
    if let Some(allowed) = &access.namespace {
        if path_namespace(&segs) != Some(allowed.as_str()) {
            return status(
                StatusCode::FORBIDDEN,
                "Forbidden",
                &format!("forbidden: {path} is outside namespace {allowed} (namespaced Role)"),
            );
        }
    }

    if let (&Method::GET, Some((kind, ns))) = (method, collection(&segs)) {
        if access.forbidden_kinds.contains(&kind) {
            return status(
                StatusCode::FORBIDDEN,
                "Forbidden",
                &format!("forbidden: this listener's Role does not cover {path}"),
            );
        }
        return if query.get("watch").map(String::as_str) == Some("true") {
            let from: u64 = query
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
            // Without timeoutSeconds the real server picks one (minutes); 600 s here.
            let timeout = query
                .get("timeoutSeconds")
                .and_then(|t| t.parse().ok())
                .map_or(Duration::from_secs(600), Duration::from_secs);
            watch(l, kind, ns, from, bookmarks, timeout)
        } else {
            let delay = l.api.list_delays.lock().unwrap().get(&kind).copied();
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            list(&l.api, kind, ns.as_deref(), &query)
        };
    }
    match (method, segs.as_slice()) {
        (&Method::PUT, ["api", "v1", "namespaces", ns, "services", name, "status"]) => {
            put_status(&l.api, ns, name, &body)
        }
        (&Method::PATCH, ["apis", "shoal.io", "v1alpha1", "shoalpools", name, "status"]) => {
            patch_pool_status(&l.api, name, &body)
        }
        (&Method::POST, ["apis", "events.k8s.io", "v1", "namespaces", _ns, "events"]) => {
            let Ok(ev) = serde_json::from_slice::<Value>(&body) else {
                return status(StatusCode::BAD_REQUEST, "BadRequest", "bad event body");
            };
            l.api.lock().events.push(ev.clone());
            (StatusCode::CREATED, axum::Json(ev)).into_response()
        }
        _ => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("no route for {path}"),
        ),
    }
}

fn list(api: &FakeApi, kind: Kind, ns: Option<&str>, query: &BTreeMap<String, String>) -> Response {
    let s = api.lock();
    let all: Vec<&Value> = s
        .objects
        .iter()
        .filter(|((k, n, _), _)| *k == kind && ns.is_none_or(|ns| ns == n))
        .map(|(_, v)| v)
        .collect();
    // continue = "<rv>.<offset>" (URL-safe): later pages show the list as of the first page's version
    // in the real server; here objects may have moved, which is allowed for a fake.
    let (list_rv, offset) = match query.get("continue").and_then(|c| c.split_once('.')) {
        Some((rv, off)) => match (rv.parse::<u64>(), off.parse::<usize>()) {
            (Ok(rv), Ok(off)) => (rv, off),
            _ => return status(StatusCode::BAD_REQUEST, "BadRequest", "bad continue token"),
        },
        None => (s.rv, 0),
    };
    let mut page = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    if let Some(cap) = *api.max_page.lock().unwrap() {
        page = page.min(cap);
    }
    let end = offset.saturating_add(page).min(all.len());
    let items: Vec<Value> = all
        .get(offset.min(all.len())..end)
        .unwrap_or(&[])
        .iter()
        .map(|v| (*v).clone())
        .collect();
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if api.endless_lists.lock().unwrap().contains(&kind) {
        metadata["continue"] = json!(format!("{list_rv}.0"));
    } else if end < all.len() {
        metadata["continue"] = json!(format!("{list_rv}.{end}"));
        metadata["remainingItemCount"] = json!(all.len() - end);
    }
    axum::Json(json!({
        "apiVersion": kind.api_version(),
        "kind": kind.list_kind(),
        "metadata": metadata,
        "items": items,
    }))
    .into_response()
}

/// Decrements the node's open-watch counter when the response stream is dropped.
struct WatchGuard(Arc<AtomicUsize>);
impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn line(v: Value) -> Result<Bytes, std::convert::Infallible> {
    let mut s = serde_json::to_vec(&v).unwrap();
    s.push(b'\n');
    Ok(Bytes::from(s))
}

/// What a real API server does when a watch cannot go on: 200, then one ERROR event carrying a
/// failure Status (with `details` unless null), and the end of the stream.
fn error_event(code: u16, reason: &str, message: &str, details: Value) -> Response {
    let mut status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "reason": reason, "code": code, "message": message,
    });
    if !details.is_null() {
        status["details"] = details;
    }
    let event = json!({"type": "ERROR", "object": status});
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(futures::stream::iter([line(event)])))
        .unwrap()
}

fn watch(
    l: &Listener,
    kind: Kind,
    ns: Option<String>,
    from: u64,
    bookmarks: bool,
    timeout: Duration,
) -> Response {
    use futures::StreamExt;
    let deadline = tokio::time::Instant::now() + timeout;
    let in_scope = move |k: Kind, o: &Value| {
        k == kind
            && ns
                .as_deref()
                .is_none_or(|ns| o["metadata"]["namespace"] == ns)
    };
    // Subscribe before reading history so nothing falls between the two.
    let rx = l.api.changes.subscribe();
    let (backlog, compacted, current) = {
        let s = l.api.lock();
        let backlog: Vec<(u64, Value)> = s
            .history
            .iter()
            .filter(|(rv, k, _, o)| *rv > from && in_scope(*k, o))
            .map(|(rv, _, t, o)| (*rv, json!({"type": t, "object": o})))
            .collect();
        (backlog, from < s.compacted_rv, s.rv)
    };
    if from > current {
        return error_event(
            504,
            "Timeout",
            &format!("Too large resource version: {from}, current: {current}"),
            json!({"causes": [{
                "reason": "ResourceVersionTooLarge", "message": "Too large resource version",
            }], "retryAfterSeconds": 1}),
        );
    }
    if compacted {
        return error_event(
            410,
            "Expired",
            &format!("too old resource version: {from}"),
            Value::Null,
        );
    }
    let fail = {
        let mut fail_next = l.api.fail_next.lock().unwrap();
        let at = fail_next.iter().position(|k| *k == kind);
        at.map(|i| fail_next.remove(i)).is_some()
    };
    if fail {
        return error_event(
            500,
            "InternalError",
            "etcdserver: leader changed",
            Value::Null,
        );
    }
    let last = backlog.last().map(|(rv, _)| *rv).unwrap_or(from);
    let counter = l.api.watch_counter(&l.node);
    counter.fetch_add(1, Ordering::SeqCst);
    let guard = WatchGuard(counter);
    if l.api.stalled.lock().unwrap().contains(&kind) {
        let silence = futures::stream::unfold(guard, |guard| async move {
            std::future::pending::<()>().await;
            Some((line(json!({})), guard))
        });
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(silence))
            .unwrap();
    }
    let first = futures::stream::iter(
        backlog
            .into_iter()
            .map(|(_, v)| line(v))
            .collect::<Vec<_>>(),
    );
    let live = futures::stream::unfold((rx, guard), move |(mut rx, guard)| {
        let in_scope = in_scope.clone();
        async move {
            loop {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Ok(Change::Object {
                        rv,
                        kind: k,
                        type_,
                        object,
                    })) if rv > last && in_scope(k, &object) => {
                        return Some((line(json!({"type": type_, "object": object})), (rx, guard)));
                    }
                    Ok(Ok(Change::Bookmark { rv })) if bookmarks => {
                        let b = json!({"type": "BOOKMARK", "object": {
                            "kind": kind_name(kind), "apiVersion": kind.api_version(),
                            "metadata": {"resourceVersion": rv.to_string()},
                        }});
                        return Some((line(b), (rx, guard)));
                    }
                    Ok(Ok(Change::CloseAll)) => return None,
                    Ok(Ok(_)) => continue,
                    // Lagged: a real server would have closed too.
                    _ => return None,
                }
            }
        }
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(first.chain(live)))
        .unwrap()
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Service => "Service",
        Kind::EndpointSlice => "EndpointSlice",
        Kind::ShoalPool => "ShoalPool",
    }
}

fn put_status(api: &FakeApi, ns: &str, name: &str, body: &[u8]) -> Response {
    let Ok(sent) = serde_json::from_slice::<Value>(body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "bad body");
    };
    let failing = api
        .failing_status_writes
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    if failing.is_ok() {
        return status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "etcdserver: request timed out",
        );
    }
    let key = (Kind::Service, ns.to_string(), name.to_string());
    let current = api.lock().objects.get(&key).cloned();
    let Some(mut current) = current else {
        return status(StatusCode::NOT_FOUND, "NotFound", "no such service");
    };
    if sent["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            "the object has been modified",
        );
    }
    api.lock().status_writes.push(sent.clone());
    current["status"] = sent["status"].clone();
    api.apply(Kind::Service, current);
    let updated = api.get(Kind::Service, ns, name).unwrap_or(Value::Null);
    axum::Json(updated).into_response()
}

fn patch_pool_status(api: &FakeApi, name: &str, body: &[u8]) -> Response {
    let Ok(sent) = serde_json::from_slice::<Value>(body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "bad body");
    };
    let Some(mut current) = api.get(Kind::ShoalPool, "", name) else {
        return status(StatusCode::NOT_FOUND, "NotFound", "no such ShoalPool");
    };
    api.lock().pool_status_writes.push(sent.clone());
    current["status"] = sent["status"].clone();
    api.apply(Kind::ShoalPool, current);
    let updated = api.get(Kind::ShoalPool, "", name).unwrap_or(Value::Null);
    axum::Json(updated).into_response()
}

/// A ShoalPool with `addresses`, optionally limited to `namespaces`.
pub fn pool(
    name: &str,
    addresses: &[&str],
    namespaces: Option<&[&str]>,
    auto_assign: bool,
) -> Value {
    let mut spec = json!({"addresses": addresses, "autoAssign": auto_assign});
    if let Some(ns) = namespaces {
        spec["namespaces"] = json!(ns);
    }
    json!({
        "apiVersion": "shoal.io/v1alpha1", "kind": "ShoalPool",
        "metadata": {"name": name, "uid": format!("uid-pool-{name}"),
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": spec,
    })
}

/// A LoadBalancer Service of class `shoal.io/lb` with the given ports and annotations.
pub fn service(ns: &str, name: &str, ports: &[(&str, u16)], annotations: &[(&str, &str)]) -> Value {
    let ann: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "namespace": ns, "name": name, "uid": format!("uid-{ns}-{name}"),
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "annotations": ann,
        },
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": "shoal.io/lb",
            "ports": ports.iter().map(|(n, p)| json!({"name": n, "port": p, "protocol": "TCP"})).collect::<Vec<_>>(),
        },
    })
}

/// An EndpointSlice for `svc` with one port and endpoints `(address, ready)`.
pub fn slice(
    ns: &str,
    svc: &str,
    suffix: &str,
    port: (&str, u16),
    endpoints: &[(&str, bool)],
) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "namespace": ns, "name": format!("{svc}-{suffix}"),
            "labels": {"kubernetes.io/service-name": svc},
        },
        "addressType": "IPv4",
        "ports": [{"name": port.0, "port": port.1, "protocol": "TCP"}],
        "endpoints": endpoints.iter().map(|(a, r)| json!({
            "addresses": [a], "conditions": {"ready": r, "serving": r, "terminating": false},
        })).collect::<Vec<_>>(),
    })
}

/// A kubeconfig file pointing at `addr` over plain HTTP (token `test-token`).
pub fn kubeconfig(addr: SocketAddr) -> String {
    kubeconfig_with_token(addr, "test-token")
}

pub fn kubeconfig_with_token(addr: SocketAddr, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
         users:\n- name: test\n  user:\n    token: {token}\ncontexts:\n- name: fake\n  context:\n    \
         cluster: fake\n    user: test\ncurrent-context: fake\n"
    )
}
