//! `detect`: failure-detection time. One node per trial is killed (or frozen: the fault hook
//! drops all its traffic); a sample is the time until one survivor no longer lists it as live
//! (polled every 2 ms); then a replacement joins, so the cluster stays at n nodes.

use crate::cluster::{converge_timeout, stop, wait_converged, Lab};
use crate::{peer, stats, Common, Peer};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Nodes killed (one per trial).
    #[arg(long, default_value_t = 5)]
    trials: usize,
    /// How the victim fails: kill (its endpoint closes) or freeze (alive, silent).
    #[arg(long, value_enum, default_value_t = Fault::Kill, conflicts_with = "peer")]
    fault: Fault,
    /// Run the peer instead of Shoal's mesh (kill only).
    #[arg(long, value_enum)]
    peer: Option<Peer>,
    /// Print each trial's victim and per-survivor times (ms) to stderr.
    #[arg(long)]
    print_samples: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Fault {
    Kill,
    Freeze,
}

pub async fn run(lab: &Lab, n: usize, args: &Args) -> Result<(), String> {
    match args.peer {
        Some(Peer::Chitchat) => peer::detect(n, args.trials).await,
        None => detect(lab, n, args.trials, args.fault, args.print_samples).await,
    }
}

async fn detect(
    lab: &Lab,
    n: usize,
    trials: usize,
    fault: Fault,
    print_samples: bool,
) -> Result<(), String> {
    let mut nodes = lab.start_cluster(n).await?;
    let conv = wait_converged(&nodes, converge_timeout(nodes.len())).await?;
    // Let the failure detectors' sampling windows fill.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut samples = Vec::new();
    let mut false_deaths = 0usize;
    let mut frozen = Vec::new();
    for trial in 0..trials {
        // Never the lowest ids, so the publisher role is not part of this measurement.
        let victim_index = nodes.len() - 1 - (trial * 7) % (nodes.len() / 2).max(1);
        let victim = nodes.remove(victim_index);
        let victim_id = victim.node_id().clone();
        let t0 = Instant::now();
        match fault {
            Fault::Freeze => {
                victim.fault_hook().isolate();
                frozen.push(victim);
            }
            Fault::Kill => victim.abort().await,
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
        if print_samples {
            let ms: Vec<u128> = seen
                .iter()
                .map(|s| s.map_or(0, |d| d.as_millis()))
                .collect();
            eprintln!("trial {trial}: victim {victim_id} samples {ms:?}");
        }
        samples.extend(
            seen.iter()
                .map(|s| s.map_or(f64::INFINITY, |d| d.as_secs_f64() * 1e3)),
        );
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
        nodes.push(lab.start_node(&format!("r{trial:03}"), &seeds).await?);
        wait_converged(&nodes, converge_timeout(nodes.len())).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (p50, p99, max, count) = stats::summary(samples);
    let fault = match fault {
        Fault::Kill => "kill",
        Fault::Freeze => "freeze",
    };
    println!(
        "| detect ({fault}) | {n} | {trials} | {count} | {p50:.0} | {p99:.0} | {max:.0} | {false_deaths} | converged in {:.1} s |",
        conv.as_secs_f64()
    );
    stop(nodes.into_iter().chain(frozen)).await;
    Ok(())
}
