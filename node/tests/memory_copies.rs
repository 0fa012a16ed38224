//! Where a replica's memory goes at cluster scale (issue #13 item 9): the heap bytes of each
//! form the table takes on its way from the API objects to the dataplane, measured with a
//! counting allocator in this test process. The scale benchmark (kubernetes_scale.rs) gives the
//! processes' peak RSS; this one says which copies make it up. Figures: docs/benchmarks.md.
//!   SHOAL_SCALE_SERVICES=10000 cargo test --release -p shoal-node --test memory_copies \
//!     -- --ignored --nocapture
//! The small run in CI checks that the figures add up (every form is measured and non-empty).

use k8s_openapi::api::core::v1::Service;
use serde_json::json;
use shoal_dataplane::{plan_view, reconcile, Dataplane, MemoryDataplane, Reconciler, View};
use shoal_node::desired::desired_state;
use shoal_node::health::Verdicts;
use shoal_node::source::kubernetes::pools::{parse_pools, PoolObject, PoolSpec};
use shoal_node::source::kubernetes::slice::Slice;
use shoal_node::source::kubernetes::translate::{translate, Settings};
use shoal_node::table::RuleTable;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
/// The highest `LIVE` since the last `peak_of` began.
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn count_up(bytes: usize) {
    let now = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            count_up(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            count_up(new_size);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap bytes still held by what `f` returns (what it freed on the way is not counted).
fn held<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    let t = f();
    (t, LIVE.load(Ordering::Relaxed).saturating_sub(before))
}

/// How far above its starting point the heap went while `f` ran.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let t = f();
    (t, PEAK.load(Ordering::Relaxed).saturating_sub(before))
}

const ENDPOINTS: usize = 20;

/// Services as the source caches them.
fn services(n: usize) -> Vec<Arc<Service>> {
    (0..n)
        .map(|i| {
            serde_json::from_value(json!({
                "metadata": {"namespace": format!("ns{}", i % 100), "name": format!("svc{i}"),
                             "uid": format!("{:08x}-0000-4000-8000-000000000000", i),
                             "resourceVersion": format!("{}", 1000 + i),
                             "creationTimestamp": "2026-01-01T00:00:00Z",
                             "annotations": {"shoal.io/health-check": "none"}},
                "spec": {"type": "LoadBalancer", "loadBalancerClass": "shoal.io/lb",
                         "clusterIP": format!("10.96.{}.{}", i / 250 % 250, i % 250 + 1),
                         "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80},
                                   {"name": "https", "port": 443, "protocol": "TCP", "targetPort": 443}]},
            }))
            .expect("service")
        })
        .map(Arc::new)
        .collect()
}

/// EndpointSlices as the source caches them: what translation reads (`Slice`).
fn slices(n: usize) -> Vec<Arc<Slice>> {
    (0..n)
        .map(|i| {
            let eps: Vec<_> = (0..ENDPOINTS)
                .map(|j| {
                    let k = i * ENDPOINTS + j;
                    json!({"addresses": [format!("198.19.{}.{}", k / 256 % 256, k % 256)],
                           "conditions": {"ready": true, "serving": true, "terminating": false}})
                })
                .collect();
            serde_json::from_value(json!({
                "metadata": {"namespace": format!("ns{}", i % 100), "name": format!("svc{i}-abcde"),
                             "resourceVersion": format!("{}", 50_000 + i),
                             "labels": {"kubernetes.io/service-name": format!("svc{i}")}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                          {"name": "https", "port": 443, "protocol": "TCP"}],
                "endpoints": eps,
            }))
            .expect("slice")
        })
        .map(Arc::new)
        .collect()
}

struct Figures {
    rows: Vec<(&'static str, usize)>,
}

impl Figures {
    fn add(&mut self, what: &'static str, bytes: usize) {
        self.rows.push((what, bytes));
    }
    fn print(&self, backends: usize) {
        for (what, bytes) in &self.rows {
            println!(
                "{what:<58} {:>8.1} MiB {:>6.0} B/backend",
                *bytes as f64 / 1048576.0,
                *bytes as f64 / backends.max(1) as f64
            );
        }
    }
}

fn measure(n: usize) -> (Figures, usize) {
    let mut f = Figures { rows: Vec::new() };
    let (services, b) = held(|| services(n));
    f.add("source cache: Services (typed, trimmed)", b);
    let (slices, b) = held(|| slices(n));
    f.add(
        "source cache: EndpointSlices (Slice: what translate reads)",
        b,
    );
    let (pools, problems) = parse_pools(&[PoolObject {
        name: "p".into(),
        created_s: 0,
        spec: PoolSpec {
            addresses: vec!["198.18.0.0/16".into()],
            ..PoolSpec::default()
        },
    }]);
    assert!(problems.is_empty());
    let (svc_copy, b) = held(|| services.clone());
    f.add("a pass's Services for the status job (shared)", b);
    drop(svc_copy);
    let slice_refs: Vec<&Slice> = slices.iter().map(|s| &**s).collect();
    let (out, b) = held(|| {
        translate(
            &services,
            &slice_refs,
            &Settings {
                load_balancer_class: "shoal.io/lb",
                pools: &pools,
            },
        )
    });
    f.add("translate output (table + VIPs + problems)", b);
    let table = out.table;
    let backends: usize = table.services.iter().map(|s| s.backends.len()).sum();
    assert_eq!(table.services.len(), 2 * n);
    let (copy, b) = held(|| table.clone());
    f.add("rule table (one copy)", b);
    drop(copy);
    let (bytes, b) = held(|| {
        bincode::serde::encode_to_vec(&table, bincode::config::standard()).expect("encode")
    });
    f.add("encoded document (bincode, kept to serve peers)", b);
    let (decoded, b) = held(|| {
        bincode::serde::decode_from_slice::<RuleTable, _>(&bytes, bincode::config::standard())
            .expect("decode")
            .0
    });
    f.add("decoded document (a fetched head)", b);
    assert_eq!(decoded, table);
    drop(decoded);
    let (desired, b) = held(|| desired_state(&table, &Verdicts::default()));
    f.add("desired state (per reconcile pass)", b);
    let (ops, b) = held(|| plan_view(&desired, &View::default()));
    f.add("ops of the first pass", b);
    let (view, b) = held(|| {
        let mut v = View::default();
        for op in &ops {
            v.apply(op);
        }
        v.shrink_after(&ops);
        v
    });
    f.add("reconciler's kept view", b);
    let (dp, b) = held(|| {
        let mut dp = MemoryDataplane::new();
        for op in &ops {
            dp.apply(op).expect("apply");
        }
        dp
    });
    f.add(
        "memory dataplane (bench only; IPVS keeps it in the kernel)",
        b,
    );
    drop(ops);
    let mut dp2 = dp.clone();
    let (actual, b) = held(|| dp2.read().expect("read"));
    f.add("a full read (Actual, at each drift check)", b);
    let (read_view, b) = held(|| actual.view());
    f.add("its view", b);
    assert_eq!(read_view, view);
    drop(read_view);
    drop(actual);
    // A drift check as the reconciler runs it, on a replica holding its kept view: the heap's
    // peak above that steady state.
    let mut rec = Reconciler::new(Duration::ZERO).with_drift_check(Duration::ZERO);
    rec.observed(view, Instant::now());
    let (report, b) = peak_of(|| reconcile(&mut dp2, &mut rec, &desired, Instant::now()));
    let report = report.expect("reconcile");
    assert!(report.full_read && report.ops.is_empty());
    f.add("peak of a drift check above the kept view", b);
    (f, backends)
}

#[test]
fn every_form_of_the_table_is_measured() {
    let (f, backends) = measure(50);
    assert_eq!(backends, 50 * 2 * ENDPOINTS);
    for (what, bytes) in &f.rows {
        assert!(*bytes > 0, "{what}: nothing measured");
    }
}

/// The figures at scale (default 10,000 Services x 2 ports x 20 endpoints).
#[test]
#[ignore]
fn memory_per_form_at_scale() {
    let n = std::env::var("SHOAL_SCALE_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let (f, backends) = measure(n);
    println!("{n} Services x 2 ports x {ENDPOINTS} endpoints = {backends} backends");
    f.print(backends);
}
