//! A handshake flooder: QUIC Initial packets from a fresh source port each, never finishing the
//! handshake (made with quinn-proto, so they are real Initials a server must answer).
//!
//! Two modes: `HalfOpen` sends one Initial and walks away (the 'spoofed source' case; a server
//! without address validation keeps a handshake slot for each); `Validated` also answers the
//! server's Retry with the token, proving its address, then stalls (the case address
//! validation cannot stop: per-source limits and the reserve for known members must).

#![allow(dead_code)]

use bytes::BytesMut;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    HalfOpen,
    Validated,
}

/// A running flood; stops when dropped.
pub struct Flood {
    stop: Arc<AtomicBool>,
    pub sent: Arc<AtomicU64>,
    pub validated: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn client_config() -> quinn_proto::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    // The right ALPN, so the server does not refuse the ClientHello at once.
    tls.alpn_protocols = vec![b"shoal-gossip/1".to_vec()];
    let crypto = quinn_proto::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    quinn_proto::ClientConfig::new(Arc::new(crypto))
}

/// Starts `per_s` handshakes a second at `target`, each from a new port on `from`.
pub fn start(target: SocketAddr, from: IpAddr, per_s: u32, mode: Mode) -> Flood {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let validated = Arc::new(AtomicU64::new(0));
    let (s, n, v) = (stop.clone(), sent.clone(), validated.clone());
    let thread = std::thread::spawn(move || run(target, from, per_s, mode, &s, &n, &v));
    Flood {
        stop,
        sent,
        validated,
        thread: Some(thread),
    }
}

fn run(
    target: SocketAddr,
    from: IpAddr,
    per_s: u32,
    mode: Mode,
    stop: &AtomicBool,
    sent: &AtomicU64,
    validated: &AtomicU64,
) {
    let mut endpoint = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        false,
        None,
    );
    let config = client_config();
    let period = Duration::from_secs_f64(1.0 / f64::from(per_s.max(1)));
    // Validated handshakes keep their socket open (so the server's packets arrive and it waits
    // for the client) until the server gives up; the oldest are closed past this many.
    let mut open: VecDeque<(UdpSocket, quinn_proto::Connection)> = VecDeque::new();
    let started = Instant::now();
    let mut next = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = started + period * next as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        next += 1;
        let Ok(socket) = UdpSocket::bind(SocketAddr::new(from, 0)) else {
            continue;
        };
        let now = Instant::now();
        let Ok((_, mut conn)) = endpoint.connect(now, config.clone(), target, "gossip.flood")
        else {
            continue;
        };
        let mut buf = Vec::new();
        let Some(t) = conn.poll_transmit(now, 1, &mut buf) else {
            continue;
        };
        if socket.send_to(&buf[..t.size], target).is_ok() {
            sent.fetch_add(1, Ordering::Relaxed);
        }
        if mode == Mode::HalfOpen {
            continue;
        }
        // Wait briefly for the Retry, feed it in, send the Initial with the token, stall.
        let _ = socket.set_read_timeout(Some(Duration::from_millis(20)));
        let mut rx = [0u8; 2_048];
        let Ok((len, remote)) = socket.recv_from(&mut rx) else {
            continue;
        };
        let local_ip = socket.local_addr().ok().map(|a| a.ip());
        let mut out = Vec::new();
        if let Some(quinn_proto::DatagramEvent::ConnectionEvent(_, event)) = endpoint.handle(
            Instant::now(),
            remote,
            local_ip,
            None,
            BytesMut::from(&rx[..len]),
            &mut out,
        ) {
            conn.handle_event(event);
            let mut buf = Vec::new();
            if let Some(t) = conn.poll_transmit(Instant::now(), 1, &mut buf) {
                if socket.send_to(&buf[..t.size], target).is_ok() {
                    validated.fetch_add(1, Ordering::Relaxed);
                }
            }
            open.push_back((socket, conn));
            if open.len() > 4 * per_s as usize {
                open.pop_front();
            }
        }
    }
}
