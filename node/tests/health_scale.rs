//! Health of one large service through the real mesh: every checker's opinions reach every
//! node. A checker's opinions of one service were one gossip value, and a value larger than a
//! gossip message (128 KiB) never left its checker: the other nodes judged the backends it
//! checked by no reports, that is up, dead or not (the audit of 2026-12-06, 50,000 endpoints).

mod common;

use common::{free_tcp_port, get, Cluster};
use std::time::{Duration, Instant};

/// 10,000 per checker: about 360 KB of opinions each, several gossip messages.
const BACKENDS: usize = 20_000;

#[test]
fn every_node_judges_every_backend_of_a_large_service() {
    // Nothing listens on this port at any of the backends' loopback addresses: each probe is
    // refused, so every backend must end up down on every node.
    let port = free_tcp_port();
    let mut rules = format!(
        "loopback_backends = true\n\n[[service]]\nname = \"big\"\nvip = \"203.0.113.9\"\n\
         port = {port}\nscheduler = \"rr\"\n\n"
    );
    for i in 0..BACKENDS {
        let (a, b) = (1 + i / 250, 1 + i % 250);
        rules += &format!("[[service.backend]]\naddress = \"127.1.{a}.{b}\"\n");
    }
    rules += "[service.health]\nkind = \"tcp\"\ninterval_ms = 10000\ntimeout_ms = 1000\n\
              rise = 1\nfall = 1\n";
    // One checker per backend: each node's half is judged elsewhere only from its gossip.
    let cluster = Cluster::start(2, &rules, &["--health-checkers", "1"]);
    cluster.wait_converged(Duration::from_secs(60));

    let limit = Duration::from_secs(120);
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let mut all_down = true;
        for (_, node) in cluster.running() {
            let Some(c) = get(node.admin, "/v1/cluster") else {
                all_down = false;
                last = format!("{}: no answer", node.id);
                continue;
            };
            let judged = c["health"]["big"].as_object().cloned().unwrap_or_default();
            let down = judged.values().filter(|v| v["verdict"] == "down").count();
            let pending = judged
                .values()
                .flat_map(|v| v["checkers"].as_array().cloned().unwrap_or_default())
                .filter(|k| k["last_result"] == "pending")
                .count();
            if down != BACKENDS {
                all_down = false;
                last = format!(
                    "{}: {} judged, {down} down, {pending} opinions pending",
                    node.id,
                    judged.len()
                );
            }
        }
        if all_down {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "not every backend is down on every node after {limit:?}: {last}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}
