//! Writing certificate folders: a new cluster (CA and nodes, `shoal certs init`) and node
//! certificates issued from an existing CA (`shoal certs issue`), keys written 0600.

use super::{create_ca_with, issue_node_cert_with, parse_certs, ClusterCa, Validity};
use crate::error::CertError;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Writes a file readable by everyone (certificates).
fn write_public(path: &Path, text: &str) -> Result<(), CertError> {
    write_mode(path, text, 0o644)
}

/// Writes a file readable by its owner only (private keys), also when it already existed.
fn write_secret(path: &Path, text: &str) -> Result<(), CertError> {
    write_mode(path, text, 0o600)
}

fn write_mode(path: &Path, text: &str, mode: u32) -> Result<(), CertError> {
    let err = |source| CertError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| CertError::Write {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(mode);
        let file = options.open(path).map_err(err)?;
        // `mode` applies only to new files: tighten an existing one too.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(err)?;
        drop(file);
    }
    #[cfg(not(unix))]
    {
        let _ = mode;
        options.open(path).map_err(err)?;
    }
    std::fs::write(path, text).map_err(err)
}

/// Whether `node` can be a node id with a certificate: it names a folder (`OUT/<id>/`) and a URI
/// SAN, and `--nodes` is split on commas, so only ASCII letters, digits, `-`, `_` and `.` (not
/// `.` or `..`), at most 253 of them (a DNS name's length). `shoal run` checks its `--node-id`
/// with this too, so a node never runs under an id that can get no certificate.
pub fn check_node_id(node: &str) -> Result<(), CertError> {
    let safe = !node.is_empty()
        && node.len() <= super::NODE_ID_MAX_LEN
        && node != "."
        && node != ".."
        && node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if safe {
        Ok(())
    } else {
        Err(CertError::BadNodeId { id: node.into() })
    }
}

/// Whether `cluster` can name a cluster: what `shoal run --cluster` accepts (1-253 characters
/// without spaces or control characters), so that no CA is made for a name no node can run
/// under.
pub fn check_cluster_id(cluster: &str) -> Result<(), CertError> {
    let usable = (1..=253).contains(&cluster.len())
        && !cluster.chars().any(|c| c.is_whitespace() || c.is_control());
    if usable {
        Ok(())
    } else {
        Err(CertError::BadClusterId {
            cluster: cluster.into(),
        })
    }
}

/// Each of `node_ids` usable and given once.
fn check_node_ids(node_ids: &[String]) -> Result<(), CertError> {
    let mut seen = std::collections::BTreeSet::new();
    for node in node_ids {
        check_node_id(node)?;
        if !seen.insert(node) {
            return Err(CertError::DuplicateNodeId { id: node.clone() });
        }
    }
    Ok(())
}

/// Node certificates valid `node_days` from now must not outlive the CA that signs them (valid
/// until `ca_until`): they would be refused from that day on anyway, and their stated validity
/// would mislead whoever plans the renewals.
pub(super) fn check_within_ca(node_days: u32, ca_until: SystemTime) -> Result<(), CertError> {
    let now = SystemTime::now();
    let node_until = now + Duration::from_secs(u64::from(node_days) * 86_400);
    if node_until <= ca_until + Duration::from_secs(86_400) {
        return Ok(());
    }
    let Ok(left) = ca_until.duration_since(now) else {
        return Err(CertError::CaExpired {
            ca_until: super::unix_secs(ca_until),
        });
    };
    let left = (left.as_secs() / 86_400) as i64;
    Err(CertError::OutlivesCa {
        node_days,
        ca_until: super::unix_secs(ca_until),
        ca_days_left: left,
    })
}

/// Writes `out/ca.pem`, `out/ca.key`, and `out/<node>/{ca.pem,node.pem,node.key}` per node, with
/// the default validity.
pub fn write_cluster_dir(
    out: &Path,
    cluster_id: &str,
    node_ids: &[String],
) -> Result<(), CertError> {
    write_cluster_dir_with(out, cluster_id, node_ids, Validity::default())
}

/// [`write_cluster_dir`] with chosen validity. Refuses to replace an existing CA key in `out`
/// (that would split the mesh between old and new certificates).
pub fn write_cluster_dir_with(
    out: &Path,
    cluster_id: &str,
    node_ids: &[String],
    validity: Validity,
) -> Result<(), CertError> {
    validity.check()?;
    check_cluster_id(cluster_id)?;
    check_node_ids(node_ids)?;
    if !node_ids.is_empty() {
        check_within_ca(
            validity.node_days,
            SystemTime::now() + Duration::from_secs(u64::from(validity.ca_days) * 86_400),
        )?;
    }
    if out.join("ca.key").exists() {
        return Err(CertError::Exists {
            path: out.join("ca.key"),
        });
    }
    let ca = create_ca_with(cluster_id, validity.ca_days)?;
    write_public(&out.join("ca.pem"), ca.cert_pem())?;
    write_secret(&out.join("ca.key"), ca.key_pem())?;
    write_node_dirs(&ca, node_ids, out, validity.node_days, &[])
}

/// Issues node certificates from the CA in `ca_dir` into `out/<node>/`. Each node's `ca.pem`
/// holds the issuing CA followed by every certificate in `also_trust` (a CA rotation trusts the
/// old and the new CA together: see docs/security.md).
pub fn issue_into(
    ca_dir: &Path,
    node_ids: &[String],
    out: &Path,
    node_days: u32,
    also_trust: &[PathBuf],
) -> Result<(), CertError> {
    check_node_ids(node_ids)?;
    let ca = ClusterCa::load_dir(ca_dir)?;
    if let Some((_, ca_until)) = ca.validity() {
        check_within_ca(node_days, ca_until)?;
    }
    // Each trusted certificate once, and only CA certificates: a leaf was taken into the
    // bundle as a trusted CA, and the issuing CA or a file given twice was written again (an
    // operator's probe).
    let mut seen: Vec<Vec<u8>> = parse_certs(ca.cert_pem(), "ca.pem")?
        .into_iter()
        .map(|der| der.to_vec())
        .collect();
    let mut extra = Vec::new();
    for path in also_trust {
        let text =
            crate::small_file::read_to_string(path, crate::small_file::SETTINGS_FILE_CAP_BYTES)
                .map_err(|source| CertError::Read {
                    path: path.clone(),
                    source,
                })?;
        for der in parse_certs(&text, "trusted CA file")? {
            if !is_ca_cert(&der) {
                return Err(CertError::BadPem {
                    what: "trusted CA file",
                    detail: format!(
                        "{} holds a certificate that is not a CA's (no basicConstraints CA:TRUE): \
                         give --also-trust the other CA's ca.pem, not a node certificate",
                        path.display()
                    ),
                });
            }
            if seen.iter().any(|s| s.as_slice() == der.as_ref()) {
                continue;
            }
            seen.push(der.to_vec());
            extra.push(pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec())));
        }
    }
    write_node_dirs(&ca, node_ids, out, node_days, &extra)
}

/// Whether a DER certificate says it is a CA's (basicConstraints CA:TRUE).
fn is_ca_cert(der: &[u8]) -> bool {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .and_then(|(_, cert)| cert.basic_constraints().ok().flatten().map(|b| b.value.ca))
        .unwrap_or(false)
}

fn write_node_dirs(
    ca: &ClusterCa,
    node_ids: &[String],
    out: &Path,
    node_days: u32,
    also_trust: &[String],
) -> Result<(), CertError> {
    let mut bundle = ca.cert_pem().trim_end().to_string();
    bundle.push('\n');
    for pem in also_trust {
        bundle.push_str(pem.trim_end());
        bundle.push('\n');
    }
    for node in node_ids {
        let material = issue_node_cert_with(ca, node, node_days)?;
        let dir = out.join(node);
        write_public(&dir.join("ca.pem"), &bundle)?;
        write_public(&dir.join("node.pem"), &material.cert_pem)?;
        write_secret(&dir.join("node.key"), &material.key_pem)?;
    }
    Ok(())
}
