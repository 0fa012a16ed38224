//! lab-flows: the traffic of the VM lab's end-to-end scenarios (docs/e2e-lab.md).
//!
//! - `serve`: a backend's TCP server; greets each connection with `shoal-flows NAME\n`, then
//!   echoes every byte back until the client closes.
//! - `run`: opens N long-lived connections to a VIP, streams each one's byte sequence, checks
//!   every echoed byte and measures each connection's stall; writes a JSON report and, every
//!   second, a one-line live status.
//! - `probe`: opens a new connection every few milliseconds and records which backend greeted it
//!   (or why none did): when new connections work again after a fault.
//! - `http-serve`, `http-load`: a small HTTP/1.1 server and load generator for the data-path
//!   figures (keep-alive or one connection per request), with the guest's CPU time per request.
//! - `udp`: clients that each keep one source port and send a datagram every interval, each
//!   echoed by a `serve --udp-listen` backend that names itself: whether a dead backend's
//!   clients are moved (UDP flows never end by themselves).
//! - `now`: the Unix time in milliseconds (busybox `date` has no milliseconds).
//!
//! The sequence, stall and report rules are pure, in `shoal_chaos::flows`.

mod http;
mod probe;
mod stream;
mod udp;
mod view;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::sleep;

#[derive(Parser)]
#[command(
    name = "lab-flows",
    about = "Traffic for the VM lab's end-to-end scenarios"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Echo server that greets with its name.
    Serve {
        /// host:port to listen on; repeat for several ports.
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
        /// UDP host:port to echo on, each answer prefixed with the name (bind the VIP).
        #[arg(long)]
        udp_listen: Vec<SocketAddr>,
        #[arg(long)]
        name: String,
    },
    /// UDP clients, each on its own fixed source port, one datagram every interval.
    Udp {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 12)]
        clients: u16,
        #[arg(long, default_value_t = 42000)]
        base_port: u16,
        #[arg(long, default_value_t = 200)]
        interval_ms: u64,
        #[arg(long)]
        duration_s: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Long-lived checked connections.
    Run(RunArgs),
    /// A new connection every interval.
    Probe {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 50)]
        interval_ms: u64,
        #[arg(long)]
        duration_s: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Small HTTP/1.1 responses (15-byte body).
    HttpServe {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// HTTP requests as fast as N connections allow.
    HttpLoad {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 16)]
        conns: usize,
        #[arg(long)]
        duration_s: u64,
        /// One connection per request (`Connection: close`) instead of keep-alive.
        #[arg(long)]
        close: bool,
        #[arg(long)]
        label: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the Unix time in milliseconds.
    Now,
    /// One line: each mesh member's role and announcement state, from the first of the nodes'
    /// /v1/cluster that answers. With --out, rewritten there every --every-ms until killed (one
    /// long-lived process instead of one per line: process start-up is dear under emulation).
    AnnounceView {
        /// Admin addresses to ask, in order; repeat or separate with commas.
        #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:9100")]
        admin: Vec<SocketAddr>,
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 1000)]
        every_ms: u64,
    },
    /// Print the summary table of a lab run's output folder (reports, probes, events.txt).
    Summary {
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(clap::Args, Clone)]
pub(crate) struct RunArgs {
    #[arg(long)]
    target: SocketAddr,
    #[arg(long, default_value_t = 120)]
    conns: usize,
    /// How long each connection streams, from its own connect.
    #[arg(long)]
    duration_s: u64,
    /// One chunk per connection every this many ms.
    #[arg(long, default_value_t = 50)]
    interval_ms: u64,
    #[arg(long, default_value_t = 64)]
    chunk: usize,
    /// After streaming, how long to wait for the outstanding bytes.
    #[arg(long, default_value_t = 20)]
    drain_s: u64,
    /// Connections are opened over this many ms.
    #[arg(long, default_value_t = 2000)]
    spread_ms: u64,
    #[arg(long, default_value = "flows")]
    label: String,
    #[arg(long)]
    out: PathBuf,
    /// Rewritten every second with one JSON line of live counters (and the same for people
    /// next to it, with the extension `.txt`).
    #[arg(long)]
    status: Option<PathBuf>,
    /// Stop streaming (then drain and close) as soon as this file exists; --duration-s is
    /// then the longest the connections stream.
    #[arg(long)]
    stop_file: Option<PathBuf>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Serve {
            listen,
            udp_listen,
            name,
        } => {
            for addr in udp_listen {
                let name = name.clone();
                tokio::spawn(async move {
                    if let Err(e) = udp::echo(addr, name).await {
                        eprintln!("udp echo on {addr}: {e:#}");
                    }
                });
            }
            stream::serve(listen, name).await
        }
        Cmd::Udp {
            target,
            clients,
            base_port,
            interval_ms,
            duration_s,
            out,
        } => udp::clients(target, clients, base_port, interval_ms, duration_s, &out).await,
        Cmd::Run(args) => stream::run(args).await,
        Cmd::Probe {
            target,
            interval_ms,
            duration_s,
            out,
        } => probe::probe(target, interval_ms, duration_s, &out).await,
        Cmd::HttpServe { listen } => http::http_serve(listen).await,
        Cmd::HttpLoad {
            target,
            conns,
            duration_s,
            close,
            label,
            out,
        } => http::http_load(target, conns, duration_s, close, &label, &out).await,
        Cmd::Now => {
            println!("{}", now_ms());
            Ok(())
        }
        Cmd::AnnounceView {
            admin,
            out,
            every_ms,
        } => {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_millis(every_ms.clamp(300, 2000)))
                .build()
                .context("http client")?;
            let Some(out) = out else {
                println!("{}", view::announce_view(&client, &admin).await);
                return Ok(());
            };
            loop {
                let line = view::announce_view(&client, &admin).await;
                write_atomic(&out, &format!("{line}\n"))?;
                sleep(Duration::from_millis(every_ms)).await;
            }
        }
        Cmd::Summary { dir } => {
            print!("{}", view::summary(&dir)?);
            Ok(())
        }
    }
}
