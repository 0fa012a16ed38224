//! `traffic`: steady-state UDP bytes per second per node (QUIC's UDP payload, sent and
//! received), the gossip share of what is sent, and the CPU the whole cluster keeps busy.

use crate::cluster::{converge_timeout, payload, publisher, stop, wait_converged, Lab};
use crate::{peer, stats, Common, Peer};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Seconds measured once the cluster has settled.
    #[arg(long, default_value_t = 30)]
    secs: u64,
    /// Run the peer instead of Shoal's mesh.
    #[arg(long, value_enum)]
    peer: Option<Peer>,
}

pub async fn run(lab: &Lab, n: usize, args: &Args) -> Result<(), String> {
    match args.peer {
        Some(Peer::Chitchat) => peer::traffic(n, args.secs).await,
        None => traffic(lab, n, args.secs).await,
    }
}

async fn traffic(lab: &Lab, n: usize, secs: u64) -> Result<(), String> {
    let nodes = lab.start_cluster(n).await?;
    wait_converged(&nodes, converge_timeout(nodes.len())).await?;
    if let Some(p) = publisher(&nodes) {
        p.publish(payload(1_000, 1)).map_err(|e| e.to_string())?;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before: Vec<_> = nodes.iter().map(|x| x.traffic()).collect();
    let cpu_before = stats::process_cpu_secs();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let elapsed = t0.elapsed().as_secs_f64();
    // CPU cores the whole cluster kept busy, and milliseconds of CPU per node per second.
    let (cores, per_node_ms) = match (cpu_before, stats::process_cpu_secs()) {
        (Some(b), Some(a)) => ((a - b) / elapsed, (a - b) / elapsed / n as f64 * 1e3),
        _ => (f64::NAN, f64::NAN),
    };
    let after: Vec<_> = nodes.iter().map(|x| x.traffic()).collect();
    let rate = |f: fn(&shoal_gossip::Traffic) -> u64| -> Vec<f64> {
        before
            .iter()
            .zip(&after)
            .map(|(b, a)| f(a).saturating_sub(f(b)) as f64 / elapsed)
            .collect()
    };
    let tx = rate(|x| x.udp_tx_bytes);
    let rx = rate(|x| x.udp_rx_bytes);
    let gossip = rate(|x| x.gossip_tx_bytes);
    let live_ok = nodes.iter().all(|x| x.live_members().len() == n);
    let (tx50, tx99, _, _) = stats::summary(tx);
    let (rx50, rx99, _, _) = stats::summary(rx);
    let (g50, _, _, _) = stats::summary(gossip);
    println!(
        "| traffic | {n} | {secs} | {tx50:.0} | {tx99:.0} | {rx50:.0} | {rx99:.0} | {g50:.0} | {cores:.2} | {per_node_ms:.1} | {live_ok} |"
    );
    stop(nodes).await;
    Ok(())
}
