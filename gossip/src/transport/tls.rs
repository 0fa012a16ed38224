//! rustls configurations (ring provider, TLS 1.3 only) for the node's QUIC endpoint.
//!
//! Mutual TLS: each side demands the other's certificate chain to the cluster CA and name the
//! cluster's shared DNS name (`gossip.<cluster>`): the dialer through rustls' server-name check,
//! the listener through [`ClusterClientVerifier`]. Without the listener's check, a certificate
//! of another cluster issued by the same CA got into the mesh through its inbound connections.

use crate::certs::{ParsedTls, TlsMaterial};
use crate::error::CertError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore};
use rustls::{Error, SignatureScheme};
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

/// Server and client configs for mutual TLS against the cluster CA and the cluster's DNS name
/// `server_name` ([`crate::certs::cluster_server_name`]).
pub fn mutual(
    material: &TlsMaterial,
    server_name: &str,
) -> Result<(rustls::ServerConfig, rustls::ClientConfig), CertError> {
    let ParsedTls { ca, chain, key } = material.parse()?;
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots.add(cert).map_err(tls_err("ca.pem"))?;
    }
    let roots = Arc::new(roots);
    let provider = provider();
    let chain_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| CertError::Tls {
                what: "client verifier",
                detail: e.to_string(),
            })?;
    let verifier = Arc::new(ClusterClientVerifier {
        chain: chain_verifier,
        cluster: ServerName::try_from(server_name.to_string()).map_err(|e| CertError::Tls {
            what: "cluster DNS name",
            detail: format!("{server_name}: {e}"),
        })?,
    });
    // A node certificate from another CA loads and serves, but every peer refuses it: the node
    // would wait for seeds that never answer, and only the peers' logs would say why.
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or(CertError::EmptyPem { what: "node.pem" })?;
    // The chain only: its cluster name is checked before, with an error that names the
    // clusters it was issued for (`TlsMaterial::check_cluster`).
    verifier
        .chain
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

/// The listener's check of a dialer: its chain to the cluster CA (rustls' webpki verifier), then
/// the cluster's DNS name, with the check a dialer makes of a listener. Two clusters may share a
/// CA as long as their names differ (docs/security.md); the chain alone cannot tell them apart.
#[derive(Debug)]
struct ClusterClientVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    cluster: ServerName<'static>,
}

impl ClientCertVerifier for ClusterClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.chain.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.chain.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&parsed, &self.cluster)
            .map_err(|_| Error::InvalidCertificate(CertificateError::NotValidForName))?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
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
