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
//! - `now`: the Unix time in milliseconds (busybox `date` has no milliseconds).
//!
//! The sequence, stall and report rules are pure, in `shoal_chaos::flows`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use shoal_chaos::flows::{
    fill, first_mismatch, ConnRecord, FlowsReport, Outcome, ProbeRecord, StallTracker,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, timeout, Instant};

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
        #[arg(long)]
        name: String,
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
struct RunArgs {
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Serve { listen, name } => serve(listen, name).await,
        Cmd::Run(args) => run(args).await,
        Cmd::Probe {
            target,
            interval_ms,
            duration_s,
            out,
        } => probe(target, interval_ms, duration_s, &out).await,
        Cmd::HttpServe { listen } => http_serve(listen).await,
        Cmd::HttpLoad {
            target,
            conns,
            duration_s,
            close,
            label,
            out,
        } => http_load(target, conns, duration_s, close, &label, &out).await,
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
                println!("{}", announce_view(&client, &admin).await);
                return Ok(());
            };
            loop {
                let line = announce_view(&client, &admin).await;
                write_atomic(&out, &format!("{line}\n"))?;
                sleep(Duration::from_millis(every_ms)).await;
            }
        }
        Cmd::Summary { dir } => {
            print!("{}", summary(&dir)?);
            Ok(())
        }
    }
}

/// `r1:publisher/ready[1] r2:follower/ready[1] ...` (`[n]` = VIPs announced), or why not.
async fn announce_view(client: &reqwest::Client, admins: &[SocketAddr]) -> String {
    let mut v = None;
    for admin in admins {
        let url = format!("http://{admin}/v1/cluster");
        if let Ok(r) = client.get(&url).send().await {
            if let Ok(json) = r.json::<serde_json::Value>().await {
                v = Some(json);
                break;
            }
        }
    }
    let Some(v) = v else {
        return "(no node answering)".into();
    };
    let mut out = Vec::new();
    for m in v["members"].as_array().into_iter().flatten() {
        let id = m["id"].as_str().unwrap_or("?");
        let role = m["role"].as_str().unwrap_or("?");
        if !m["alive"].as_bool().unwrap_or(false) {
            out.push(format!("{id}:gone"));
            continue;
        }
        let a = &m["announce"];
        let word = match a["readiness"].as_str() {
            Some(r) => format!(
                "{id}:{role}/{r}[{}]",
                a["announced"].as_array().map(|x| x.len()).unwrap_or(0)
            ),
            None => format!("{id}:{role}"),
        };
        out.push(word);
    }
    out.join(" ")
}

/// Reads every flows report and probe series in `dir` (in the order the phases ran).
fn summary(dir: &Path) -> anyhow::Result<String> {
    let events = std::fs::read_to_string(dir.join("events.txt")).unwrap_or_default();
    let faults = shoal_chaos::flows::fault_times(&events);
    let mut order: Vec<String> = Vec::new();
    for line in events.lines() {
        if let Some(phase) = line.split_whitespace().nth(1) {
            if !order.iter().any(|p| p == phase) {
                order.push(phase.to_string());
            }
        }
    }
    let mut reports = Vec::new();
    let mut probes = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    let rank = |p: &PathBuf| {
        let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let phase = shoal_chaos::flows::probe_phase(stem);
        order.iter().position(|o| o == phase).unwrap_or(usize::MAX)
    };
    names.sort_by_key(|p| (rank(p), p.clone()));
    for path in names {
        let text = std::fs::read_to_string(&path)?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if stem.contains("-probe") {
            if let Ok(recs) = serde_json::from_str::<Vec<ProbeRecord>>(&text) {
                probes.push((stem.to_string(), recs));
            }
        } else if let Ok(r) = serde_json::from_str::<FlowsReport>(&text) {
            reports.push(r);
        }
    }
    Ok(shoal_chaos::flows::render_summary(
        &reports, &probes, &faults,
    ))
}

async fn serve(listen: Vec<SocketAddr>, name: String) -> anyhow::Result<()> {
    let greeting = Arc::new(format!("shoal-flows {name}\n"));
    let mut servers = Vec::new();
    for addr in listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        servers.push(tokio::spawn(echo_loop(listener, greeting.clone())));
    }
    for s in servers {
        s.await.context("server task")??;
    }
    Ok(())
}

async fn echo_loop(listener: TcpListener, greeting: Arc<String>) -> anyhow::Result<()> {
    loop {
        let (mut s, _) = listener.accept().await?;
        let greeting = greeting.clone();
        tokio::spawn(async move {
            let _ = s.set_nodelay(true);
            if s.write_all(greeting.as_bytes()).await.is_err() {
                return;
            }
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = s.shutdown().await;
        });
    }
}

/// Connects and reads the backend's greeting; returns the stream and the backend's name.
async fn connect_greeted(
    target: SocketAddr,
    wait: Duration,
) -> Result<(TcpStream, String), String> {
    let mut s = match timeout(wait, TcpStream::connect(target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("connect: {e}")),
        Err(_) => return Err("connect: timeout".into()),
    };
    let _ = s.set_nodelay(true);
    let mut line = Vec::new();
    let read = async {
        let mut b = [0u8; 1];
        while line.len() < 128 {
            match s.read(&mut b).await {
                Ok(0) => return Err("greeting: eof".to_string()),
                Ok(_) if b[0] == b'\n' => return Ok(()),
                Ok(_) => line.push(b[0]),
                Err(e) => return Err(format!("greeting: {e}")),
            }
        }
        Err("greeting: too long".into())
    };
    match timeout(wait, read).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err("greeting: timeout".into()),
    }
    let text = String::from_utf8_lossy(&line).to_string();
    match text.strip_prefix("shoal-flows ") {
        Some(name) => Ok((s, name.to_string())),
        None => Err(format!("greeting: unexpected {text:?}")),
    }
}

/// Live counters of a run, shared by the connections and the status writer.
#[derive(Default)]
struct Live {
    /// Set when the stop file appeared.
    stop: std::sync::atomic::AtomicBool,
    open: AtomicUsize,
    done_ok: AtomicUsize,
    failed: AtomicUsize,
    bytes_verified: AtomicU64,
    /// Per connection: since when bytes are outstanding (0 = none), and its worst stall.
    waiting_since_ms: Vec<AtomicU64>,
    max_stall_ms: Vec<AtomicU64>,
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let live = Arc::new(Live {
        waiting_since_ms: (0..args.conns).map(|_| AtomicU64::new(0)).collect(),
        max_stall_ms: (0..args.conns).map(|_| AtomicU64::new(0)).collect(),
        ..Live::default()
    });
    let started_ms = now_ms();
    let mut tasks = Vec::with_capacity(args.conns);
    for id in 0..args.conns {
        let delay = Duration::from_millis(args.spread_ms * id as u64 / args.conns.max(1) as u64);
        let (a, l) = (args.clone(), live.clone());
        tasks.push(tokio::spawn(async move {
            sleep(delay).await;
            one_flow(id as u64, &a, &l).await
        }));
    }
    let stop_task = args.stop_file.clone().map(|path| {
        let l = live.clone();
        tokio::spawn(async move {
            while !path.exists() {
                sleep(Duration::from_millis(200)).await;
            }
            l.stop.store(true, Ordering::Relaxed);
        })
    });
    let status_task = args.status.clone().map(|path| {
        let (l, label) = (live.clone(), args.label.clone());
        tokio::spawn(async move {
            loop {
                let now = now_ms();
                let stall_now = l
                    .waiting_since_ms
                    .iter()
                    .map(|w| match w.load(Ordering::Relaxed) {
                        0 => 0,
                        since => now.saturating_sub(since),
                    })
                    .max()
                    .unwrap_or(0);
                let stall_max = l
                    .max_stall_ms
                    .iter()
                    .map(|m| m.load(Ordering::Relaxed))
                    .max()
                    .unwrap_or(0);
                let line = serde_json::json!({
                    "label": label,
                    "t_ms": now,
                    "open": l.open.load(Ordering::Relaxed),
                    "ok": l.done_ok.load(Ordering::Relaxed),
                    "failed": l.failed.load(Ordering::Relaxed),
                    "bytes_verified": l.bytes_verified.load(Ordering::Relaxed),
                    "stall_now_ms": stall_now,
                    "stall_max_ms": stall_max,
                });
                let _ = write_atomic(&path, &format!("{line}\n"));
                // The same for people (the live view of e2e-demo.sh).
                let text = format!(
                    "{label}: open {} ok {} failed {} | verified {} KB | stall now {} ms, worst {} ms",
                    l.open.load(Ordering::Relaxed),
                    l.done_ok.load(Ordering::Relaxed),
                    l.failed.load(Ordering::Relaxed),
                    l.bytes_verified.load(Ordering::Relaxed) / 1000,
                    stall_now,
                    stall_max
                );
                let _ = write_atomic(&path.with_extension("txt"), &format!("{text}\n"));
                sleep(Duration::from_secs(1)).await;
            }
        })
    });
    let mut records = Vec::with_capacity(args.conns);
    for t in tasks {
        records.push(t.await.context("flow task panicked")?);
    }
    for t in [status_task, stop_task].into_iter().flatten() {
        t.abort();
    }
    let report = FlowsReport::new(
        &args.label,
        &args.target.to_string(),
        started_ms,
        now_ms(),
        records,
    );
    eprintln!("{}", report.one_line());
    write_atomic(&args.out, &serde_json::to_string_pretty(&report)?)?;
    Ok(())
}

/// How often a long-lived flow retries its first connect (500 ms apart).
const CONNECT_RETRIES: u32 = 6;

async fn one_flow(id: u64, a: &RunArgs, live: &Live) -> ConnRecord {
    let mut rec = ConnRecord {
        id,
        backend: String::new(),
        local_port: 0,
        outcome: Outcome::Ok,
        sent: 0,
        received: 0,
        stall_ms: 0,
        stall_from_ms: 0,
        failed_at_ms: None,
        error: String::new(),
    };
    let fail = |rec: &mut ConnRecord, outcome, error: String| {
        rec.outcome = outcome;
        rec.error = error;
        rec.failed_at_ms = Some(now_ms());
        live.failed.fetch_add(1, Ordering::Relaxed);
    };
    // The flows are opened once, before any fault, and only established connections are
    // judged: a first try that finds no route (the guest starved for a second and every
    // replica withdrew) is retried a few times, as a client would retry its SYN.
    let mut tries = 0;
    let (stream, backend) = loop {
        match connect_greeted(a.target, Duration::from_secs(10)).await {
            Ok(x) => break x,
            Err(_) if tries < CONNECT_RETRIES => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                fail(&mut rec, Outcome::ConnectFailed, e);
                return rec;
            }
        }
    };
    let stream_until = Instant::now() + Duration::from_secs(a.duration_s);
    rec.backend = backend;
    rec.local_port = stream.local_addr().map(|s| s.port()).unwrap_or(0);
    live.open.fetch_add(1, Ordering::Relaxed);
    let (mut rd, mut wr) = stream.into_split();
    let mut tracker = StallTracker::default();
    let mut tick = tokio::time::interval(Duration::from_millis(a.interval_ms.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut chunk = vec![0u8; a.chunk.max(1)];
    let mut buf = vec![0u8; 64 * 1024];
    let mut drain_until = stream_until + Duration::from_secs(a.drain_s);
    let mut stopped = false;
    let publish = |t: &StallTracker, now: u64| {
        let since = if t.received() < t.sent() {
            now.saturating_sub(t.current_stall_ms(now)).max(1)
        } else {
            0
        };
        live.waiting_since_ms[id as usize].store(since, Ordering::Relaxed);
        live.max_stall_ms[id as usize].store(t.max_stall_ms(now), Ordering::Relaxed);
    };
    let mut closing = false;
    let result: Result<(), (Outcome, String)> = loop {
        if !stopped && live.stop.load(Ordering::Relaxed) {
            stopped = true;
            drain_until = drain_until.min(Instant::now() + Duration::from_secs(a.drain_s));
        }
        let streaming = !stopped && Instant::now() < stream_until;
        if !streaming && !closing {
            if tracker.received() == tracker.sent() {
                if let Err(e) = wr.shutdown().await {
                    break Err((Outcome::Error, format!("shutdown: {e}")));
                }
                closing = true;
            } else if Instant::now() >= drain_until {
                break Err((
                    Outcome::Stuck,
                    format!(
                        "{} bytes outstanding after the drain",
                        tracker.sent() - tracker.received()
                    ),
                ));
            }
        }
        if closing && Instant::now() >= drain_until {
            break Err((Outcome::Stuck, "no close from the server".into()));
        }
        tokio::select! {
            _ = tick.tick(), if streaming => {
                fill(id, tracker.sent(), &mut chunk);
                if let Err(e) = wr.write_all(&chunk).await {
                    break Err((classify(&e), format!("write: {e}")));
                }
                tracker.on_sent(chunk.len() as u64, now_ms());
                publish(&tracker, now_ms());
            }
            r = rd.read(&mut buf) => match r {
                Ok(0) if closing => break Ok(()),
                Ok(0) => break Err((Outcome::Eof, format!("eof after {} of {} bytes", tracker.received(), tracker.sent()))),
                Ok(n) => {
                    if closing || tracker.received() + n as u64 > tracker.sent() {
                        break Err((Outcome::Corrupt, format!("{n} bytes more than sent")));
                    }
                    if let Some(at) = first_mismatch(id, tracker.received(), &buf[..n]) {
                        break Err((Outcome::Corrupt, format!("byte {} differs", tracker.received() + at as u64)));
                    }
                    tracker.on_received(n as u64, now_ms());
                    live.bytes_verified.fetch_add(n as u64, Ordering::Relaxed);
                    publish(&tracker, now_ms());
                }
                Err(e) => break Err((classify(&e), format!("read: {e}"))),
            },
            _ = sleep(Duration::from_millis(200)), if !streaming => {}
        }
    };
    live.open.fetch_sub(1, Ordering::Relaxed);
    rec.sent = tracker.sent();
    rec.received = tracker.received();
    rec.stall_ms = tracker.max_stall_ms(now_ms());
    rec.stall_from_ms = tracker.max_stall_from_ms(now_ms());
    live.waiting_since_ms[id as usize].store(0, Ordering::Relaxed);
    match result {
        Ok(()) => {
            live.done_ok.fetch_add(1, Ordering::Relaxed);
        }
        Err((outcome, e)) => fail(&mut rec, outcome, e),
    }
    rec
}

fn classify(e: &std::io::Error) -> Outcome {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => Outcome::Reset,
        _ => Outcome::Error,
    }
}

async fn probe(
    target: SocketAddr,
    interval_ms: u64,
    duration_s: u64,
    out: &Path,
) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(duration_s);
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms.max(1)));
    let mut tasks = Vec::new();
    while Instant::now() < until {
        tick.tick().await;
        tasks.push(tokio::spawn(async move {
            let at_ms = now_ms();
            match connect_greeted(target, Duration::from_secs(1)).await {
                Ok((mut s, backend)) => {
                    let _ = s.shutdown().await;
                    ProbeRecord {
                        at_ms,
                        ok: true,
                        backend,
                        error: String::new(),
                    }
                }
                Err(error) => ProbeRecord {
                    at_ms,
                    ok: false,
                    backend: String::new(),
                    error,
                },
            }
        }));
    }
    let mut records = Vec::with_capacity(tasks.len());
    for t in tasks {
        records.push(t.await.context("probe task panicked")?);
    }
    let failed = records.iter().filter(|r| !r.ok).count();
    eprintln!(
        "probe {target}: {} attempts, {failed} failed",
        records.len()
    );
    write_atomic(out, &serde_json::to_string(&records)?)?;
    Ok(())
}

const HTTP_BODY: &[u8] = b"hello, shoal!!\n";

async fn http_serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{}",
        HTTP_BODY.len(),
        String::from_utf8_lossy(HTTP_BODY)
    );
    let response = Arc::new(response.into_bytes());
    loop {
        let (mut s, _) = listener.accept().await?;
        let response = response.clone();
        tokio::spawn(async move {
            let _ = s.set_nodelay(true);
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            loop {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                while let Some(end) = find(&buf, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    buf.drain(..end + 4);
                    if s.write_all(&response).await.is_err() {
                        return;
                    }
                    if head.contains("connection: close") {
                        let _ = s.shutdown().await;
                        return;
                    }
                }
                if buf.len() > 64 * 1024 {
                    return;
                }
            }
        });
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Busy and total jiffies of the whole guest, from /proc/stat's first line.
fn cpu_jiffies() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    let total: u64 = v.iter().take(8).sum();
    (total.saturating_sub(idle), total)
}

#[derive(Default)]
struct LoadCounters {
    requests: AtomicU64,
    connections: AtomicU64,
    errors: AtomicU64,
}

async fn http_load(
    target: SocketAddr,
    conns: usize,
    duration_s: u64,
    close: bool,
    label: &str,
    out: &Path,
) -> anyhow::Result<()> {
    let counters = Arc::new(LoadCounters::default());
    let until = Instant::now() + Duration::from_secs(duration_s);
    let (busy0, total0) = cpu_jiffies();
    let t0 = Instant::now();
    let request: &'static [u8] = if close {
        b"GET / HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n"
    } else {
        b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n"
    };
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let c = counters.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream: Option<TcpStream> = None;
            let mut buf = vec![0u8; 4096];
            while Instant::now() < until {
                if stream.is_none() {
                    match timeout(Duration::from_secs(2), TcpStream::connect(target)).await {
                        Ok(Ok(s)) => {
                            let _ = s.set_nodelay(true);
                            c.connections.fetch_add(1, Ordering::Relaxed);
                            stream = Some(s);
                        }
                        _ => {
                            c.errors.fetch_add(1, Ordering::Relaxed);
                            sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                let Some(s) = stream.as_mut() else { continue };
                let ok = timeout(Duration::from_secs(2), one_request(s, request, &mut buf)).await;
                match ok {
                    Ok(true) => {
                        c.requests.fetch_add(1, Ordering::Relaxed);
                        if close {
                            stream = None;
                        }
                    }
                    _ => {
                        c.errors.fetch_add(1, Ordering::Relaxed);
                        stream = None;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.context("load task panicked")?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let (busy1, total1) = cpu_jiffies();
    let requests = counters.requests.load(Ordering::Relaxed);
    let connections = counters.connections.load(Ordering::Relaxed);
    let errors = counters.errors.load(Ordering::Relaxed);
    // USER_HZ is 100 on Debian's kernel: one jiffy = 10 ms.
    let busy_ms = (busy1 - busy0) * 10;
    let report = serde_json::json!({
        "label": label,
        "target": target.to_string(),
        "keepalive": !close,
        "conns": conns,
        "seconds": secs,
        "requests": requests,
        "connections": connections,
        "errors": errors,
        "req_per_s": requests as f64 / secs,
        "conn_per_s": connections as f64 / secs,
        "guest_busy_ms": busy_ms,
        "guest_total_ms": (total1 - total0) * 10,
        "guest_busy_us_per_req": if requests > 0 { busy_ms as f64 * 1000.0 / requests as f64 } else { 0.0 },
    });
    eprintln!(
        "{label}: {requests} requests, {connections} connections, {errors} errors in {secs:.1} s"
    );
    write_atomic(out, &serde_json::to_string_pretty(&report)?)?;
    Ok(())
}

/// Sends one request and reads one complete response (headers + Content-Length body).
async fn one_request(s: &mut TcpStream, request: &[u8], buf: &mut [u8]) -> bool {
    if s.write_all(request).await.is_err() {
        return false;
    }
    let mut have = Vec::with_capacity(256);
    loop {
        match s.read(buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => have.extend_from_slice(&buf[..n]),
        }
        if let Some(end) = find(&have, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&have[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if have.len() >= end + 4 + len {
                return head.starts_with("http/1.1 200");
            }
        }
    }
}
