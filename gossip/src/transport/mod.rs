//! One QUIC endpoint per node carries all peer traffic: chitchat gossip (one unidirectional
//! session stream per connection and direction, each message a frame encoded against the
//! earlier ones, see `session.rs`; one-message streams and datagrams are still accepted) and bidirectional streams, which
//! it hands to its owner as [`InboundStream`]s (the mesh serves documents on them, see
//! `transfer.rs`). The transport knows nothing of documents.
//!
//! The endpoint is server and client at once, bound to the node's gossip address, so the
//! remote address of any connection is the peer's advertised gossip address: that is how chitchat
//! replies reach the right node. Memory per peer is bounded: a fixed send queue, QUIC flow control
//! windows and stream limits, a cap on every message.

pub(crate) mod admission;
pub(crate) mod alarm;
mod bucket;
pub(crate) mod codec;
mod dials;
pub mod fault;
mod gossip;
mod inbound;
mod outbound;
mod pace;
pub(crate) mod session;
mod socket;
#[cfg(test)]
mod tests;
pub(crate) mod tls;
mod traffic;

pub use admission::Refusal;
pub use fault::FaultHook;
pub(crate) use gossip::GossipTransport;
use inbound::peer_node_id;
use socket::{bind_udp, transport_config};
pub use tls::AcceptAnyServer;
pub use traffic::Traffic;
use traffic::{bump, Counters};

use crate::config::Timing;
use crate::error::{CertError, MeshError};
use crate::identity::{self, FirstHand, Verdict};
use admission::{Admission, Limits};
use alarm::WarnGate;
use bytes::Bytes;
use dials::{DialBudget, MAX_GOSSIP_DIALS};
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

const DIAL_TIMEOUT: Duration = Duration::from_millis(5_000);
/// A handshake still running this long when a fresh dial is asked for is started again: its
/// first packets were most likely lost on a path that was cut then, and QUIC waits longer and
/// longer to resend them (about 1 s, then 2 s more, then 4 s more).
const RESTART_DIAL_AFTER: Duration = Duration::from_millis(1_000);
const STREAM_READ_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Application close code of a connection replaced because its peer came back after an
/// outage (`Transport::reset_connection`): the other end counts it as a reset too.
const CAME_BACK: u32 = 3;
/// A connection the peer closes this soon after the handshake is treated as a refusal (with
/// TLS 1.3 a client whose certificate is rejected sees `connect()` succeed first).
const EARLY_CLOSE: Duration = Duration::from_secs(2);
const INBOUND_QUEUE_LEN: usize = 1_024;
/// Attack warnings (refused handshakes, identity mismatches, oversized messages) are logged at
/// most once per kind this often; the metrics count every one.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// How many source IPs that completed an authenticated handshake are remembered as known.
const MAX_KNOWN_SOURCES: usize = 4_096;

/// A gossip message as received: the sender's address, the node id its certificate names
/// (`None` without node identity), the framed bytes.
type Inbound = (SocketAddr, Option<Arc<str>>, Bytes);

/// A bidirectional stream a peer opened, for the transport's owner to answer.
pub(crate) struct InboundStream {
    pub peer: SocketAddr,
    pub send: SendStream,
    pub recv: RecvStream,
}

#[derive(Default)]
struct Backoff {
    failures: u32,
    until: Option<Instant>,
}

impl Backoff {
    fn fail(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let factor = 1u32 << self.failures.min(6).saturating_sub(1);
        self.until = Some(now + (BACKOFF_MIN * factor).min(BACKOFF_MAX));
    }
}

/// The dial to one address: one at a time, and a way to reach the one in progress.
#[derive(Default)]
struct DialSlot {
    lock: tokio::sync::Mutex<()>,
    /// Wakes the handshake in progress: the peer opened a connection to this node meanwhile
    /// (use it), or a fresh dial was asked for (see `QuicTransport::redial`).
    wake: tokio::sync::Notify,
    /// A fresh dial was asked for since the one in progress began.
    restart_asked: std::sync::atomic::AtomicBool,
}

impl DialSlot {
    /// Wakes the dial in progress, if any; `restart` asks it for a fresh start.
    fn wake(&self, restart: bool) {
        if restart {
            self.restart_asked.store(true, Ordering::Relaxed);
        }
        self.wake.notify_waiters();
    }
}

#[derive(Clone)]
pub(crate) struct QuicTransport {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    local_addr: SocketAddr,
    server_name: String,
    max_gossip_message_bytes: usize,
    peer_queue_len: usize,
    max_peers: usize,
    fault: FaultHook,
    streams: mpsc::Sender<InboundStream>,
    /// Peers must hold a certificate naming a node id and speak only for it (see `identity.rs`).
    enforce_identity: bool,
    first_hand: Mutex<FirstHand>,
    /// Source IPs that completed an authenticated handshake (they may use the reserve).
    known_sources: Mutex<HashMap<IpAddr, Instant>>,
    admission: Mutex<Admission>,
    handshake_timeout: Duration,
    warns: Mutex<WarnGate>,
    /// The last dial TLS refused (peer and error), for `/readyz` of a node no seed answers.
    last_dial_tls_failure: Mutex<Option<String>>,
    conns: Mutex<HashMap<SocketAddr, Connection>>,
    /// This node's gossip rounds: per peer, a burst of Syns, then one per round (`pace.rs`).
    syn_pacer: Mutex<pace::SynPacer>,
    /// One per address being dialed or recently dialed (see [`DialSlot`]).
    dial_slots: Mutex<HashMap<SocketAddr, Arc<DialSlot>>>,
    /// Gossip dials in flight (see `dials.rs`).
    gossip_dials: Mutex<DialBudget>,
    backoffs: Mutex<HashMap<SocketAddr, Backoff>>,
    peer_queues: Mutex<HashMap<SocketAddr, mpsc::Sender<Bytes>>>,
    gossip_in: mpsc::Sender<Inbound>,
    gossip_in_rx: Mutex<Option<mpsc::Receiver<Inbound>>>,
    cancel: CancellationToken,
    closed_udp_tx_bytes: AtomicU64,
    closed_udp_rx_bytes: AtomicU64,
    gossip_tx_bytes: AtomicU64,
    gossip_rx_bytes: AtomicU64,
    counters: Counters,
    /// Kept to rebuild the endpoint's configurations when the TLS material is reloaded.
    transport_config: Arc<quinn::TransportConfig>,
    /// Used for every dial (replaced when the TLS material is reloaded).
    client_config: Mutex<quinn::ClientConfig>,
}

/// The endpoint's server and client configurations from rustls ones.
fn quic_configs(
    tls: (rustls::ServerConfig, rustls::ClientConfig),
    transport_config: &Arc<quinn::TransportConfig>,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), MeshError> {
    let (server_tls, client_tls) = tls;
    let quic_err = |what: &'static str| {
        move |e: quinn::crypto::rustls::NoInitialCipherSuite| {
            MeshError::Cert(CertError::Tls {
                what,
                detail: e.to_string(),
            })
        }
    };
    let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
        .map_err(quic_err("QUIC server"))?;
    let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)
        .map_err(quic_err("QUIC client"))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport_config.clone());
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport_config.clone());
    Ok((server, client))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Critical sections never panic; recover the data if a test thread did.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl QuicTransport {
    /// Binds the endpoint and starts accepting connections. With `enforce_identity`, every
    /// peer's certificate must name a node id, and gossip is judged against it.
    pub(crate) fn bind(
        listen: SocketAddr,
        tls: (rustls::ServerConfig, rustls::ClientConfig),
        server_name: String,
        timing: &Timing,
        fault: FaultHook,
        streams: mpsc::Sender<InboundStream>,
        enforce_identity: bool,
    ) -> Result<Self, MeshError> {
        let transport_config = Arc::new(transport_config(timing)?);
        let (server, client) = quic_configs(tls, &transport_config)?;
        let socket = bind_udp(listen).map_err(|source| MeshError::Bind {
            addr: listen,
            source,
        })?;
        let endpoint = Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| MeshError::Bind {
            addr: listen,
            source,
        })?;
        let local_addr = endpoint.local_addr().map_err(|source| MeshError::Bind {
            addr: listen,
            source,
        })?;
        let (gossip_in, gossip_in_rx) = mpsc::channel(INBOUND_QUEUE_LEN);
        let inner = Arc::new(Inner {
            endpoint,
            local_addr,
            server_name,
            max_gossip_message_bytes: timing.max_gossip_message_bytes,
            peer_queue_len: timing.peer_queue_len,
            max_peers: timing.max_peers,
            fault,
            streams,
            enforce_identity,
            first_hand: Mutex::new(FirstHand::new(timing.max_peers.saturating_mul(4))),
            known_sources: Mutex::default(),
            admission: Mutex::new(Admission::new(Limits {
                max_in_flight: timing.max_concurrent_handshakes,
                reserve_for_known: timing.handshake_reserve_for_known,
                per_source_in_flight: timing.handshakes_per_source,
                per_source_per_s: timing.handshake_rate_per_source_per_s,
                per_source_burst: timing.handshake_rate_per_source_per_s.max(1.0),
            })),
            handshake_timeout: Duration::from_millis(timing.handshake_timeout_ms),
            warns: Mutex::new(WarnGate::new(WARN_EVERY)),
            last_dial_tls_failure: Mutex::new(None),
            conns: Mutex::default(),
            syn_pacer: Mutex::new(pace::SynPacer::new(Duration::from_millis(
                timing.gossip_interval_ms,
            ))),
            dial_slots: Mutex::default(),
            gossip_dials: Mutex::new(DialBudget::new(MAX_GOSSIP_DIALS)),
            backoffs: Mutex::default(),
            peer_queues: Mutex::default(),
            gossip_in,
            gossip_in_rx: Mutex::new(Some(gossip_in_rx)),
            cancel: CancellationToken::new(),
            closed_udp_tx_bytes: AtomicU64::new(0),
            closed_udp_rx_bytes: AtomicU64::new(0),
            gossip_tx_bytes: AtomicU64::new(0),
            gossip_rx_bytes: AtomicU64::new(0),
            counters: Counters::default(),
            transport_config,
            client_config: Mutex::new(client),
        });
        let transport = QuicTransport { inner };
        tokio::spawn(transport.clone().accept_loop());
        Ok(transport)
    }

    /// Swaps the TLS configurations: handshakes from now on (accepted and dialed) use them;
    /// established connections keep the keys they negotiated.
    pub(crate) fn set_tls(
        &self,
        tls: (rustls::ServerConfig, rustls::ClientConfig),
    ) -> Result<(), MeshError> {
        let (server, client) = quic_configs(tls, &self.inner.transport_config)?;
        self.inner.endpoint.set_server_config(Some(server));
        *lock(&self.inner.client_config) = client;
        Ok(())
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    pub(crate) fn fault(&self) -> &FaultHook {
        &self.inner.fault
    }

    /// The last dial TLS refused, as `peer: error` (`None` before any).
    pub(crate) fn last_dial_tls_failure(&self) -> Option<String> {
        lock(&self.inner.last_dial_tls_failure).clone()
    }

    pub(crate) fn traffic(&self) -> Traffic {
        let (mut tx, mut rx) = (
            self.inner.closed_udp_tx_bytes.load(Ordering::Relaxed),
            self.inner.closed_udp_rx_bytes.load(Ordering::Relaxed),
        );
        for conn in lock(&self.inner.conns).values() {
            let stats = conn.stats();
            tx += stats.udp_tx.bytes;
            rx += stats.udp_rx.bytes;
        }
        let c = &self.inner.counters;
        Traffic {
            udp_tx_bytes: tx,
            udp_rx_bytes: rx,
            gossip_tx_bytes: self.inner.gossip_tx_bytes.load(Ordering::Relaxed),
            gossip_rx_bytes: self.inner.gossip_rx_bytes.load(Ordering::Relaxed),
            dropped_queue_full: c.dropped_queue_full.load(Ordering::Relaxed),
            dropped_no_connection: c.dropped_no_connection.load(Ordering::Relaxed),
            dropped_inbound_full: c.dropped_inbound_full.load(Ordering::Relaxed),
            dial_failures: c.dial_failures.load(Ordering::Relaxed),
            handshakes_refused: c.handshakes_refused.load(Ordering::Relaxed),
            handshakes_refused_full: c.handshakes_refused_full.load(Ordering::Relaxed),
            handshakes_refused_source_busy: c
                .handshakes_refused_source_busy
                .load(Ordering::Relaxed),
            handshakes_refused_source_rate: c
                .handshakes_refused_source_rate
                .load(Ordering::Relaxed),
            handshakes_timed_out: c.handshakes_timed_out.load(Ordering::Relaxed),
            handshakes_retried: c.handshakes_retried.load(Ordering::Relaxed),
            identity_mismatches: c.identity_mismatches.load(Ordering::Relaxed),
            reflected_gossip: c.reflected_gossip.load(Ordering::Relaxed),
            oversized_messages: c.oversized_messages.load(Ordering::Relaxed),
            sent_on_stream: c.sent_on_stream.load(Ordering::Relaxed),
            malformed_gossip: c.malformed_gossip.load(Ordering::Relaxed),
            connections_reset: c.connections_reset.load(Ordering::Relaxed),
            dials_restarted: c.dials_restarted.load(Ordering::Relaxed),
            rounds_paced: c.rounds_paced.load(Ordering::Relaxed),
        }
    }

    /// The mesh asks for a gossip exchange with `peer` now: its Syn is not paced (`pace.rs`).
    pub(crate) fn grant_gossip(&self, peer: SocketAddr) {
        lock(&self.inner.syn_pacer).grant(peer, Instant::now());
    }

    /// Whether a Syn of this node's to `peer` goes out now; one that does not is counted.
    fn admit_syn(&self, peer: SocketAddr) -> bool {
        let admitted = lock(&self.inner.syn_pacer).admit(peer, Instant::now());
        if !admitted {
            bump(&self.inner.counters.rounds_paced);
        }
        admitted
    }

    /// Stops every task and closes the endpoint (peers see the connections close).
    pub(crate) fn close(&self) {
        self.inner.cancel.cancel();
        self.inner.endpoint.close(0u32.into(), b"shutdown");
        lock(&self.inner.peer_queues).clear();
        lock(&self.inner.conns).clear();
    }

    fn take_gossip_rx(&self) -> Option<mpsc::Receiver<Inbound>> {
        lock(&self.inner.gossip_in_rx).take()
    }

    fn return_gossip_rx(&self, rx: mpsc::Receiver<Inbound>) {
        *lock(&self.inner.gossip_in_rx) = Some(rx);
    }

    /// Caches a fresh connection, replacing any older one to the same address (after a crash
    /// the survivors' cached connection is dead; the restarted peer's new one must win), and
    /// starts reading from it. With node identity enforced, a peer whose certificate names no
    /// node id is closed instead (false).
    fn register(&self, conn: Connection) -> bool {
        let peer = conn.remote_address();
        let cert_id = peer_node_id(&conn).map(Arc::<str>::from);
        if self.inner.enforce_identity && cert_id.is_none() {
            bump(&self.inner.counters.identity_mismatches);
            self.warn_limited("identity", |suppressed| {
                warn!(%peer, suppressed, "peer certificate names no node id (a cluster-only certificate while node identity is enforced): connection closed");
            });
            conn.close(1u32.into(), b"certificate names no node id");
            return false;
        }
        {
            let mut known = lock(&self.inner.known_sources);
            if known.len() >= MAX_KNOWN_SOURCES && !known.contains_key(&peer.ip()) {
                if let Some(oldest) = known.iter().min_by_key(|(_, at)| **at).map(|(ip, _)| *ip) {
                    known.remove(&oldest);
                }
            }
            known.insert(peer.ip(), Instant::now());
        }
        lock(&self.inner.conns).insert(peer, conn.clone());
        tokio::spawn(self.clone().read_loop(conn, cert_id));
        self.wake_dial(peer);
        true
    }

    /// Whether the live connection to `addr` (dialed if needed) presents a certificate naming
    /// `node_id`. Always true without node identity.
    pub(crate) async fn verify_peer(&self, addr: SocketAddr, node_id: &str) -> Result<(), String> {
        let conn = self.connection(addr).await?;
        if !self.inner.enforce_identity {
            return Ok(());
        }
        match peer_node_id(&conn) {
            Some(id) if id == node_id => Ok(()),
            other => {
                bump(&self.inner.counters.identity_mismatches);
                self.warn_limited("identity", |suppressed| {
                    warn!(peer = %addr, expected = node_id, certificate = ?other, suppressed, "peer at a member's address holds another node's certificate: not fetching from it");
                });
                Err(format!(
                    "the certificate at {addr} names {other:?}, not {node_id}"
                ))
            }
        }
    }

    /// Whether a member (id, generation, address) was heard first-hand: from a connection at
    /// that address whose certificate names that id (see `identity.rs`).
    pub(crate) fn first_hand(&self, id: &str, generation: u64, addr: SocketAddr) -> bool {
        lock(&self.inner.first_hand).contains(id, generation, addr)
    }

    /// Rises whenever a member is heard first-hand for the first time.
    pub(crate) fn first_hand_version(&self) -> u64 {
        lock(&self.inner.first_hand).version()
    }

    pub(crate) fn enforces_identity(&self) -> bool {
        self.inner.enforce_identity
    }
}
