//! `parallel`: every node started at the same instant (a StatefulSet with
//! `podManagementPolicy: Parallel`); the time until all agree on one publisher and see every
//! member live, then until a head is applied everywhere. A progress line every 5 s sums the
//! transport's counters.

use crate::cluster::{free_ports, payload, publisher, start_node_with, stop, Lab, Node};
use crate::{stats, Common};
use shoal_gossip::certs::issue_node_cert;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Clusters started, one after the other.
    #[arg(long, default_value_t = 5)]
    trials: usize,
    /// Which pods every node is seeded with.
    #[arg(long, value_enum, default_value_t = Seeds::First3)]
    seeds: Seeds,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Seeds {
    /// The first three pods (pod DNS names shoal-0..2).
    First3,
    /// Every pod (the headless Service's name, as manifests/ seed).
    All,
}

impl Seeds {
    fn name(self) -> &'static str {
        match self {
            Seeds::First3 => "first3",
            Seeds::All => "all",
        }
    }
}

pub async fn run(lab: &Lab, n: usize, args: &Args) -> Result<(), String> {
    let seeds = args.seeds;
    let mut formed = Vec::new();
    let mut applied = Vec::new();
    for _ in 0..args.trials {
        let (f, a) = trial(lab, n, seeds).await?;
        eprintln!(
            "parallel {n} ({}): formed {:.2} s, head applied everywhere {:.2} s",
            seeds.name(),
            f.as_secs_f64(),
            a.as_secs_f64()
        );
        formed.push(f.as_secs_f64() * 1e3);
        applied.push(a.as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (f50, _, fmax, count) = stats::summary(formed);
    let (a50, _, amax, _) = stats::summary(applied);
    println!(
        "| parallel ({}) | {n} | {count} | {f50:.0} | {fmax:.0} | {a50:.0} | {amax:.0} |",
        seeds.name()
    );
    Ok(())
}

/// Every node started at the same instant; returns (formed, head applied everywhere) times.
async fn trial(lab: &Lab, n: usize, seeds: Seeds) -> Result<(Duration, Duration), String> {
    let addrs = free_ports(n)?;
    let seed_list: Vec<String> = match seeds {
        Seeds::First3 => addrs.iter().take(3).map(|a| a.to_string()).collect(),
        Seeds::All => addrs.iter().map(|a| a.to_string()).collect(),
    };
    let ids: Vec<String> = (0..n).map(|i| format!("n{i:03}")).collect();
    let materials: Vec<_> = ids
        .iter()
        .map(|id| issue_node_cert(&lab.ca, id).map_err(|e| e.to_string()))
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
            let (id, addr, timing) = (id.clone(), *addr, lab.timing().clone());
            tokio::spawn(async move { start_node_with(m, &id, addr, &seeds, timing).await })
        });
    let starts: Vec<_> = starts.collect();
    let mut nodes = Vec::with_capacity(n);
    for started in starts {
        nodes.push(started.await.map_err(|e| e.to_string())??);
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
            stop(nodes).await;
            return Err(format!(
                "{n} nodes started at once: no agreement after {timeout:?}; live counts (sorted) {sizes:?}; publishers named {publishers:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let publisher = publisher(&nodes)
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
    stop(nodes).await;
    Ok((formed, applied))
}

/// Live counts and the transport's drop and handshake counters, summed over nodes.
fn progress(nodes: &[Node]) -> String {
    let mut live: Vec<usize> = nodes.iter().map(|x| x.live_members().len()).collect();
    live.sort_unstable();
    let t: Vec<_> = nodes.iter().map(|x| x.traffic()).collect();
    let sum = |f: fn(&shoal_gossip::Traffic) -> u64| t.iter().map(f).sum::<u64>();
    format!(
        "live min {} p50 {} max {}; sent {} queue-full {} no-conn {} inbound-full {} dial-fail {} dial-restarts {} refused {} (full {} busy {} rate {}) timed-out {} retried {} MB tx {:.1}",
        live[0],
        live[live.len() / 2],
        live[live.len() - 1],
        sum(|x| x.sent_on_stream),
        sum(|x| x.dropped_queue_full),
        sum(|x| x.dropped_no_connection),
        sum(|x| x.dropped_inbound_full),
        sum(|x| x.dial_failures),
        sum(|x| x.dials_restarted),
        sum(|x| x.handshakes_refused),
        sum(|x| x.handshakes_refused_full),
        sum(|x| x.handshakes_refused_source_busy),
        sum(|x| x.handshakes_refused_source_rate),
        sum(|x| x.handshakes_timed_out),
        sum(|x| x.handshakes_retried),
        sum(|x| x.udp_tx_bytes) as f64 / 1e6,
    )
}
