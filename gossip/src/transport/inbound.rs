//! The receiving side of the endpoint: the accept loop (handshake admission), one read loop
//! per connection (gossip streams and datagrams, bidirectional streams handed to the owner),
//! and the per-message identity check of inbound gossip.

use super::*;

impl QuicTransport {
    /// Judges one inbound chitchat message (see `identity::judge`): false to drop it.
    pub(crate) fn admit_gossip(
        &self,
        from: SocketAddr,
        cert_id: Option<&str>,
        message: &[u8],
    ) -> bool {
        if !self.inner.enforce_identity {
            return true;
        }
        let verdict = match (cert_id, identity::claims(message)) {
            (Some(cert_id), Some(claims)) => {
                let known = lock(&self.inner.first_hand).knows(cert_id, from);
                identity::judge(cert_id, from, self.local_addr(), &claims, known)
            }
            // Chitchat decoded it, we could not: drop rather than guess.
            _ => Verdict::Mismatch {
                claimed: Vec::new(),
            },
        };
        match verdict {
            Verdict::Accept { first_hand } => {
                if let Some(cert_id) = cert_id {
                    let now = Instant::now();
                    let mut heard = lock(&self.inner.first_hand);
                    for generation in first_hand {
                        heard.record(cert_id, generation, from, now);
                    }
                }
                true
            }
            Verdict::Reflected => {
                bump(&self.inner.counters.reflected_gossip);
                self.warn_limited("reflected", |suppressed| {
                    warn!(peer = %from, suppressed, "this node's own gossip came back from another address (a seed or peer address that leads back to this node: a UDP reflector, a NAT, or this node under another name): dropped");
                });
                false
            }
            Verdict::Mismatch { claimed } => {
                bump(&self.inner.counters.identity_mismatches);
                self.warn_limited("identity", |suppressed| {
                    warn!(peer = %from, certificate = ?cert_id, ?claimed, suppressed, "gossip from a peer speaking for a node id its certificate does not name: dropped");
                });
                false
            }
        }
    }

    /// Logs through `log` unless a warning of `kind` was logged in the last 10 s.
    pub(super) fn warn_limited(&self, kind: &'static str, log: impl FnOnce(u64)) {
        let allowed = lock(&self.inner.warns).allow(kind, Instant::now());
        if let Some(suppressed) = allowed {
            log(suppressed);
        }
    }

    fn refuse(&self, peer: SocketAddr, why: Refusal) {
        let c = &self.inner.counters;
        bump(&c.handshakes_refused);
        bump(match why {
            Refusal::Full => &c.handshakes_refused_full,
            Refusal::SourceBusy => &c.handshakes_refused_source_busy,
            Refusal::SourceRate => &c.handshakes_refused_source_rate,
        });
        self.warn_limited("handshake", |suppressed| {
            warn!(%peer, reason = why.as_str(), suppressed, "incoming handshake refused");
        });
    }

    pub(super) async fn accept_loop(self) {
        loop {
            let incoming = tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                incoming = self.inner.endpoint.accept() => match incoming {
                    Some(incoming) => incoming,
                    None => return,
                },
            };
            let peer = incoming.remote_address();
            if self.inner.fault.drops_inbound(&peer) {
                incoming.ignore();
                continue;
            }
            // Address validation first: a source that has not proven it receives packets at its
            // address gets a stateless Retry and costs nothing (no slot, no state), so spoofed or
            // half-open Initials cannot hold handshake slots.
            if !incoming.remote_address_validated() {
                if incoming.may_retry() {
                    if incoming.retry().is_ok() {
                        bump(&self.inner.counters.handshakes_retried);
                    }
                } else {
                    incoming.refuse();
                }
                continue;
            }
            let ip = peer.ip();
            let known = lock(&self.inner.known_sources).contains_key(&ip);
            let admitted = lock(&self.inner.admission).admit(ip, known, Instant::now());
            if let Err(why) = admitted {
                self.refuse(peer, why);
                incoming.refuse();
                continue;
            }
            let this = self.clone();
            tokio::spawn(async move {
                let connecting = match incoming.accept() {
                    Ok(c) => Some(c),
                    Err(e) => {
                        debug!(%peer, error = %e, "incoming connection failed");
                        None
                    }
                };
                if let Some(connecting) = connecting {
                    match tokio::time::timeout(this.inner.handshake_timeout, connecting).await {
                        Ok(Ok(conn)) => {
                            lock(&this.inner.backoffs).remove(&peer);
                            this.register(conn);
                        }
                        Ok(Err(e)) => {
                            bump(&this.inner.counters.handshakes_refused);
                            this.warn_limited("handshake", |suppressed| {
                                warn!(%peer, error = %e, suppressed, "incoming handshake failed");
                            });
                        }
                        Err(_) => {
                            bump(&this.inner.counters.handshakes_timed_out);
                            this.warn_limited("handshake_timeout", |suppressed| {
                                warn!(%peer, suppressed, "incoming handshake did not finish in time, dropped");
                            });
                        }
                    }
                }
                lock(&this.inner.admission).finish(ip);
            });
        }
    }

    pub(super) async fn read_loop(self, conn: Connection, cert_id: Option<Arc<str>>) {
        let peer = conn.remote_address();
        let started = Instant::now();
        let session_slot = SessionSlot::default();
        let reason = loop {
            tokio::select! {
                _ = self.inner.cancel.cancelled() => break None,
                datagram = conn.read_datagram() => match datagram {
                    Ok(bytes) => self.deliver(peer, cert_id.clone(), bytes),
                    Err(e) => break Some(e),
                },
                uni = conn.accept_uni() => match uni {
                    Ok(recv) => {
                        tokio::spawn(self.clone().read_gossip_stream(peer, cert_id.clone(), recv, session_slot.clone()));
                    }
                    Err(e) => break Some(e),
                },
                bi = conn.accept_bi() => match bi {
                    Ok((send, recv)) => {
                        if self.inner.fault.drops_inbound(&peer) || self.inner.fault.drops_outbound(&peer) {
                            continue;
                        }
                        if self.inner.streams.try_send(InboundStream { peer, send, recv }).is_err() {
                            debug!(%peer, "too many inbound streams waiting, stream refused");
                        }
                    }
                    Err(e) => break Some(e),
                },
            }
        };
        let stats = conn.stats();
        self.inner
            .closed_udp_tx_bytes
            .fetch_add(stats.udp_tx.bytes, Ordering::Relaxed);
        self.inner
            .closed_udp_rx_bytes
            .fetch_add(stats.udp_rx.bytes, Ordering::Relaxed);
        {
            let mut conns = lock(&self.inner.conns);
            if conns
                .get(&peer)
                .is_some_and(|c| c.stable_id() == conn.stable_id())
            {
                conns.remove(&peer);
            }
        }
        if let Some(quinn::ConnectionError::ApplicationClosed(close)) = &reason {
            if close.error_code == super::CAME_BACK.into() {
                // The peer judged this node alive again after an outage and replaced the
                // connection that went through it (`Transport::reset_connection`).
                bump(&self.inner.counters.connections_reset);
            }
        }
        if let Some(reason) = reason {
            let refused = matches!(
                reason,
                quinn::ConnectionError::ConnectionClosed(_)
                    | quinn::ConnectionError::TransportError(_)
            );
            if refused && started.elapsed() < EARLY_CLOSE {
                debug!(%peer, error = %reason, "peer closed the connection at once, backing off");
                lock(&self.inner.backoffs)
                    .entry(peer)
                    .or_default()
                    .fail(Instant::now());
            } else {
                debug!(%peer, error = %reason, "connection ended");
            }
        }
        conn.close(0u32.into(), b"done");
    }

    /// Reads one gossip stream: a session stream (`session.rs`: frames until the stream ends) or,
    /// from senders before sessions, one framed message.
    async fn read_gossip_stream(
        self,
        peer: SocketAddr,
        cert_id: Option<Arc<str>>,
        mut recv: RecvStream,
        slot: SessionSlot,
    ) {
        let max = self.inner.max_gossip_message_bytes;
        let mut first = [0u8; 1];
        match tokio::time::timeout(STREAM_READ_TIMEOUT, recv.read_exact(&mut first)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return debug!(%peer, error = %e, "gossip stream dropped"),
            Err(_) => return debug!(%peer, "gossip stream timed out"),
        }
        if first[0] == session::SESSION_STREAM {
            return self.read_session(peer, cert_id, recv, slot).await;
        }
        match tokio::time::timeout(STREAM_READ_TIMEOUT, recv.read_to_end(max)).await {
            Ok(Ok(rest)) => {
                let mut bytes = Vec::with_capacity(rest.len() + 1);
                bytes.push(first[0]);
                bytes.extend_from_slice(&rest);
                self.deliver(peer, cert_id, Bytes::from(bytes));
            }
            Ok(Err(quinn::ReadToEndError::TooLong)) => {
                bump(&self.inner.counters.oversized_messages);
                self.warn_limited("oversized", |suppressed| {
                    warn!(%peer, max_bytes = max + 1, suppressed, "gossip message above the cap, dropped");
                });
            }
            Ok(Err(e)) => debug!(%peer, error = %e, "gossip stream dropped"),
            Err(_) => debug!(%peer, "gossip stream timed out"),
        }
    }

    /// Decodes a session stream frame by frame until it ends, fails, or a newer session stream
    /// of the same connection replaces it (a sender opens one only after giving up the last).
    async fn read_session(
        self,
        peer: SocketAddr,
        cert_id: Option<Arc<str>>,
        mut recv: RecvStream,
        slot: SessionSlot,
    ) {
        let replaced = CancellationToken::new();
        if let Some(older) = lock(&slot).replace(replaced.clone()) {
            older.cancel();
        }
        let max = self.inner.max_gossip_message_bytes;
        let max_frame = session::max_frame_bytes(max);
        let mut decoder = session::Decoder::default();
        let mut buf: Vec<u8> = Vec::new();
        loop {
            loop {
                let failed = match session::next_frame(&buf, max_frame) {
                    Ok(None) => break,
                    Ok(Some((end, frame))) => match decoder.decode(&buf[frame], max) {
                        Ok(message) => {
                            self.deliver_message(peer, cert_id.clone(), message, end as u64);
                            buf.drain(..end);
                            continue;
                        }
                        Err(e) => e,
                    },
                    Err(e) => e,
                };
                bump(&self.inner.counters.malformed_gossip);
                self.warn_limited("session", |suppressed| {
                    warn!(%peer, error = %failed, suppressed, "gossip stream sent a frame that does not decode: stream stopped");
                });
                let _ = recv.stop(SESSION_REFUSED.into());
                return;
            }
            let chunk = tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                _ = replaced.cancelled() => {
                    let _ = recv.stop(SESSION_REFUSED.into());
                    return;
                }
                chunk = recv.read_chunk(max_frame, true) => chunk,
            };
            match chunk {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
                Ok(None) => return,
                Err(e) => return debug!(%peer, error = %e, "gossip stream ended"),
            }
        }
    }

    /// Delivers a payload of a one-message stream or a datagram (`codec.rs` framing).
    fn deliver(&self, peer: SocketAddr, cert_id: Option<Arc<str>>, bytes: Bytes) {
        let Some(message) = codec::decode(&bytes, self.inner.max_gossip_message_bytes) else {
            bump(&self.inner.counters.malformed_gossip);
            debug!(%peer, "malformed gossip payload dropped");
            return;
        };
        self.deliver_message(peer, cert_id, message, bytes.len() as u64);
    }

    /// Hands a decoded chitchat message to the gossip socket; `wire_bytes` is what it took on
    /// the wire (for the traffic counters).
    fn deliver_message(
        &self,
        peer: SocketAddr,
        cert_id: Option<Arc<str>>,
        message: Vec<u8>,
        wire_bytes: u64,
    ) {
        if self.inner.fault.drops_inbound(&peer) {
            return;
        }
        if self
            .inner
            .gossip_in
            .try_send((peer, cert_id, Bytes::from(message)))
            .is_ok()
        {
            self.inner
                .gossip_rx_bytes
                .fetch_add(wire_bytes, Ordering::Relaxed);
        } else {
            bump(&self.inner.counters.dropped_inbound_full);
        }
    }
}

/// The session stream a connection's peer currently sends on (see `read_session`).
type SessionSlot = Arc<Mutex<Option<CancellationToken>>>;

/// Stop code of a session stream this end will not read further (undecodable or replaced).
const SESSION_REFUSED: u32 = 2;

/// The node id the peer's certificate names (its `urn:shoal:node:` URI SAN).
pub(super) fn peer_node_id(conn: &Connection) -> Option<String> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast_ref::<Vec<rustls::pki_types::CertificateDer<'static>>>()?;
    crate::certs::cert_node_id(chain.first()?)
}
