//! gossip-bench: measures the mesh on loopback, many nodes in one process.
//!
//! Modes (see docs/benchmarks.md for recorded figures and exact commands):
//!   detect  --nodes 5,20,50,100 --trials 5 [--fault kill|freeze]  failure-detection time
//!   spread  --nodes 5,20,50 --sizes 1000,100000,2000000 --trials 10  new head reaches every node
//!           (columns: nodes, size, trials, all nodes p50/p99/max ms, per node p50/p99 ms,
//!           copies the publisher sent per head p50/max, copies all nodes sent per head p50)
//!   traffic --nodes 20,50,100 --secs 30                          steady-state bytes/s per node
//!   soak    --nodes 20 --secs 600                                false deaths in a healthy cluster
//!   detect|traffic ... --peer chitchat                          the same figures for chitchat 0.11
//!           with its own UDP transport and default configuration (gossip_bench/peer.rs)
//!   parallel --nodes 100 --trials 3 [--seeds first3|all]         every node started at the same
//!           instant (a StatefulSet with podManagementPolicy: Parallel); time until all agree on
//!           one publisher and see every member live, then until a head is applied everywhere.
//!           Seeds: `first3` = the first three pods for everyone (pod DNS names shoal-0..2),
//!           `all` = every pod (the headless Service's name, as manifests/ seed)
//! Any mode: --liveness-phi X sets the replica core's phi threshold (`Timing::liveness_phi_threshold`).

#[path = "gossip_bench/peer.rs"]
mod peer;

use shoal_gossip::certs::{create_ca, issue_node_cert, ClusterCa};
use shoal_gossip::{Mesh, MeshConfig, NodeId, Security, Timing};
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

type Doc = Vec<u8>;
type Node = Mesh<Doc>;

struct Args {
    mode: String,
    nodes: Vec<usize>,
    sizes: Vec<usize>,
    trials: usize,
    secs: u64,
    fault: String,
    seeds: String,
    peer: Option<String>,
}

/// `--liveness-phi`: the core's phi threshold for every node of the run (default: `Timing`'s).
static LIVENESS_PHI: OnceLock<f64> = OnceLock::new();

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mode = it.next().ok_or("usage: gossip-bench <detect|spread|traffic|soak|parallel> [--nodes a,b] [--sizes a,b] [--trials n] [--secs s] [--fault kill|freeze] [--seeds first3|all] [--peer chitchat] [--liveness-phi x]")?;
    let mut args = Args {
        mode,
        nodes: vec![5],
        sizes: vec![1_000, 100_000, 2_000_000],
        trials: 5,
        secs: 30,
        fault: "kill".into(),
        seeds: "first3".into(),
        peer: None,
    };
    let list = |v: &str| -> Result<Vec<usize>, String> {
        v.split(',')
            .map(|x| x.trim().parse().map_err(|_| format!("bad number {x:?}")))
            .collect()
    };
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--nodes" => args.nodes = list(&value)?,
            "--sizes" => args.sizes = list(&value)?,
            "--trials" => args.trials = value.parse().map_err(|_| "bad --trials")?,
            "--secs" => args.secs = value.parse().map_err(|_| "bad --secs")?,
            "--fault" => args.fault = value,
            "--liveness-phi" => {
                let phi: f64 = value.parse().map_err(|_| "bad --liveness-phi")?;
                LIVENESS_PHI
                    .set(phi)
                    .map_err(|_| "--liveness-phi given twice")?;
            }
            "--seeds" => args.seeds = value,
            "--peer" if value == "chitchat" => args.peer = Some(value),
            "--peer" => return Err(format!("--peer takes chitchat, not {value}")),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn summary(mut samples: Vec<f64>) -> (f64, f64, f64, usize) {
    samples.sort_by(|a, b| a.total_cmp(b));
    (
        percentile(&samples, 50.0),
        percentile(&samples, 99.0),
        samples.last().copied().unwrap_or(f64::NAN),
        samples.len(),
    )
}

async fn start_node(ca: &ClusterCa, id: &str, seeds: &[String]) -> Result<Node, String> {
    let material = issue_node_cert(ca, id).map_err(|e| e.to_string())?;
    let listen = "127.0.0.1:0".parse().map_err(|_| "addr")?;
    start_node_with(material, id, listen, seeds).await
}

async fn start_node_with(
    material: shoal_gossip::certs::TlsMaterial,
    id: &str,
    listen: std::net::SocketAddr,
    seeds: &[String],
) -> Result<Node, String> {
    let config = MeshConfig {
        node_id: NodeId::new(id),
        cluster_id: "bench".into(),
        listen,
        seeds: seeds.to_vec(),
        security: Security::MutualTls(material),
        metadata: BTreeMap::new(),
        timing: Timing {
            liveness_phi_threshold: LIVENESS_PHI
                .get()
                .copied()
                .unwrap_or(Timing::default().liveness_phi_threshold),
            ..Timing::default()
        },
        epoch_file: None,
    };
    Mesh::start(config).await.map_err(|e| e.to_string())
}

/// Nodes started at once before the bench waits for them to join, as a rollout adds pods a few
/// at a time: a hundred TLS nodes joining together on two cores starve each other's failure
/// detectors and never settle (docs/benchmarks.md).
const JOIN_BATCH: usize = 10;

/// Starts `n` nodes in batches; each is given up to three earlier nodes as seeds, spread over
/// the cluster (as a headless Service's DNS would spread them), so that no seed serves every
/// joiner.
async fn start_cluster(ca: &ClusterCa, n: usize) -> Result<Vec<Node>, String> {
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
        nodes.push(start_node(ca, &format!("n{i:03}"), &seeds).await?);
    }
    Ok(nodes)
}

/// Joining takes longer the larger the cluster: every member must reach every view.
fn converge_timeout(n: usize) -> Duration {
    Duration::from_secs(60).max(Duration::from_millis(1_500 * n as u64))
}

async fn wait_converged(nodes: &[Node], timeout: Duration) -> Result<Duration, String> {
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

async fn detect(ca: &ClusterCa, n: usize, trials: usize, fault: &str) -> Result<(), String> {
    let mut nodes = start_cluster(ca, n).await?;
    let conv = wait_converged(&nodes, converge_timeout(nodes.len())).await?;
    // Let the failure detectors' sampling windows fill.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut samples = Vec::new();
    let mut worst_per_trial = Vec::new();
    let mut false_deaths = 0usize;
    let mut frozen = Vec::new();
    for trial in 0..trials {
        // Never the lowest ids, so the publisher role is not part of this measurement.
        let victim_index = nodes.len() - 1 - (trial * 7) % (nodes.len() / 2).max(1);
        let victim = nodes.remove(victim_index);
        let victim_id = victim.node_id().clone();
        let t0 = Instant::now();
        match fault {
            "freeze" => {
                victim.fault_hook().isolate();
                frozen.push(victim);
            }
            _ => victim.abort().await,
        }
        let mut seen: Vec<Option<Duration>> = vec![None; nodes.len()];
        while seen.iter().any(Option::is_none) && t0.elapsed() < Duration::from_secs(30) {
            for (i, node) in nodes.iter().enumerate() {
                if seen[i].is_none() && !node.live_members().contains(&victim_id) {
                    seen[i] = Some(t0.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let trial_samples: Vec<f64> = seen
            .iter()
            .map(|s| s.map_or(f64::INFINITY, |d| d.as_secs_f64() * 1e3))
            .collect();
        worst_per_trial.push(trial_samples.iter().cloned().fold(0.0, f64::max));
        samples.extend(trial_samples);
        // Any other member missing from any view is a false death.
        let expected = nodes.len();
        tokio::time::sleep(Duration::from_secs(2)).await;
        false_deaths += nodes
            .iter()
            .filter(|node| node.live_members().len() != expected)
            .count();
        // Keep the cluster at n nodes: a replacement joins (ids "r..." sort after "n...").
        let seeds: Vec<String> = nodes
            .iter()
            .take(3)
            .map(|x| x.listen_addr().to_string())
            .collect();
        nodes.push(start_node(ca, &format!("r{trial:03}"), &seeds).await?);
        wait_converged(&nodes, converge_timeout(nodes.len())).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (p50, p99, max, count) = summary(samples);
    println!(
        "| detect ({fault}) | {n} | {trials} | {count} | {p50:.0} | {p99:.0} | {max:.0} | {false_deaths} | converged in {:.1} s |",
        conv.as_secs_f64()
    );
    for node in nodes.into_iter().chain(frozen) {
        node.abort().await;
    }
    Ok(())
}

fn payload(size: usize, nonce: u64) -> Doc {
    // Varied bytes so each publish has a new digest; bincode adds a length prefix.
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

async fn spread(ca: &ClusterCa, n: usize, sizes: &[usize], trials: usize) -> Result<(), String> {
    let nodes = start_cluster(ca, n).await?;
    wait_converged(&nodes, converge_timeout(nodes.len())).await?;
    let publisher = nodes
        .iter()
        .find(|x| x.role() == shoal_gossip::Role::Publisher)
        .ok_or("no publisher")?
        .clone();
    let mut nonce = 0;
    for &size in sizes {
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
        let (p50, p99, max, _) = summary(all_nodes_ms);
        let (node_p50, node_p99, _, _) = summary(per_node_ms);
        let (pub_p50, _, pub_max, _) = summary(publisher_copies);
        let (all_p50, _, _, _) = summary(all_copies);
        println!(
            "| spread | {n} | {size} | {trials} | {p50:.0} | {p99:.0} | {max:.0} | {node_p50:.0} | {node_p99:.0} | {pub_p50:.0} | {pub_max:.0} | {all_p50:.0} |"
        );
    }
    for node in nodes {
        node.abort().await;
    }
    Ok(())
}

/// CPU seconds (user + system) this process has used so far, from /proc/self/stat.
/// The kernel reports them in USER_HZ ticks, which Linux fixes at 100 for user space.
fn process_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

async fn traffic(ca: &ClusterCa, n: usize, secs: u64) -> Result<(), String> {
    let nodes = start_cluster(ca, n).await?;
    wait_converged(&nodes, converge_timeout(nodes.len())).await?;
    if let Some(p) = nodes
        .iter()
        .find(|x| x.role() == shoal_gossip::Role::Publisher)
    {
        p.publish(payload(1_000, 1)).map_err(|e| e.to_string())?;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before: Vec<_> = nodes.iter().map(|x| x.traffic()).collect();
    let cpu_before = process_cpu_secs();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let elapsed = t0.elapsed().as_secs_f64();
    // CPU cores the whole cluster kept busy, and milliseconds of CPU per node per second.
    let (cores, per_node_ms) = match (cpu_before, process_cpu_secs()) {
        (Some(b), Some(a)) => ((a - b) / elapsed, (a - b) / elapsed / n as f64 * 1e3),
        _ => (f64::NAN, f64::NAN),
    };
    let after: Vec<_> = nodes.iter().map(|x| x.traffic()).collect();
    let tx: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.udp_tx_bytes.saturating_sub(b.udp_tx_bytes) as f64 / elapsed)
        .collect();
    let rx: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.udp_rx_bytes.saturating_sub(b.udp_rx_bytes) as f64 / elapsed)
        .collect();
    let gossip: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.gossip_tx_bytes.saturating_sub(b.gossip_tx_bytes) as f64 / elapsed)
        .collect();
    let live_ok = nodes.iter().all(|x| x.live_members().len() == n);
    let (tx50, tx99, _, _) = summary(tx);
    let (rx50, rx99, _, _) = summary(rx);
    let (g50, _, _, _) = summary(gossip);
    println!(
        "| traffic | {n} | {secs} | {tx50:.0} | {tx99:.0} | {rx50:.0} | {rx99:.0} | {g50:.0} | {cores:.2} | {per_node_ms:.1} | {live_ok} |"
    );
    for node in nodes {
        node.abort().await;
    }
    Ok(())
}

async fn soak(ca: &ClusterCa, n: usize, secs: u64) -> Result<(), String> {
    let nodes = start_cluster(ca, n).await?;
    let conv = wait_converged(&nodes, converge_timeout(nodes.len())).await?;
    let t0 = Instant::now();
    let mut false_deaths = 0u64;
    let mut checks = 0u64;
    let mut min_live = n;
    while t0.elapsed() < Duration::from_secs(secs) {
        for node in &nodes {
            let live = node.live_members().len();
            checks += 1;
            if live < n {
                false_deaths += 1;
                min_live = min_live.min(live);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "| soak | {n} | {secs} | {checks} | {false_deaths} | {min_live} | converged in {:.1} s |",
        conv.as_secs_f64()
    );
    for node in nodes {
        node.abort().await;
    }
    Ok(())
}

/// `n` free UDP ports on 127.0.0.1, known before any node starts (as pod addresses are known to
/// DNS before the pods listen). Taken from the kernel and released at once.
fn free_ports(n: usize) -> Result<Vec<std::net::SocketAddr>, String> {
    let socks: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    socks
        .iter()
        .map(|s| s.local_addr().map_err(|e| e.to_string()))
        .collect()
}

/// Every node started at the same instant; returns (formed, head applied everywhere) times.
async fn parallel_trial(
    ca: &ClusterCa,
    n: usize,
    seeds: &str,
) -> Result<(Duration, Duration), String> {
    let addrs = free_ports(n)?;
    let seed_list: Vec<String> = match seeds {
        "first3" => addrs.iter().take(3).map(|a| a.to_string()).collect(),
        "all" => addrs.iter().map(|a| a.to_string()).collect(),
        other => return Err(format!("unknown --seeds {other} (first3 or all)")),
    };
    let ids: Vec<String> = (0..n).map(|i| format!("n{i:03}")).collect();
    let materials: Vec<_> = ids
        .iter()
        .map(|id| issue_node_cert(ca, id).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let t0 = Instant::now();
    let starts = ids
        .iter()
        .zip(materials)
        .zip(&addrs)
        .map(|((id, m), addr)| {
            let seeds: Vec<String> = seed_list
                .iter()
                .filter(|s| **s != addr.to_string())
                .cloned()
                .collect();
            let (id, addr) = (id.clone(), *addr);
            tokio::spawn(async move { start_node_with(m, &id, addr, &seeds).await })
        });
    let mut nodes = Vec::with_capacity(n);
    for h in futures_join(starts.collect()).await {
        nodes.push(h.map_err(|e| e.to_string())??);
    }
    let timeout = Duration::from_secs(120);
    let mut next_report = Duration::from_secs(5);
    let formed = loop {
        if t0.elapsed() >= next_report {
            next_report += Duration::from_secs(5);
            eprintln!(
                "  {:>5.1} s: {}",
                t0.elapsed().as_secs_f64(),
                progress(&nodes)
            );
        }
        let publishers: std::collections::BTreeSet<_> =
            nodes.iter().map(|x| x.view().publisher).collect();
        let all_live = nodes.iter().all(|x| x.live_members().len() == n);
        if all_live && publishers.len() == 1 && publishers.iter().all(Option::is_some) {
            break t0.elapsed();
        }
        if t0.elapsed() > timeout {
            let mut sizes: Vec<usize> = nodes.iter().map(|x| x.live_members().len()).collect();
            sizes.sort_unstable();
            for node in nodes {
                node.abort().await;
            }
            return Err(format!(
                "{n} nodes started at once: no agreement after {timeout:?}; live counts (sorted) {sizes:?}; publishers named {publishers:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let publisher = nodes
        .iter()
        .find(|x| x.role() == shoal_gossip::Role::Publisher)
        .ok_or("no node holds the publisher role")?
        .clone();
    let version = loop {
        match publisher.publish(payload(1_000, 1)) {
            Ok(v) => break v,
            Err(_) if t0.elapsed() < timeout => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => return Err(e.to_string()),
        }
    };
    let applied = loop {
        if nodes
            .iter()
            .all(|x| x.current().is_some_and(|c| c.version >= version))
        {
            break t0.elapsed();
        }
        if t0.elapsed() > timeout {
            return Err(format!(
                "head {version} not applied everywhere after {timeout:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for node in nodes {
        node.abort().await;
    }
    Ok((formed, applied))
}

/// Live counts and the transport's drop and handshake counters, summed over nodes.
fn progress(nodes: &[Node]) -> String {
    let mut live: Vec<usize> = nodes.iter().map(|x| x.live_members().len()).collect();
    live.sort_unstable();
    let t: Vec<_> = nodes.iter().map(|x| x.traffic()).collect();
    let sum = |f: fn(&shoal_gossip::Traffic) -> u64| t.iter().map(f).sum::<u64>();
    format!(
        "live min {} p50 {} max {}; sent {} queue-full {} no-conn {} inbound-full {} dial-fail {} refused {} (full {} busy {} rate {}) timed-out {} retried {} MB tx {:.1}",
        live[0],
        live[live.len() / 2],
        live[live.len() - 1],
        sum(|x| x.sent_on_stream),
        sum(|x| x.dropped_queue_full),
        sum(|x| x.dropped_no_connection),
        sum(|x| x.dropped_inbound_full),
        sum(|x| x.dial_failures),
        sum(|x| x.handshakes_refused),
        sum(|x| x.handshakes_refused_full),
        sum(|x| x.handshakes_refused_source_busy),
        sum(|x| x.handshakes_refused_source_rate),
        sum(|x| x.handshakes_timed_out),
        sum(|x| x.handshakes_retried),
        sum(|x| x.udp_tx_bytes) as f64 / 1e6,
    )
}

async fn futures_join<T>(
    handles: Vec<tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await);
    }
    out
}

async fn parallel(ca: &ClusterCa, n: usize, trials: usize, seeds: &str) -> Result<(), String> {
    let mut formed = Vec::new();
    let mut applied = Vec::new();
    for _ in 0..trials {
        let (f, a) = parallel_trial(ca, n, seeds).await?;
        eprintln!(
            "parallel {n} ({seeds}): formed {:.2} s, head applied everywhere {:.2} s",
            f.as_secs_f64(),
            a.as_secs_f64()
        );
        formed.push(f.as_secs_f64() * 1e3);
        applied.push(a.as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (f50, _, fmax, count) = summary(formed);
    let (a50, _, amax, _) = summary(applied);
    println!(
        "| parallel ({seeds}) | {n} | {count} | {f50:.0} | {fmax:.0} | {a50:.0} | {amax:.0} |"
    );
    Ok(())
}

// Many workers: the bench simulates many nodes (normally one process each); on a shared machine
// the scheduler shares CPU per thread, so two workers starve a 50-node cluster.
#[tokio::main(flavor = "multi_thread", worker_threads = 8)]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let ca = match create_ca("bench") {
        Ok(ca) => ca,
        Err(e) => {
            eprintln!("CA: {e}");
            std::process::exit(1);
        }
    };
    for &n in &args.nodes {
        let result = match (args.mode.as_str(), args.peer.as_deref()) {
            ("detect", Some(_)) => peer::detect(n, args.trials).await,
            ("traffic", Some(_)) => peer::traffic(n, args.secs).await,
            (other, Some(p)) => Err(format!(
                "--peer {p} runs only with detect or traffic, not {other}"
            )),
            (mode, None) => match mode {
                "detect" => detect(&ca, n, args.trials, &args.fault).await,
                "spread" => spread(&ca, n, &args.sizes, args.trials).await,
                "traffic" => traffic(&ca, n, args.secs).await,
                "soak" => soak(&ca, n, args.secs).await,
                "parallel" => parallel(&ca, n, args.trials, &args.seeds).await,
                other => Err(format!("unknown mode {other}")),
            },
        };
        if let Err(e) = result {
            eprintln!("{} at {n} nodes failed: {e}", args.mode);
            std::process::exit(1);
        }
        // Let sockets and tasks of the previous cluster wind down.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
