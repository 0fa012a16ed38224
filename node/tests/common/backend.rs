//! A TCP (optionally HTTP) backend for health tests: it counts the connections it accepts, and
//! can be killed and brought back on the same address.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct TestBackend {
    /// Where it listens; a port of 0 at start is replaced by the one the kernel picked.
    pub addr: SocketAddr,
    pub http: bool,
    accepted: Arc<AtomicU64>,
    stop: Option<CancellationToken>,
}

impl TestBackend {
    pub async fn start(addr: SocketAddr, http: bool) -> Self {
        let mut b = TestBackend {
            addr,
            http,
            accepted: Arc::new(AtomicU64::new(0)),
            stop: None,
        };
        b.listen().await;
        b
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Listens again after `kill`. The killed listener is dropped by its task a moment later,
    /// so binding is retried for up to a second.
    pub async fn listen(&mut self) {
        let mut listener = None;
        for _ in 0..100 {
            match TcpListener::bind(self.addr).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        let listener = listener.unwrap_or_else(|| panic!("cannot bind backend {}", self.addr));
        self.addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        self.stop = Some(stop.clone());
        let (accepted, http) = (self.accepted.clone(), self.http);
        tokio::spawn(async move {
            loop {
                let (mut s, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                };
                accepted.fetch_add(1, Ordering::Relaxed);
                if http {
                    tokio::spawn(async move {
                        let mut buf = [0u8; 2048];
                        let _ = s.read(&mut buf).await;
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                            .await;
                    });
                }
            }
        });
    }

    pub fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.cancel();
        }
    }

    /// Kills a listening backend, or brings a killed one back: one step of a flapping backend.
    pub async fn toggle(&mut self) {
        if self.stop.is_some() {
            self.kill();
        } else {
            self.listen().await;
        }
    }

    /// Connections accepted so far.
    pub fn count(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}
