//! A new connection every few milliseconds, recording which backend greeted it (`probe`).

use crate::stream::connect_greeted;
use crate::{now_ms, write_atomic};
use anyhow::Context;
use shoal_chaos::flows::ProbeRecord;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

pub(crate) async fn probe(
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
