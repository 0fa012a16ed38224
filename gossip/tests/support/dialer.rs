//! A dialer that holds a certificate of its choosing and trusts any listener: what an attacker
//! with a certificate from the cluster's CA (for another cluster, say) connects with. It skips
//! the dialer's own check of the listener, so what a handshake proves is the listener's check.

#![allow(dead_code)]

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use shoal_gossip::certs::{issue_node_cert_in, ClusterCa};
use shoal_gossip::transport::AcceptAnyServer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A node certificate for `node_id` in cluster `cluster`, signed by `ca`, as `shoal certs
/// issue` makes them (a node of cluster `c` carries the DNS name `gossip.c`).
pub fn certificate(
    ca: &ClusterCa,
    node_id: &str,
    cluster: &str,
) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let m = issue_node_cert_in(ca, node_id, cluster, 30).expect("issue");
    let cert = rustls_pemfile::certs(&mut m.cert_pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("PEM");
    let key = rustls_pemfile::private_key(&mut m.key_pem.as_bytes())
        .expect("PEM")
        .expect("a key");
    (cert, key)
}

/// Dials `to` with `cert` and says whether the listener kept the connection: `Ok` when it was
/// still open `watch` after the handshake, `Err` with the reason it closed otherwise. (In TLS 1.3
/// the listener judges the dialer's certificate after the dialer's handshake is done, so a
/// refusal shows as the connection closing.)
pub async fn kept(
    to: SocketAddr,
    cert: (CertificateDer<'static>, PrivateKeyDer<'static>),
    watch: Duration,
) -> Result<(), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
        .with_client_auth_cert(vec![cert.0], cert.1)
        .expect("client certificate");
    tls.alpn_protocols = vec![b"shoal-gossip/1".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS");
    let mut endpoint =
        quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).expect("endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let outcome = match endpoint.connect(to, "gossip.any") {
        Err(e) => Err(format!("connect: {e}")),
        Ok(connecting) => match connecting.await {
            Err(e) => Err(format!("handshake: {e}")),
            Ok(conn) => match tokio::time::timeout(watch, conn.closed()).await {
                Ok(reason) => Err(format!("closed: {reason}")),
                Err(_) => {
                    conn.close(0u32.into(), b"done");
                    Ok(())
                }
            },
        },
    };
    endpoint.close(0u32.into(), b"done");
    outcome
}
