//! Shared health end to end in one process: several health runners on a `MemoryCluster`,
//! probing real TCP and HTTP backends on 127.0.0.1 that count the probes they receive.

mod common;

use common::backend::TestBackend;
use prometheus_client::registry::Registry;
use shoal_dataplane::model::{Forwarding, Protocol, SchedFlags, Tunnel};
use shoal_gossip::version::NodeId;
use shoal_node::health::{self, assign, HealthConfig, HealthHandle, MemoryCluster, Verdict};
use shoal_node::table::{Backend, HealthCheck, Probe, RuleTable, VirtualService};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const LOCALHOST: &str = "127.0.0.1";

/// 127.0.0.1 on a port the kernel picks.
fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn check(interval_ms: u64, rise: u32, fall: u32, probe: Probe) -> HealthCheck {
    HealthCheck {
        probe,
        interval_ms,
        timeout_ms: (interval_ms / 2).max(50),
        rise,
        fall,
        port: None,
    }
}

fn service(
    name: &str,
    vip_last: u8,
    backends: &[&TestBackend],
    check: HealthCheck,
) -> VirtualService {
    let mut backends: Vec<Backend> = backends
        .iter()
        .map(|b| Backend {
            address: LOCALHOST.parse().unwrap(),
            port: b.port(),
            weight: 10,
        })
        .collect();
    backends.sort();
    VirtualService {
        name: name.into(),
        vip: format!("203.0.113.{vip_last}").parse().unwrap(),
        port: 80,
        protocol: Protocol::Tcp,
        scheduler: "rr".into(),
        flags: SchedFlags::default(),
        forwarding: Forwarding::Tunnel(Tunnel::Ipip),
        backends,
        health: Some(check),
        source_ranges: vec![],
    }
}

fn http_probe() -> Probe {
    Probe::Http {
        path: "/healthz".into(),
        expect_status: 200,
        tls: false,
        host: None,
    }
}

struct Node {
    id: String,
    handle: HealthHandle,
    cancel: CancellationToken,
}

struct Cluster {
    members: MemoryCluster,
    nodes: Vec<Node>,
    tables: watch::Sender<Option<Arc<shoal_gossip::Stamped<RuleTable>>>>,
}

impl Cluster {
    fn start(n: usize, k: usize, table: RuleTable) -> Self {
        let members = MemoryCluster::new();
        let (tx, rx) = watch::channel(Some(health::unstamped(table)));
        let nodes = (0..n)
            .map(|i| {
                let id = format!("lb-{i}");
                let board = members.join(&id);
                let cancel = CancellationToken::new();
                let mut registry = Registry::default();
                let handle = health::spawn(
                    HealthConfig {
                        checkers_per_backend: k,
                    },
                    board,
                    rx.clone(),
                    &mut registry,
                    cancel.clone(),
                )
                .expect("the health thread starts");
                Node { id, handle, cancel }
            })
            .collect();
        Cluster {
            members,
            nodes,
            tables: tx,
        }
    }

    fn kill_node(&mut self, id: &str) {
        let i = self.nodes.iter().position(|n| n.id == id).unwrap();
        let node = self.nodes.remove(i);
        node.cancel.cancel();
        self.members.kill(id);
    }

    fn all_say(&self, service: &str, port: u16, down: bool) -> bool {
        let addr: IpAddr = LOCALHOST.parse().unwrap();
        self.nodes
            .iter()
            .all(|n| n.handle.verdicts().borrow().is_down(service, addr, port) == down)
    }

    /// True once every backend has K checkers with an `up` opinion in every node's report.
    fn settled_up(&self, k: usize) -> bool {
        self.nodes.iter().all(|n| {
            let r = n.handle.report();
            !r.services.is_empty()
                && r.services.values().flat_map(|s| s.values()).all(|b| {
                    b.verdict == Verdict::Up
                        && b.checkers.len() == k
                        && b.checkers.iter().all(|c| c.state == health::CheckState::Up)
                })
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &self.nodes {
            n.cancel.cancel();
        }
    }
}

async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// The audit of 2026-12-06: renaming a health-checked service (same VIP, port, protocol) put
/// its dead backend back into service on every node for (fall - 1) x interval: verdicts were
/// the old name's. Now it stays down through the rename, then its new checkers confirm it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_service_keeps_its_dead_backend_down() {
    let (interval_ms, rise, fall) = (300, 2, 3);
    let alive = TestBackend::start(any_port(), false).await;
    let mut dead = TestBackend::start(any_port(), false).await;
    let table = RuleTable {
        services: vec![service(
            "web",
            1,
            &[&alive, &dead],
            check(interval_ms, rise, fall, Probe::Tcp),
        )],
    };
    let cluster = Cluster::start(3, 2, table.clone());
    assert!(wait_until(Duration::from_secs(5), || cluster.settled_up(2))
        .await
        .is_some());
    dead.kill();
    let limit = Duration::from_millis(interval_ms * fall as u64 + 2000);
    assert!(
        wait_until(limit, || cluster.all_say("web", dead.port(), true))
            .await
            .is_some(),
        "the dead backend was never down everywhere"
    );
    let mut renamed = table;
    renamed.services[0].name = "Web".into();
    cluster
        .tables
        .send_replace(Some(health::unstamped(renamed)));
    // From a node's first judgement of the renamed service, for longer than the fall window
    // the backend used to come back in, it is down.
    let addr: IpAddr = LOCALHOST.parse().unwrap();
    let start = Instant::now();
    let mut judged = vec![false; cluster.nodes.len()];
    while start.elapsed() < Duration::from_millis(interval_ms * fall as u64 * 2) {
        for (i, n) in cluster.nodes.iter().enumerate() {
            let report_names_it = n.handle.report().services.contains_key("Web");
            let down = n
                .handle
                .verdicts()
                .borrow()
                .is_down("Web", addr, dead.port());
            judged[i] |= report_names_it;
            assert!(
                !judged[i] || down,
                "{}: the dead backend came back under the new name after {:?}",
                n.id,
                start.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        judged.iter().all(|j| *j),
        "not every node judged the renamed service"
    );
    assert!(cluster.all_say("Web", dead.port(), true));
    assert!(cluster.all_say("Web", alive.port(), false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_is_down_on_every_node_then_back() {
    let (interval_ms, rise, fall) = (200, 2, 2);
    let mut tcp = Vec::new();
    let mut web = Vec::new();
    for _ in 0..3 {
        tcp.push(TestBackend::start(any_port(), false).await);
        web.push(TestBackend::start(any_port(), true).await);
    }
    let table = RuleTable {
        services: vec![
            service(
                "tcp",
                1,
                &tcp.iter().collect::<Vec<_>>(),
                check(interval_ms, rise, fall, Probe::Tcp),
            ),
            service(
                "web",
                2,
                &web.iter().collect::<Vec<_>>(),
                check(interval_ms, rise, fall, http_probe()),
            ),
        ],
    };
    let cluster = Cluster::start(5, 2, table);
    assert!(wait_until(Duration::from_secs(5), || cluster.settled_up(2))
        .await
        .is_some());

    let limit = Duration::from_millis(interval_ms * fall as u64 + 1000);
    let steady_port = tcp[2].port();
    let since = |port: u16| {
        let json = serde_json::to_value(cluster.nodes[3].handle.report()).unwrap();
        json["tcp"][format!("127.0.0.1:{port}")]["since_unix_ms"]
            .as_u64()
            .unwrap()
    };
    let (steady_since, killed_since) = (since(steady_port), since(tcp[0].port()));
    for (name, backend) in [("tcp", &mut tcp[0]), ("web", &mut web[1])] {
        backend.kill();
        let took = wait_until(limit, || cluster.all_say(name, backend.port(), true)).await;
        println!("{name}: down on all 5 nodes after {took:?} (limit {limit:?})");
        assert!(
            took.is_some(),
            "{name} backend not down everywhere within {limit:?}"
        );
        assert!(
            cluster.all_say("tcp", steady_port, false),
            "a healthy backend went down"
        );

        backend.listen().await;
        let back_limit = Duration::from_millis(interval_ms * rise as u64 + 1000);
        let took = wait_until(back_limit, || cluster.all_say(name, backend.port(), false)).await;
        println!("{name}: up again on all 5 nodes after {took:?} (limit {back_limit:?})");
        assert!(
            took.is_some(),
            "{name} backend not back within {back_limit:?}"
        );
    }
    // The report explains the verdicts: each backend lists its two checkers and their results.
    let report = cluster.nodes[3].handle.report();
    let json = serde_json::to_value(&report).unwrap();
    let first = &json["tcp"][format!("127.0.0.1:{}", tcp[0].port())];
    assert_eq!(first["verdict"], "up");
    assert_eq!(first["checkers"].as_array().unwrap().len(), 2);
    assert_eq!(first["checkers"][0]["last_result"], "ok");
    assert!(first["since_unix_ms"].as_u64().unwrap() > 0);
    // A backend's verdict dates from its last change, through every pass that judged its
    // service again or not.
    assert_eq!(since(steady_port), steady_since);
    assert!(since(tcp[0].port()) > killed_since);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_backend_gets_k_probes_per_interval() {
    let interval_ms = 200;
    let k = 2;
    let mut backends = Vec::new();
    for i in 0..6 {
        backends.push(TestBackend::start(any_port(), i % 2 == 1).await);
    }
    let tcp: Vec<&TestBackend> = backends.iter().filter(|b| !b.http).collect();
    let web: Vec<&TestBackend> = backends.iter().filter(|b| b.http).collect();
    let table = RuleTable {
        services: vec![
            service("tcp", 1, &tcp, check(interval_ms, 2, 2, Probe::Tcp)),
            service("web", 2, &web, check(interval_ms, 2, 2, http_probe())),
        ],
    };
    let cluster = Cluster::start(5, k, table);
    assert!(wait_until(Duration::from_secs(5), || cluster.settled_up(k))
        .await
        .is_some());

    let before: Vec<u64> = backends.iter().map(|b| b.count()).collect();
    let intervals = 15u64;
    tokio::time::sleep(Duration::from_millis(interval_ms * intervals)).await;
    for (b, start) in backends.iter().zip(before) {
        let probes = b.count() - start;
        println!(
            "backend :{} got {probes} probes in {intervals} intervals (K={k})",
            b.port()
        );
        let (lo, hi) = ((k as u64 - 1) * intervals, (k as u64 + 1) * intervals);
        assert!(
            (lo..=hi).contains(&probes),
            "{probes} probes, expected {lo}..={hi}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_checker_is_replaced_within_one_interval() {
    let interval_ms = 500;
    let mut backends = Vec::new();
    for _ in 0..6 {
        backends.push(TestBackend::start(any_port(), false).await);
    }
    let table = RuleTable {
        services: vec![service(
            "tcp",
            1,
            &backends.iter().collect::<Vec<_>>(),
            check(interval_ms, 2, 2, Probe::Tcp),
        )],
    };
    let mut cluster = Cluster::start(5, 2, table);
    assert!(wait_until(Duration::from_secs(5), || cluster.settled_up(2))
        .await
        .is_some());

    // Take backend 0 down first, so the handover must also keep its verdict down.
    let addr: IpAddr = LOCALHOST.parse().unwrap();
    let port = backends[0].port();
    backends[0].kill();
    assert!(wait_until(Duration::from_secs(3), || cluster
        .all_say("tcp", port, true))
    .await
    .is_some());

    let key = assign::backend_key("tcp", addr, port);
    let live: Vec<NodeId> = (0..5).map(|i| NodeId::new(format!("lb-{i}"))).collect();
    let before = assign::checkers(&key, &live, 2);
    let victim = before[0].clone();
    let survivors: Vec<NodeId> = live.iter().filter(|n| **n != victim).cloned().collect();
    let after = assign::checkers(&key, &survivors, 2);
    let newcomer = after.iter().find(|n| !before.contains(n)).unwrap().clone();

    let killed_ms = shoal_node::unix_ms();
    let started = Instant::now();
    cluster.kill_node(victim.as_str());
    let observer = cluster
        .nodes
        .iter()
        .find(|n| n.id != newcomer.as_str())
        .unwrap();
    let mut still_down = true;
    let took = wait_until(Duration::from_millis(interval_ms * 3), || {
        still_down &= observer
            .handle
            .verdicts()
            .borrow()
            .is_down("tcp", addr, port);
        observer.handle.report().services["tcp"].values().any(|b| {
            b.port == port
                && b.checkers
                    .iter()
                    .any(|c| c.node == newcomer.as_str() && c.last_probe_unix_ms >= killed_ms)
        })
    })
    .await;
    println!(
        "checker {victim} killed: {newcomer} probed after {took:?} (elapsed {:?})",
        started.elapsed()
    );
    let took = took.expect("the new checker never probed");
    assert!(
        took <= Duration::from_millis(interval_ms),
        "new checker probed after {took:?}"
    );
    assert!(still_down, "the verdict flipped to up during the handover");
    assert!(cluster.all_say("tcp", port, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_flapping_every_100ms_does_not_flap_the_verdict() {
    // Probing every 250 ms a backend that toggles every 100 ms sees two ups, two downs, ...
    // (a multiple of 200 ms would see one phase only: a steady state, not a flap). With rise
    // and fall of 4, no run is long enough to change an opinion even with timing jitter.
    let interval_ms = 250;
    let mut flapper = TestBackend::start(any_port(), false).await;
    let steady = TestBackend::start(any_port(), false).await;
    let table = RuleTable {
        services: vec![service(
            "tcp",
            1,
            &[&flapper, &steady],
            check(interval_ms, 4, 4, Probe::Tcp),
        )],
    };
    let cluster = Cluster::start(5, 2, table);
    assert!(wait_until(Duration::from_secs(5), || cluster.settled_up(2))
        .await
        .is_some());

    let mut changes = cluster
        .nodes
        .iter()
        .map(|n| n.handle.verdicts())
        .collect::<Vec<_>>();
    for c in &mut changes {
        c.mark_unchanged();
    }
    let port = flapper.port();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for _ in 0..40 {
        tick.tick().await;
        flapper.toggle().await;
    }
    for (i, c) in changes.iter().enumerate() {
        assert!(
            !c.has_changed().unwrap(),
            "node {i}'s verdicts changed while the backend flapped"
        );
    }
    assert!(cluster.all_say("tcp", port, false));
}

/// A UDP service's backends are probed on the health check's port: tcp and http probes speak
/// TCP, and at a UDP-only backend's service port every probe was refused and every backend
/// drained (found with real traffic through IPVS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_port_is_probed_instead_of_the_service_port() {
    let (interval_ms, rise, fall) = (200, 2, 2);
    let mut answers_checks = TestBackend::start(any_port(), false).await;
    // A port nothing listens on over TCP: the UDP service's own port.
    let udp_port = std::net::TcpListener::bind(any_port())
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut dns = service("dns", 3, &[], check(interval_ms, rise, fall, Probe::Tcp));
    dns.protocol = Protocol::Udp;
    dns.port = udp_port;
    dns.backends = vec![Backend {
        address: LOCALHOST.parse().unwrap(),
        port: udp_port,
        weight: 1,
    }];
    if let Some(h) = dns.health.as_mut() {
        h.port = Some(answers_checks.port());
    }
    let cluster = Cluster::start(
        3,
        2,
        RuleTable {
            services: vec![dns],
        },
    );
    assert!(
        wait_until(Duration::from_secs(5), || cluster.settled_up(2))
            .await
            .is_some(),
        "the backend is up through its health port"
    );
    answers_checks.kill();
    let limit = Duration::from_millis(interval_ms * fall as u64 + 1000);
    assert!(
        wait_until(limit, || cluster.all_say("dns", udp_port, true))
            .await
            .is_some(),
        "a dead health port drains the backend"
    );
}
