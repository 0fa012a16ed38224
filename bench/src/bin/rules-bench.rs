//! Benchmark: time to parse and check a rules file against its size, to show the parser is
//! linear (issue #15: 2.5k/5k/10k services x 10 backends took 1.3/4.7/19.3 s, quadratic).
//!
//! For each size it generates a file of N services with B backends and a health check each,
//! parses it R times with `shoal_node::rules::parse` (what the publisher and `shoal check` run)
//! and prints the median and the time per service; the last column is the ratio to the
//! smallest size's time per service (1.0 = linear). Run:
//! `cargo run -p shoal-bench --release --bin rules-bench -- --sizes 2500,5000,10000`.

use clap::Parser;
use std::fmt::Write as _;
use std::time::Instant;

#[derive(Parser, Debug)]
struct Args {
    /// Services per file.
    #[arg(long, value_delimiter = ',', default_value = "2500,5000,10000")]
    sizes: Vec<usize>,
    #[arg(long, default_value_t = 10)]
    backends: usize,
    /// Parses per size; the median is reported.
    #[arg(long, default_value_t = 7)]
    runs: usize,
}

/// A rules file of `services` services with `backends` backends each (all distinct).
pub fn generate(services: usize, backends: usize) -> String {
    let mut out = String::with_capacity(services * (120 + backends * 50));
    for i in 0..services {
        let _ = write!(
            out,
            "[[service]]\nname = \"svc-{i}\"\nvip = \"10.{}.{}.{}\"\nport = 80\nscheduler = \"mh\"\n\n",
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff,
        );
        for b in 0..backends {
            let _ = write!(
                out,
                "[[service.backend]]\naddress = \"198.18.{}.{}\"\nweight = 1\n\n",
                b,
                1 + (i % 250)
            );
        }
        out.push_str(
            "[service.health]\nkind = \"http\"\npath = \"/healthz\"\ninterval_ms = 1000\ntimeout_ms = 500\n\n",
        );
    }
    out
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "{:>9} {:>9} {:>10} {:>12} {:>14} {:>8}",
        "services", "backends", "file MB", "median ms", "us/service", "ratio"
    );
    let mut base: Option<f64> = None;
    for &n in &args.sizes {
        let text = generate(n, args.backends);
        let mut times = Vec::with_capacity(args.runs);
        for _ in 0..args.runs.max(1) {
            let start = Instant::now();
            let table = shoal_node::rules::parse(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
            times.push(start.elapsed().as_secs_f64());
            anyhow::ensure!(
                table.services.len() == n,
                "parsed {} services",
                table.services.len()
            );
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let per_service = median / n as f64;
        let ratio = per_service / *base.get_or_insert(per_service);
        println!(
            "{n:>9} {:>9} {:>10.1} {:>12.1} {:>14.2} {ratio:>8.2}",
            args.backends,
            text.len() as f64 / 1e6,
            median * 1e3,
            per_service * 1e6,
        );
    }
    Ok(())
}
