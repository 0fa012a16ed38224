//! The peer, run next to Shoal's mesh in the same bench: chitchat 0.11 (the version Shoal pins)
//! with its own UDP transport and its default configuration (gossip every 1 s, phi 8, initial
//! interval 5 s: `ChitchatConfig`'s and `FailureDetectorConfig`'s own defaults). Its socket is
//! wrapped to count the bytes of every datagram it sends and receives (chitchat's own encoding,
//! UDP payload only, as Shoal's figures count QUIC's UDP payload).

use chitchat::transport::{Socket, Transport, UdpTransport};
use chitchat::{
    spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, ChitchatMessage,
    FailureDetectorConfig, Serializable,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Bytes {
    pub tx: AtomicU64,
    pub rx: AtomicU64,
}

struct Counting {
    bytes: Arc<Bytes>,
}

struct CountingSocket {
    inner: Box<dyn Socket>,
    bytes: Arc<Bytes>,
}

#[async_trait::async_trait]
impl Transport for Counting {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let inner = UdpTransport.open(listen_addr).await?;
        Ok(Box::new(CountingSocket {
            inner,
            bytes: self.bytes.clone(),
        }))
    }
}

#[async_trait::async_trait]
impl Socket for CountingSocket {
    async fn send(&mut self, to: SocketAddr, msg: ChitchatMessage) -> anyhow::Result<()> {
        self.bytes
            .tx
            .fetch_add(msg.serialized_len() as u64, Ordering::Relaxed);
        self.inner.send(to, msg).await
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        let (from, msg) = self.inner.recv().await?;
        self.bytes
            .rx
            .fetch_add(msg.serialized_len() as u64, Ordering::Relaxed);
        Ok((from, msg))
    }
}

pub struct PeerNode {
    pub id: ChitchatId,
    pub handle: ChitchatHandle,
    pub bytes: Arc<Bytes>,
}

impl PeerNode {
    pub async fn live(&self) -> Vec<String> {
        self.handle
            .with_chitchat(|c| c.live_nodes().map(|id| id.node_id.to_string()).collect())
            .await
    }
}

/// Chitchat's defaults, as a user who does not tune it gets them.
fn config(id: ChitchatId, seeds: Vec<String>) -> ChitchatConfig {
    ChitchatConfig {
        listen_addr: id.gossip_advertise_addr,
        chitchat_id: id,
        cluster_id: "bench".into(),
        gossip_interval: Duration::from_secs(1),
        seed_nodes: seeds,
        failure_detector_config: FailureDetectorConfig::default(),
        marked_for_deletion_grace_period: Duration::from_secs(3_600),
        catchup_callback: None,
        extra_liveness_predicate: None,
    }
}

pub async fn start(id: &str, addr: SocketAddr, seeds: Vec<String>) -> Result<PeerNode, String> {
    let generation = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let chitchat_id = ChitchatId::new(id, generation, addr);
    let bytes = Arc::new(Bytes::default());
    let transport = Counting {
        bytes: bytes.clone(),
    };
    let handle = spawn_chitchat(config(chitchat_id.clone(), seeds), Vec::new(), &transport)
        .await
        .map_err(|e| e.to_string())?;
    Ok(PeerNode {
        id: chitchat_id,
        handle,
        bytes,
    })
}

/// Starts `n` chitchat nodes 10 at a time (each batch joins before the next starts), each
/// seeded with up to three earlier ones spread over the cluster: the same rollout and seeding
/// as Shoal's side of the bench.
pub async fn start_cluster(addrs: &[SocketAddr]) -> Result<Vec<PeerNode>, String> {
    let mut nodes: Vec<PeerNode> = Vec::with_capacity(addrs.len());
    for (i, addr) in addrs.iter().enumerate() {
        if i > 0 && i % 10 == 0 {
            wait_converged(&nodes, Duration::from_secs(120)).await?;
        }
        let mut picks: Vec<usize> = match i {
            0 => vec![],
            _ => vec![i - 1, (i - 1) / 2, (i - 1) / 4],
        };
        picks.dedup();
        let seeds = picks.iter().map(|&j| addrs[j].to_string()).collect();
        nodes.push(start(&format!("n{i:03}"), *addr, seeds).await?);
    }
    Ok(nodes)
}

pub async fn wait_converged(nodes: &[PeerNode], timeout: Duration) -> Result<Duration, String> {
    let t0 = Instant::now();
    loop {
        let mut all = true;
        for node in nodes {
            if node.live().await.len() != nodes.len() {
                all = false;
                break;
            }
        }
        if all {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > timeout {
            return Err(format!(
                "chitchat: {} nodes not converged after {timeout:?}",
                nodes.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn stop(nodes: Vec<PeerNode>) {
    for node in nodes {
        let _ = node.handle.shutdown().await;
    }
}

/// Kill one node per trial (its server stops, nothing announced); a sample is the time until
/// one survivor no longer lists it as live (polled every 10 ms); then a replacement joins.
/// Prints the same columns as Shoal's `detect` row.
pub async fn detect(n: usize, trials: usize) -> Result<(), String> {
    let addrs = crate::cluster::free_ports(n + trials)?;
    let mut nodes = start_cluster(&addrs[..n]).await?;
    let conv = wait_converged(&nodes, Duration::from_secs(120)).await?;
    // Chitchat's detector starts from a 5 s prior: let it learn the 1 s interval first.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut samples = Vec::new();
    let mut false_deaths = 0usize;
    for trial in 0..trials {
        let victim_index = nodes.len() - 1 - (trial * 7) % (nodes.len() / 2).max(1);
        let victim = nodes.remove(victim_index);
        let victim_id = victim.id.node_id.to_string();
        let t0 = Instant::now();
        let _ = victim.handle.shutdown().await;
        let mut seen: Vec<Option<Duration>> = vec![None; nodes.len()];
        while seen.iter().any(Option::is_none) && t0.elapsed() < Duration::from_secs(120) {
            for (i, node) in nodes.iter().enumerate() {
                if seen[i].is_none() && !node.live().await.contains(&victim_id) {
                    seen[i] = Some(t0.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        samples.extend(
            seen.iter()
                .map(|s| s.map_or(f64::INFINITY, |d| d.as_secs_f64() * 1e3)),
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let expected = nodes.len();
        for node in &nodes {
            if node.live().await.len() != expected {
                false_deaths += 1;
            }
        }
        let seeds = nodes
            .iter()
            .take(3)
            .map(|x| x.id.gossip_advertise_addr.to_string())
            .collect();
        nodes.push(start(&format!("r{trial:03}"), addrs[n + trial], seeds).await?);
        wait_converged(&nodes, Duration::from_secs(120)).await?;
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let (p50, p99, max, count) = crate::stats::summary(samples);
    println!(
        "| detect (kill), chitchat 0.11 defaults | {n} | {trials} | {count} | {p50:.0} | {p99:.0} | {max:.0} | {false_deaths} | converged in {:.1} s |",
        conv.as_secs_f64()
    );
    stop(nodes).await;
    Ok(())
}

/// Bytes per node per second over `secs` once converged (and 5 s settled); the same columns as
/// Shoal's `traffic` row where they apply (tx and rx p50/p99; no gossip/CPU split).
pub async fn traffic(n: usize, secs: u64) -> Result<(), String> {
    let addrs = crate::cluster::free_ports(n)?;
    let nodes = start_cluster(&addrs).await?;
    wait_converged(&nodes, Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let read = |nodes: &[PeerNode]| -> Vec<(u64, u64)> {
        nodes
            .iter()
            .map(|x| {
                (
                    x.bytes.tx.load(Ordering::Relaxed),
                    x.bytes.rx.load(Ordering::Relaxed),
                )
            })
            .collect()
    };
    let before = read(&nodes);
    let cpu_before = crate::stats::process_cpu_secs();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let cores = match (cpu_before, crate::stats::process_cpu_secs()) {
        (Some(b), Some(a)) => (a - b) / elapsed,
        _ => f64::NAN,
    };
    let after = read(&nodes);
    let tx: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a.0 - b.0) as f64 / elapsed)
        .collect();
    let rx: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a.1 - b.1) as f64 / elapsed)
        .collect();
    let mut live_ok = true;
    for node in &nodes {
        live_ok &= node.live().await.len() == n;
    }
    let (tx50, tx99, _, _) = crate::stats::summary(tx);
    let (rx50, rx99, _, _) = crate::stats::summary(rx);
    println!(
        "| traffic, chitchat 0.11 defaults (UDP) | {n} | {secs} | {tx50:.0} | {tx99:.0} | {rx50:.0} | {rx99:.0} | - | {cores:.2} | {:.1} | {live_ok} |",
        cores / n as f64 * 1e3
    );
    stop(nodes).await;
    Ok(())
}
