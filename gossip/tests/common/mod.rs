//! Test harness: several real nodes in one process, QUIC on 127.0.0.1, one cluster CA.

#![allow(dead_code)]

use serde::{Deserialize, Serialize};
use shoal_gossip::certs::{create_ca, issue_node_cert, ClusterCa};
use shoal_gossip::{Mesh, MeshConfig, NodeId, Security, Timing};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub const CLUSTER: &str = "test-cluster";

/// A stand-in for the rule table: services with backends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    pub label: String,
    pub services: Vec<Service>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub vip: String,
    pub port: u16,
    pub backends: Vec<String>,
}

impl Table {
    pub fn small(label: &str) -> Self {
        Table {
            label: label.into(),
            services: vec![Service {
                name: "default/web".into(),
                vip: "203.0.113.10".into(),
                port: 80,
                backends: vec!["198.18.0.2".into(), "198.18.0.3".into()],
            }],
        }
    }

    /// About `services` services of ~200 bytes each.
    pub fn large(label: &str, services: usize) -> Self {
        Table {
            label: label.into(),
            services: (0..services)
                .map(|i| Service {
                    name: format!("namespace-{}/service-number-{i:06}", i % 97),
                    vip: format!("203.0.113.{}", i % 256),
                    port: (i % 60_000) as u16 + 1,
                    backends: (0..12)
                        .map(|b| format!("198.18.{}.{}", (i + b) % 256, b))
                        .collect(),
                })
                .collect(),
        }
    }
}

pub type Node = Mesh<Table>;

pub fn tls_for(ca: &ClusterCa, id: &str) -> Security {
    Security::MutualTls(issue_node_cert(ca, id).expect("issue cert"))
}

pub fn config(
    id: &str,
    listen: SocketAddr,
    seeds: &[SocketAddr],
    security: Security,
) -> MeshConfig {
    MeshConfig {
        node_id: NodeId::new(id),
        cluster_id: CLUSTER.into(),
        listen,
        seeds: seeds.iter().map(|s| s.to_string()).collect(),
        security,
        metadata: BTreeMap::from([("admin".to_string(), format!("127.0.0.1:9{id}"))]),
        timing: Timing::default(),
        epoch_file: None,
        generation_file: None,
    }
}

pub fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

/// Starts `n` nodes named n0..n{n-1} seeded with n0.
pub async fn start_cluster(ca: &ClusterCa, n: usize) -> Vec<Node> {
    let first = Mesh::start(config("n0", any_port(), &[], tls_for(ca, "n0")))
        .await
        .expect("start n0");
    let seed = first.listen_addr();
    let mut nodes = vec![first];
    for i in 1..n {
        let id = format!("n{i}");
        let node = Mesh::start(config(&id, any_port(), &[seed], tls_for(ca, &id)))
            .await
            .expect("start node");
        nodes.push(node);
    }
    nodes
}

/// [`start_cluster`], then waits until every node sees all of them alive and n0 publishing.
pub async fn converged_cluster(ca: &ClusterCa, n: usize) -> Vec<Node> {
    let nodes = start_cluster(ca, n).await;
    let timeout = Duration::from_secs(10).max(Duration::from_millis(1_500 * n as u64));
    let all: Vec<&Node> = nodes.iter().collect();
    wait_for("converged", timeout, || converged(&all, "n0")).await;
    nodes
}

/// Graceful leave of every node, in order.
pub async fn shutdown_all(nodes: Vec<Node>) {
    for n in nodes {
        n.shutdown().await;
    }
}

pub fn new_ca() -> ClusterCa {
    create_ca(CLUSTER).expect("create CA")
}

/// Polls `cond` every 10 ms until it holds; returns how long it took, or panics with `what`.
pub async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every node sees exactly `ids` alive and agrees on `publisher`.
pub fn converged(nodes: &[&Node], publisher: &str) -> bool {
    let expected: Vec<NodeId> = {
        let mut ids: Vec<NodeId> = nodes.iter().map(|n| n.node_id().clone()).collect();
        ids.sort();
        ids
    };
    nodes.iter().all(|n| {
        let view = n.view();
        n.live_members() == expected
            && view.publisher.as_ref().map(NodeId::as_str) == Some(publisher)
    })
}

/// Every node holds a document with this version.
pub fn all_hold(nodes: &[&Node], version: &shoal_gossip::Version) -> bool {
    nodes
        .iter()
        .all(|n| n.current().is_some_and(|c| &c.version == version))
}

pub async fn publish_when_ready(node: &Node, table: Table) -> shoal_gossip::Version {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match node.publish(table.clone()) {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("publish on {} failed: {e}", node.node_id()),
        }
    }
}

/// Time-sensitive tests run one at a time: the machine has two cores.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
