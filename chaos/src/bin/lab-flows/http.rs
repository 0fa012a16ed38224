//! A small HTTP/1.1 server and load generator for the data-path figures, with the guest's
//! CPU time per request.

use crate::write_atomic;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, timeout, Instant};

const HTTP_BODY: &[u8] = b"hello, shoal!!\n";

pub(crate) async fn http_serve(listen: SocketAddr) -> anyhow::Result<()> {
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

pub(crate) async fn http_load(
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
