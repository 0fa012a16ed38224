//! Translation cost at cluster scale: kube-proxy's IPVS mode is known to take seconds per sync
//! with thousands of Services (kubernetes#84906); the publisher's translation must not.
//! A generous bound only (debug build, shared CI machine); the figure is printed.

use k8s_openapi::api::core::v1::Service;
use serde_json::json;
use shoal_node::source::kubernetes::pools::{parse_pools, PoolObject, PoolSpec};
use shoal_node::source::kubernetes::slice::Slice;
use shoal_node::source::kubernetes::translate::{translate, Settings};
use std::time::Instant;

#[test]
fn two_thousand_services_translate_quickly() {
    let services_n = 2000;
    let endpoints_n = 20;
    let services: Vec<Service> = (0..services_n)
        .map(|i| {
            serde_json::from_value(json!({
                "metadata": {"namespace": format!("ns{}", i % 50), "name": format!("svc{i}"),
                             "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"type": "LoadBalancer", "loadBalancerClass": "shoal.io/lb",
                         "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}]},
            }))
            .unwrap()
        })
        .collect();
    let slices: Vec<Slice> = (0..services_n)
        .map(|i| {
            let eps: Vec<_> = (0..endpoints_n)
                .map(|j| json!({"addresses": [format!("198.18.{}.{}", (i * endpoints_n + j) / 250 % 250, (i * endpoints_n + j) % 250 + 1)]}))
                .collect();
            serde_json::from_value(json!({
                "metadata": {"namespace": format!("ns{}", i % 50), "name": format!("svc{i}-x"),
                             "labels": {"kubernetes.io/service-name": format!("svc{i}")}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}],
                "endpoints": eps,
            }))
            .unwrap()
        })
        .collect();
    let (pools, problems) = parse_pools(&[PoolObject {
        name: "p".into(),
        created_s: 0,
        spec: PoolSpec {
            addresses: vec!["203.0.112.0/21".into(), "198.51.100.0/24".into()],
            ..PoolSpec::default()
        },
    }]);
    assert!(problems.is_empty());
    let settings = Settings {
        load_balancer_class: "shoal.io/lb",
        pools: &pools,
    };
    let mut times_ms = Vec::new();
    let mut out = None;
    for _ in 0..5 {
        let start = Instant::now();
        out = Some(translate(&services, &slices, &settings));
        times_ms.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let out = out.unwrap();
    assert!(
        out.problems.is_empty(),
        "{:?}",
        &out.problems[..3.min(out.problems.len())]
    );
    assert_eq!(out.table.services.len(), 2 * services_n);
    assert!(out
        .table
        .services
        .iter()
        .all(|s| s.backends.len() == endpoints_n));
    assert_eq!(out.vips.len(), services_n);
    times_ms.sort_by(f64::total_cmp);
    println!(
        "translate {services_n} services x 2 ports x {endpoints_n} endpoints: median {:.1} ms, max {:.1} ms",
        times_ms[2], times_ms[4]
    );
    assert!(times_ms[2] < 5000.0, "median {} ms", times_ms[2]);
}

mod common;
mod kubernetes_fake;

use kubernetes_fake::{kubeconfig, pool, service, slice, FakeApi, Kind};
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Peak resident set size of a process (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// `(epoch, seq)` of a version object in /v1/cluster.
fn ver(v: &Value) -> Option<(u64, u64)> {
    Some((v["epoch"].as_u64()?, v["seq"].as_u64()?))
}

async fn cluster(admin: &str) -> Option<Value> {
    reqwest::get(format!("http://{admin}/v1/cluster"))
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// The head version and the lowest applied version over all members (None until all applied).
async fn head_and_min_applied(admin: &str, members: usize) -> Option<((u64, u64), (u64, u64))> {
    let c = cluster(admin).await?;
    let head = ver(&c["head"])?;
    let ms = c["members"].as_array()?;
    if ms.len() < members {
        return None;
    }
    let applied: Option<Vec<(u64, u64)>> = ms.iter().map(|m| ver(&m["applied"])).collect();
    Some((head, applied?.into_iter().min()?))
}

const BENCH_ENDPOINTS: usize = 20;

/// The endpoint addresses of Service `i` in generation `gen` (data only, memory dataplane:
/// addresses repeat across Services past 65,536).
fn eps_of(i: usize, gen: usize) -> Vec<String> {
    (0..BENCH_ENDPOINTS)
        .map(|j| {
            let k = i * BENCH_ENDPOINTS + j + gen;
            format!("198.19.{}.{}", k / 256 % 256, k % 256)
        })
        .collect()
}

/// What the EndpointSlice controller puts in a slice besides addresses: ports for both
/// Service ports, and per endpoint a `targetRef`, the node and the zone.
fn realistic(s: &mut Value, ns: &str, i: usize) {
    s["ports"] = serde_json::json!([
        {"name": "http", "port": 80, "protocol": "TCP"},
        {"name": "https", "port": 443, "protocol": "TCP"},
    ]);
    if let Some(eps) = s["endpoints"].as_array_mut() {
        for (j, ep) in eps.iter_mut().enumerate() {
            ep["nodeName"] = serde_json::json!(format!("node-{}", (i + j) % 50));
            ep["zone"] = serde_json::json!(format!("zone-{}", (i + j) % 3));
            ep["targetRef"] = serde_json::json!({
                "kind": "Pod", "namespace": ns, "name": format!("svc{i}-7d9f8b6c5-{j:05}"),
                "uid": format!("{:08x}-0000-4000-8000-{:012x}", i, j),
            });
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// Issue #13 item 9, a benchmark (ignored in CI): 10,000 Services with 2 ports and 20
/// endpoints each on a fake API server, three `shoal run` processes (memory dataplane), then
/// 50 EndpointSlice changes per second. Prints peak RSS of the publisher and of a follower,
/// the initial sync time, and per change the time until every replica applied a version
/// containing it. Command and figures: docs/benchmarks.md.
///   SHOAL_SCALE_SERVICES=10000 SHOAL_SCALE_CHURN_S=30 cargo test --release -p shoal-node \
///     --test kubernetes_scale -- --ignored --nocapture scale_bench
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn scale_bench() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let n = env("SHOAL_SCALE_SERVICES", 10_000);
    let churn_s = env("SHOAL_SCALE_CHURN_S", 30);
    let rate = env("SHOAL_SCALE_RATE", 50);
    let endpoints_n = BENCH_ENDPOINTS;
    let api = FakeApi::new();
    api.apply(
        Kind::ShoalPool,
        pool("bench", &["198.18.0.0/16"], None, true),
    );
    for i in 0..n {
        let ns = format!("ns{}", i % 100);
        let name = format!("svc{i}");
        api.apply(
            Kind::Service,
            // No health checks: the endpoints do not exist (data only, memory dataplane).
            service(
                &ns,
                &name,
                &[("http", 80), ("https", 443)],
                &[("shoal.io/health-check", "none")],
            ),
        );
        let eps = eps_of(i, 0);
        let eps: Vec<(&str, bool)> = eps.iter().map(|a| (a.as_str(), true)).collect();
        let mut s = slice(&ns, &name, "a", ("http", 80), &eps);
        realistic(&mut s, &ns, i);
        api.apply(Kind::EndpointSlice, s);
    }
    // More `shoal run` flags for every node, e.g. `--drain-s 0`.
    let extra_args: Vec<String> = std::env::var("SHOAL_SCALE_ARGS")
        .map(|v| v.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let dir = tempfile::tempdir().unwrap();
    let listen: Vec<u16> = (0..3).map(|_| common::free_udp_port()).collect();
    let admin: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", common::free_tcp_port()))
        .collect();
    let mut procs = Vec::new();
    let start = std::time::Instant::now();
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        let addr = api.listen(id).await;
        let kc = dir.path().join(format!("{id}.kubeconfig"));
        std::fs::write(&kc, kubeconfig(addr)).unwrap();
        let seeds: Vec<String> = (0..3)
            .filter(|&j| j != i)
            .map(|j| format!("127.0.0.1:{}", listen[j]))
            .collect();
        let log = std::fs::File::create(dir.path().join(format!("{id}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["run", "--node-id", id, "--listen"])
            .arg(format!("127.0.0.1:{}", listen[i]))
            .args(["--admin", &admin[i], "--seeds", &seeds.join(",")])
            .args(["--cluster", "scale", "--insecure", "--source", "kubernetes"])
            .arg("--kubeconfig")
            .arg(&kc)
            .args(["--dataplane", "memory"])
            .args(&extra_args)
            .env(
                "SHOAL_LOG",
                std::env::var("SHOAL_SCALE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        procs.push(Proc(child));
        if i == 0 {
            // Node a publishes (OrderedReady start); give it a head start.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    // Initial sync: every replica applied a head (the first full table).
    let deadline = std::time::Instant::now() + Duration::from_secs(900);
    let first_head = loop {
        if let Some((head, min_applied)) = head_and_min_applied(&admin[0], 3).await {
            if min_applied >= head {
                break head;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no initial sync");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let sync_s = start.elapsed().as_secs_f64();
    let rss_sync: Vec<f64> = procs.iter().map(|p| peak_rss_mib(p.0.id())).collect();
    let publisher_req = api.request_count("a");

    // Churn: `rate` slice changes per second, each flipping one Service's endpoint set.
    // For a change at t: `lo` = every replica applied the first head first seen after t,
    // `hi` = ... the head after that one (surely contains the change: its translation began
    // after the previous head was published, which was after t). Polled every 20 ms.
    let changes: std::sync::Arc<std::sync::Mutex<Vec<std::time::Instant>>> = Default::default();
    let churn = {
        let (api, changes) = (api.clone(), changes.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            let end = std::time::Instant::now() + Duration::from_secs(churn_s as u64);
            let mut k = 0usize;
            while std::time::Instant::now() < end {
                tick.tick().await;
                k += 1;
                let i = (k * 7919) % n;
                let ns = format!("ns{}", i % 100);
                let eps = eps_of(i, k);
                let eps: Vec<(&str, bool)> = eps.iter().map(|a| (a.as_str(), true)).collect();
                let mut s = slice(&ns, &format!("svc{i}"), "a", ("http", 80), &eps);
                realistic(&mut s, &ns, i);
                api.apply(Kind::EndpointSlice, s);
                changes.lock().unwrap().push(std::time::Instant::now());
            }
        })
    };
    let mut heads: Vec<((u64, u64), std::time::Instant)> =
        vec![(first_head, std::time::Instant::now())];
    let mut all_applied: Vec<((u64, u64), std::time::Instant)> = Vec::new();
    let churn_start = std::time::Instant::now();
    while churn_start.elapsed() < Duration::from_secs(churn_s as u64 + 15) {
        if let Some((head, min_applied)) = head_and_min_applied(&admin[0], 3).await {
            let t = std::time::Instant::now();
            if heads.last().is_none_or(|(h, _)| *h != head) {
                heads.push((head, t));
            }
            if all_applied.last().is_none_or(|(h, _)| *h < min_applied) {
                all_applied.push((min_applied, t));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    churn.await.unwrap();
    let changes = changes.lock().unwrap().clone();
    let applied_at = |v: (u64, u64)| all_applied.iter().find(|(a, _)| *a >= v).map(|(_, t)| *t);
    let (mut lo, mut hi) = (Vec::new(), Vec::new());
    let mut missed = 0;
    for t in &changes {
        let idx = heads.iter().position(|(_, seen)| seen > t);
        let (Some(i1), Some(i2)) = (idx, idx.map(|i| i + 1).filter(|&i| i < heads.len())) else {
            missed += 1;
            continue;
        };
        match (applied_at(heads[i1].0), applied_at(heads[i2].0)) {
            (Some(a), Some(b)) => {
                lo.push((a - *t).as_secs_f64() * 1000.0);
                hi.push((b - *t).as_secs_f64() * 1000.0);
            }
            _ => missed += 1,
        }
    }
    let rss_end: Vec<f64> = procs.iter().map(|p| peak_rss_mib(p.0.id())).collect();
    let mut hi_sorted = hi.clone();
    hi_sorted.sort_by(f64::total_cmp);
    let p90 = hi_sorted
        .get(hi_sorted.len() * 9 / 10)
        .copied()
        .unwrap_or(f64::NAN);
    println!(
        "scale: {n} services x 2 ports x {endpoints_n} endpoints ({} virtual services)",
        2 * n
    );
    println!(
        "initial sync (start -> every replica applied): {sync_s:.1} s; publisher requests {publisher_req}"
    );
    println!(
        "peak RSS after sync: publisher {:.0} MiB, followers {:.0} / {:.0} MiB",
        rss_sync[0], rss_sync[1], rss_sync[2]
    );
    println!(
        "peak RSS after {churn_s} s of {rate} changes/s: publisher {:.0} MiB, followers {:.0} / {:.0} MiB",
        rss_end[0], rss_end[1], rss_end[2]
    );
    println!(
        "change -> every replica applied: median {:.0} ms (lower bound {:.0} ms), p90 {:.0} ms, max {:.0} ms; {} changes, {} heads, {} unmatched",
        median(&mut hi.clone()),
        median(&mut lo),
        p90,
        hi_sorted.last().copied().unwrap_or(f64::NAN),
        changes.len(),
        heads.len(),
        missed
    );
    assert!(changes.len() > rate * churn_s / 2, "the churn ran");
    let _ = std::fs::copy(dir.path().join("a.log"), "/tmp/shoal-scale-a.log");
}
