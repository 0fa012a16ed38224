//! The endpoint's UDP socket and QUIC transport settings.

use super::*;

/// Socket buffer asked for; the kernel caps it at net.core.rmem_max / wmem_max.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Binds the UDP socket with large buffers: with the default ~200 KiB, bursts of gossip from
/// many peers overflowed the receive buffer (measured 14% loss at 50 nodes in one process),
/// and lost handshake packets then cost whole retransmission timeouts.
pub(super) fn bind_udp(listen: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if let Err(e) = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES) {
        warn!(error = %e, "cannot enlarge the UDP receive buffer");
    }
    if let Err(e) = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES) {
        warn!(error = %e, "cannot enlarge the UDP send buffer");
    }
    socket.bind(&listen.into())?;
    Ok(socket.into())
}

pub(super) fn transport_config(timing: &Timing) -> Result<quinn::TransportConfig, MeshError> {
    let mut config = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(Duration::from_millis(timing.idle_timeout_ms))
        .map_err(|e| MeshError::Config {
            field: "timing.idle_timeout_ms",
            detail: e.to_string(),
        })?;
    config.max_idle_timeout(Some(idle));
    // No keep-alive: gossip traffic keeps used connections open; unused ones expire and are
    // re-dialed on demand (a handshake costs ~0.5 ms), so dead peers hold nothing.
    config.keep_alive_interval(None);
    config.max_concurrent_uni_streams(64u32.into());
    config.max_concurrent_bidi_streams(8u32.into());
    config.datagram_receive_buffer_size(Some(256 << 10));
    config.datagram_send_buffer_size(256 << 10);
    config.stream_receive_window((1u32 << 20).into());
    config.receive_window((4u32 << 20).into());
    config.send_window(8 << 20);
    Ok(config)
}
