//! gossip-bench: measures the mesh on loopback, many nodes in one process. This file is the
//! command line; each mode lives in its own module (see docs/benchmarks.md for recorded figures
//! and exact commands):
//!
//!   detect  --nodes 5,20,50,100 --trials 5 [--fault kill|freeze]  failure-detection time
//!   spread  --nodes 5,20,50 --sizes 1000,100000,2000000 --trials 10  new head reaches every node
//!           (columns: nodes, size, trials, all nodes p50/p99/max ms, per node p50/p99 ms,
//!           copies the publisher sent per head p50/max, copies all nodes sent per head p50,
//!           MB of UDP all nodes sent per head p50); `--change-bytes N`: each head an edit of
//!           the previous one (N bytes changed, N/4 + 1 inserted) instead of a new random one
//!           (`--warm-heads K`: K such edits first, not measured)
//!   traffic --nodes 20,50,100 --secs 30                          steady-state bytes/s per node
//!   soak    --nodes 20 --secs 600                                false deaths in a healthy cluster
//!   detect|traffic ... --peer chitchat                          the same figures for chitchat 0.11
//!           with its own UDP transport and default configuration (peer.rs)
//!   parallel --nodes 100 --trials 3 [--seeds first3|all]         every node started at the same
//!           instant (a StatefulSet with podManagementPolicy: Parallel); time until all agree on
//!           one publisher and see every member live, then until a head is applied everywhere.
//!
//! Every mode takes `--nodes` (a comma list: one cluster per size, one table row each) and
//! `--liveness-phi X` (the replica core's phi threshold, `Timing::liveness_phi_threshold`),
//! `--liveness-confirm-phi X` (the bar for a reported death, `Timing::liveness_confirm_phi`).
//! A new mode: a module with `Args` (flattening `Common`) and `run(lab, n, args)`, and one
//! variant of `Mode`.

/// The allocator the `shoal` binary ships with (`node/src/main.rs`), so the bench's CPU figures
/// are the shipping build's: with glibc malloc, allocation was about a quarter of the CPU of
/// 100 nodes in steady state (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cluster;
mod detect;
mod parallel;
mod peer;
mod soak;
mod spread;
mod stats;
mod traffic;

use clap::Parser;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "gossip-bench",
    about = "Measures Shoal's mesh on loopback, many nodes in one process (docs/benchmarks.md)"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(clap::Subcommand)]
enum Mode {
    /// Failure-detection time: one node killed or frozen per trial.
    Detect(detect::Args),
    /// Time until a new head reaches every node, and copies sent per head.
    Spread(spread::Args),
    /// Steady-state bytes per second and CPU per node.
    Traffic(traffic::Args),
    /// False deaths in a healthy cluster.
    Soak(soak::Args),
    /// Every node started at the same instant: time to agree, then to apply a head.
    Parallel(parallel::Args),
}

/// The flags every mode takes.
#[derive(clap::Args)]
pub struct Common {
    /// Cluster sizes, comma-separated: one cluster (and one table row) per size.
    #[arg(long, value_delimiter = ',', default_value = "5", value_parser = clap::value_parser!(u32).range(1..))]
    nodes: Vec<u32>,
    /// The replica core's phi threshold for every node (default: `Timing`'s).
    #[arg(long, value_parser = parse_phi)]
    liveness_phi: Option<f64>,
    /// The bar at which a death another member reports is confirmed (default: `Timing`'s;
    /// the threshold itself turns reports off).
    #[arg(long, value_parser = parse_phi)]
    liveness_confirm_phi: Option<f64>,
}

/// The gossip implementation run instead of Shoal's mesh (`--peer`).
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Peer {
    /// chitchat 0.11 with its own UDP transport and its default configuration.
    Chitchat,
}

fn parse_phi(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(phi) if phi.is_finite() && phi > 0.0 => Ok(phi),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

impl Mode {
    fn name(&self) -> &'static str {
        match self {
            Mode::Detect(_) => "detect",
            Mode::Spread(_) => "spread",
            Mode::Traffic(_) => "traffic",
            Mode::Soak(_) => "soak",
            Mode::Parallel(_) => "parallel",
        }
    }

    fn common(&self) -> &Common {
        match self {
            Mode::Detect(a) => &a.common,
            Mode::Spread(a) => &a.common,
            Mode::Traffic(a) => &a.common,
            Mode::Soak(a) => &a.common,
            Mode::Parallel(a) => &a.common,
        }
    }

    async fn run(&self, lab: &cluster::Lab, n: usize) -> Result<(), String> {
        match self {
            Mode::Detect(a) => detect::run(lab, n, a).await,
            Mode::Spread(a) => spread::run(lab, n, a).await,
            Mode::Traffic(a) => traffic::run(lab, n, a).await,
            Mode::Soak(a) => soak::run(lab, n, a).await,
            Mode::Parallel(a) => parallel::run(lab, n, a).await,
        }
    }
}

// Many workers: the bench simulates many nodes (normally one process each); on a shared machine
// the scheduler shares CPU per thread, so two workers starve a 50-node cluster.
#[tokio::main(flavor = "multi_thread", worker_threads = 8)]
async fn main() {
    let cli = Cli::parse();
    let common = cli.mode.common();
    let lab = match cluster::Lab::new(common.liveness_phi, common.liveness_confirm_phi) {
        Ok(lab) => lab,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    for &n in &common.nodes {
        let n = n as usize;
        if let Err(e) = cli.mode.run(&lab, n).await {
            eprintln!("{} at {n} nodes failed: {e}", cli.mode.name());
            std::process::exit(1);
        }
        // Let sockets and tasks of the previous cluster wind down.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("gossip-bench").chain(line.split_whitespace()))
    }

    /// Every command quoted in docs/benchmarks.md parses.
    #[test]
    fn documented_commands_parse() {
        for line in [
            "detect --nodes 5,20,50 --trials 8",
            "detect --nodes 100 --trials 4",
            "detect --nodes 5 --trials 8 --liveness-phi 4.5",
            "detect --nodes 5 --trials 3 --fault freeze",
            "spread --nodes 5,20,50 --trials 8",
            "spread --nodes 50 --sizes 2000000 --trials 8",
            "spread --nodes 50 --sizes 2000000 --trials 8 --change-bytes 1000",
            "spread --nodes 50 --sizes 1000,2000000 --trials 8 --print-samples",
            "spread --nodes 50 --sizes 2000000 --trials 16 --change-bytes 1000 --print-samples",
            "traffic --nodes 20,50 --secs 20",
            "traffic --nodes 100 --secs 20",
            "soak --nodes 20 --secs 600",
            "parallel --nodes 100 --trials 1 --seeds first3",
            "parallel --nodes 100 --trials 3 --seeds all",
            "detect --nodes 5,20,50,100 --trials 4 --peer chitchat",
            "traffic --nodes 5 --secs 10 --peer chitchat",
        ] {
            if let Err(e) = parse(line) {
                panic!("{line}: {e}");
            }
        }
        let cli = parse("detect --nodes 5,20,50 --liveness-phi 4.5").unwrap();
        let common = cli.mode.common();
        assert_eq!(common.nodes, [5, 20, 50]);
        assert_eq!(common.liveness_phi, Some(4.5));
    }

    #[test]
    fn bad_input_is_refused() {
        for line in [
            "",
            "walk --nodes 5",
            "detect --bogus 1",
            "detect --nodes 5,x",
            "detect --nodes 0",
            "detect --fault melt",
            "detect --fault freeze --peer chitchat",
            "detect --liveness-phi -1",
            "spread --peer chitchat",
            "soak --trials 3",
            "parallel --seeds some",
            "traffic --peer memberlist",
        ] {
            assert!(parse(line).is_err(), "{line:?} was accepted");
        }
    }
}
