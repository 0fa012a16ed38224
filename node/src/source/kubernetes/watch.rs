//! The publisher's loop: watch Services, EndpointSlices and ShoalPools, translate, publish,
//! write back.
//!
//! Thin shell around [`translate`](super::translate): watcher events update the caches, a
//! change arms a short debounce timer, and when it fires (and every kind has been listed
//! once) the table is recomputed, sent if its content changed, statuses are written and new
//! problems reported. Every answer from the API server feeds [`ApiHealth`], per kind; when it
//! says the API server cannot be used, the loop returns [`SourceError::GaveUp`] so the daemon
//! hands the role on. A kind the API server has said nothing about for [`Bounds::silent`]
//! (what the client heard, [`heard`](super::heard)) is a failure of that kind, and its watch is
//! started anew: a watch can stay open with nothing coming, and the table would go stale
//! without a single error. Cancellation drops the watch streams, which closes the connections.

use super::api_health::{self, ApiHealth, Bounds, Failure};
use super::cache::ObjectCache;
use super::heard::{self, Heard};
use super::metrics::{KindLabel, KubernetesMetrics};
use super::pools::{self, Pool, ShoalPool};
use super::slice::Slice;
use super::status::{pool_resource, StatusWriter};
use super::translate::{self, ObjectId, Problem, Settings};
use super::{KubernetesConfig, SourceError};
use crate::source::SourceStatus;
use crate::table::RuleTable;
use futures::stream::BoxStream;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{watcher as watch_stream, WatchStreamExt};
use kube::Client;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Bursts (a rollout touching many slices) collapse into one table; bounded so a single
/// change is still published quickly.
pub const DEBOUNCE_MS: u64 = 150;

/// Status writes per pass (each also records an Event); the rest follow on the next passes.
pub const STATUS_WRITES_PER_PASS: usize = 100;

type Events = BoxStream<'static, Result<Event<DynamicObject>, watcher::Error>>;

/// Drops what translation never reads before an object is cached: at 10,000 Services the
/// caches are most of the publisher's memory, and real EndpointSlices carry a `targetRef`,
/// node name and zone per endpoint.
fn trim(o: &mut DynamicObject, is_slice: bool) {
    let m = &mut o.metadata;
    m.managed_fields = None;
    m.owner_references = None;
    m.generate_name = None;
    if let Some(a) = m.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    if is_slice {
        m.annotations = None;
        if let Some(eps) = o.data.get_mut("endpoints").and_then(|e| e.as_array_mut()) {
            for ep in eps.iter_mut().filter_map(|e| e.as_object_mut()) {
                for unused in [
                    "targetRef",
                    "nodeName",
                    "zone",
                    "hints",
                    "deprecatedTopology",
                ] {
                    ep.remove(unused);
                }
            }
        }
    }
}

/// A watch of one kind, cluster-wide or in one namespace, with unused fields dropped. Each
/// watch request asks the server to end it after `timeout_secs` (kube then watches on from
/// where it was), so a healthy server is heard from even when nothing changes.
fn events(
    client: &Client,
    resource: &ApiResource,
    namespace: Option<&str>,
    timeout_secs: u32,
) -> Events {
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    };
    let is_slice = resource.kind == "EndpointSlice";
    // Bookmarks are on by default: with its watch cache, the server bookmarks shortly before
    // each timeout.
    watch_stream(api, watcher::Config::default().timeout(timeout_secs))
        .default_backoff()
        .map(move |e| e.map(|e| e.modify(|o| trim(o, is_slice))))
        .boxed()
}

/// 401/403 anywhere in a watcher error.
fn classify(e: &watcher::Error) -> Failure {
    let code = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code,
        watcher::Error::WatchError(s) => s.code,
        _ => 0,
    };
    if code == 401 || code == 403 {
        Failure::Refused
    } else {
        Failure::Other
    }
}

/// 410 Gone during a watch is routine (the resourceVersion expired): the watcher relists.
fn is_expired(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchError(s) if s.code == 410)
}

/// A watch from a resourceVersion the API server has not reached: after an etcd restore its
/// versions went back. client-go relists at once (`isTooLargeResourceVersionError`); kube's
/// watcher retries the same version for good, so the source restarts the watch itself.
fn is_too_large(e: &watcher::Error) -> bool {
    let status = match e {
        watcher::Error::WatchError(s) => s,
        watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s,
        _ => return false,
    };
    let cause = status.details.as_ref().is_some_and(|d| {
        d.causes
            .iter()
            .any(|c| c.reason == "ResourceVersionTooLarge")
    });
    cause || status.message.contains("Too large resource version")
}

struct Watched<'a> {
    health: &'a mut ApiHealth,
    /// Kinds whose list has begun and not finished, since when.
    listing: &'a mut BTreeMap<&'static str, Instant>,
    heard: &'a Heard,
    metrics: &'a KubernetesMetrics,
    status: &'a SourceStatus,
    due: &'a mut Option<Instant>,
    /// Kinds whose watch must start over with a list ([`is_too_large`]).
    restart: &'a mut Vec<&'static str>,
    /// When each kind's watch was last started over for [`is_too_large`].
    relisted: &'a mut BTreeMap<&'static str, Instant>,
}

/// A watch started over for a too-large resourceVersion is not started over again for this
/// long: a server that says so right after a fresh list is failing, and that failure takes the
/// ordinary path (retried after a backoff, counted against the bounds) rather than a list
/// request in a tight loop.
const RELIST_GAP: Duration = Duration::from_secs(10);

impl Watched<'_> {
    fn apply<K: serde::de::DeserializeOwned + Clone>(
        &mut self,
        cache: &mut ObjectCache<K>,
        kind: &'static str,
        ev: Option<Result<Event<DynamicObject>, watcher::Error>>,
    ) -> Result<(), SourceError> {
        if ev.is_some() {
            self.heard.heard(kind, Instant::now());
        }
        match ev {
            Some(Ok(e)) => {
                if matches!(e, Event::Init) {
                    // Sent before the list request: not an answer from the API server.
                    self.listing.entry(kind).or_insert_with(Instant::now);
                    self.metrics
                        .relists
                        .get_or_create(&KindLabel { kind })
                        .inc();
                } else {
                    if matches!(e, Event::InitDone) {
                        self.listing.remove(kind);
                    }
                    self.health.on_ok(kind);
                    // The API server answers again about every kind: the last table stands
                    // for what it holds.
                    if self.health.all_ok() {
                        self.status.clear_error();
                    }
                }
                if cache.apply(e) {
                    arm(self.due);
                }
            }
            Some(Err(e)) => {
                self.metrics
                    .watch_errors
                    .get_or_create(&KindLabel { kind })
                    .inc();
                if is_expired(&e) {
                    tracing::info!(kind, "resourceVersion expired; relisting");
                } else if is_too_large(&e)
                    && self
                        .relisted
                        .get(kind)
                        .is_none_or(|at| at.elapsed() >= RELIST_GAP)
                {
                    self.relisted.insert(kind, Instant::now());
                    tracing::warn!(
                        kind, error = %e,
                        "the API server has not reached the resourceVersion this watch is at (an etcd restore?); listing again"
                    );
                    self.restart.push(kind);
                } else {
                    tracing::warn!(kind, error = %e, "watch error, retrying after a backoff");
                    // Said at once in /v1/node and, gossiped, in every node's status: the
                    // give-up that ends the source comes only after its bounds (30 s). Without
                    // the kind, the three watches failing alike are one problem, not three
                    // that take turns (each turn would count and gossip anew).
                    self.status
                        .record_error(format!("watching the API server: {e}"));
                    self.health
                        .on_error(kind, Instant::now(), classify(&e), e.to_string());
                }
            }
            None => {
                return Err(SourceError::Other(anyhow::anyhow!("{kind} watch ended")));
            }
        }
        Ok(())
    }
}

pub async fn run_loop(
    client: Client,
    cfg: KubernetesConfig,
    out: watch::Sender<Option<RuleTable>>,
    cancel: CancellationToken,
    metrics: KubernetesMetrics,
    status: SourceStatus,
) -> Result<(), SourceError> {
    // A namespaced install cannot read cluster-scoped ShoalPools: its pool is in the config.
    let fixed_pools: Option<Vec<Pool>> = match &cfg.namespace {
        Some(ns) => Some(vec![
            pools::from_cidrs(&cfg.vip_pools, ns).map_err(|e| SourceError::Other(e.into()))?
        ]),
        None => None,
    };
    let ns = cfg.namespace.as_deref();
    let svc_resource = ApiResource::erase::<Service>(&());
    let slice_resource = ApiResource::erase::<EndpointSlice>(&());
    let pool_resource = pool_resource();
    let mut watched = vec![&svc_resource, &slice_resource];
    if fixed_pools.is_none() {
        watched.push(&pool_resource);
    }
    let kinds: Vec<(&str, &str, &'static str)> = watched
        .iter()
        .map(|r| (r.group.as_str(), r.plural.as_str(), kind_name(r)))
        .collect();
    let heard = Heard::new(&kinds, Instant::now());
    let client = heard::tap(client, heard.clone());
    let timeout = api_health::watch_timeout_secs(&cfg.bounds);
    let mut svc_events = events(&client, &svc_resource, ns, timeout);
    let mut slice_events = events(&client, &slice_resource, ns, timeout);
    let mut pool_events: Events = match fixed_pools {
        Some(_) => futures::stream::pending().boxed(),
        None => events(&client, &pool_resource, None, timeout),
    };

    let mut services: ObjectCache<Service> = ObjectCache::new("Service", "v1");
    let mut slices: ObjectCache<Slice> = ObjectCache::new("EndpointSlice", "discovery.k8s.io/v1");
    let mut pool_cache: ObjectCache<ShoalPool> = ObjectCache::new(pools::KIND, "shoal.io/v1alpha1");
    let instance = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "shoal".to_string());
    let writer = StatusWriter::new(client.clone(), instance, metrics.clone());
    // Writes run beside the loop: a slow API server (or thousands of first-time statuses)
    // never holds up the next table. The task always works on the newest pass.
    let (jobs, job_rx) = watch::channel::<Option<std::sync::Arc<WriteJob>>>(None);
    let write_task = tokio::spawn(write_loop(writer, job_rx, fixed_pools.is_none()));
    let _abort = AbortOnDrop(write_task);
    let mut health = ApiHealth::default();
    let mut listing: BTreeMap<&'static str, Instant> = BTreeMap::new();
    let mut due: Option<Instant> = None;
    let mut restart: Vec<&'static str> = Vec::new();
    let mut relisted: BTreeMap<&'static str, Instant> = BTreeMap::new();
    let mut check = tokio::time::interval(Duration::from_secs(1));
    tracing::info!(
        class = %cfg.load_balancer_class,
        namespace = ns.unwrap_or("(all)"),
        pools = if fixed_pools.is_some() { "vip_pools setting" } else { "ShoalPool objects" },
        "kubernetes source started"
    );

    loop {
        for kind in restart.drain(..) {
            // Dropping the old stream closes its connection; the new one lists first.
            let (stream, resource, namespace) = match kind {
                "Service" => (&mut svc_events, &svc_resource, ns),
                "EndpointSlice" => (&mut slice_events, &slice_resource, ns),
                _ => (&mut pool_events, &pool_resource, None),
            };
            *stream = events(&client, resource, namespace, timeout);
            heard.heard(kind, Instant::now());
        }
        let ready =
            services.synced() && slices.synced() && (fixed_pools.is_some() || pool_cache.synced());
        let step = tokio::select! {
            _ = cancel.cancelled() => Step::Stop,
            ev = svc_events.next() => Step::Service(ev),
            ev = slice_events.next() => Step::Slice(ev),
            ev = pool_events.next() => Step::Pool(ev),
            _ = check.tick() => Step::Check,
            _ = sleep_until(due), if ready && due.is_some() => Step::Publish,
        };
        let mut w = Watched {
            health: &mut health,
            listing: &mut listing,
            heard: &heard,
            metrics: &metrics,
            status: &status,
            due: &mut due,
            restart: &mut restart,
            relisted: &mut relisted,
        };
        match step {
            Step::Stop => {
                tracing::info!("kubernetes source stopped: no longer publisher");
                return Ok(());
            }
            Step::Service(ev) => w.apply(&mut services, "Service", ev)?,
            Step::Slice(ev) => w.apply(&mut slices, "EndpointSlice", ev)?,
            Step::Pool(ev) => w.apply(&mut pool_cache, pools::KIND, ev)?,
            Step::Check => {
                let now = Instant::now();
                restart.extend(silent_kinds(
                    &heard,
                    now,
                    &cfg.bounds,
                    &metrics,
                    &status,
                    &mut health,
                ));
                if !health.recover(&heard.last_answered()).is_empty() && health.all_ok() {
                    status.clear_error();
                }
                let overdue = listing.iter().find_map(|(kind, since)| {
                    api_health::list_overdue(kind, *since, now, &cfg.bounds)
                });
                if let Some(reason) = overdue.or_else(|| health.give_up(now, &cfg.bounds)) {
                    tracing::error!(%reason, "giving up the publisher role");
                    return Err(SourceError::GaveUp(reason));
                }
            }
            Step::Publish => {
                due = None;
                let pool_objects: Vec<pools::PoolObject> =
                    pool_cache.objects().iter().map(|p| p.object()).collect();
                let (pools, pool_problems) = match &fixed_pools {
                    Some(p) => (p.clone(), Vec::new()),
                    None => pools::parse_pools(&pool_objects),
                };
                let svcs = services.objects();
                let t = cpu_bound(|| {
                    translate::translate(
                        &svcs,
                        &slices.refs(),
                        &Settings {
                            load_balancer_class: &cfg.load_balancer_class,
                            pools: &pools,
                        },
                    )
                });
                let mut problems: Vec<Problem> = t.problems;
                problems.extend(services.problems().cloned());
                problems.extend(slices.problems().cloned());
                problems.extend(pool_cache.problems().cloned());
                problems.extend(pool_problems.iter().map(|p| Problem {
                    object: ObjectId {
                        kind: pools::KIND,
                        api_version: "shoal.io/v1alpha1",
                        namespace: String::new(),
                        name: p.pool().to_string(),
                        uid: None,
                    },
                    reason: "InvalidPool",
                    message: p.to_string(),
                }));
                problems.sort();
                let usage = pools::usage(
                    &pool_objects,
                    &pools,
                    &pool_problems,
                    t.vips.values().flatten(),
                );
                let table = t.table;
                let count = table.services.len();
                let changed = out.send_if_modified(|cur| {
                    if cur.as_ref() == Some(&table) {
                        false
                    } else {
                        *cur = Some(table);
                        true
                    }
                });
                if changed {
                    tracing::info!(
                        services = count,
                        problems = problems.len(),
                        "published rule table"
                    );
                }
                // One kind still failing: its error stays in /v1/node and `shoal status` (the
                // table may miss what that kind changed).
                if health.all_ok() {
                    status.record_table();
                } else {
                    status.record_table_despite_error();
                }
                jobs.send_replace(Some(std::sync::Arc::new(WriteJob {
                    services: svcs,
                    vips: t.vips,
                    clear: t.clear,
                    usage,
                    problems,
                })));
            }
        }
    }
}

/// Everything one pass wants written back. The Services are the cache's own (shared).
struct WriteJob {
    services: Vec<std::sync::Arc<Service>>,
    vips: std::collections::BTreeMap<String, Vec<std::net::IpAddr>>,
    clear: std::collections::BTreeSet<String>,
    usage: std::collections::BTreeMap<String, pools::PoolStatus>,
    problems: Vec<Problem>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Writes statuses, pool usage and Events for the newest pass, in slices of
/// [`STATUS_WRITES_PER_PASS`] so that a newer pass is picked up between slices.
async fn write_loop(
    mut writer: StatusWriter,
    mut jobs: watch::Receiver<Option<std::sync::Arc<WriteJob>>>,
    pools_from_objects: bool,
) {
    let mut failures = 0u32;
    loop {
        // A pass whose writes failed is taken up again after a backoff, unless a newer one
        // comes first: passes come only from watch events, so a Service whose status write
        // failed kept showing its old address until some other object changed (a probe: 120 s
        // and more; its old address counted as free meanwhile).
        let retry = (failures > 0).then(|| STATUS_RETRY.saturating_mul(1 << failures.min(5)));
        match retry {
            Some(after) => tokio::select! {
                changed = jobs.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(after.min(STATUS_RETRY_MAX)) => {}
            },
            None => {
                if jobs.changed().await.is_err() {
                    return;
                }
            }
        }
        loop {
            let Some(job) = jobs.borrow_and_update().clone() else {
                break;
            };
            let more = writer
                .sync_statuses(&job.services, &job.vips, &job.clear, STATUS_WRITES_PER_PASS)
                .await;
            failures = if writer.failed_writes > 0 {
                failures.saturating_add(1)
            } else {
                0
            };
            if pools_from_objects {
                writer.sync_pools(&job.usage).await;
            }
            writer.report(&job.problems).await;
            if !more {
                break;
            }
        }
    }
}

/// The first wait before a pass whose status writes failed is written again; it doubles with
/// each failed retry up to [`STATUS_RETRY_MAX`].
const STATUS_RETRY: Duration = Duration::from_millis(500);
const STATUS_RETRY_MAX: Duration = Duration::from_secs(30);

/// The kinds the API server has been silent on past the bound, each recorded as a failure of
/// that kind; the caller restarts their watches.
fn silent_kinds(
    heard: &Heard,
    now: Instant,
    bounds: &Bounds,
    metrics: &KubernetesMetrics,
    status: &SourceStatus,
    health: &mut ApiHealth,
) -> Vec<&'static str> {
    let mut silent = Vec::new();
    for (kind, last) in heard.last() {
        let Some(quiet) = api_health::silent_for(last, now, bounds) else {
            continue;
        };
        let secs = quiet.as_secs();
        tracing::warn!(
            kind,
            silent_s = secs,
            "the API server sent nothing on this watch (not even a bookmark or its end); \
             restarting it"
        );
        metrics
            .watch_errors
            .get_or_create(&KindLabel { kind })
            .inc();
        status.record_error(format!(
            "watching the API server: nothing on the {kind} watch for {secs}s"
        ));
        health.on_error(
            kind,
            now,
            Failure::Other,
            format!("nothing on the watch for {secs}s (restarted)"),
        );
        silent.push(kind);
    }
    silent
}

/// The kind names the loop, the caches and the metrics use.
fn kind_name(resource: &ApiResource) -> &'static str {
    match resource.kind.as_str() {
        "Service" => "Service",
        "EndpointSlice" => "EndpointSlice",
        _ => pools::KIND,
    }
}

type Next = Option<Result<Event<DynamicObject>, watcher::Error>>;

enum Step {
    Stop,
    Service(Next),
    Slice(Next),
    Pool(Next),
    Check,
    Publish,
}

/// Runs a long computation (translating 10,000 Services takes a while) without holding up
/// the other tasks of this worker thread, among them the mesh's control loop: a stalled
/// control loop costs the publisher its role. Needs the multi-threaded runtime (the daemon's);
/// elsewhere it simply runs inline.
fn cpu_bound<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn arm(due: &mut Option<Instant>) {
    due.get_or_insert_with(|| Instant::now() + Duration::from_millis(DEBOUNCE_MS));
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn trim_keeps_what_translation_reads() {
        let mut slice: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "s", "namespace": "n", "labels": {"kubernetes.io/service-name": "web"},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "web", "uid": "u"}],
                         "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "x"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 80}],
            "endpoints": [{"addresses": ["198.18.0.1"], "conditions": {"ready": true},
                           "nodeName": "n1", "zone": "z", "targetRef": {"kind": "Pod", "name": "p"}}],
        }))
        .unwrap();
        trim(&mut slice, true);
        let v = serde_json::to_value(&slice).unwrap();
        assert_eq!(
            v["endpoints"][0],
            json!({"addresses": ["198.18.0.1"], "conditions": {"ready": true}})
        );
        assert!(
            v["metadata"]["ownerReferences"].is_null() && v["metadata"]["annotations"].is_null()
        );
        assert_eq!(v["metadata"]["labels"]["kubernetes.io/service-name"], "web");
        let typed: EndpointSlice = serde_json::from_value(v).unwrap();
        assert_eq!(typed.endpoints[0].addresses, ["198.18.0.1"]);
    }
}
