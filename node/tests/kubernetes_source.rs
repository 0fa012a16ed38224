//! The Kubernetes source against a fake API server: table contents as objects come and go,
//! status write-back, conflicts and malformed objects as Events, and a publisher handover.

mod kubernetes_fake;

use kubernetes_fake::{service, slice, FakeApi, Kind};
use serde_json::json;
use shoal_node::source::kubernetes::{run_with_client, KubernetesConfig};
use shoal_node::table::RuleTable;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

fn client(addr: SocketAddr) -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

fn config() -> KubernetesConfig {
    KubernetesConfig {
        vip_pools: vec!["203.0.113.0/24".into()],
        ..KubernetesConfig::default()
    }
}

struct Running {
    rx: watch::Receiver<Option<RuleTable>>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(api: &FakeApi, node: &str) -> Running {
    let addr = api.listen(node).await;
    let (tx, rx) = watch::channel(None);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run_with_client(client(addr), config(), tx, cancel.clone()));
    Running { rx, cancel, task }
}

/// Waits until the published table satisfies `pred`; returns it.
async fn wait_table(
    rx: &mut watch::Receiver<Option<RuleTable>>,
    what: &str,
    pred: impl Fn(&RuleTable) -> bool,
) -> RuleTable {
    let found = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(t) = rx.borrow_and_update().as_ref() {
                if pred(t) {
                    return t.clone();
                }
            }
            if rx.changed().await.is_err() {
                panic!("source stopped while waiting for {what}");
            }
        }
    })
    .await;
    match found {
        Ok(t) => t,
        Err(_) => panic!(
            "timed out waiting for {what}; last table: {:?}",
            rx.borrow()
        ),
    }
}

async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn backends(t: &RuleTable, name: &str) -> Vec<String> {
    t.services
        .iter()
        .find(|s| s.name == name)
        .map(|s| {
            s.backends
                .iter()
                .map(|b| format!("{}:{}", b.address, b.port))
                .collect()
        })
        .unwrap_or_default()
}

fn names(t: &RuleTable) -> Vec<&str> {
    t.services.iter().map(|s| s.name.as_str()).collect()
}

fn status_ip(api: &FakeApi, ns: &str, name: &str) -> Option<String> {
    api.get(Kind::Service, ns, name)?["status"]["loadBalancer"]["ingress"][0]["ip"]
        .as_str()
        .map(str::to_string)
}

#[tokio::test]
async fn services_and_slices_added_changed_deleted() {
    let api = FakeApi::new();
    api.apply(
        Kind::Service,
        service(
            "web",
            "front",
            &[("http", 80)],
            &[("shoal.io/vip", "203.0.113.10")],
        ),
    );
    api.apply(
        Kind::EndpointSlice,
        slice(
            "web",
            "front",
            "a",
            ("http", 80),
            &[("198.18.0.2", true), ("198.18.0.3", false)],
        ),
    );
    let mut node = start(&api, "n0").await;

    // Initial list: one service, only the ready endpoint.
    let t = wait_table(&mut node.rx, "initial table", |t| t.services.len() == 1).await;
    assert_eq!(names(&t), ["web/front:http"]);
    assert_eq!(backends(&t, "web/front:http"), ["198.18.0.2:80"]);
    assert_eq!(t.services[0].vip.to_string(), "203.0.113.10");
    assert_eq!(t.services[0].scheduler, "mh");

    // Endpoint becomes ready: a new version with both backends.
    api.apply(
        Kind::EndpointSlice,
        slice(
            "web",
            "front",
            "a",
            ("http", 80),
            &[("198.18.0.2", true), ("198.18.0.3", true)],
        ),
    );
    wait_table(&mut node.rx, "second backend", |t| {
        backends(t, "web/front:http").len() == 2
    })
    .await;

    // A second Service without a VIP gets one from the pool, and its status says so.
    api.apply(
        Kind::Service,
        service(
            "web",
            "api",
            &[("grpc", 9000)],
            &[("shoal.io/scheduler", "wrr")],
        ),
    );
    let t = wait_table(&mut node.rx, "second service", |t| t.services.len() == 2).await;
    let api_vip = t
        .services
        .iter()
        .find(|s| s.name == "web/api:grpc")
        .unwrap()
        .vip;
    assert!(api_vip.to_string().starts_with("203.0.113."));
    wait_for("status of web/api", || {
        status_ip(&api, "web", "api") == Some(api_vip.to_string())
    })
    .await;
    wait_for("status of web/front", || {
        status_ip(&api, "web", "front").as_deref() == Some("203.0.113.10")
    })
    .await;

    // Annotation change: scheduler moves to rr.
    api.apply(Kind::Service, {
        let mut s = service(
            "web",
            "front",
            &[("http", 80)],
            &[
                ("shoal.io/vip", "203.0.113.10"),
                ("shoal.io/scheduler", "rr"),
            ],
        );
        s["status"] = api.get(Kind::Service, "web", "front").unwrap()["status"].clone();
        s
    });
    wait_table(&mut node.rx, "scheduler change", |t| {
        t.services
            .iter()
            .any(|s| s.name == "web/front:http" && s.scheduler == "rr")
    })
    .await;

    // Deletions: the slice, then the Service.
    api.delete(Kind::EndpointSlice, "web", "front-a");
    wait_table(&mut node.rx, "no backends", |t| {
        backends(t, "web/front:http").is_empty() && t.services.len() == 2
    })
    .await;
    api.delete(Kind::Service, "web", "front");
    let t = wait_table(&mut node.rx, "front gone", |t| t.services.len() == 1).await;
    assert_eq!(names(&t), ["web/api:grpc"]);

    // Status write-backs are exactly the two initial ones: nothing is rewritten in a loop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(api.status_writes().len(), 2, "{:#?}", api.status_writes());
    node.cancel.cancel();
    node.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_burst_of_changes_is_one_version() {
    let api = FakeApi::new();
    api.apply(Kind::Service, service("ns", "s", &[("p", 80)], &[]));
    let mut node = start(&api, "n0").await;
    wait_table(&mut node.rx, "initial", |t| t.services.len() == 1).await;
    node.rx.borrow_and_update();
    let mut versions = 0;
    let counter = {
        let mut rx = node.rx.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while rx.changed().await.is_ok() {
                n += 1;
            }
            n
        })
    };
    for i in 0..20 {
        let eps: Vec<(String, bool)> = (0..=i).map(|j| (format!("198.18.1.{j}"), true)).collect();
        let eps: Vec<(&str, bool)> = eps.iter().map(|(a, r)| (a.as_str(), *r)).collect();
        api.apply(Kind::EndpointSlice, slice("ns", "s", "a", ("p", 80), &eps));
    }
    wait_table(&mut node.rx, "20 backends", |t| {
        backends(t, "ns/s:p").len() == 20
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    node.cancel.cancel();
    node.task.await.unwrap().unwrap();
    drop(node.rx);
    versions += counter.await.unwrap();
    // 20 slice updates within a few ms collapse into very few tables (debounce 150 ms).
    assert!(
        (1..=3).contains(&versions),
        "{versions} versions for one burst"
    );
}

#[tokio::test]
async fn duplicate_vip_is_an_event_and_nothing_is_overwritten() {
    let api = FakeApi::new();
    let mut older = service(
        "a",
        "first",
        &[("p", 80)],
        &[("shoal.io/vip", "203.0.113.50")],
    );
    older["metadata"]["creationTimestamp"] = json!("2025-01-01T00:00:00Z");
    api.apply(Kind::Service, older);
    api.apply(
        Kind::Service,
        service(
            "b",
            "second",
            &[("p", 81)],
            &[("shoal.io/vip", "203.0.113.50")],
        ),
    );
    let mut node = start(&api, "n0").await;
    let t = wait_table(&mut node.rx, "table", |t| !t.services.is_empty()).await;
    assert_eq!(names(&t), ["a/first:p"]);
    wait_for("conflict event", || {
        api.events()
            .iter()
            .any(|e| e["reason"] == "VipConflict" && e["regarding"]["name"] == "second")
    })
    .await;
    let ev = api
        .events()
        .into_iter()
        .find(|e| e["reason"] == "VipConflict")
        .unwrap();
    assert_eq!(ev["regarding"]["kind"], "Service");
    assert_eq!(ev["regarding"]["namespace"], "b");
    assert!(ev["note"].as_str().unwrap().contains("a/first"), "{ev}");
    wait_for("winner status", || status_ip(&api, "a", "first").is_some()).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        status_ip(&api, "b", "second"),
        None,
        "the loser's status is left alone"
    );
    // Reported once, not on every pass.
    api.apply(Kind::Service, service("c", "other", &[("p", 82)], &[]));
    wait_table(&mut node.rx, "third", |t| t.services.len() == 2).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let conflicts = api
        .events()
        .iter()
        .filter(|e| e["reason"] == "VipConflict")
        .count();
    assert_eq!(conflicts, 1);
    node.cancel.cancel();
}

#[tokio::test]
async fn malformed_objects_are_skipped_with_an_event_and_the_rest_published() {
    let api = FakeApi::new();
    api.apply(Kind::Service, service("ns", "good", &[("p", 80)], &[]));
    api.apply(
        Kind::EndpointSlice,
        slice("ns", "good", "a", ("p", 80), &[("198.18.0.9", true)]),
    );
    // Does not decode as a Service at all.
    let mut broken = service("ns", "broken", &[("p", 80)], &[]);
    broken["spec"]["ports"] = json!("eighty");
    api.apply(Kind::Service, broken);
    // Decodes, but an annotation is wrong.
    api.apply(
        Kind::Service,
        service(
            "ns",
            "typo",
            &[("p", 80)],
            &[("shoal.io/health-check", "icmp")],
        ),
    );
    // A slice whose endpoint address is garbage.
    api.apply(
        Kind::EndpointSlice,
        slice("ns", "good", "b", ("p", 80), &[("999.1.1.1", true)]),
    );

    let mut node = start(&api, "n0").await;
    let t = wait_table(&mut node.rx, "table", |t| !t.services.is_empty()).await;
    assert_eq!(names(&t), ["ns/good:p"]);
    assert_eq!(backends(&t, "ns/good:p"), ["198.18.0.9:80"]);
    wait_for("three events", || api.events().len() >= 3).await;
    let mut got: Vec<(String, String)> = api
        .events()
        .iter()
        .map(|e| {
            (
                e["reason"].as_str().unwrap().to_string(),
                e["regarding"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("InvalidAnnotation".to_string(), "typo".to_string()),
            ("MalformedEndpointSlice".to_string(), "good-b".to_string()),
            ("MalformedObject".to_string(), "broken".to_string()),
        ]
    );
    let typo = api
        .events()
        .into_iter()
        .find(|e| e["reason"] == "InvalidAnnotation")
        .unwrap();
    assert!(typo["note"]
        .as_str()
        .unwrap()
        .contains("shoal.io/health-check"));
    node.cancel.cancel();
}

#[tokio::test]
async fn handover_keeps_the_table_and_only_the_publisher_talks() {
    let api = FakeApi::new();
    api.apply(Kind::Service, service("ns", "a", &[("p", 80)], &[]));
    api.apply(
        Kind::Service,
        service("ns", "b", &[("p", 80), ("q", 443)], &[]),
    );
    api.apply(
        Kind::EndpointSlice,
        slice(
            "ns",
            "a",
            "x",
            ("p", 80),
            &[("198.18.0.1", true), ("198.18.0.2", true)],
        ),
    );

    let mut first = start(&api, "first").await;
    let second_addr = api.listen("second").await;
    wait_table(&mut first.rx, "first table", |t| t.services.len() == 3).await;
    wait_for("statuses", || {
        status_ip(&api, "ns", "a").is_some() && status_ip(&api, "ns", "b").is_some()
    })
    .await;
    assert!(api.open_watches("first") >= 2);
    assert_eq!(
        api.request_count("second"),
        0,
        "a non-publisher never calls the API server"
    );

    // Mid-stream change seen by the first publisher, then it loses the role.
    api.apply(
        Kind::EndpointSlice,
        slice(
            "ns",
            "a",
            "x",
            ("p", 80),
            &[("198.18.0.1", true), ("198.18.0.3", true)],
        ),
    );
    let t1 = wait_table(&mut first.rx, "changed table", |t| {
        backends(t, "ns/a:p") == ["198.18.0.1:80", "198.18.0.3:80"]
    })
    .await;
    first.cancel.cancel();
    first.task.await.unwrap().unwrap();
    // The server only notices a closed watch when it writes to it: poke with an object that
    // is not ours until both of first's watches are gone.
    let deadline = tokio::time::Instant::now() + WAIT;
    for i in 0.. {
        if api.open_watches("first") == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "first's watches stay open"
        );
        let mut other = service("other", "cluster-ip", &[("p", 80)], &[]);
        other["spec"]["type"] = json!("ClusterIP");
        other["metadata"]["labels"] = json!({"poke": i.to_string()});
        api.apply(Kind::Service, other);
        api.apply(
            Kind::EndpointSlice,
            slice("other", "cluster-ip", &i.to_string(), ("p", 80), &[]),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_count = api.request_count("first");
    let writes_before = api.status_writes().len();

    // The next publisher lists and watches from scratch and publishes the same content, even
    // when one of its lists is slow.
    api.delay_lists(Kind::EndpointSlice, Duration::from_millis(600));
    let (tx, mut rx) = watch::channel(None);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run_with_client(
        client(second_addr),
        config(),
        tx,
        cancel.clone(),
    ));
    // The very first table it sends is already complete: nothing is published before both
    // kinds are listed, so replicas never see a half-empty table during a handover.
    let t2 = wait_table(&mut rx, "second publisher's table", |_| true).await;
    assert_eq!(t2, t1, "content must not change across a handover");
    let lists: Vec<_> = api.requests("second").into_iter().map(|r| r.path).collect();
    assert!(
        lists.iter().any(|p| p.starts_with("/api/v1/services?")),
        "{lists:?}"
    );
    assert!(
        lists
            .iter()
            .any(|p| p.starts_with("/apis/discovery.k8s.io/v1/endpointslices?")),
        "{lists:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        api.status_writes().len(),
        writes_before,
        "VIPs are stable: no status rewrite after handover"
    );
    assert_eq!(
        api.request_count("first"),
        first_count,
        "the old publisher stopped talking"
    );
    cancel.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn bad_pools_fail_before_any_request() {
    let api = FakeApi::new();
    let addr = api.listen("n0").await;
    let (tx, _rx) = watch::channel(None);
    let cfg = KubernetesConfig {
        vip_pools: vec!["203.0.113.0/33".into()],
        ..KubernetesConfig::default()
    };
    let err = run_with_client(client(addr), cfg, tx, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("203.0.113.0/33"), "{err}");
    assert_eq!(api.request_count("n0"), 0);
}
