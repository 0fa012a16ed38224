//! Three real `shoal run` processes with `--source kubernetes`, each with its own kubeconfig
//! pointing at its own port of one fake API server, so requests are counted per node:
//! only the publisher talks to the API server, and when it is killed the next one lists and
//! watches and the replicated table content is unchanged.

mod common;
mod kubernetes_fake;

use common::{dump_logs, free_tcp_port, free_udp_port};
use kubernetes_fake::{kubeconfig, pool, service, slice, FakeApi, Kind};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(40);

struct Node {
    id: String,
    admin: SocketAddr,
    child: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(
    id: &str,
    listen: u16,
    admin: u16,
    seeds: &[u16],
    kubeconfig: &Path,
    logs: &Path,
    extra: &[&str],
) -> Node {
    let seeds: Vec<String> = seeds.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let log = std::fs::File::create(logs.join(format!("{id}.log"))).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args([
            "run",
            "--node-id",
            id,
            "--listen",
            &format!("127.0.0.1:{listen}"),
            "--admin",
            &format!("127.0.0.1:{admin}"),
            "--seeds",
            &seeds.join(","),
            "--cluster",
            "k8s-test",
            "--insecure",
            "--source",
            "kubernetes",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--dataplane",
            "memory",
        ])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Node {
        id: id.to_string(),
        admin: format!("127.0.0.1:{admin}").parse().unwrap(),
        child,
    }
}

/// Three node slots: ids, ports, and a folder for kubeconfigs and logs. Each node is seeded
/// with the other two.
struct Slots {
    dir: tempfile::TempDir,
    ids: [&'static str; 3],
    listen: Vec<u16>,
    admin: Vec<u16>,
}

impl Slots {
    fn new() -> Self {
        Slots {
            dir: tempfile::tempdir().unwrap(),
            ids: ["a", "b", "c"],
            listen: (0..3).map(|_| free_udp_port()).collect(),
            admin: (0..3).map(|_| free_tcp_port()).collect(),
        }
    }

    /// Starts node `i` with a kubeconfig pointing at `api`, its own port of the fake server.
    fn start(&self, i: usize, api: SocketAddr) -> Node {
        let id = self.ids[i];
        let kc = self.dir.path().join(format!("{id}.kubeconfig"));
        std::fs::write(&kc, kubeconfig(api)).unwrap();
        let seeds: Vec<u16> = (0..3).filter(|&j| j != i).map(|j| self.listen[j]).collect();
        // Node a may start alone, like the first replica of a fresh StatefulSet (whose peers'
        // DNS names do not resolve yet); its seeds here are literal addresses that resolve but
        // do not answer, which without --single-node keeps a node catching up (issue #15).
        let extra: &[&str] = if i == 0 { &["--single-node"] } else { &[] };
        spawn(
            id,
            self.listen[i],
            self.admin[i],
            &seeds,
            &kc,
            self.dir.path(),
            extra,
        )
    }
}

async fn table(node: &Node) -> Option<Value> {
    let url = format!("http://{}/v1/table", node.admin);
    let resp = reqwest::get(url).await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json::<Value>().await.ok()
}

async fn wait_for<F, Fut>(what: &str, logs: &Path, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond().await {
        if tokio::time::Instant::now() > deadline {
            dump_logs(logs, 40);
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A fake API server holding one ShoalPool, 203.0.113.0/24 for every namespace.
fn new_api() -> FakeApi {
    let api = FakeApi::new();
    api.apply(
        Kind::ShoalPool,
        pool("default", &["203.0.113.0/24"], None, true),
    );
    api
}

fn service_count(t: &Option<Value>) -> usize {
    t.as_ref()
        .and_then(|t| t["table"]["services"].as_array())
        .map(Vec::len)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_publisher_talks_and_a_new_one_takes_over() {
    let api = new_api();
    api.apply(
        Kind::Service,
        service(
            "ns",
            "web",
            &[("http", 80)],
            &[("shoal.io/vip", "203.0.113.10")],
        ),
    );
    api.apply(Kind::Service, service("ns", "dns", &[("dns", 53)], &[]));
    api.apply(
        Kind::EndpointSlice,
        slice(
            "ns",
            "web",
            "a",
            ("http", 80),
            &[("198.18.0.2", true), ("198.18.0.3", true)],
        ),
    );

    let slots = Slots::new();
    let dir = &slots.dir;
    let mut nodes = Vec::new();
    let addrs = [
        api.listen("a").await,
        api.listen("b").await,
        api.listen("c").await,
    ];
    // Node a first, as the StatefulSet's OrderedReady start does: nodes started at the same
    // instant each claim the role until they hear each other (see `simultaneous_start`).
    nodes.push(slots.start(0, addrs[0]));
    wait_for("node a publishes", dir.path(), || {
        let a = &nodes[0];
        async move { service_count(&table(a).await) == 2 }
    })
    .await;
    nodes.push(slots.start(1, addrs[1]));
    nodes.push(slots.start(2, addrs[2]));

    // Every node holds the table; it came from the API server through node a only.
    wait_for("all three nodes hold the table", dir.path(), || {
        let nodes = &nodes;
        async move {
            for n in nodes {
                if service_count(&table(n).await) != 2 {
                    return false;
                }
            }
            true
        }
    })
    .await;
    let before = table(&nodes[2]).await.unwrap()["table"].clone();
    if api.request_count("b") + api.request_count("c") > 0 {
        dump_logs(dir.path(), 40);
        eprintln!("b: {:?}\nc: {:?}", api.requests("b"), api.requests("c"));
    }
    assert!(
        api.request_count("a") > 0,
        "the publisher lists and watches"
    );
    assert_eq!(
        api.request_count("b"),
        0,
        "node b must not contact the API server"
    );
    assert_eq!(
        api.request_count("c"),
        0,
        "node c must not contact the API server"
    );

    // Let the views settle first: killed while b and c are only a second old (b's caught-up
    // state not yet gossiped to c), c can briefly elect itself too (reported to the lead).
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Kill the publisher mid-stream.
    let a = nodes.remove(0);
    assert_eq!(a.id, "a");
    drop(a);
    wait_for("node b lists and watches", dir.path(), || {
        let api = api.clone();
        async move {
            let paths: Vec<String> = api.requests("b").into_iter().map(|r| r.path).collect();
            paths
                .iter()
                .any(|p| p.contains("watch=true") && p.starts_with("/api/v1/services"))
                && paths
                    .iter()
                    .any(|p| p.contains("watch=true") && p.starts_with("/apis/discovery.k8s.io"))
        }
    })
    .await;
    // The new publisher's first table is the same content: nothing flaps on node c.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(table(&nodes[1]).await.unwrap()["table"], before);
    // A change after the handover flows through the new publisher to node c.
    api.apply(
        Kind::EndpointSlice,
        slice(
            "ns",
            "web",
            "a",
            ("http", 80),
            &[
                ("198.18.0.2", true),
                ("198.18.0.3", true),
                ("198.18.0.4", true),
            ],
        ),
    );
    wait_for("node c sees the change published by b", dir.path(), || {
        let c = &nodes[1];
        async move {
            table(c).await.is_some_and(|t| {
                t["version"]["origin"] == "b"
                    && t["table"]["services"].as_array().is_some_and(|s| {
                        s.iter()
                            .any(|v| v["backends"].as_array().is_some_and(|b| b.len() == 3))
                    })
            })
        }
    })
    .await;
    if api.request_count("c") > 0 {
        dump_logs(dir.path(), 40);
        eprintln!("c: {:?}", api.requests("c"));
    }
    assert_eq!(
        api.request_count("c"),
        0,
        "node c still never contacted the API server"
    );

    // Apart from the new backend, the content is what node a published: same names and VIPs.
    let after = table(&nodes[1]).await.unwrap()["table"].clone();
    let shape = |t: &Value| -> Vec<(String, String)> {
        t["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_string(),
                    s["vip"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(shape(&after), shape(&before));
}

/// Three nodes started at the same instant: only the lowest may talk to the API server. On a
/// loaded machine the join grace (600 ms) can pass before a node hears the others, so a node
/// also waits for its seeds and for members heard only once (see `election::has_listened`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_start() {
    let api = new_api();
    api.apply(Kind::Service, service("ns", "web", &[("http", 80)], &[]));
    let slots = Slots::new();
    let dir = &slots.dir;
    let mut nodes = Vec::new();
    for (i, id) in slots.ids.iter().enumerate() {
        nodes.push(slots.start(i, api.listen(id).await));
    }
    wait_for("all three nodes hold the table", dir.path(), || {
        let nodes = &nodes;
        async move {
            for n in nodes {
                if service_count(&table(n).await) != 1 {
                    return false;
                }
            }
            true
        }
    })
    .await;
    if api.request_count("b") + api.request_count("c") > 0 {
        dump_logs(dir.path(), 40);
        eprintln!("b: {:?}\nc: {:?}", api.requests("b"), api.requests("c"));
    }
    assert_eq!(api.request_count("b") + api.request_count("c"), 0);
}

async fn cluster(node: &Node) -> Option<Value> {
    let url = format!("http://{}/v1/cluster", node.admin);
    reqwest::get(url).await.ok()?.json::<Value>().await.ok()
}

/// #12 item 5: the publisher's API server starts answering 403 (RBAC, a network policy in
/// front of an authorizing proxy): within the refusal bound it gives up the role, says why in
/// /v1/cluster, and the next node lists, watches and publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_publisher_gives_up_and_the_next_node_takes_over() {
    let api = new_api();
    api.apply(Kind::Service, service("ns", "web", &[("http", 80)], &[]));
    let slots = Slots::new();
    let dir = &slots.dir;
    let addrs = [
        api.listen("a").await,
        api.listen("b").await,
        api.listen("c").await,
    ];
    let mut nodes = vec![slots.start(0, addrs[0])];
    wait_for("node a publishes", dir.path(), || {
        let a = &nodes[0];
        async move { service_count(&table(a).await) == 1 }
    })
    .await;
    nodes.push(slots.start(1, addrs[1]));
    nodes.push(slots.start(2, addrs[2]));
    wait_for("all three nodes hold the table", dir.path(), || {
        let nodes = &nodes;
        async move {
            for n in nodes {
                if service_count(&table(n).await) != 1 {
                    return false;
                }
            }
            true
        }
    })
    .await;
    assert_eq!(api.request_count("b"), 0);

    // Node a's API server now refuses it; its open watches end, so it must ask again.
    api.set_forbidden("a", true);
    api.close_watches();
    wait_for("node b lists and watches", dir.path(), || {
        let api = api.clone();
        async move {
            api.requests("b")
                .iter()
                .any(|r| r.path.contains("watch=true") && r.status == 200)
        }
    })
    .await;
    wait_for("/v1/cluster says why a stands down", dir.path(), || {
        let c = &nodes[2];
        async move {
            cluster(c).await.is_some_and(|v| {
                v["publisher"] == "b"
                    && v["members"].as_array().is_some_and(|m| {
                        m.iter().any(|m| {
                            m["id"] == "a"
                                && m["stand_down"]
                                    .as_str()
                                    .is_some_and(|r| r.contains("refuses"))
                        })
                    })
            })
        }
    })
    .await;
    let refused = api.requests("a").iter().filter(|r| r.status == 403).count();
    assert!(refused > 0, "a was refused");
    // Node a's metrics say what happened.
    let metrics = reqwest::get(format!("http://{}/metrics", nodes[0].admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "shoal_kubernetes_stand_downs_total 1",
        "shoal_kubernetes_watch_errors_total{kind=\"Service\"}",
        "shoal_kubernetes_relists_total{kind=\"Service\"}",
        "shoal_kubernetes_status_writes_total{kind=\"Service\",result=\"ok\"} 1",
    ] {
        assert!(metrics.contains(needle), "{needle} missing in\n{metrics}");
    }
    // A change flows through b to every node.
    api.apply(
        Kind::EndpointSlice,
        slice("ns", "web", "x", ("http", 80), &[("198.18.0.7", true)]),
    );
    wait_for("node c sees b's table", dir.path(), || {
        let c = &nodes[2];
        async move {
            table(c).await.is_some_and(|t| {
                t["version"]["origin"] == "b"
                    && t["table"]["services"][0]["backends"]
                        .as_array()
                        .is_some_and(|b| b.len() == 1)
            })
        }
    })
    .await;
    // Not asserted: that c never called the API server. On a loaded machine c's failure
    // detector can judge b dead for a moment and c publishes briefly (the same false death the
    // test above works around); what matters is that b ends up publishing for everyone.
}

/// An API server out of reach was said only when the publisher gave up (after its 30 s
/// bounds): `source.last_error` stayed null meanwhile, though every watch failed. Each watch
/// error is now the source's problem at once: in `/v1/node` and, gossiped, in `/v1/cluster`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_out_of_reach_is_said_at_once() {
    let slots = Slots::new();
    let closed = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let node = slots.start(0, closed);
    let started = std::time::Instant::now();
    wait_for("node a says why it has no table", slots.dir.path(), || {
        let admin = node.admin;
        async move {
            let Ok(answer) = reqwest::get(format!("http://{admin}/v1/cluster")).await else {
                return false;
            };
            let Ok(v) = answer.json::<Value>().await else {
                return false;
            };
            v["source_error"]
                .as_str()
                .is_some_and(|e| e.contains("watch"))
        }
    })
    .await;
    // Well before the give-up bound: the watch errors themselves are reported.
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "took {:?}",
        started.elapsed()
    );
}
