//! Benchmark: time to parse and check a rules file against its size, to show the parser is
//! linear (issue #15: 2.5k/5k/10k services x 10 backends took 1.3/4.7/19.3 s, quadratic), and
//! what every follower pays for each new head of that table.
//!
//! For each size it generates a file of N services with B backends and a health check each,
//! parses it R times with `shoal_node::rules::parse` (what the publisher and `shoal check` run)
//! and prints the median and the time per service; the ratio column is the ratio to the
//! smallest size's time per service (1.0 = linear). The last three columns are the table as the
//! mesh moves it: its size in bincode 2 (what is gossiped and fetched), and the median time to
//! decode it as a fetched document (the mesh's own decoder) and to hash it (SHA-256, the digest
//! every copy is checked against). Last, the same decode of gossip-bench's 2 MB byte vector,
//! to scale that bench's spread figures to a real table. Run:
//! `cargo run -p shoal-bench --release --bin rules-bench -- --sizes 2500,5000,10000`.

use clap::Parser;
use shoal_node::table::RuleTable;
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

fn median_of(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// `doc` encoded as the mesh moves it, and the median seconds the fetcher's decoder takes to
/// read it back (`runs` times; each copy must equal `doc`).
fn encode_and_decode<D: shoal_gossip::Document + PartialEq>(
    doc: &D,
    runs: usize,
) -> anyhow::Result<(Vec<u8>, f64)> {
    let bytes = bincode::serde::encode_to_vec(doc, bincode::config::standard())?;
    let mut decode = Vec::new();
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        let copy: Option<D> = shoal_gossip::fuzzing::document(&bytes);
        decode.push(start.elapsed().as_secs_f64());
        anyhow::ensure!(
            copy.as_ref() == Some(doc),
            "the document did not decode as itself"
        );
    }
    Ok((bytes, median_of(decode)))
}

/// The table as a head of the mesh: its encoded size, and the median seconds a follower spends
/// decoding and hashing each copy (`runs` times each).
fn as_a_head(table: &RuleTable, runs: usize) -> anyhow::Result<(usize, f64, f64)> {
    let (bytes, decode) = encode_and_decode(table, runs)?;
    let mut digest = Vec::new();
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        std::hint::black_box(shoal_gossip::digest_hex(&bytes));
        digest.push(start.elapsed().as_secs_f64());
    }
    Ok((bytes.len(), decode, median_of(digest)))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "{:>9} {:>9} {:>10} {:>12} {:>14} {:>8} {:>10} {:>10} {:>10}",
        "services",
        "backends",
        "file MB",
        "median ms",
        "us/service",
        "ratio",
        "bincode KB",
        "decode ms",
        "sha256 ms"
    );
    let mut base: Option<f64> = None;
    for &n in &args.sizes {
        let text = generate(n, args.backends);
        let mut times = Vec::with_capacity(args.runs);
        let mut parsed = None;
        for _ in 0..args.runs.max(1) {
            // Freed before the next parse, as each parse's own table was: a table kept alive
            // across parses slowed parse and decode 20-30% here (glibc malloc).
            drop(parsed.take());
            let start = Instant::now();
            let table = shoal_node::rules::parse(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
            times.push(start.elapsed().as_secs_f64());
            anyhow::ensure!(
                table.services.len() == n,
                "parsed {} services",
                table.services.len()
            );
            parsed = Some(table);
        }
        let median = median_of(times);
        let per_service = median / n as f64;
        let ratio = per_service / *base.get_or_insert(per_service);
        let table = parsed.ok_or_else(|| anyhow::anyhow!("no parse ran"))?;
        let (encoded, decode, digest) = as_a_head(&table, args.runs)?;
        println!(
            "{n:>9} {:>9} {:>10.1} {:>12.1} {:>14.2} {ratio:>8.2} {:>10.0} {:>10.2} {:>10.2}",
            args.backends,
            text.len() as f64 / 1e6,
            median * 1e3,
            per_service * 1e6,
            encoded as f64 / 1e3,
            decode * 1e3,
            digest * 1e3,
        );
    }
    let (bytes, decode) = byte_vector_decode(2_000_000, args.runs)?;
    println!(
        "for scale: gossip-bench's document (a byte vector), {:.0} KB in bincode, decodes in {:.2} ms",
        bytes as f64 / 1e3,
        decode * 1e3
    );
    Ok(())
}

/// gossip-bench spreads a `Vec<u8>` of `len` random bytes: its encoded size and median decode
/// seconds with the same decoder, to scale that bench's figures to a real table.
fn byte_vector_decode(len: usize, runs: usize) -> anyhow::Result<(usize, f64)> {
    let doc: Vec<u8> = (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let (bytes, decode) = encode_and_decode(&doc, runs)?;
    Ok((bytes.len(), decode))
}
