//! The sending side: gossip messages queued per peer and sent as frames of the peer's session
//! stream (`session.rs`), and the cached connection to each peer (dialed on demand with
//! backoff, reset after a healed cut).

use super::*;

/// A peer's send queue whose sender heard nothing to send for this long ends (a new one starts
/// with the next message): every address ever gossiped to kept its queue and task for the
/// process's life, and after `max_peers` addresses (pods come back at new ones) every new peer
/// was refused for good (a probe, by reading). Chitchat gossips to a live member every few
/// seconds at most, and forgets a dead one after its grace.
const PEER_QUEUE_IDLE: Duration = if cfg!(test) {
    Duration::from_millis(300)
} else {
    Duration::from_secs(120)
};

impl QuicTransport {
    /// Enqueues a gossip message for `to`; never blocks (chitchat awaits each send inside its
    /// gossip loop). A full queue drops the message: gossip repeats every round.
    pub(crate) fn send_gossip(&self, to: SocketAddr, bytes: Bytes) {
        if self.inner.fault.drops_outbound(&to) || self.inner.cancel.is_cancelled() {
            return;
        }
        if bytes.len() > self.inner.max_gossip_message_bytes {
            bump(&self.inner.counters.oversized_messages);
            self.warn_limited("oversized", |suppressed| {
                warn!(peer = %to, size_bytes = bytes.len(), suppressed, "gossip message above the cap, dropped");
            });
            return;
        }
        let tx = {
            let mut queues = lock(&self.inner.peer_queues);
            match queues.get(&to) {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    // The queues of peers gone quiet have ended (`PEER_QUEUE_IDLE`).
                    queues.retain(|_, tx| !tx.is_closed());
                    if queues.len() >= self.inner.max_peers {
                        warn!(peer = %to, "too many peers, gossip dropped");
                        return;
                    }
                    let (tx, rx) = mpsc::channel(self.inner.peer_queue_len);
                    queues.insert(to, tx.clone());
                    tokio::spawn(self.clone().sender_loop(to, rx));
                    tx
                }
            }
        };
        if tx.try_send(bytes).is_err() {
            bump(&self.inner.counters.dropped_queue_full);
            debug!(peer = %to, "peer send queue full, gossip dropped");
        }
    }

    pub(super) async fn sender_loop(self, to: SocketAddr, mut rx: mpsc::Receiver<Bytes>) {
        let mut session: Option<SendSession> = None;
        loop {
            let bytes = tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                msg = tokio::time::timeout(PEER_QUEUE_IDLE, rx.recv()) => match msg {
                    Ok(Some(b)) => b,
                    Ok(None) => return,
                    // Closed first, so that the map sees it; what was queued meanwhile is
                    // dropped (gossip repeats every round).
                    Err(_) => {
                        rx.close();
                        return;
                    }
                },
            };
            if self.inner.fault.drops_outbound(&to) {
                continue;
            }
            let conn = match self.gossip_connection(to).await {
                Ok(conn) => conn,
                Err(detail) => {
                    bump(&self.inner.counters.dropped_no_connection);
                    debug!(peer = %to, %detail, "no connection, gossip dropped");
                    continue;
                }
            };
            if session
                .as_ref()
                .is_none_or(|s| s.connection != conn.stable_id())
            {
                session = match SendSession::open(&conn).await {
                    Ok(opened) => Some(opened),
                    Err(detail) => {
                        debug!(peer = %to, %detail, "cannot open the gossip stream, gossip dropped");
                        continue;
                    }
                };
            }
            let Some(open) = session.as_mut() else {
                continue;
            };
            bump(&self.inner.counters.sent_on_stream);
            match open.send(&bytes).await {
                Ok(len) => {
                    self.inner.gossip_tx_bytes.fetch_add(len, Ordering::Relaxed);
                }
                Err(detail) => {
                    // The receiver's table may have missed this frame: start a new stream.
                    debug!(peer = %to, %detail, "gossip send failed, stream closed");
                    if let Some(mut failed) = session.take() {
                        let _ = failed.stream.reset(SESSION_BROKEN.into());
                    }
                }
            }
        }
    }

    /// Closes the cached connection to `addr` and forgets any dial backoff, so the next send
    /// or fetch dials afresh. The mesh calls it when a member it judged dead is alive again (a
    /// cut healed): the old connection's retransmission timers backed off for as long as the
    /// cut lasted, and the chaos soak showed fetches on it waiting out the whole 2 s answer
    /// timeout while a fresh connection answered in a few milliseconds. The peer sees the
    /// close with [`super::CAME_BACK`] and counts the reset too: whichever end judges the other
    /// alive first replaces their one connection.
    pub(crate) fn reset_connection(&self, addr: SocketAddr) {
        lock(&self.inner.backoffs).remove(&addr);
        if let Some(conn) = lock(&self.inner.conns).remove(&addr) {
            debug!(peer = %addr, "peer alive again: replacing its connection");
            bump(&self.inner.counters.connections_reset);
            conn.close(super::CAME_BACK.into(), b"peer came back");
        }
        self.redial(addr);
    }

    /// Closes every cached connection and forgets every dial backoff (this node's own loop
    /// stalled: `replica::Action::ResetConnections`); returns how many were closed. Each peer
    /// sees the close with [`super::CAME_BACK`] and counts the reset too.
    pub(crate) fn reset_connections(&self) -> usize {
        lock(&self.inner.backoffs).clear();
        let conns: Vec<Connection> = lock(&self.inner.conns).drain().map(|(_, c)| c).collect();
        for conn in &conns {
            bump(&self.inner.counters.connections_reset);
            conn.close(super::CAME_BACK.into(), b"peer stalled");
        }
        for slot in lock(&self.inner.dial_slots).values() {
            slot.wake(true);
        }
        conns.len()
    }

    /// Forgets any dial backoff to `addr` (a member judged alive for the first time, see
    /// `replica::Action::FirstAlive`, or contacted directly), so the next send dials at once,
    /// and asks a dial to it still running from before for a fresh start ([`Self::redial`]).
    pub(crate) fn clear_backoff(&self, addr: SocketAddr) {
        lock(&self.inner.backoffs).remove(&addr);
        self.redial(addr);
    }

    /// The member at `addr` is reachable now (judged alive, alive again, or to be contacted):
    /// a handshake to it that began while the path was cut, and has run for at least
    /// [`RESTART_DIAL_AFTER`], starts over at once instead of waiting out QUIC's backed-off
    /// retransmission (the chaos soak: a node started while a member was isolated dialed it
    /// then, and for 5 s after the heal every message to it, its answers to that member's
    /// gossip included, waited behind that handshake).
    fn redial(&self, addr: SocketAddr) {
        if let Some(slot) = lock(&self.inner.dial_slots).get(&addr) {
            slot.wake(true);
        }
    }

    /// Wakes the dial to `addr` in progress, if any: it takes the connection now cached for
    /// `addr` (the peer dialed this node meanwhile).
    pub(super) fn wake_dial(&self, addr: SocketAddr) {
        if let Some(slot) = lock(&self.inner.dial_slots).get(&addr) {
            slot.wake(false);
        }
    }

    pub(super) fn cached(&self, addr: &SocketAddr) -> Option<Connection> {
        lock(&self.inner.conns)
            .get(addr)
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    /// The connection gossip to `to` goes on: the cached one, else a dial if the gossip dial
    /// budget has a slot (see `dials.rs`), else none (the message is dropped; gossip repeats).
    async fn gossip_connection(&self, to: SocketAddr) -> Result<Connection, String> {
        if let Some(conn) = self.cached(&to) {
            return Ok(conn);
        }
        if !lock(&self.inner.gossip_dials).take() {
            return Err("gossip dial budget spent".into());
        }
        // Given back however the dial ends, also if this future is dropped mid-handshake.
        struct Slot<'a>(&'a Mutex<DialBudget>);
        impl Drop for Slot<'_> {
            fn drop(&mut self) {
                lock(self.0).give_back();
            }
        }
        let _slot = Slot(&self.inner.gossip_dials);
        self.connection(to).await
    }

    /// The live connection to `addr`, dialing if needed (one dial per address at a time, with
    /// exponential backoff after failures).
    pub(crate) async fn connection(&self, addr: SocketAddr) -> Result<Connection, String> {
        if let Some(conn) = self.cached(&addr) {
            return Ok(conn);
        }
        if self.inner.cancel.is_cancelled() {
            return Err("transport closed".into());
        }
        let slot = {
            let mut slots = lock(&self.inner.dial_slots);
            if slots.len() >= self.inner.max_peers {
                slots.retain(|_, s| Arc::strong_count(s) > 1);
            }
            slots.entry(addr).or_default().clone()
        };
        let _dialing = slot.lock.lock().await;
        if let Some(conn) = self.cached(&addr) {
            return Ok(conn);
        }
        let now = Instant::now();
        if let Some(until) = lock(&self.inner.backoffs).get(&addr).and_then(|b| b.until) {
            if now < until {
                return Err("backing off after a failed dial".into());
            }
        }
        match self.handshake(addr, &slot).await {
            Ok(Dialed::Cached(conn)) => Ok(conn),
            Ok(Dialed::New(conn)) => {
                if self.register(conn.clone()) {
                    Ok(conn)
                } else {
                    Err("the peer's certificate names no node id".into())
                }
            }
            Err(detail) => {
                bump(&self.inner.counters.dial_failures);
                lock(&self.inner.backoffs)
                    .entry(addr)
                    .or_default()
                    .fail(Instant::now());
                Err(detail)
            }
        }
    }

    /// One dial to `addr` until [`DIAL_TIMEOUT`]. It gives way to a connection the peer opens
    /// meanwhile and starts over when asked to (see [`Self::redial`]) after it has run for
    /// [`RESTART_DIAL_AFTER`]; each restart gets a full timeout.
    async fn handshake(&self, addr: SocketAddr, slot: &DialSlot) -> Result<Dialed, String> {
        // A request made before this dial began is no reason to restart it.
        slot.restart_asked.store(false, Ordering::Relaxed);
        let connect = || {
            let client = lock(&self.inner.client_config).clone();
            self.inner
                .endpoint
                .connect_with(client, addr, &self.inner.server_name)
                .map_err(|e| e.to_string())
        };
        let mut connecting = connect()?;
        let mut began = Instant::now();
        let deadline = tokio::time::sleep(DIAL_TIMEOUT);
        tokio::pin!(deadline);
        loop {
            let woken = slot.wake.notified();
            tokio::select! {
                done = &mut connecting => {
                    return done.map(Dialed::New).map_err(|e| {
                        if is_tls_failure(&e) {
                            *lock(&self.inner.last_dial_tls_failure) =
                                Some(format!("{addr}: {e}"));
                            // A node whose certificate is of another CA or cluster learnt
                            // nothing but "none of the seeds has answered": the reason was in
                            // the peers' logs only (the audit of 2026-12-06).
                            self.warn_limited("dial_tls", |suppressed| {
                                warn!(peer = %addr, error = %e, suppressed, "outgoing handshake refused by TLS: this node's certificate or the peer's is of another CA or cluster (see docs/security.md, Certificates)");
                            });
                        }
                        e.to_string()
                    });
                }
                _ = &mut deadline => return Err("handshake timed out".into()),
                _ = woken => {
                    if let Some(conn) = self.cached(&addr) {
                        debug!(peer = %addr, "the peer connected while this node was dialing it: using that connection");
                        self.finish_in_background(connecting, began);
                        return Ok(Dialed::Cached(conn));
                    }
                    if slot.restart_asked.swap(false, Ordering::Relaxed)
                        && began.elapsed() >= RESTART_DIAL_AFTER
                    {
                        debug!(peer = %addr, after_ms = began.elapsed().as_millis() as u64, "peer reachable again: restarting the handshake");
                        bump(&self.inner.counters.dials_restarted);
                        let old = std::mem::replace(&mut connecting, connect()?);
                        self.finish_in_background(old, began);
                        began = Instant::now();
                        deadline.as_mut().reset((began + DIAL_TIMEOUT).into());
                    }
                }
            }
        }
    }

    /// A handshake its dial stopped waiting for runs on to its deadline, and its connection is
    /// registered if it completes (like a second dial from the peer's side). Dropped instead, it
    /// would be closed at this end while the peer may already use it: when two nodes dial each
    /// other at once (100 started together), each could give way to the other's connection and
    /// drop the one the other just took, leaving neither (measured: 100 nodes started at once
    /// formed in 16-17 s instead of 11-14).
    fn finish_in_background(&self, connecting: quinn::Connecting, began: Instant) {
        let this = self.clone();
        let left = DIAL_TIMEOUT.saturating_sub(began.elapsed());
        tokio::spawn(async move {
            tokio::select! {
                _ = this.inner.cancel.cancelled() => {}
                done = tokio::time::timeout(left, connecting) => {
                    if let Ok(Ok(conn)) = done {
                        this.register(conn);
                    }
                }
            }
        });
    }
}

/// Whether a dial failed in the TLS handshake (QUIC's crypto error codes, 0x100-0x1ff, raised
/// here or sent by the peer), not for want of an answer.
fn is_tls_failure(e: &quinn::ConnectionError) -> bool {
    let code = match e {
        quinn::ConnectionError::TransportError(t) => t.code,
        quinn::ConnectionError::ConnectionClosed(c) => c.error_code,
        _ => return false,
    };
    (0x100..=0x1ff).contains(&u64::from(code))
}

/// How a dial ended well.
enum Dialed {
    /// A handshake of this node's own, to register.
    New(Connection),
    /// The connection the peer opened meanwhile (already registered).
    Cached(Connection),
}

/// Reset code of a gossip stream given up after a failed write.
const SESSION_BROKEN: u32 = 1;

/// The one stream gossip to a peer goes on, per connection (see `session.rs`): every message
/// is a frame encoded against the earlier ones, so the receiver must see all of them in order,
/// which one QUIC stream guarantees. A stream whose write fails is reset and replaced.
struct SendSession {
    connection: usize,
    stream: SendStream,
    encoder: session::Encoder,
}

impl SendSession {
    async fn open(conn: &Connection) -> Result<Self, String> {
        let work = async {
            let mut stream = conn.open_uni().await.map_err(|e| e.to_string())?;
            stream
                .write_all(&[session::SESSION_STREAM])
                .await
                .map_err(|e| e.to_string())?;
            Ok(SendSession {
                connection: conn.stable_id(),
                stream,
                encoder: session::Encoder::default(),
            })
        };
        tokio::time::timeout(STREAM_READ_TIMEOUT, work)
            .await
            .map_err(|_| "opening the gossip stream timed out".to_string())?
    }

    /// Encodes and writes one message; the bytes written.
    async fn send(&mut self, message: &[u8]) -> Result<u64, String> {
        let frame = self.encoder.encode(message);
        let mut out = Vec::with_capacity(frame.len() + 3);
        session::put_frame(&mut out, &frame);
        tokio::time::timeout(STREAM_READ_TIMEOUT, self.stream.write_all(&out))
            .await
            .map_err(|_| "gossip stream send timed out".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(out.len() as u64)
    }
}
