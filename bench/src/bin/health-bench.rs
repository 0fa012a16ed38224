//! Benchmark: probes per second hitting the backends against cluster size, for Shoal's shared
//! health (K checkers per backend) and for "every node checks everything" (keepalived's model,
//! run here as K = cluster size through the same runner).
//!
//! Each node is a real health runner on an in-memory mesh (`MemoryCluster`); the backends are
//! real TCP listeners on 127.0.0.1 that count accepted connections. After a warm-up, the total
//! accepted connections are sampled once per second; the table shows the median and p99 of
//! those per-second rates. Run: `cargo run -p shoal-bench --release --bin health-bench`.

use anyhow::Context;
use clap::Parser;
use prometheus_client::registry::Registry;
use shoal_dataplane::model::{Forwarding, Protocol, SchedFlags, Tunnel};
use shoal_node::health::{self, HealthConfig, MemoryCluster};
use shoal_node::table::{Backend, HealthCheck, Probe, RuleTable, VirtualService};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
struct Args {
    /// Cluster sizes to simulate.
    #[arg(long, value_delimiter = ',', default_value = "3,10,30")]
    sizes: Vec<usize>,
    /// Shoal's checkers per backend.
    #[arg(long, default_value_t = 2)]
    k: usize,
    #[arg(long, default_value_t = 6)]
    backends: usize,
    #[arg(long, default_value_t = 500)]
    interval_ms: u64,
    /// One-second samples per run (after a warm-up of two intervals plus one second).
    #[arg(long, default_value_t = 10)]
    samples: usize,
}

struct Row {
    nodes: usize,
    model: String,
    stats: Stats,
}

/// Per-second probe rates at the backends over one run.
struct Stats {
    median: f64,
    p99: f64,
    /// All probes of the run divided by its length: immune to window alignment.
    mean: f64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rows = Vec::new();
    for &nodes in &args.sizes {
        for (model, k) in [
            (format!("shoal K={}", args.k), args.k),
            ("every node".to_string(), nodes),
        ] {
            let stats = run(&args, nodes, k)
                .await
                .with_context(|| format!("run with {nodes} nodes, K={k}"))?;
            eprintln!(
                "{nodes} nodes, {model}: median {:.1}/s p99 {:.1}/s mean {:.1}/s",
                stats.median, stats.p99, stats.mean
            );
            rows.push(Row {
                nodes,
                model,
                stats,
            });
        }
    }
    let expected = |k: usize| (k * args.backends) as f64 * 1000.0 / args.interval_ms as f64;
    println!(
        "| nodes | model | probes/s at backends, median | p99 | mean | expected (K x backends / interval) |"
    );
    println!("|---|---|---|---|---|---|");
    for r in rows {
        let k = if r.model.starts_with("shoal") {
            args.k.min(r.nodes)
        } else {
            r.nodes
        };
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.nodes,
            r.model,
            r.stats.median,
            r.stats.p99,
            r.stats.mean,
            expected(k)
        );
    }
    Ok(())
}

async fn run(args: &Args, nodes: usize, k: usize) -> anyhow::Result<Stats> {
    let accepted = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let mut backends = Vec::new();
    for _ in 0..args.backends {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        backends.push(Backend {
            address: "127.0.0.1".parse()?,
            port: listener.local_addr()?.port(),
            weight: 1,
        });
        let (accepted, stop) = (accepted.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listener.accept() => if r.is_ok() { accepted.fetch_add(1, Ordering::Relaxed); },
                }
            }
        });
    }
    backends.sort();
    let table = RuleTable {
        services: vec![VirtualService {
            name: "bench".into(),
            vip: "203.0.113.1".parse()?,
            port: 80,
            protocol: Protocol::Tcp,
            scheduler: "rr".into(),
            flags: SchedFlags::default(),
            forwarding: Forwarding::Tunnel(Tunnel::Ipip),
            backends,
            health: Some(HealthCheck {
                probe: Probe::Tcp,
                interval_ms: args.interval_ms,
                timeout_ms: args.interval_ms / 2,
                rise: 2,
                fall: 2,
                port: None,
            }),
            source_ranges: vec![],
        }],
    };
    let (_tables, rx) = watch::channel(Some(health::unstamped(table)));
    let members = MemoryCluster::new();
    let mut registry = Registry::default();
    for i in 0..nodes {
        health::spawn(
            HealthConfig {
                checkers_per_backend: k,
            },
            members.join(&format!("lb-{i:02}")),
            rx.clone(),
            &mut registry,
            stop.clone(),
        )?;
    }
    tokio::time::sleep(Duration::from_millis(2 * args.interval_ms + 1000)).await;
    let mut rates = Vec::with_capacity(args.samples);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = accepted.load(Ordering::Relaxed);
    for _ in 0..args.samples {
        tick.tick().await;
        let now = accepted.load(Ordering::Relaxed);
        rates.push((now - last) as f64);
        last = now;
    }
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mean = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
    rates.sort_by(f64::total_cmp);
    Ok(Stats {
        median: percentile(&rates, 50.0),
        p99: percentile(&rates, 99.0),
        mean,
    })
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
