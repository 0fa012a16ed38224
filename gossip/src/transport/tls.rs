//! rustls configurations (ring provider, TLS 1.3 only) for the node's QUIC endpoint.
//!
//! Mutual TLS: the server demands a client certificate chaining to the cluster CA and the client
//! checks the server's certificate against the same CA and the cluster's shared DNS name.

use crate::certs::{ParsedTls, TlsMaterial};
use crate::error::CertError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;

pub const ALPN: &[u8] = b"shoal-gossip/1";

fn tls_err(what: &'static str) -> impl Fn(rustls::Error) -> CertError {
    move |e| CertError::Tls {
        what,
        detail: e.to_string(),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server and client configs for mutual TLS against the cluster CA.
pub fn mutual(
    material: &TlsMaterial,
) -> Result<(rustls::ServerConfig, rustls::ClientConfig), CertError> {
    let ParsedTls { ca, chain, key } = material.parse()?;
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots.add(cert).map_err(tls_err("ca.pem"))?;
    }
    let roots = Arc::new(roots);
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| CertError::Tls {
            what: "client verifier",
            detail: e.to_string(),
        })?;
    // A node certificate from another CA loads and serves, but every peer refuses it: the node
    // would wait for seeds that never answer, and only the peers' logs would say why.
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or(CertError::EmptyPem { what: "node.pem" })?;
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .map_err(|e| CertError::Tls {
            what: "node.pem against ca.pem (the node certificate must be issued by the cluster CA)",
            detail: e.to_string(),
        })?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err("server protocol versions"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(tls_err("node.pem/node.key (server)"))?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err("client protocol versions"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(tls_err("node.pem/node.key (client)"))?;
    client.alpn_protocols = vec![ALPN.to_vec()];
    Ok((server, client))
}

/// Throwaway self-signed certificate, no client authentication, any server accepted.
pub fn insecure(
    server_name: &str,
) -> Result<(rustls::ServerConfig, rustls::ClientConfig), CertError> {
    let certified =
        rcgen::generate_simple_self_signed(vec![server_name.to_string()]).map_err(|source| {
            CertError::Generate {
                subject: server_name.to_string(),
                source,
            }
        })?;
    let chain = vec![certified.cert.der().clone()];
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = provider();
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err("server protocol versions"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(tls_err("self-signed cert"))?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err("client protocol versions"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
        .with_no_client_auth();
    client.alpn_protocols = vec![ALPN.to_vec()];
    Ok((server, client))
}

/// Accepts any server certificate but still checks the handshake signature, so the session
/// is at least encrypted to whoever answered: the mesh's insecure mode, and the node's HTTPS
/// health probes (which ask "does it answer", not "who is it").
#[derive(Debug)]
pub struct AcceptAnyServer(pub Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
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
