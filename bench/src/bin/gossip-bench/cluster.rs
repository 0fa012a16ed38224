//! The bench's mesh nodes: one certificate authority and one `Timing` for the whole run, nodes
//! started on loopback (in batches, as a rollout adds pods), and the checks every mode shares
//! (converged = every node sees every member live and knows a publisher).

use shoal_gossip::certs::{create_ca, issue_node_cert, ClusterCa, TlsMaterial};
use shoal_gossip::{Mesh, MeshConfig, NodeId, Security, Timing};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub type Doc = Vec<u8>;
pub type Node = Mesh<Doc>;

/// Nodes started at once before the bench waits for them to join, as a rollout adds pods a few
/// at a time: a hundred TLS nodes joining together on two cores starve each other's failure
/// detectors and never settle (docs/benchmarks.md).
const JOIN_BATCH: usize = 10;

/// What every node of a run shares: the cluster's CA and the mesh's timing.
pub struct Lab {
    pub ca: ClusterCa,
    timing: Timing,
}

impl Lab {
    /// `liveness_phi`: the replica core's phi threshold for every node, `confirm_phi` its bar
    /// for a reported death (default: `Timing`'s; a confirm bar above the threshold is lowered
    /// to it).
    pub fn new(liveness_phi: Option<f64>, confirm_phi: Option<f64>) -> Result<Lab, String> {
        let ca = create_ca("bench").map_err(|e| format!("CA: {e}"))?;
        let mut timing = Timing::default();
        if let Some(phi) = liveness_phi {
            timing.liveness_phi_threshold = phi;
        }
        if let Some(phi) = confirm_phi {
            timing.liveness_confirm_phi = phi;
        }
        timing.liveness_confirm_phi = timing
            .liveness_confirm_phi
            .min(timing.liveness_phi_threshold);
        Ok(Lab { ca, timing })
    }

    pub async fn start_node(&self, id: &str, seeds: &[String]) -> Result<Node, String> {
        let material = issue_node_cert(&self.ca, id).map_err(|e| e.to_string())?;
        let listen = "127.0.0.1:0".parse().map_err(|_| "addr")?;
        start_node_with(material, id, listen, seeds, self.timing.clone()).await
    }

    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// Starts `n` nodes in batches; each is given up to three earlier nodes as seeds, spread
    /// over the cluster (as a headless Service's DNS would spread them), so that no seed serves
    /// every joiner.
    pub async fn start_cluster(&self, n: usize) -> Result<Vec<Node>, String> {
        let mut nodes: Vec<Node> = Vec::with_capacity(n);
        for i in 0..n {
            if i > 0 && i % JOIN_BATCH == 0 {
                wait_converged(&nodes, converge_timeout(nodes.len())).await?;
            }
            let mut picks: Vec<usize> = match i {
                0 => vec![],
                _ => vec![i - 1, (i - 1) / 2, (i - 1) / 4],
            };
            picks.dedup();
            let seeds: Vec<String> = picks
                .iter()
                .map(|&j| nodes[j].listen_addr().to_string())
                .collect();
            nodes.push(self.start_node(&format!("n{i:03}"), &seeds).await?);
        }
        Ok(nodes)
    }
}

/// One node with the given certificate and address (for modes that pick addresses first).
pub async fn start_node_with(
    material: TlsMaterial,
    id: &str,
    listen: SocketAddr,
    seeds: &[String],
    timing: Timing,
) -> Result<Node, String> {
    let config = MeshConfig {
        node_id: NodeId::new(id),
        cluster_id: "bench".into(),
        listen,
        seeds: seeds.to_vec(),
        security: Security::MutualTls(material),
        metadata: BTreeMap::new(),
        timing,
        epoch_file: None,
        generation_file: None,
    };
    Mesh::start(config).await.map_err(|e| e.to_string())
}

/// Joining takes longer the larger the cluster: every member must reach every view.
pub fn converge_timeout(n: usize) -> Duration {
    Duration::from_secs(60).max(Duration::from_millis(1_500 * n as u64))
}

pub async fn wait_converged(nodes: &[Node], timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let n = nodes.len();
    loop {
        let ok = nodes
            .iter()
            .all(|node| node.live_members().len() == n && node.view().publisher.is_some());
        if ok {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            let sizes: Vec<usize> = nodes.iter().map(|x| x.live_members().len()).collect();
            for node in nodes.iter().take(5) {
                eprintln!("{}: {:?}", node.node_id(), node.traffic());
            }
            return Err(format!(
                "no convergence after {timeout:?}: live counts {sizes:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node holding the publisher role, if one does.
pub fn publisher(nodes: &[Node]) -> Option<&Node> {
    nodes
        .iter()
        .find(|x| x.role() == shoal_gossip::Role::Publisher)
}

pub async fn stop(nodes: impl IntoIterator<Item = Node>) {
    for node in nodes {
        node.abort().await;
    }
}

/// A document of `size` varied bytes, so each publish has a new digest.
pub fn payload(size: usize, nonce: u64) -> Doc {
    let mut x = nonce.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `n` free UDP ports on 127.0.0.1, known before any node starts (as pod addresses are known to
/// DNS before the pods listen). Taken from the kernel and released at once.
pub fn free_ports(n: usize) -> Result<Vec<SocketAddr>, String> {
    let socks: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    socks
        .iter()
        .map(|s| s.local_addr().map_err(|e| e.to_string()))
        .collect()
}
