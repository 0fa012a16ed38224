//! The probes themselves: a TCP connect, or an HTTP(S) GET expecting one status, with a timeout.
//!
//! Each probe opens a fresh connection (no pooling) so that it tests what a new client would
//! meet, and so a backend can count the probes it receives. HTTPS certificates are not verified:
//! backends are addressed by IP and the question is "does it answer", not "who is it". An HTTPS
//! check with a `host` names it in SNI too (`https_named`): a backend that picks its
//! certificate or route by SNI (an Envoy or Istio gateway's filter chains) refuses a handshake
//! without one.

use super::result::ProbeResult;
use crate::table::Probe;
use nix::libc;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::TcpStream;

/// What to probe and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub address: IpAddr,
    pub port: u16,
    pub probe: Probe,
    pub timeout: Duration,
}

/// Runs probes; holds the HTTP client and the TLS configuration of named HTTPS probes (built
/// once).
pub struct Prober {
    http: Option<reqwest::Client>,
    named_tls: Option<tokio_rustls::TlsConnector>,
}

impl Prober {
    pub fn new() -> Self {
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .pool_max_idle_per_host(0)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|error| error.to_string());
        let named_tls = named_tls_config().map_err(|error| error.to_string());
        // Only HTTP probes need these; TCP probes keep working, HTTP ones report errors.
        for error in [http.as_ref().err(), named_tls.as_ref().err()]
            .into_iter()
            .flatten()
        {
            tracing::error!(%error, "cannot build the HTTP client for health probes");
        }
        Prober {
            http: http.ok(),
            named_tls: named_tls.ok(),
        }
    }

    /// The backend's answer, or `Err` when this node could not send the probe at all (out of
    /// file descriptors, buffers or local ports): that says nothing about the backend.
    pub async fn probe(&self, target: &Target) -> Result<ProbeResult, LocalFailure> {
        let socket = SocketAddr::new(target.address, target.port);
        let attempt = async {
            match &target.probe {
                Probe::Tcp => tcp(socket).await,
                Probe::Http {
                    path,
                    expect_status,
                    tls,
                    host,
                } => match (*tls, host.as_deref()) {
                    (true, Some(host)) => match &self.named_tls {
                        Some(tls) => https_named(tls, socket, path, *expect_status, host).await,
                        None => Ok(ProbeResult::Error),
                    },
                    _ => match &self.http {
                        Some(client) => {
                            http(client, socket, path, *expect_status, *tls, host.as_deref()).await
                        }
                        None => Ok(ProbeResult::Error),
                    },
                },
            }
        };
        tokio::time::timeout(target.timeout, attempt)
            .await
            .unwrap_or(Ok(ProbeResult::Timeout))
    }
}

impl Default for Prober {
    fn default() -> Self {
        Self::new()
    }
}

/// This node lacked what a probe needs; the error names what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot send a health probe from this node: {0}")]
pub struct LocalFailure(pub String);

/// Errors of this node's own resources, not of the path to the backend: a probe of a live
/// backend fails with them when 50,000 probes are due at once (EMFILE), and counting them
/// against the backend would drain it.
fn local_failure(e: &io::Error) -> Option<LocalFailure> {
    let local = matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    );
    local.then(|| LocalFailure(e.to_string()))
}

async fn tcp(socket: SocketAddr) -> Result<ProbeResult, LocalFailure> {
    let result = TcpStream::connect(socket).await.map(drop);
    match &result {
        Err(e) => local_failure(e).map_or_else(|| Ok(connected(result)), Err),
        Ok(()) => Ok(ProbeResult::Ok),
    }
}

/// A tcp check's answer: the handshake completed. A reset (not a refusal, which answers the
/// SYN) comes after the handshake: whether `connect` returns before it or reports it is down
/// to scheduling, so it counts as connected, or a backend that accepts and closes at once
/// would flip between up and down.
fn connected(result: io::Result<()>) -> ProbeResult {
    match result {
        Ok(()) => ProbeResult::Ok,
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => ProbeResult::Ok,
        Err(e) => io_result(&e),
    }
}

/// A failed probe's result. A reset is the server hanging up after the handshake, not a
/// refusal (that is ECONNREFUSED): an HTTP backend that accepts and resets was shown as
/// `refused`, which reads as "nothing listens" (an audit). A tcp check counts a reset as
/// connected before it gets here.
fn io_result(e: &io::Error) -> ProbeResult {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ProbeResult::Refused,
        io::ErrorKind::TimedOut => ProbeResult::Timeout,
        _ => ProbeResult::Error,
    }
}

async fn http(
    client: &reqwest::Client,
    socket: SocketAddr,
    path: &str,
    expect_status: u16,
    tls: bool,
    host: Option<&str>,
) -> Result<ProbeResult, LocalFailure> {
    let scheme = if tls { "https" } else { "http" };
    let slash = if path.starts_with('/') { "" } else { "/" };
    let mut request = client.get(format!("{scheme}://{socket}{slash}{path}"));
    if let Some(host) = host {
        request = request.header(reqwest::header::HOST, host);
    }
    match request.send().await {
        Ok(response) if response.status().as_u16() == expect_status => Ok(ProbeResult::Ok),
        Ok(response) => Ok(ProbeResult::Status(response.status().as_u16())),
        Err(e) if e.is_timeout() => Ok(ProbeResult::Timeout),
        Err(e) => {
            // reqwest wraps the socket error a few levels down; find it to tell refused apart.
            let mut source: Option<&dyn std::error::Error> = Some(&e);
            while let Some(err) = source {
                if let Some(io) = err.downcast_ref::<io::Error>() {
                    return local_failure(io).map_or_else(|| Ok(io_result(io)), Err);
                }
                source = err.source();
            }
            Ok(ProbeResult::Error)
        }
    }
}

/// An HTTPS probe that names `host` in SNI and in the Host header, sent to the backend's
/// address (reqwest, asked for `https://IP`, sends no SNI, and cannot be told another name per
/// request).
async fn https_named(
    tls: &tokio_rustls::TlsConnector,
    socket: SocketAddr,
    path: &str,
    expect_status: u16,
    host: &str,
) -> Result<ProbeResult, LocalFailure> {
    let tcp = match TcpStream::connect(socket).await {
        Ok(tcp) => tcp,
        Err(e) => return local_failure(&e).map_or_else(|| Ok(io_result(&e)), Err),
    };
    // An IP address (or a name rustls cannot send) goes as the backend's address: no SNI.
    let name = sni_name(host)
        .and_then(|n| rustls::pki_types::ServerName::try_from(n.to_string()).ok())
        .unwrap_or(rustls::pki_types::ServerName::IpAddress(socket.ip().into()));
    let stream = match tls.connect(name, tcp).await {
        Ok(s) => s,
        Err(e) => return Ok(io_result(&e)),
    };
    let Ok((mut sender, conn)) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await
    else {
        return Ok(ProbeResult::Error);
    };
    let slash = if path.starts_with('/') { "" } else { "/" };
    let Ok(request) = hyper::Request::get(format!("{slash}{path}"))
        .header(hyper::header::HOST, host)
        .header(hyper::header::CONNECTION, "close")
        .body(String::new())
    else {
        return Ok(ProbeResult::Error);
    };
    // The connection is driven here until the answer's head is in (no task outlives the probe:
    // the caller's timeout drops both).
    // A connection that ends first (`connection: close`) may already have handed the answer
    // over: the request's future says.
    let send = sender.send_request(request);
    tokio::pin!(conn, send);
    let response = tokio::select! {
        r = &mut send => r,
        _ = &mut conn => send.await,
    };
    Ok(match response {
        Ok(r) if r.status().as_u16() == expect_status => ProbeResult::Ok,
        Ok(r) => ProbeResult::Status(r.status().as_u16()),
        Err(_) => ProbeResult::Error,
    })
}

/// The name part of a Host value (`web.example:8443` -> `web.example`); `None` for an IP
/// address (`198.18.0.5`, `[2001:db8::1]:443`), which SNI does not carry.
fn sni_name(host: &str) -> Option<&str> {
    if host.starts_with('[') {
        return None;
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    (name.parse::<IpAddr>().is_err() && !name.is_empty()).then_some(name)
}

/// TLS for [`https_named`]: any certificate is accepted, as reqwest is told for the other
/// probes; the handshake's signatures are still checked against the certificate presented.
fn named_tls_config() -> Result<tokio_rustls::TlsConnector, rustls::Error> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(
            shoal_gossip::transport::AcceptAnyServer(provider),
        ))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        config,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn target(port: u16, probe: Probe) -> Target {
        Target {
            address: "127.0.0.1".parse().unwrap(),
            port,
            probe,
            timeout: Duration::from_millis(500),
        }
    }

    fn http_probe(status: u16) -> Probe {
        Probe::Http {
            path: "healthz".into(),
            expect_status: status,
            tls: false,
            host: Some("web.example".into()),
        }
    }

    async fn closed_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    }

    /// Answers every request with `status`, returning the request heads it saw.
    async fn http_server(status: u16) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let _ = tx.send(String::from_utf8_lossy(&buf[..n]).to_string());
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                });
            }
        });
        (port, rx)
    }

    #[test]
    fn a_reset_after_the_handshake_is_connected() {
        let err = |kind| Err(io::Error::from(kind));
        assert_eq!(connected(Ok(())), ProbeResult::Ok);
        assert_eq!(
            connected(err(io::ErrorKind::ConnectionReset)),
            ProbeResult::Ok
        );
        assert_eq!(
            connected(err(io::ErrorKind::ConnectionRefused)),
            ProbeResult::Refused
        );
        assert_eq!(
            connected(err(io::ErrorKind::TimedOut)),
            ProbeResult::Timeout
        );
    }

    /// This node's own shortages are not the backend's failures.
    #[test]
    fn local_shortages_are_told_apart() {
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::EADDRNOTAVAIL,
        ] {
            let e = io::Error::from_raw_os_error(errno);
            assert!(local_failure(&e).is_some(), "{e}");
        }
        for errno in [libc::ECONNREFUSED, libc::EHOSTUNREACH, libc::ETIMEDOUT] {
            let e = io::Error::from_raw_os_error(errno);
            assert_eq!(local_failure(&e), None, "{e}");
        }
    }

    #[tokio::test]
    async fn tcp_ok_and_refused() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let prober = Prober::new();
        assert_eq!(
            prober.probe(&target(port, Probe::Tcp)).await,
            Ok(ProbeResult::Ok)
        );
        drop(l);
        assert_eq!(
            prober.probe(&target(port, Probe::Tcp)).await,
            Ok(ProbeResult::Refused)
        );
    }

    #[tokio::test]
    async fn http_checks_status_path_and_host() {
        let prober = Prober::new();
        let (port, mut seen) = http_server(204).await;
        assert_eq!(
            prober.probe(&target(port, http_probe(204))).await,
            Ok(ProbeResult::Ok)
        );
        let head = seen.recv().await.unwrap().to_lowercase();
        assert!(head.starts_with("get /healthz http/1.1"), "{head}");
        assert!(head.contains("host: web.example"), "{head}");
        assert_eq!(
            prober.probe(&target(port, http_probe(200))).await,
            Ok(ProbeResult::Status(204))
        );
        let closed = closed_port().await;
        assert_eq!(
            prober.probe(&target(closed, http_probe(200))).await,
            Ok(ProbeResult::Refused)
        );
        // Accepted, then reset (SO_LINGER 0) before any answer: an error, not a refusal.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                drop(s);
            }
        });
        assert_eq!(
            prober.probe(&target(port, http_probe(200))).await,
            Ok(ProbeResult::Error)
        );
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        // Accepts but never answers: the HTTP probe must give up at the timeout.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let mut t = target(port, http_probe(200));
        t.timeout = Duration::from_millis(200);
        let started = std::time::Instant::now();
        assert_eq!(Prober::new().probe(&t).await, Ok(ProbeResult::Timeout));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    /// A blocking HTTPS server with a certificate no client would trust, answering 200.
    fn https_server() -> u16 {
        https_server_seeing().0
    }

    /// The same, keeping each connection's SNI and request head.
    type Seen = std::sync::Arc<std::sync::Mutex<Vec<(Option<String>, String)>>>;
    fn https_server_seeing() -> (u16, Seen) {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        use std::io::{Read, Write};
        let ca = shoal_gossip::certs::create_ca("probe-test").unwrap();
        let leaf = shoal_gossip::certs::issue_node_cert(&ca, "backend").unwrap();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = std::sync::Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap(),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Seen::default();
        let record = seen.clone();
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut buf = [0u8; 2048];
                if let Ok(n) = tls.read(&mut buf) {
                    let sni = tls.conn.server_name().map(str::to_string);
                    let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
                    record.lock().unwrap().push((sni, head));
                    let _ = tls.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                }
            }
        });
        (port, seen)
    }

    /// An HTTPS check with a Host names it in SNI (a backend choosing its certificate or route
    /// by SNI refused the nameless handshake; an audit), port left out; an IP address is not
    /// sent as SNI.
    #[tokio::test]
    async fn https_with_a_host_sends_it_as_sni() {
        let (port, seen) = https_server_seeing();
        for (host, sni) in [
            ("web.example:8443", Some("web.example")),
            ("web.example", Some("web.example")),
            ("198.18.0.5", None),
            ("[2001:db8::5]:443", None),
        ] {
            let probe = Probe::Http {
                path: "healthz".into(),
                expect_status: 200,
                tls: true,
                host: Some(host.into()),
            };
            let r = Prober::new().probe(&target(port, probe)).await;
            assert_eq!(r, Ok(ProbeResult::Ok), "{host}");
            let (got_sni, head) = seen.lock().unwrap().pop().unwrap();
            assert_eq!(got_sni.as_deref(), sni, "{host}");
            assert!(head.starts_with("get /healthz http/1.1\r\n"), "{head}");
            assert!(head.contains(&format!("host: {host}\r\n")), "{head}");
        }
        // The status is judged as on the other path.
        let probe = Probe::Http {
            path: "/".into(),
            expect_status: 204,
            tls: true,
            host: Some("web.example".into()),
        };
        let r = Prober::new().probe(&target(port, probe)).await;
        assert_eq!(r, Ok(ProbeResult::Status(200)));
    }

    #[tokio::test]
    async fn https_with_a_host_tells_refused_and_plain_servers_apart() {
        let named = |port| {
            target(
                port,
                Probe::Http {
                    path: "/".into(),
                    expect_status: 200,
                    tls: true,
                    host: Some("web.example".into()),
                },
            )
        };
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        assert_eq!(
            Prober::new().probe(&named(port)).await,
            Ok(ProbeResult::Refused)
        );
        let (port, _seen) = http_server(200).await;
        let r = Prober::new().probe(&named(port)).await;
        assert_eq!(r, Ok(ProbeResult::Error));
    }

    #[tokio::test]
    async fn https_accepts_an_untrusted_certificate() {
        let port = https_server();
        let probe = Probe::Http {
            path: "/healthz".into(),
            expect_status: 200,
            tls: true,
            host: None,
        };
        let r = Prober::new().probe(&target(port, probe)).await;
        assert_eq!(r, Ok(ProbeResult::Ok));
    }

    #[tokio::test]
    async fn https_to_a_plain_server_is_an_error_not_a_panic() {
        let (port, _seen) = http_server(200).await;
        let probe = Probe::Http {
            path: "/".into(),
            expect_status: 200,
            tls: true,
            host: None,
        };
        let r = Prober::new().probe(&target(port, probe)).await;
        assert!(!r.as_ref().is_ok_and(ProbeResult::is_success), "{r:?}");
    }
}
