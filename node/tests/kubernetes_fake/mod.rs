//! A fake Kubernetes API server for tests: list + watch of Services and EndpointSlices,
//! Service status PUT, Event POST, and a request log per listener.
//!
//! One shared object store, any number of listeners on 127.0.0.1 ("nodes"), so a test can
//! give each Shoal node its own port and count who talked to the API server.

#![allow(dead_code)]

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
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
}

impl Kind {
    fn api_version(self) -> &'static str {
        match self {
            Kind::Service => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
        }
    }
    fn list_kind(self) -> &'static str {
        match self {
            Kind::Service => "ServiceList",
            Kind::EndpointSlice => "EndpointSliceList",
        }
    }
}

#[derive(Clone, Debug)]
pub struct RequestLog {
    pub node: String,
    pub method: String,
    pub path: String,
}

#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    kind: Kind,
    type_: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<(Kind, String, String), Value>,
    history: Vec<Change>,
    requests: Vec<RequestLog>,
    events: Vec<Value>,
    status_writes: Vec<Value>,
}

#[derive(Clone)]
pub struct FakeApi {
    store: Arc<Mutex<Store>>,
    changes: broadcast::Sender<Change>,
    open_watches: Arc<Mutex<BTreeMap<String, Arc<AtomicUsize>>>>,
    list_delays: Arc<Mutex<BTreeMap<Kind, Duration>>>,
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
        let (changes, _) = broadcast::channel(4096);
        FakeApi {
            store: Arc::new(Mutex::new(Store::default())),
            changes,
            open_watches: Arc::default(),
            list_delays: Arc::default(),
        }
    }

    /// Starts a listener on 127.0.0.1 whose requests are logged under `node`.
    pub async fn listen(&self, node: &str) -> SocketAddr {
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

    /// Makes every list of `kind` answer only after `delay` (a slow API server).
    pub fn delay_lists(&self, kind: Kind, delay: Duration) {
        self.list_delays.lock().unwrap().insert(kind, delay);
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
        self.record(
            &mut s,
            Change {
                rv,
                kind,
                type_,
                object,
            },
        );
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
        self.record(
            &mut s,
            Change {
                rv,
                kind,
                type_: "DELETED",
                object,
            },
        );
    }

    fn record(&self, s: &mut Store, change: Change) {
        s.history.push(change.clone());
        let _ = self.changes.send(change);
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

async fn handle(State(l): State<Listener>, method: Method, uri: Uri, body: Bytes) -> Response {
    let path = uri.path().to_string();
    let query: BTreeMap<String, String> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.api.lock().requests.push(RequestLog {
        node: l.node.clone(),
        method: method.to_string(),
        path: uri.to_string(),
    });
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let kind = match (method.clone(), segs.as_slice()) {
        (Method::GET, ["api", "v1", "services"]) => Some(Kind::Service),
        (Method::GET, ["apis", "discovery.k8s.io", "v1", "endpointslices"]) => {
            Some(Kind::EndpointSlice)
        }
        _ => None,
    };
    if let Some(kind) = kind {
        return if query.get("watch").map(String::as_str) == Some("true") {
            let from: u64 = query
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            watch(&l, kind, from)
        } else {
            let delay = l.api.list_delays.lock().unwrap().get(&kind).copied();
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            list(&l.api, kind)
        };
    }
    match (method, segs.as_slice()) {
        (Method::PUT, ["api", "v1", "namespaces", ns, "services", name, "status"]) => {
            put_status(&l.api, ns, name, &body)
        }
        (Method::POST, ["apis", "events.k8s.io", "v1", "namespaces", _ns, "events"]) => {
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

fn list(api: &FakeApi, kind: Kind) -> Response {
    let s = api.lock();
    let items: Vec<Value> = s
        .objects
        .iter()
        .filter(|((k, ..), _)| *k == kind)
        .map(|(_, v)| v.clone())
        .collect();
    axum::Json(json!({
        "apiVersion": kind.api_version(),
        "kind": kind.list_kind(),
        "metadata": {"resourceVersion": s.rv.to_string()},
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

fn watch(l: &Listener, kind: Kind, from: u64) -> Response {
    // Subscribe before reading history so nothing falls between the two.
    let rx = l.api.changes.subscribe();
    let backlog: Vec<Change> = l
        .api
        .lock()
        .history
        .iter()
        .filter(|c| c.rv > from && c.kind == kind)
        .cloned()
        .collect();
    let last = backlog.last().map(|c| c.rv).unwrap_or(from);
    let counter = l.api.watch_counter(&l.node);
    counter.fetch_add(1, Ordering::SeqCst);
    let guard = WatchGuard(counter);
    let line = |c: &Change| {
        let mut s = serde_json::to_vec(&json!({"type": c.type_, "object": c.object})).unwrap();
        s.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(s))
    };
    let first = futures::stream::iter(backlog.iter().map(line).collect::<Vec<_>>());
    let live = futures::stream::unfold((rx, guard), move |(mut rx, guard)| async move {
        loop {
            match tokio::time::timeout(Duration::from_secs(600), rx.recv()).await {
                Ok(Ok(c)) if c.kind == kind && c.rv > last => {
                    let mut s =
                        serde_json::to_vec(&json!({"type": c.type_, "object": c.object})).unwrap();
                    s.push(b'\n');
                    return Some((Ok(Bytes::from(s)), (rx, guard)));
                }
                Ok(Ok(_)) => continue,
                _ => return None,
            }
        }
    });
    use futures::StreamExt;
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(first.chain(live)))
        .unwrap()
}

fn put_status(api: &FakeApi, ns: &str, name: &str, body: &[u8]) -> Response {
    let Ok(sent) = serde_json::from_slice::<Value>(body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "bad body");
    };
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

/// A kubeconfig file pointing at `addr` over plain HTTP.
pub fn kubeconfig(addr: SocketAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
         users:\n- name: test\n  user:\n    token: test-token\ncontexts:\n- name: fake\n  context:\n    \
         cluster: fake\n    user: test\ncurrent-context: fake\n"
    )
}
