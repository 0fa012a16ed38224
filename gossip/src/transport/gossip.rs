//! chitchat's `Transport`/`Socket` over the node's QUIC endpoint.

use super::QuicTransport;
use anyhow::bail;
use async_trait::async_trait;
use bytes::Bytes;
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use std::net::SocketAddr;
use tokio::sync::mpsc;
use tracing::debug;

pub(crate) struct GossipTransport(pub QuicTransport);

#[async_trait]
impl Transport for GossipTransport {
    async fn open(&self, _listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let Some(rx) = self.0.take_gossip_rx() else {
            bail!("the gossip socket of this endpoint is already open");
        };
        Ok(Box::new(GossipSocket {
            transport: self.0.clone(),
            rx,
        }))
    }
}

struct GossipSocket {
    transport: QuicTransport,
    rx: mpsc::Receiver<super::Inbound>,
}

/// Chitchat stopped (a node joining again above a later incarnation of its id, see
/// `mesh/rejoin.rs`): the next chitchat on this endpoint opens the socket again.
impl Drop for GossipSocket {
    fn drop(&mut self) {
        let (_, closed) = mpsc::channel(1);
        self.transport
            .return_gossip_rx(std::mem::replace(&mut self.rx, closed));
    }
}

#[async_trait]
impl Socket for GossipSocket {
    /// A Syn beyond `to`'s burst is not sent (`pace.rs`): chitchat runs the rounds a freeze
    /// made it miss back to back.
    async fn send(&mut self, to: SocketAddr, msg: ChitchatMessage) -> anyhow::Result<()> {
        if matches!(msg, ChitchatMessage::Syn { .. }) && !self.transport.admit_syn(to) {
            return Ok(());
        }
        self.transport
            .send_gossip(to, Bytes::from(msg.serialize_to_vec()));
        Ok(())
    }

    /// Cancel-safe: the only await is the channel receive. Messages from a peer speaking for a
    /// node id its certificate does not name are dropped here (see `identity.rs`).
    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let Some((from, cert_id, bytes)) = self.rx.recv().await else {
                bail!("the QUIC transport is closed");
            };
            match ChitchatMessage::deserialize(&mut &bytes[..]) {
                Ok(msg) => {
                    if self
                        .transport
                        .admit_gossip(from, cert_id.as_deref(), &bytes)
                    {
                        return Ok((from, msg));
                    }
                }
                Err(e) => debug!(peer = %from, error = %e, "undecodable gossip message dropped"),
            }
        }
    }
}
