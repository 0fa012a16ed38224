//! Dials over real UDP on loopback: a handshake begun while the peer could not answer (its
//! first packets lost, QUIC's next resend seconds away) gives way to a connection the peer
//! opens meanwhile, and starts over when the peer is reported reachable.
//!
//! The peer is "cut" by a plain UDP socket holding its port that never answers. The cut lasts
//! 3.3 s: QUIC resends the first handshake packet after about 1 s and 3 s, then only after 7 s,
//! past the 5 s dial timeout, so without the two rules the message queued behind that dial is
//! lost and these tests fail.

use super::*;
use std::net::UdpSocket;

const SERVER_NAME: &str = "shoal-test";
const CUT: Duration = Duration::from_millis(3_300);
/// Well under the ~3.7 s the old handshake would still need (and it would time out first).
const PROMPTLY: Duration = Duration::from_millis(1_500);

fn node(addr: SocketAddr) -> QuicTransport {
    let tls = tls::insecure(SERVER_NAME).expect("a throwaway certificate");
    // Bidirectional streams are not used here.
    let (streams, _) = mpsc::channel(1);
    QuicTransport::bind(
        addr,
        tls,
        SERVER_NAME.into(),
        &Timing::default(),
        FaultHook::default(),
        streams,
        false,
    )
    .expect("binds on loopback")
}

/// Node A, and a silent socket at B's future address to which A has been dialing for [`CUT`]
/// with one gossip message queued.
async fn dialing_a_silent_peer() -> (QuicTransport, SocketAddr) {
    let silent = UdpSocket::bind("127.0.0.1:0").expect("a loopback port");
    let b_addr = silent.local_addr().expect("bound");
    let a = node("127.0.0.1:0".parse().expect("an address"));
    a.send_gossip(b_addr, Bytes::from_static(b"queued while cut"));
    tokio::time::sleep(CUT).await;
    drop(silent);
    (a, b_addr)
}

/// Waits for the one message A queued, as B receives it.
async fn receive(b: &QuicTransport, from: SocketAddr) -> Result<Bytes, &'static str> {
    let mut rx = b.take_gossip_rx().expect("the gossip receiver");
    let (sender, _, bytes) = tokio::time::timeout(PROMPTLY, rx.recv())
        .await
        .map_err(|_| "not received promptly")?
        .ok_or("transport closed")?;
    assert_eq!(sender, from);
    Ok(bytes)
}

#[tokio::test]
async fn a_dial_gives_way_to_the_connection_the_peer_opens() {
    let (a, b_addr) = dialing_a_silent_peer().await;
    let b = node(b_addr);
    // B gossips to A first: its dial lands at A, and A's own dial, still waiting for an answer
    // from the cut, must use that connection instead.
    b.send_gossip(a.local_addr(), Bytes::from_static(b"hello"));
    let got = receive(&b, a.local_addr()).await;
    assert!(got.is_ok(), "{got:?}: {:?}", a.traffic());
    assert_eq!(
        a.traffic().dials_restarted,
        0,
        "nobody asked for a fresh dial"
    );
    a.close();
    b.close();
}

#[tokio::test]
async fn a_dial_starts_over_when_the_peer_is_reachable_again() {
    let (a, b_addr) = dialing_a_silent_peer().await;
    let b = node(b_addr);
    // What the mesh does when it judges the member alive (again) or contacts it directly.
    a.clear_backoff(b_addr);
    let got = receive(&b, a.local_addr()).await;
    assert!(got.is_ok(), "{got:?}: {:?}", a.traffic());
    assert_eq!(a.traffic().dials_restarted, 1);
    a.close();
    b.close();
}

/// A peer's send queue ends once it has had nothing to send for `PEER_QUEUE_IDLE` (300 ms in
/// tests), so the map of queues does not keep every address ever gossiped to; the next message
/// starts a new one and arrives.
#[tokio::test]
async fn an_idle_peer_queue_ends_and_the_next_message_starts_another() {
    let a = node("127.0.0.1:0".parse().expect("an address"));
    let b = node("127.0.0.1:0".parse().expect("an address"));
    let mut rx = b.take_gossip_rx().expect("the gossip receiver");
    let b_addr = b.local_addr();
    for round in 0..2 {
        a.send_gossip(b_addr, Bytes::from_static(b"hello"));
        let (_, _, bytes) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("received")
            .expect("open");
        assert_eq!(&bytes[..], b"hello", "round {round}");
        tokio::time::sleep(Duration::from_millis(800)).await;
        let queues = lock(&a.inner.peer_queues);
        assert!(
            queues.get(&b_addr).is_some_and(|tx| tx.is_closed()),
            "round {round}: the idle queue ended"
        );
    }
}
