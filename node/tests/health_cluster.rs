//! Shared health through the real daemon: 5 `shoal run` processes (in-memory dataplane) and 6
//! TCP/HTTP backends on loopback addresses, observed through every node's `/v1/dataplane` and
//! `/v1/cluster`.

mod common;

use common::backend::TestBackend;
use common::{dump_logs, free_tcp_port, free_udp_port};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

const INTERVAL_MS: u64 = 200;
const RISE: u64 = 2;
const FALL: u64 = 2;
const WEIGHT: u64 = 10;
const K: u64 = 2;

/// A flapping backend toggles every 100 ms; probing it every 250 ms sees two ups then two downs
/// (an interval that is a multiple of 200 ms would see one phase only, a steady state). With a
/// rise and fall of 4 no run is long enough to change an opinion, even with timing jitter.
const FLAP_INTERVAL_MS: u64 = 250;
const FLAP_RISE_FALL: u64 = 4;

fn rules(tcp_port: u16, web_port: u16, flap_port: u16) -> String {
    let backend = |i: u8| {
        format!(
            "[[service.backend]]\naddress = \"127.0.0.{}\"\nweight = {WEIGHT}\n",
            11 + i
        )
    };
    let health = |kind: &str| {
        format!(
            "[service.health]\nkind = \"{kind}\"\ninterval_ms = {INTERVAL_MS}\ntimeout_ms = 100\nrise = {RISE}\nfall = {FALL}\n"
        )
    };
    format!(
        "loopback_backends = true\n\n[[service]]\nname = \"tcp\"\nvip = \"203.0.113.1\"\nport = {tcp_port}\nscheduler = \"rr\"\nforwarding = \"tunnel\"\n\n{}\n{}\n{}\n{}\n\
         [[service]]\nname = \"web\"\nvip = \"203.0.113.2\"\nport = {web_port}\nscheduler = \"rr\"\nforwarding = \"tunnel\"\n\n{}\n{}\n{}\n{}path = \"/healthz\"\nexpect_status = 200\n",
        backend(0),
        backend(1),
        backend(2),
        health("tcp"),
        backend(3),
        backend(4),
        backend(5),
        health("http"),
    ) + &format!(
        "\n[[service]]\nname = \"flap\"\nvip = \"203.0.113.3\"\nport = {flap_port}\nscheduler = \"rr\"\nforwarding = \"tunnel\"\n\n\
         [[service.backend]]\naddress = \"127.0.0.17\"\nweight = {WEIGHT}\n\n\
         [service.health]\nkind = \"tcp\"\ninterval_ms = {FLAP_INTERVAL_MS}\ntimeout_ms = 100\nrise = {FLAP_RISE_FALL}\nfall = {FLAP_RISE_FALL}\n"
    )
}

struct Node {
    id: String,
    admin: String,
    child: Option<Child>,
}

fn spawn_node(
    exe: &str,
    dir: &Path,
    id: &str,
    listen: &str,
    admin: &str,
    seeds: &[String],
    rules: &Path,
) -> Child {
    let log = std::fs::File::create(dir.join(format!("{id}.log"))).unwrap();
    Command::new(exe)
        .arg("run")
        .args(["--node-id", id, "--listen", listen, "--admin", admin])
        .args([
            "--cluster",
            "health-test",
            "--insecure",
            "--source",
            "static",
            "--dataplane",
            "memory",
        ])
        .args(["--health-checkers", &K.to_string()])
        .arg("--rules")
        .arg(rules)
        .arg("--seeds")
        .arg(seeds.join(","))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn get(client: &reqwest::Client, admin: &str, path: &str) -> Option<Value> {
    let r = client
        .get(format!("http://{admin}{path}"))
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

/// `/v1/cluster?health=problems` lists `dead` and none of the `settled` (up on every checker),
/// and counts every checked backend; `?health=none&service=` counts one service's; `shoal
/// status` prints the counts and the same list.
async fn problems_name_the_dead_backend(
    client: &reqwest::Client,
    exe: &str,
    admin: &str,
    dead: &SocketAddr,
    settled: &[SocketAddr],
) {
    let listed = |r: &Value| -> Vec<String> {
        let services = r["health"].as_object().cloned().unwrap_or_default();
        let backends = services
            .into_values()
            .filter_map(|b| b.as_object().cloned());
        backends
            .flat_map(|b| b.keys().cloned().collect::<Vec<_>>())
            .collect()
    };
    let r = get(client, admin, "/v1/cluster?health=problems")
        .await
        .unwrap();
    assert!(listed(&r).contains(&dead.to_string()), "{r}");
    for s in settled {
        assert!(!listed(&r).contains(&s.to_string()), "{s} is up: {r}");
    }
    let summary = &r["health_summary"];
    assert_eq!(summary["shown"], "problems", "{summary}");
    assert_eq!(
        (&summary["services"], &summary["backends"]),
        (&3.into(), &7.into()),
        "{summary}"
    );
    assert_eq!(
        (&summary["up"], &summary["down"]),
        (&6.into(), &1.into()),
        "{summary}"
    );
    let r = get(client, admin, "/v1/cluster?health=none&service=tcp")
        .await
        .unwrap();
    assert!(listed(&r).is_empty(), "{r}");
    let summary = &r["health_summary"];
    assert_eq!(
        (&summary["backends"], &summary["down"]),
        (&3.into(), &1.into()),
        "{summary}"
    );
    let bad = client
        .get(format!("http://{admin}/v1/cluster?health=down"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let why = bad.text().await.unwrap();
    assert!(why.contains("health") && why.contains("problems"), "{why}");

    let status = Command::new(exe)
        .args(["status", "--node", admin])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        text.contains("7 checked backends in 3 services: 6 up, 1 down"),
        "{text}"
    );
    assert!(text.contains(&dead.to_string()), "{text}");
    for s in settled {
        assert!(!text.contains(&s.to_string()), "{s} is up: {text}");
    }
}

/// The weight of `addr:port` in `/v1/dataplane`, if the node holds that destination.
fn weight_in(dataplane: &Value, addr: &SocketAddr) -> Option<u64> {
    dataplane["services"].as_array()?.iter().find_map(|s| {
        s["destinations"].as_array()?.iter().find_map(|d| {
            let d = &d["destination"];
            (d["addr"].as_str()? == addr.ip().to_string()
                && d["port"].as_u64()? == addr.port() as u64)
                .then(|| d["weight"].as_u64())
                .flatten()
        })
    })
}

async fn weights(client: &reqwest::Client, nodes: &[Node], addr: &SocketAddr) -> Vec<Option<u64>> {
    let mut out = Vec::new();
    for n in nodes.iter().filter(|n| n.child.is_some()) {
        let dp = get(client, &n.admin, "/v1/dataplane").await;
        out.push(dp.as_ref().and_then(|d| weight_in(d, addr)));
    }
    out
}

async fn wait_weights(
    client: &reqwest::Client,
    nodes: &[Node],
    addr: &SocketAddr,
    want: u64,
    limit: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if weights(client, nodes, addr)
            .await
            .iter()
            .all(|w| *w == Some(want))
        {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_daemons_share_backend_health() {
    let Some(exe) = option_env!("CARGO_BIN_EXE_shoal") else {
        eprintln!("skipped: the shoal binary is not part of this build");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (tcp_port, web_port) = (free_tcp_port(), free_tcp_port());
    let mut backends = Vec::new();
    for i in 0..6u8 {
        let http = i >= 3;
        let port = if http { web_port } else { tcp_port };
        let addr: SocketAddr = format!("127.0.0.{}:{port}", 11 + i).parse().unwrap();
        backends.push(TestBackend::start(addr, http).await);
    }
    let flap_port = free_tcp_port();
    let mut flapper =
        TestBackend::start(format!("127.0.0.17:{flap_port}").parse().unwrap(), false).await;
    let flapper_addr = flapper.addr;
    let rules_path = dir.path().join("rules.toml");
    std::fs::write(&rules_path, rules(tcp_port, web_port, flap_port)).unwrap();

    let listens: Vec<String> = (0..5)
        .map(|_| format!("127.0.0.1:{}", free_udp_port()))
        .collect();
    let mut nodes: Vec<Node> = (0..5)
        .map(|i| {
            let id = format!("n{i}");
            let admin = format!("127.0.0.1:{}", free_tcp_port());
            let seeds: Vec<String> = listens
                .iter()
                .filter(|l| **l != listens[i])
                .cloned()
                .collect();
            let child = spawn_node(
                exe,
                dir.path(),
                &id,
                &listens[i],
                &admin,
                &seeds,
                &rules_path,
            );
            Node {
                id,
                admin,
                child: Some(child),
            }
        })
        .collect();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();

    // 1. Every node programs all seven backends at their configured weight.
    for b in backends.iter().chain([&flapper]) {
        if wait_weights(&client, &nodes, &b.addr, WEIGHT, Duration::from_secs(30))
            .await
            .is_none()
        {
            dump_logs(dir.path(), 15);
            panic!(
                "{} never reached weight {WEIGHT} on every node: {:?}",
                b.addr,
                weights(&client, &nodes, &b.addr).await
            );
        }
    }

    // 2. Probe load: K per interval at each backend (+-1 per interval).
    let before: Vec<u64> = backends.iter().map(|b| b.count()).collect();
    let intervals = 15;
    tokio::time::sleep(Duration::from_millis(INTERVAL_MS * intervals)).await;
    for (b, start) in backends.iter().zip(before) {
        let probes = b.count() - start;
        println!("{} got {probes} probes in {intervals} intervals", b.addr);
        assert!(
            ((K - 1) * intervals..=(K + 1) * intervals).contains(&probes),
            "{} got {probes}",
            b.addr
        );
    }

    // 3. A killed backend drains to weight 0 on every node within interval x fall + 1 s, and
    //    comes back after a restart.
    let down_limit = Duration::from_millis(INTERVAL_MS * FALL + 1000);
    for i in [0, 4] {
        backends[i].kill();
        let took = wait_weights(&client, &nodes, &backends[i].addr, 0, down_limit).await;
        println!(
            "{} at weight 0 on all nodes after {took:?} (limit {down_limit:?})",
            backends[i].addr
        );
        assert!(
            took.is_some(),
            "{} not drained on every node: {:?}",
            backends[i].addr,
            weights(&client, &nodes, &backends[i].addr).await
        );
        if i == 0 {
            let settled: Vec<SocketAddr> = backends[1..].iter().map(|b| b.addr).collect();
            problems_name_the_dead_backend(
                &client,
                exe,
                &nodes[2].admin,
                &backends[0].addr,
                &settled,
            )
            .await;
        }
        backends[i].listen().await;
        let took = wait_weights(
            &client,
            &nodes,
            &backends[i].addr,
            WEIGHT,
            Duration::from_secs(5),
        )
        .await;
        println!(
            "{} back at weight {WEIGHT} after {took:?}",
            backends[i].addr
        );
        assert!(took.is_some(), "{} did not come back", backends[i].addr);
    }

    // 4. A killed checker's backends are re-assigned and probed: watch the report of another node.
    let report = get(&client, &nodes[0].admin, "/v1/cluster").await.unwrap();
    let key = backends[1].addr.to_string();
    let checkers: Vec<String> = report["health"]["tcp"][&key]["checkers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["node"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(checkers.len(), K as usize, "{report}");
    let victim = nodes.iter().position(|n| n.id == checkers[0]).unwrap();
    let observer = nodes
        .iter()
        .find(|n| !checkers.contains(&n.id))
        .unwrap()
        .admin
        .clone();
    let killed_at = Instant::now();
    let killed_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    if let Some(mut child) = nodes[victim].child.take() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    let mut gone_after = None;
    let mut probed_after = None;
    while killed_at.elapsed() < Duration::from_secs(10) && probed_after.is_none() {
        if let Some(r) = get(&client, &observer, "/v1/cluster").await {
            let b = &r["health"]["tcp"][&key];
            let now_checkers: Vec<&Value> = b["checkers"]
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            let replaced = !now_checkers
                .iter()
                .any(|c| c["node"] == checkers[0].as_str());
            if replaced && gone_after.is_none() {
                gone_after = Some(killed_at.elapsed());
            }
            let fresh = now_checkers.iter().any(|c| {
                c["node"].as_str() != Some(checkers[1].as_str())
                    && c["last_probe_unix_ms"].as_u64().unwrap_or(0) > killed_ms
            });
            if replaced && fresh {
                probed_after = Some(killed_at.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("checker {} killed: reassigned after {gone_after:?}, new checker's probe seen after {probed_after:?}", checkers[0]);
    let (gone, probed) = (
        gone_after.expect("never reassigned"),
        probed_after.expect("never probed"),
    );
    assert!(
        probed.saturating_sub(gone) <= Duration::from_millis(INTERVAL_MS + 500),
        "new checker probed {:?} after the reassignment (interval {INTERVAL_MS} ms + gossip)",
        probed - gone
    );
    // The survivors still agree that everything is up.
    for b in &backends {
        assert!(weights(&client, &nodes, &b.addr)
            .await
            .iter()
            .all(|w| *w == Some(WEIGHT)));
    }

    // 5. A backend flapping every 100 ms does not flap the verdict. The flapping runs on its
    //    own task, so the weight queries do not stretch its phases; a phase that still grew
    //    to 3 probe intervals (a starved host) makes a down verdict right, not a flap.
    let flapping = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut longest = Duration::ZERO;
        let mut last = tokio::time::Instant::now();
        for _ in 0..40 {
            tick.tick().await;
            flapper.toggle().await;
            longest = longest.max(last.elapsed());
            last = tokio::time::Instant::now();
        }
        longest
    });
    let mut seen = std::collections::BTreeSet::new();
    while !flapping.is_finished() {
        for w in weights(&client, &nodes, &flapper_addr).await {
            seen.insert(w);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let longest = flapping.await.unwrap();
    println!("weights of the flapping backend seen over 4 s: {seen:?}; longest phase {longest:?}");
    if longest >= Duration::from_millis(FLAP_INTERVAL_MS * (FLAP_RISE_FALL - 1)) {
        println!("a phase lasted {longest:?}: the host was too starved to flap the backend");
        return;
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![Some(WEIGHT)]);
}
