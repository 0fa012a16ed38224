//! `soak`: false deaths in a healthy cluster. Every 20 ms each node's live count is checked;
//! a check that sees fewer than n live members counts as a false death.

use crate::cluster::{converge_timeout, stop, wait_converged, Lab};
use crate::Common;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Seconds watched once the cluster has converged.
    #[arg(long, default_value_t = 30)]
    secs: u64,
}

pub async fn run(lab: &Lab, n: usize, args: &Args) -> Result<(), String> {
    let secs = args.secs;
    let nodes = lab.start_cluster(n).await?;
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
    stop(nodes).await;
    Ok(())
}
