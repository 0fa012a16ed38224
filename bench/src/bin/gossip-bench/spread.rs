//! `spread`: the time until a new head reaches every node, per document size, and the copies
//! sent per head (by the publisher, and by all nodes; a copy counts once its fetcher has read
//! it all), and the UDP bytes all nodes sent meanwhile (gossip included).
//!
//! Also the CPU the process used while each head spread, publish to the last arrival (p50 and
//! max per head), and that CPU over the head's wall time (p50): the cores it kept busy. Near
//! the machine's core count the spread is bound by CPU (in one process, all nodes' copies share
//! the cores), not by the tree's latency; well below it, by latency.
//!
//! Heads are wholly new random documents, or with `--change-bytes N` edits of the previous head
//! as a table edit would make them: N bytes changed at a random offset and N/4 + 1 bytes
//! inserted at another (after one unmeasured random head of each size, so that every node holds
//! the base of the first edit).

use crate::cluster::{converge_timeout, payload, publisher, stop, wait_converged, Doc, Lab};
use crate::{stats, Common};
use shoal_gossip::{Mesh, Version};
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
    /// Each head edits the previous one: this many bytes changed, a quarter as many inserted
    /// (default: every head a new random document).
    #[arg(long)]
    change_bytes: Option<usize>,
    /// Print each head's time to reach every node (ms) to stderr.
    #[arg(long)]
    print_samples: bool,
    /// With `--change-bytes`: this many edits after the base, not measured. The first edits of
    /// a process pay the kernel for the fresh pages its working set grows into (2 MB buffers
    /// per copy, 50 copies in one process; docs/benchmarks.md); these let the measured heads
    /// be the steady state.
    #[arg(long, default_value_t = 0)]
    warm_heads: usize,
    /// Time between a head reaching every node and the next head, in ms (at least 300, which
    /// lets the copy counters settle). Longer than the allocator's purge delay (a second), it
    /// asks whether heads that come now and then pay fresh pages each (they did not:
    /// docs/benchmarks.md).
    #[arg(long, default_value_t = 300)]
    pause_ms: u64,
}

/// `doc` with `n` bytes changed at a pseudo-random offset and `n / 4 + 1` inserted at another.
fn edit(doc: &Doc, n: usize, nonce: u64) -> Doc {
    let noise = payload(n + n / 4 + 3, nonce);
    let at = |k: usize, len: usize| {
        (u64::from_le_bytes([noise[k], noise[k + 1], 0, 0, 0, 0, 0, 0]) as usize * 7_919)
            % len.max(1)
    };
    let mut out = doc.clone();
    let n = n.min(out.len());
    let start = at(0, out.len() - n + 1);
    for (i, b) in out[start..start + n].iter_mut().enumerate() {
        *b ^= noise[i] | 1;
    }
    let insert_at = at(1, out.len() + 1);
    out.splice(
        insert_at..insert_at,
        noise[n..n + n / 4 + 1].iter().copied(),
    );
    out
}

/// Waits until every node holds `version` (or newer); the arrival time of each.
async fn arrivals(nodes: &[Mesh<Doc>], version: &Version) -> Result<Vec<Instant>, String> {
    let mut waiters = Vec::new();
    for node in nodes {
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
    let mut out = Vec::new();
    for w in waiters {
        let at = tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .map_err(|_| format!("version {version} did not reach every node"))?
            .map_err(|e| e.to_string())?
            .ok_or("watch closed")?;
        out.push(at);
    }
    Ok(out)
}

pub async fn run(lab: &Lab, n: usize, args: &Args) -> Result<(), String> {
    let nodes = lab.start_cluster(n).await?;
    wait_converged(&nodes, converge_timeout(nodes.len())).await?;
    let publisher = publisher(&nodes).ok_or("no publisher")?.clone();
    let trials = args.trials;
    // Between heads; never under the 300 ms the copy counters need to settle.
    let pause = Duration::from_millis(args.pause_ms.max(300));
    let mut nonce = 0;
    for &size in &args.sizes {
        let mut all_nodes_ms = Vec::new();
        let mut per_node_ms = Vec::new();
        let mut publisher_copies = Vec::new();
        let mut all_copies = Vec::new();
        let mut sent_mb = Vec::new();
        let mut cpu_ms = Vec::new();
        let mut busy_cores = Vec::new();
        let mut previous = None;
        if args.change_bytes.is_some() {
            // The base of the first edit, everywhere, and the warm-up edits (not measured).
            nonce += 1;
            let mut doc = payload(size, nonce);
            for warm in 0..=args.warm_heads {
                if warm > 0 {
                    nonce += 1;
                    doc = edit(&doc, args.change_bytes.unwrap_or(0), nonce);
                }
                let version = publisher.publish(doc.clone()).map_err(|e| e.to_string())?;
                arrivals(&nodes, &version).await?;
                tokio::time::sleep(pause).await;
            }
            previous = Some(doc);
        }
        for _ in 0..trials {
            let served_before: Vec<u64> = nodes.iter().map(|x| x.documents_served()).collect();
            let sent_before: u64 = nodes.iter().map(|x| x.traffic().udp_tx_bytes).sum();
            nonce += 1;
            let doc = match (&previous, args.change_bytes) {
                (Some(prev), Some(n)) => edit(prev, n, nonce),
                _ => payload(size, nonce),
            };
            if args.change_bytes.is_some() {
                previous = Some(doc.clone());
            }
            let cpu_before = stats::process_cpu_secs();
            let t0 = Instant::now();
            let version = publisher.publish(doc).map_err(|e| e.to_string())?;
            let mut latest = Duration::ZERO;
            for at in arrivals(&nodes, &version).await? {
                let d = at.saturating_duration_since(t0);
                per_node_ms.push(d.as_secs_f64() * 1e3);
                latest = latest.max(d);
            }
            let head_cpu_ms = match (cpu_before, stats::process_cpu_secs()) {
                (Some(before), Some(after)) => (after - before) * 1e3,
                _ => f64::NAN,
            };
            let head_ms = t0.elapsed().as_secs_f64() * 1e3;
            cpu_ms.push(head_cpu_ms);
            busy_cores.push(head_cpu_ms / head_ms);
            // Make sure every node really holds this exact version.
            let ok = nodes
                .iter()
                .all(|x| x.current().is_some_and(|c| c.version == version));
            if !ok {
                return Err(format!("version {version} not held everywhere"));
            }
            all_nodes_ms.push(latest.as_secs_f64() * 1e3);
            if args.print_samples {
                eprintln!(
                    "spread {n} {size}: head {version} at every node after {latest:?}, {head_cpu_ms:.0} ms of CPU"
                );
            }
            tokio::time::sleep(pause).await;
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
            let sent: u64 = nodes.iter().map(|x| x.traffic().udp_tx_bytes).sum();
            sent_mb.push(sent.saturating_sub(sent_before) as f64 / 1e6);
        }
        let (p50, p99, max, _) = stats::summary(all_nodes_ms);
        let (node_p50, node_p99, _, _) = stats::summary(per_node_ms);
        let (pub_p50, _, pub_max, _) = stats::summary(publisher_copies);
        let (all_p50, _, _, _) = stats::summary(all_copies);
        let (mb_p50, _, _, _) = stats::summary(sent_mb);
        let (cpu_p50, _, cpu_max, _) = stats::summary(cpu_ms);
        let (cores_p50, _, _, _) = stats::summary(busy_cores);
        println!(
            "| spread | {n} | {size} | {trials} | {p50:.0} | {p99:.0} | {max:.0} | {node_p50:.0} | {node_p99:.0} | {pub_p50:.0} | {pub_max:.0} | {all_p50:.0} | {mb_p50:.1} | {cpu_p50:.0} | {cpu_max:.0} | {cores_p50:.2} |"
        );
    }
    stop(nodes).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edit_changes_a_few_bytes_and_inserts_some() {
        let doc = payload(100_000, 1);
        let out = edit(&doc, 1_000, 2);
        assert_eq!(out.len(), doc.len() + 251);
        // Most bytes are where they were (before the insertion) or shifted by it.
        let same = doc.iter().zip(&out).filter(|(a, b)| a == b).count();
        let shifted = doc.iter().zip(&out[251..]).filter(|(a, b)| a == b).count();
        assert!(same + shifted > 97_000, "{same} + {shifted}");
        assert_ne!(out, doc);
        // Deterministic per nonce, different across nonces.
        assert_eq!(edit(&doc, 1_000, 2), out);
        assert_ne!(edit(&doc, 1_000, 3), out);
    }
}
