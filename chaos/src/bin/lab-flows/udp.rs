//! UDP through the VIP: a backend's echo that names itself (`serve --udp-listen`), and clients
//! that each keep one source port, as a DNS forwarder or a syslog sender does (`udp`): the
//! flows IPVS never ends by itself, so they show whether a dead backend's clients are moved.

use crate::{now_ms, write_atomic};
use anyhow::Context;
use shoal_chaos::flows::DatagramRecord;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// Answers every datagram with `NAME ` and the datagram's bytes, from the address it came to
/// (bind the VIP: a reply from the backend's own address would not reach a connected client).
pub(crate) async fn echo(addr: SocketAddr, name: String) -> anyhow::Result<()> {
    let socket = UdpSocket::bind(addr)
        .await
        .with_context(|| format!("binding udp {addr}"))?;
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, from) = socket.recv_from(&mut buf).await?;
        let mut reply = format!("{name} ").into_bytes();
        reply.extend_from_slice(&buf[..n]);
        let _ = socket.send_to(&reply, from).await;
    }
}

/// `clients` sockets on source ports `base_port..`, each sending one datagram every
/// `interval_ms` and waiting up to that long for its echo; every datagram is one record.
pub(crate) async fn clients(
    target: SocketAddr,
    clients: u16,
    base_port: u16,
    interval_ms: u64,
    duration_s: u64,
    out: &Path,
) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(duration_s);
    let interval = Duration::from_millis(interval_ms.max(10));
    let mut tasks = Vec::new();
    for i in 0..clients {
        let port = base_port
            .checked_add(i)
            .context("--base-port + --clients passes 65535")?;
        let bind: SocketAddr = if target.is_ipv4() {
            ([0, 0, 0, 0], port).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, port).into()
        };
        let socket = UdpSocket::bind(bind)
            .await
            .with_context(|| format!("binding {bind}"))?;
        socket.connect(target).await?;
        tasks.push(tokio::spawn(one_client(socket, port, interval, until)));
    }
    let mut records = Vec::new();
    for t in tasks {
        records.extend(t.await.context("udp client panicked")?);
    }
    records.sort_by_key(|r| (r.at_ms, r.client_port));
    let failed = records.iter().filter(|r| !r.ok).count();
    eprintln!(
        "udp {target}: {clients} clients, {} datagrams, {failed} unanswered",
        records.len()
    );
    write_atomic(out, &serde_json::to_string(&records)?)?;
    Ok(())
}

async fn one_client(
    socket: UdpSocket,
    port: u16,
    interval: Duration,
    until: Instant,
) -> Vec<DatagramRecord> {
    let mut records = Vec::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; 2048];
    let mut seq = 0u64;
    while Instant::now() < until {
        tick.tick().await;
        seq += 1;
        let at_ms = now_ms();
        let sent = format!("{port}:{seq}");
        let answer = async {
            socket.send(sent.as_bytes()).await?;
            // Echoes of earlier datagrams that came late are not this one's answer.
            loop {
                let n = socket.recv(&mut buf).await?;
                let text = String::from_utf8_lossy(&buf[..n]);
                if let Some((backend, echoed)) = text.split_once(' ') {
                    if echoed == sent {
                        return Ok::<_, std::io::Error>(backend.to_string());
                    }
                }
            }
        };
        let (ok, backend, error) = match tokio::time::timeout(interval, answer).await {
            Ok(Ok(backend)) => (true, backend, String::new()),
            Ok(Err(e)) => (false, String::new(), e.to_string()),
            Err(_) => (false, String::new(), "timed out".to_string()),
        };
        records.push(DatagramRecord {
            at_ms,
            client_port: port,
            ok,
            backend,
            error,
        });
    }
    records
}
