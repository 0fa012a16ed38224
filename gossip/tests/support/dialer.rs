//! A dialer that holds a certificate of its choosing and trusts any listener: what an attacker
//! with a certificate from the cluster's CA (for another cluster, say) connects with. It skips
//! the dialer's own check of the listener, so what a handshake proves is the listener's check.

#![allow(dead_code)]

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use shoal_gossip::certs::{node_uri, ClusterCa};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A node certificate for `node_id` signed by `ca` and carrying `dns_name` (a node of cluster
/// `c` carries `gossip.c`), as `shoal certs issue` makes them.
pub fn certificate(
    ca: &ClusterCa,
    node_id: &str,
    dns_name: &str,
) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let ca_key = KeyPair::from_pem(ca.key_pem()).expect("CA key");
    let issuer = Issuer::from_ca_cert_pem(ca.cert_pem(), ca_key).expect("CA certificate");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = vec![
        SanType::DnsName(dns_name.try_into().expect("DNS name")),
        SanType::URI(node_uri(node_id).try_into().expect("URI")),
    ];
    params.distinguished_name.push(DnType::CommonName, node_id);
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &issuer).expect("sign");
    (
        cert.der().clone(),
        PrivateKeyDer::try_from(key.serialize_der()).expect("key DER"),
    )
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
        .with_custom_certificate_verifier(Arc::new(AnyListener(provider)))
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

#[derive(Debug)]
struct AnyListener(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyListener {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
