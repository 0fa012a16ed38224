//! The long-lived checked connections: the greeting echo server (`serve`) and the streams
//! that check every echoed byte and measure each connection's stall (`run`).

use crate::{now_ms, write_atomic, RunArgs};
use anyhow::Context;
use shoal_chaos::flows::{fill, first_mismatch, ConnRecord, FlowsReport, Outcome, StallTracker};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, timeout, Instant};

pub(crate) async fn serve(listen: Vec<SocketAddr>, name: String) -> anyhow::Result<()> {
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
pub(crate) async fn connect_greeted(
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

pub(crate) async fn run(args: RunArgs) -> anyhow::Result<()> {
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
