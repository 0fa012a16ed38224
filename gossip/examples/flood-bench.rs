//! Handshake-flood benchmark (issue #15): how long a new member takes to join a node that is
//! flooded with QUIC Initials from fresh source ports.
//!
//! `cargo run --release -p shoal-gossip --example flood-bench -- [RATE_PER_S] [TRIALS]`
//! (defaults 200 and 5). For each mode (no flood, half-open Initials, Initials that answer the
//! Retry and then stall) and trial: a 2-node cluster on 127.0.0.1, the flood from 127.0.0.2 at
//! the first node for 2 s, then a new member on its own loopback address seeded with the first
//! node; the time until every node sees all three and the same publisher. Medians are printed.

#[path = "../tests/support/flood.rs"]
mod flood;

use shoal_gossip::certs::{create_ca, issue_node_cert, ClusterCa};
use shoal_gossip::{Mesh, MeshConfig, NodeId, Security, Timing};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

type Node = Mesh<String>;

async fn start(ca: &ClusterCa, id: &str, listen: SocketAddr, seeds: &[SocketAddr]) -> Node {
    Mesh::start(MeshConfig {
        node_id: NodeId::new(id),
        cluster_id: "bench".into(),
        listen,
        seeds: seeds.iter().map(|s| s.to_string()).collect(),
        security: Security::MutualTls(issue_node_cert(ca, id).expect("cert")),
        metadata: Default::default(),
        timing: Timing::default(),
        epoch_file: None,
        generation_file: None,
    })
    .await
    .expect("start")
}

fn converged(nodes: &[&Node]) -> bool {
    let mut ids: Vec<NodeId> = nodes.iter().map(|n| n.node_id().clone()).collect();
    ids.sort();
    nodes.iter().all(|n| {
        n.live_members() == ids && n.view().publisher.as_ref().map(NodeId::as_str) == Some("n0")
    })
}

async fn wait(nodes: &[&Node], timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if converged(nodes) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rate: u32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let trials: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let ca = create_ca("bench").expect("ca");
    let modes: [(&str, Option<flood::Mode>); 3] = [
        ("no flood", None),
        ("half-open", Some(flood::Mode::HalfOpen)),
        ("validated, stalled", Some(flood::Mode::Validated)),
    ];
    println!("rate {rate} handshakes/s from 127.0.0.2, {trials} trials per mode");
    for (name, mode) in modes {
        let mut joins = Vec::new();
        let mut failed = 0;
        for trial in 0..trials {
            let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
            let n0 = start(&ca, "n0", any, &[]).await;
            let n1 = start(&ca, "n1", any, &[n0.listen_addr()]).await;
            if wait(&[&n0, &n1], Duration::from_secs(20)).await.is_none() {
                eprintln!("{name} trial {trial}: the 2-node cluster did not form");
                failed += 1;
                continue;
            }
            let flood =
                mode.map(|m| flood::start(n0.listen_addr(), [127, 0, 0, 2].into(), rate, m));
            tokio::time::sleep(Duration::from_secs(2)).await;
            let listen = SocketAddr::from(([127, 0, 0, 10 + trial as u8], 0));
            let began = Instant::now();
            let n2 = start(&ca, "n2", listen, &[n0.listen_addr()]).await;
            let took = wait(&[&n0, &n1, &n2], Duration::from_secs(20))
                .await
                .map(|_| began.elapsed());
            let sent = flood
                .as_ref()
                .map(|f| f.sent.load(std::sync::atomic::Ordering::Relaxed))
                .unwrap_or(0);
            drop(flood);
            let t = n0.traffic();
            match took {
                Some(d) => {
                    println!(
                        "  {name} trial {trial}: joined in {:.0} ms (flood sent {sent}; target: {} retries, refused full/busy/rate {}/{}/{}, timed out {})",
                        d.as_secs_f64() * 1e3,
                        t.handshakes_retried,
                        t.handshakes_refused_full,
                        t.handshakes_refused_source_busy,
                        t.handshakes_refused_source_rate,
                        t.handshakes_timed_out
                    );
                    joins.push(d.as_secs_f64() * 1e3);
                }
                None => {
                    println!("  {name} trial {trial}: did NOT join within 20 s");
                    failed += 1;
                }
            }
            for n in [n2, n1, n0] {
                n.shutdown().await;
            }
        }
        let max = joins.iter().cloned().fold(f64::NAN, f64::max);
        println!(
            "{name}: join median {:.0} ms, max {:.0} ms, {} of {trials} joined",
            median(joins.clone()),
            max,
            trials - failed
        );
    }
}
