//! Cluster CA and node certificates (rcgen), and loading them for TLS.
//!
//! Every node certificate carries the shared DNS name `gossip.<cluster>` (chitchat hands the
//! transport only an address, so the dialer checks cluster membership by that name) and names its
//! node id in a URI SAN `urn:shoal:node:<id>` (see [`node_uri`]): the transport reads that id
//! from every peer's certificate, and a peer may only speak for the id its certificate names
//! (docs/security.md). The node id is also the common name, for people reading the certificate.
//!
//! Validity: the CA 10 years, node certificates 1 year (both configurable), back-dated one hour
//! for clock skew. Private keys are written 0600. `ca.pem` may hold several CA certificates: all
//! are trusted, which is how a CA is rotated without splitting the mesh.

use crate::error::CertError;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod files;
pub use files::{
    check_cluster_id, check_node_id, issue_into, write_cluster_dir, write_cluster_dir_with,
};

/// The longest node id (a DNS name's length); see [`check_node_id`].
pub const NODE_ID_MAX_LEN: usize = 253;
/// What [`check_node_id`] accepts, in the words of its error.
pub const NODE_ID_RULE: &str = "1-253 ASCII letters, digits, '-', '_' or '.', and not `.` or `..`";

/// URI SAN prefix that names a node id in a node certificate.
pub const NODE_URI_PREFIX: &str = "urn:shoal:node:";
/// Default validity of a cluster CA.
pub const CA_DAYS_DEFAULT: u32 = 3_650;
/// Default validity of a node certificate.
pub const NODE_DAYS_DEFAULT: u32 = 365;
/// Longest validity accepted for either (100 years).
pub const DAYS_MAX: u32 = 36_500;
/// Certificates start to be valid this long before they are issued (clock skew between hosts).
const BACKDATE: Duration = Duration::from_secs(3_600);
/// `load_dir` warns when the node certificate expires within this long.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// PEM material a node needs for mutual TLS.
#[derive(Clone)]
pub struct TlsMaterial {
    /// One or more CA certificates; a peer chaining to any of them is trusted.
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
    /// Loads `ca.pem`, `node.pem` and `node.key` from `dir`. Fails, naming the file, on bad PEM
    /// and on a node certificate that is expired or not valid yet; warns when it expires within
    /// 30 days and when `node.key` is readable by group or others.
    pub fn load_dir(dir: &Path) -> Result<Self, CertError> {
        let read = |name: &str| {
            let path = dir.join(name);
            crate::small_file::read_to_string(&path, crate::small_file::SETTINGS_FILE_CAP_BYTES)
                .map_err(|source| CertError::Read { path, source })
        };
        let material = TlsMaterial {
            ca_pem: read("ca.pem")?,
            cert_pem: read("node.pem")?,
            key_pem: read("node.key")?,
        };
        // Fail at load time, naming the file, rather than at the first handshake.
        let parsed = material.parse()?;
        let now = SystemTime::now();
        if let Some(leaf) = parsed.chain.first() {
            let (not_before, not_after) =
                validity_of(leaf).ok_or(CertError::EmptyPem { what: "node.pem" })?;
            if now > not_after || now < not_before {
                return Err(CertError::Expired {
                    path: dir.join("node.pem"),
                    not_before: unix_secs(not_before),
                    not_after: unix_secs(not_after),
                    now: unix_secs(now),
                });
            }
            if not_after.duration_since(now).unwrap_or_default() < EXPIRY_WARNING {
                tracing::warn!(path = %dir.join("node.pem").display(), not_after_unix_s = unix_secs(not_after), "node certificate expires within 30 days: issue a new one (`shoal certs issue`)");
            }
        }
        warn_if_key_readable(&dir.join("node.key"));
        Ok(material)
    }

    /// When the node certificate (the first of `node.pem`) is valid (not before, not after);
    /// `None` when it does not parse.
    pub fn node_validity(&self) -> Option<(SystemTime, SystemTime)> {
        let parsed = self.parse().ok()?;
        validity_of(parsed.chain.first()?)
    }

    /// Parses the PEM strings into rustls types.
    pub(crate) fn parse(&self) -> Result<ParsedTls, CertError> {
        Ok(ParsedTls {
            ca: parse_certs(&self.ca_pem, "ca.pem")?,
            chain: parse_certs(&self.cert_pem, "node.pem")?,
            key: parse_key(&self.key_pem, "node.key")?,
        })
    }

    /// The validity window of the node certificate (the first in `cert_pem`).
    pub fn leaf_validity(&self) -> Option<(SystemTime, SystemTime)> {
        let chain = parse_certs(&self.cert_pem, "node.pem").ok()?;
        validity_of(chain.first()?)
    }

    /// Checks that the node certificate is valid for `cluster_id`'s DNS name
    /// (`gossip.<cluster>`, [`cluster_server_name`]), the name every dialer of that cluster
    /// checks, with the same check the dialers make. A certificate issued for another cluster
    /// loads and serves, but every peer's handshake with it fails: the node would only say that
    /// none of its seeds answers, and the reason would be in the peers' logs alone. `path`
    /// names the certificate in the error.
    pub fn check_cluster(&self, cluster_id: &str, path: &Path) -> Result<(), CertError> {
        let chain = parse_certs(&self.cert_pem, "node.pem")?;
        let leaf = chain
            .first()
            .ok_or(CertError::EmptyPem { what: "node.pem" })?;
        let server_name = cluster_server_name(cluster_id);
        let valid = rustls_pki_types::ServerName::try_from(server_name.as_str())
            .ok()
            .zip(rustls::server::ParsedCertificate::try_from(leaf).ok())
            .is_some_and(|(name, parsed)| {
                rustls::client::verify_server_name(&parsed, &name).is_ok()
            });
        if valid {
            return Ok(());
        }
        Err(CertError::WrongCluster {
            path: path.to_path_buf(),
            issued_for: issued_for(leaf),
            cluster: cluster_id.to_string(),
            server_name,
        })
    }

    /// The node id this node certificate names (its `urn:shoal:node:` URI SAN), if any.
    pub fn node_id(&self) -> Option<String> {
        let chain = parse_certs(&self.cert_pem, "node.pem").ok()?;
        cert_node_id(chain.first()?)
    }
}

#[cfg(unix)]
fn warn_if_key_readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "private key is readable by group or others; chmod 600 it");
        }
    }
}

#[cfg(not(unix))]
fn warn_if_key_readable(_path: &Path) {}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// The validity window of a DER certificate.
pub(crate) fn validity_of(der: &[u8]) -> Option<(SystemTime, SystemTime)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            UNIX_EPOCH.checked_add(Duration::from_secs(secs as u64))
        } else {
            UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
        }
    };
    let validity = cert.validity();
    Some((at(validity.not_before)?, at(validity.not_after)?))
}

pub(crate) struct ParsedTls {
    pub ca: Vec<CertificateDer<'static>>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

pub(crate) fn parse_certs(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, CertError> {
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

/// The URI SAN naming `node_id`: `urn:shoal:node:` then the id, every byte outside
/// `[A-Za-z0-9-._~]` percent-encoded, so any id maps to exactly one URI and back.
pub fn node_uri(node_id: &str) -> String {
    let mut out = String::from(NODE_URI_PREFIX);
    for b in node_id.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The node id named by a `urn:shoal:node:` URI; `None` for anything else or a malformed one.
pub fn node_id_from_uri(uri: &str) -> Option<String> {
    let encoded = uri.strip_prefix(NODE_URI_PREFIX)?;
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    let id = String::from_utf8(out).ok()?;
    (!id.is_empty()).then_some(id)
}

/// The node id a DER certificate names in its `urn:shoal:node:` URI SAN. `None` when it names
/// none (a cluster-only certificate) or several different ones (ambiguous: trusted for none).
pub fn cert_node_id(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut ids = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => node_id_from_uri(uri),
            _ => None,
        });
    let first = ids.next()?;
    ids.all(|other| other == first).then_some(first)
}

/// The DNS names (subject alternative names) of a DER certificate.
pub fn cert_dns_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
            _ => None,
        })
        .collect()
}

/// Which clusters a certificate was issued for, in words: its `gossip.<cluster>` DNS names.
fn issued_for(der: &[u8]) -> String {
    let names = cert_dns_names(der);
    let clusters: Vec<String> = names
        .iter()
        .filter_map(|n| n.strip_prefix("gossip."))
        .map(|c| format!("cluster {c:?} (DNS name gossip.{c})"))
        .collect();
    match (clusters.is_empty(), names.is_empty()) {
        (false, _) => clusters.join(" and "),
        (true, true) => "no cluster (it has no DNS name)".to_string(),
        (true, false) => format!("no cluster (its DNS names: {})", names.join(", ")),
    }
}

/// How long the CA and node certificates are valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub ca_days: u32,
    pub node_days: u32,
}

impl Default for Validity {
    fn default() -> Self {
        Validity {
            ca_days: CA_DAYS_DEFAULT,
            node_days: NODE_DAYS_DEFAULT,
        }
    }
}

impl Validity {
    fn check(&self) -> Result<(), CertError> {
        for (field, days) in [("ca_days", self.ca_days), ("node_days", self.node_days)] {
            if days == 0 || days > DAYS_MAX {
                return Err(CertError::BadValidity { field, days });
            }
        }
        Ok(())
    }
}

/// `now - 1 h` to `now + days`.
fn window(days: u32) -> Result<(time::OffsetDateTime, time::OffsetDateTime), CertError> {
    if days == 0 || days > DAYS_MAX {
        return Err(CertError::BadValidity {
            field: "days",
            days,
        });
    }
    let now = time::OffsetDateTime::from_unix_timestamp(unix_secs(SystemTime::now()))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let before = now - time::Duration::seconds(BACKDATE.as_secs() as i64);
    let after = now + time::Duration::days(i64::from(days));
    Ok((before, after))
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
        // A key from another CA signed certificates that failed every check, and only `shoal
        // run` said so, later (an operator's probe).
        let ca_der = parse_certs(ca_pem, "ca.pem")?;
        let ca_key_matches = ca_der
            .first()
            .and_then(|der| x509_parser::parse_x509_certificate(der).ok())
            .is_some_and(|(_, cert)| {
                cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
            });
        if !ca_key_matches {
            return Err(CertError::BadPem {
                what: "ca.key",
                detail: "it is not the key of the certificate in ca.pem (the public keys \
                         differ): certificates signed with it would fail every check; put the \
                         CA's own key beside its certificate"
                    .into(),
            });
        }
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

    /// Loads `ca.pem` and `ca.key` from `dir`.
    pub fn load_dir(dir: &Path) -> Result<Self, CertError> {
        let read = |name: &str| {
            let path = dir.join(name);
            crate::small_file::read_to_string(&path, crate::small_file::SETTINGS_FILE_CAP_BYTES)
                .map_err(|source| CertError::Read { path, source })
        };
        ClusterCa::load(&read("ca.pem")?, &read("ca.key")?)
    }
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

/// Creates a new self-signed CA (ECDSA P-256) for `cluster_id`, valid 10 years.
pub fn create_ca(cluster_id: &str) -> Result<ClusterCa, CertError> {
    create_ca_with(cluster_id, CA_DAYS_DEFAULT)
}

/// Creates a new self-signed CA (ECDSA P-256) for `cluster_id`, valid `days`.
pub fn create_ca_with(cluster_id: &str, days: u32) -> Result<ClusterCa, CertError> {
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
    (params.not_before, params.not_after) = window(days)?;
    let key = KeyPair::generate().map_err(gen_err)?;
    let key_pem = key.serialize_pem();
    let certified = CertifiedIssuer::self_signed(params, key).map_err(gen_err)?;
    let cert_pem = certified.pem();
    // Re-parse so that a created CA and a loaded one take the same path.
    ClusterCa::load(&cert_pem, &key_pem)
}

/// Issues a certificate for `node_id`, valid 1 year as TLS server and client in the CA's cluster.
pub fn issue_node_cert(ca: &ClusterCa, node_id: &str) -> Result<TlsMaterial, CertError> {
    issue_node_cert_with(ca, node_id, NODE_DAYS_DEFAULT)
}

/// Issues a certificate for `node_id` valid `days`: the cluster DNS name, the node's URI SAN
/// (its identity) and `<node>.node.<cluster>`.
pub fn issue_node_cert_with(
    ca: &ClusterCa,
    node_id: &str,
    days: u32,
) -> Result<TlsMaterial, CertError> {
    issue_node_cert_in(ca, node_id, &cluster_of(ca), days)
}

/// [`issue_node_cert_with`] for the cluster named `cluster`, whatever the CA was made for (two
/// clusters may share a CA under different names: docs/security.md).
pub fn issue_node_cert_in(
    ca: &ClusterCa,
    node_id: &str,
    cluster: &str,
    days: u32,
) -> Result<TlsMaterial, CertError> {
    let gen_err = |source| CertError::Generate {
        subject: node_id.to_string(),
        source,
    };
    if node_id.is_empty()
        || node_id.len() > NODE_ID_MAX_LEN
        || node_id.contains(char::is_whitespace)
    {
        return Err(CertError::BadNodeId { id: node_id.into() });
    }
    let ia5 = |s: String| {
        rcgen::string::Ia5String::try_from(s).map_err(|e| CertError::Generate {
            subject: node_id.to_string(),
            source: e,
        })
    };
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
    params.subject_alt_names = vec![
        SanType::DnsName(ia5(cluster_server_name(cluster))?),
        SanType::URI(ia5(node_uri(node_id))?),
        SanType::DnsName(ia5(format!(
            "{}.node.{}",
            dns_label(node_id),
            dns_label(cluster)
        ))?),
    ];
    params.distinguished_name.push(DnType::CommonName, node_id);
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    (params.not_before, params.not_after) = window(days)?;
    // Never past the CA's own end: `check_within_ca` lets a request overshoot it by up to a
    // day (a CA and its nodes made together end together), and such a certificate outlived
    // its CA by that much (an operator's probe).
    if let Some((_, ca_until)) = ca.validity() {
        let ca_until = time::OffsetDateTime::from_unix_timestamp(unix_secs(ca_until))
            .unwrap_or(params.not_after);
        params.not_after = params.not_after.min(ca_until);
    }
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
    fn cert_der(&self) -> Option<CertificateDer<'static>> {
        rustls_pemfile::certs(&mut self.cert_pem.as_bytes())
            .next()?
            .ok()
    }

    fn cluster_id_hint(&self) -> Option<String> {
        let cn = common_name(&self.cert_der()?)?;
        cn.strip_prefix("shoal cluster CA ").map(str::to_string)
    }

    /// When the CA certificate is valid (not before, not after).
    pub fn validity(&self) -> Option<(SystemTime, SystemTime)> {
        validity_of(&self.cert_der()?)
    }
}

/// The subject common name of a DER certificate (node certificates carry the node id there).
pub(crate) fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

#[cfg(test)]
mod tests;
