//! Cluster CA and node certificates (rcgen), and loading them for TLS.
//!
//! Every node certificate carries the shared DNS name `gossip.<cluster>` (chitchat hands the
//! transport only an address, so the dialer cannot know which node it reaches: a certificate
//! proves membership of the cluster) plus `<node>.node.<cluster>` and the node id as common name.

use crate::error::CertError;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;

/// PEM material a node needs for mutual TLS.
#[derive(Clone)]
pub struct TlsMaterial {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("TlsMaterial").finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Loads `ca.pem`, `node.pem` and `node.key` from `dir`.
    pub fn load_dir(dir: &Path) -> Result<Self, CertError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| CertError::Read { path, source })
        };
        let material = TlsMaterial {
            ca_pem: read("ca.pem")?,
            cert_pem: read("node.pem")?,
            key_pem: read("node.key")?,
        };
        // Fail at load time, naming the file, rather than at the first handshake.
        material.parse()?;
        Ok(material)
    }

    /// Parses the PEM strings into rustls types.
    pub(crate) fn parse(&self) -> Result<ParsedTls, CertError> {
        Ok(ParsedTls {
            ca: parse_certs(&self.ca_pem, "ca.pem")?,
            chain: parse_certs(&self.cert_pem, "node.pem")?,
            key: parse_key(&self.key_pem, "node.key")?,
        })
    }
}

pub(crate) struct ParsedTls {
    pub ca: Vec<CertificateDer<'static>>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

fn parse_certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadPem {
            what,
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::EmptyPem { what });
    }
    Ok(certs)
}

fn parse_key(pem: &str, what: &'static str) -> Result<PrivateKeyDer<'static>, CertError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| CertError::BadPem {
            what,
            detail: e.to_string(),
        })?
        .ok_or(CertError::EmptyPem { what })
}

/// The DNS name every node certificate of `cluster_id` carries and every dialer expects.
pub fn cluster_server_name(cluster_id: &str) -> String {
    format!("gossip.{}", dns_label(cluster_id))
}

/// Maps an arbitrary id onto a DNS label (lowercase alphanumerics and '-', 1..=63 chars).
fn dns_label(id: &str) -> String {
    let mut label: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    label = label.trim_matches('-').to_string();
    if label.is_empty() {
        label.push('x');
    }
    label
}

/// A cluster certificate authority able to issue node certificates.
pub struct ClusterCa {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl ClusterCa {
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Loads an existing CA (as written by [`write_cluster_dir`]).
    pub fn load(ca_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CertError::BadPem {
            what: "ca.key",
            detail: e.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_pem(ca_pem, key).map_err(|e| CertError::BadPem {
            what: "ca.pem",
            detail: e.to_string(),
        })?;
        Ok(ClusterCa {
            cert_pem: ca_pem.to_string(),
            key_pem: key_pem.to_string(),
            issuer,
        })
    }
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

/// Creates a new self-signed CA (ECDSA P-256) for `cluster_id`.
pub fn create_ca(cluster_id: &str) -> Result<ClusterCa, CertError> {
    let subject = format!("shoal cluster CA {cluster_id}");
    let gen_err = |source| CertError::Generate {
        subject: subject.clone(),
        source,
    };
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, subject.clone());
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().map_err(gen_err)?;
    let key_pem = key.serialize_pem();
    let certified = CertifiedIssuer::self_signed(params, key).map_err(gen_err)?;
    let cert_pem = certified.pem();
    // Re-parse so that a created CA and a loaded one take the same path.
    ClusterCa::load(&cert_pem, &key_pem)
}

/// Issues a certificate for `node_id`, valid as TLS server and client in the CA's cluster.
pub fn issue_node_cert(ca: &ClusterCa, node_id: &str) -> Result<TlsMaterial, CertError> {
    let cluster = cluster_of(ca);
    let gen_err = |source| CertError::Generate {
        subject: node_id.to_string(),
        source,
    };
    if node_id.is_empty() {
        return Err(CertError::BadNodeId { id: node_id.into() });
    }
    let sans = vec![
        cluster_server_name(&cluster),
        format!("{}.node.{}", dns_label(node_id), dns_label(&cluster)),
    ];
    let mut params = CertificateParams::new(sans).map_err(gen_err)?;
    params.distinguished_name.push(DnType::CommonName, node_id);
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().map_err(gen_err)?;
    let cert = params.signed_by(&key, &ca.issuer).map_err(gen_err)?;
    Ok(TlsMaterial {
        ca_pem: ca.cert_pem.clone(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The cluster id is recorded in the CA's common name ("shoal cluster CA <id>").
fn cluster_of(ca: &ClusterCa) -> String {
    ca.cluster_id_hint().unwrap_or_else(|| "shoal".to_string())
}

impl ClusterCa {
    fn cluster_id_hint(&self) -> Option<String> {
        let der = rustls_pemfile::certs(&mut self.cert_pem.as_bytes())
            .next()?
            .ok()?;
        let cn = common_name(&der)?;
        cn.strip_prefix("shoal cluster CA ").map(str::to_string)
    }
}

/// The subject common name of a DER certificate (node certificates carry the node id there).
pub(crate) fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// Writes `out/ca.pem`, `out/ca.key`, and `out/<node>/{ca.pem,node.pem,node.key}` per node.
pub fn write_cluster_dir(
    out: &Path,
    cluster_id: &str,
    node_ids: &[String],
) -> Result<(), CertError> {
    let ca = create_ca(cluster_id)?;
    let write = |path: std::path::PathBuf, text: &str| {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| CertError::Write {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        std::fs::write(&path, text).map_err(|source| CertError::Write { path, source })
    };
    write(out.join("ca.pem"), ca.cert_pem())?;
    write(out.join("ca.key"), ca.key_pem())?;
    for node in node_ids {
        let safe = !node.is_empty()
            && node != "."
            && node != ".."
            && node
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !safe {
            return Err(CertError::BadNodeId { id: node.clone() });
        }
        let material = issue_node_cert(&ca, node)?;
        let dir = out.join(node);
        write(dir.join("ca.pem"), &material.ca_pem)?;
        write(dir.join("node.pem"), &material.cert_pem)?;
        write(dir.join("node.key"), &material.key_pem)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_dir_loads_and_node_certs_chain_to_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        write_cluster_dir(dir.path(), "Test_Cluster", &["n1".into(), "n2".into()]).unwrap();
        let m = TlsMaterial::load_dir(&dir.path().join("n1")).unwrap();
        let parsed = m.parse().unwrap();
        assert_eq!(parsed.chain.len(), 1);
        let ca_pem = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
        let ca_key = std::fs::read_to_string(dir.path().join("ca.key")).unwrap();
        let ca = ClusterCa::load(&ca_pem, &ca_key).unwrap();
        assert_eq!(ca.cluster_id_hint().as_deref(), Some("Test_Cluster"));
        assert!(issue_node_cert(&ca, "n3").is_ok());
    }

    #[test]
    fn bad_inputs_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_cluster_dir(dir.path(), "c", &["../x".into()]).unwrap_err();
        assert!(matches!(err, CertError::BadNodeId { .. }), "{err}");
        let err = TlsMaterial::load_dir(&dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("ca.pem"), "{err}");
        let err = ClusterCa::load("garbage", "garbage").unwrap_err();
        assert!(err.to_string().contains("ca.key"), "{err}");
    }

    #[test]
    fn server_name_is_a_dns_label() {
        assert_eq!(cluster_server_name("My Cluster!"), "gossip.my-cluster");
        assert_eq!(cluster_server_name("__"), "gossip.x");
    }
}
