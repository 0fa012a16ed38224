//! The `shoal-chaos` binary's command line: subcommands and their flags, handed to
//! `shoal_chaos::launch` (lab runs, the simulation); logging and exit codes.
//!
//! Exit codes: 0 no violation, 1 violations found, 2 the harness failed, 130 interrupted.

use clap::{Parser, Subcommand};
use shoal_chaos::lab;
use shoal_chaos::launch::faults::{self, RunArgs};
use shoal_chaos::launch::sim::{self, SimShape};
use shoal_chaos::launch::steady::{self, SteadyArgs};
use shoal_chaos::schedule::{Schedule, ScheduleConfig};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "shoal-chaos",
    about = "Fault injection and invariant checks for Shoal"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A short run (default 150 s), as in CI.
    Run(RunArgs),
    /// A long run (default 1 h).
    Soak(RunArgs),
    /// Every node started at once, then the same random loss on every link for a long time,
    /// counting false deaths (no other fault).
    Steady(SteadyArgs),
    /// Remove namespaces and folders left by runs that are no longer running.
    Cleanup {
        /// Also remove those of runs still in progress.
        #[arg(long)]
        all: bool,
    },
    /// The deterministic simulation: many seeds, or one seed replayed in detail.
    Sim {
        /// First seed.
        #[arg(long, default_value_t = 0)]
        first: u64,
        /// How many seeds (1 replays `--first` and prints everything it found).
        #[arg(long, default_value_t = 10_000)]
        seeds: u64,
        /// Build the nodes with a deliberate bug (adopt-older), to see the checkers catch it.
        #[arg(long)]
        bug_adopt_older: bool,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[command(flatten)]
        shape: SimShape,
    },
    /// Time to converge after a heal as a function of N (the simulation at several sizes).
    SimScale {
        /// Cluster sizes.
        #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
        nodes: Vec<usize>,
        /// Seeds per size, in the same order as `--nodes`.
        #[arg(long, value_delimiter = ',', default_value = "200,50,6")]
        seeds: Vec<u64>,
        #[arg(long, default_value_t = 0)]
        first: u64,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[command(flatten)]
        shape: SimShape,
    },
    /// Print the first episodes a seed draws, without running anything.
    Schedule {
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        #[arg(long, default_value_t = 20)]
        count: usize,
    },
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_CHAOS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Cmd::Run(a) => faults::run(&a, "run", Duration::from_secs(150)).map(ExitCode::from),
        Cmd::Soak(a) => faults::run(&a, "soak", Duration::from_secs(3600)).map(ExitCode::from),
        Cmd::Steady(a) => steady::run(&a).map(ExitCode::from),
        Cmd::Cleanup { all } => {
            let removed = lab::cleanup::cleanup_leftovers(all);
            println!(
                "removed {} namespaces: {}",
                removed.len(),
                removed.join(" ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Sim {
            first,
            seeds,
            bug_adopt_older,
            threads,
            shape,
        } => Ok(sim::run(first, seeds, threads, &shape.config(bug_adopt_older)).into()),
        Cmd::SimScale {
            nodes,
            seeds,
            first,
            threads,
            shape,
        } => sim::scale(&nodes, &seeds, first, threads, &shape.config(false)).map(ExitCode::from),
        Cmd::Schedule { seed, nodes, count } => {
            for e in Schedule::new(seed, ScheduleConfig::new(nodes)).take(count) {
                let faults: Vec<String> = e.faults.iter().map(|f| f.to_string()).collect();
                println!(
                    "{:>4}  hold {:>4} ms  {}",
                    e.index,
                    e.hold_ms,
                    faults.join(" + ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(2)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(line: &str) -> Result<Cmd, clap::Error> {
        Cli::try_parse_from(std::iter::once("shoal-chaos").chain(line.split_whitespace()))
            .map(|c| c.command)
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
        assert!(
            matches!(parse("sim-scale --nodes 10,1000 --seeds 3,1"), Ok(Cmd::SimScale { ref nodes, .. }) if nodes == &[10, 1000])
        );
    }

    /// The commands docs/ and chaos/ci.sh quote keep parsing, into the same fields.
    #[test]
    fn documented_commands_parse() {
        for line in [
            "run --nodes 5 --duration 150s --seed 1 --report-dir DIR",
            "run --nodes 3 --duration 20s --seed 7 --node-env SHOAL_FAULT=applied-goes-back --shoal target/debug/shoal --report-dir DIR",
            "soak --nodes 5 --duration 30m --seed 2026 --convergence-bound-ms 2000 --node-log warn,shoal_gossip=info --shoal PATH --report-dir DIR",
            "steady --nodes 20 --loss-percent 5 --duration 1h --shoal target/release/shoal --report-dir DIR",
            "steady --nodes 10 --loss-percent 60 --duration 20s --insecure",
            "cleanup",
            "cleanup --all",
            "sim --first 3 --seeds 1",
            "sim --seeds 100000",
            "sim --bug-adopt-older --first 0 --seeds 1",
            "sim --sim-nodes 1000 --first 1 --seeds 1 --heals 3",
            "sim-scale --nodes 10,100,1000 --seeds 200,40,2 --heals 3",
            "schedule --seed 4 --count 30",
        ] {
            if let Err(e) = parse(line) {
                panic!("{line}: {e}");
            }
        }
        let Ok(Cmd::Soak(a)) = parse(
            "soak --nodes 5 --seed 2026 --node-env A=1 --node-env B=2 --insecure --report-dir R",
        ) else {
            panic!("soak did not parse")
        };
        assert_eq!(
            a.lab.node_env,
            [("A".into(), "1".into()), ("B".into(), "2".into())]
        );
        assert!(a.lab.insecure);
        assert_eq!(a.lab.report_dir, std::path::Path::new("R"));
        assert_eq!(a.lab.shoal, None);
        let Ok(Cmd::Steady(s)) = parse("steady") else {
            panic!("steady did not parse")
        };
        assert_eq!(
            (s.nodes, s.loss_percent, s.duration.as_str()),
            (20, 5, "1h")
        );
        assert_eq!(s.lab.report_dir, std::path::Path::new("chaos-report"));
    }

    #[test]
    fn bad_input_is_refused() {
        for line in [
            "run --node-env NOEQUALS",
            "run --bogus",
            "steady --node-log info",
            "steady --loss-percent 300",
            "sim --nodes 5",
        ] {
            assert!(parse(line).is_err(), "{line:?} was accepted");
        }
    }
}
