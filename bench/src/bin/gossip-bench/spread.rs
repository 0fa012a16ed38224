//! `spread`: the time until a new head reaches every node, per document size, and the copies
//! sent per head (by the publisher, and by all nodes; a copy counts once its fetcher has read
//! it all).

use crate::cluster::{converge_timeout, payload, publisher, stop, wait_converged, Lab};
use crate::{stats, Common};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Document sizes in bytes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,100000,2000000")]
    sizes: Vec<usize>,
    /// Heads published per size.
    #[arg(long, default_value_t = 5)]
    trials: usize,
}

pub async fn run(lab: &Lab, n: usize, args: &Args) -> Result<(), String> {
    let nodes = lab.start_cluster(n).await?;
    wait_converged(&nodes, converge_timeout(nodes.len())).await?;
    let publisher = publisher(&nodes).ok_or("no publisher")?.clone();
    let trials = args.trials;
    let mut nonce = 0;
    for &size in &args.sizes {
        let mut all_nodes_ms = Vec::new();
        let mut per_node_ms = Vec::new();
        let mut publisher_copies = Vec::new();
        let mut all_copies = Vec::new();
        for _ in 0..trials {
            let served_before: Vec<u64> = nodes.iter().map(|x| x.documents_served()).collect();
            nonce += 1;
            let doc = payload(size, nonce);
            let t0 = Instant::now();
            let version = publisher.publish(doc).map_err(|e| e.to_string())?;
            let mut waiters = Vec::new();
            for node in &nodes {
                let mut rx = node.subscribe();
                let version = version.clone();
                waiters.push(tokio::spawn(async move {
                    loop {
                        let done = rx
                            .borrow_and_update()
                            .as_ref()
                            .is_some_and(|s| s.version >= version);
                        if done {
                            return Some(Instant::now());
                        }
                        if rx.changed().await.is_err() {
                            return None;
                        }
                    }
                }));
            }
            let mut latest = Duration::ZERO;
            for w in waiters {
                let at = tokio::time::timeout(Duration::from_secs(60), w)
                    .await
                    .map_err(|_| format!("{size} B version {version} did not reach every node"))?
                    .map_err(|e| e.to_string())?
                    .ok_or("watch closed")?;
                let d = at.saturating_duration_since(t0);
                per_node_ms.push(d.as_secs_f64() * 1e3);
                latest = latest.max(d);
            }
            // Make sure every node really holds this exact version.
            let ok = nodes
                .iter()
                .all(|x| x.current().is_some_and(|c| c.version == version));
            if !ok {
                return Err(format!("version {version} not held everywhere"));
            }
            all_nodes_ms.push(latest.as_secs_f64() * 1e3);
            tokio::time::sleep(Duration::from_millis(300)).await;
            // Copies sent for this head (a copy counts once its fetcher has read it all).
            let served: Vec<u64> = nodes
                .iter()
                .zip(&served_before)
                .map(|(x, before)| x.documents_served() - before)
                .collect();
            let from_publisher = nodes
                .iter()
                .zip(&served)
                .find(|(x, _)| x.node_id() == publisher.node_id())
                .map_or(0, |(_, s)| *s);
            publisher_copies.push(from_publisher as f64);
            all_copies.push(served.iter().sum::<u64>() as f64);
        }
        let (p50, p99, max, _) = stats::summary(all_nodes_ms);
        let (node_p50, node_p99, _, _) = stats::summary(per_node_ms);
        let (pub_p50, _, pub_max, _) = stats::summary(publisher_copies);
        let (all_p50, _, _, _) = stats::summary(all_copies);
        println!(
            "| spread | {n} | {size} | {trials} | {p50:.0} | {p99:.0} | {max:.0} | {node_p50:.0} | {node_p99:.0} | {pub_p50:.0} | {pub_max:.0} | {all_p50:.0} |"
        );
    }
    stop(nodes).await;
    Ok(())
}
