//! Error types of the crate; each names what failed.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Creating, loading or using certificates failed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: no PEM item found")]
    EmptyPem { what: &'static str },
    #[error("{what}: bad PEM: {detail}")]
    BadPem { what: &'static str, detail: String },
    #[error("certificate generation for {subject}: {source}")]
    Generate {
        subject: String,
        source: rcgen::Error,
    },
    #[error("TLS configuration ({what}): {detail}")]
    Tls { what: &'static str, detail: String },
    #[error(
        "node id {id:?} is not usable in a file name or certificate (a node id is {rule})",
        rule = crate::certs::NODE_ID_RULE
    )]
    BadNodeId { id: String },
    #[error("{path}: certificate valid only from {} to {}, and this node's clock reads {} (expired or not valid yet: issue a new one with `shoal certs issue`, or set the clock right if it is wrong)", utc(*not_before), utc(*not_after), utc(*now))]
    Expired {
        path: PathBuf,
        not_before: i64,
        not_after: i64,
        now: i64,
    },
    #[error("{path} was issued for {issued_for}, not for cluster {cluster:?} (--cluster), whose nodes check the name {server_name}: every peer would refuse this node's handshakes. Run with the --cluster the certificate was issued for, or issue certificates for {cluster:?} (`shoal certs init --cluster {cluster}`)")]
    WrongCluster {
        path: PathBuf,
        /// In words: the cluster names found in the certificate, or that there are none.
        issued_for: String,
        cluster: String,
        server_name: String,
    },
    #[error("validity {field} = {days} days: must be 1 to 36500")]
    BadValidity { field: &'static str, days: u32 },
    #[error("cluster name {cluster:?} is not usable: 1-253 characters without spaces or control characters (what `shoal run --cluster` accepts)")]
    BadClusterId { cluster: String },
    #[error("node id {id:?} given twice")]
    DuplicateNodeId { id: String },
    #[error("node certificates valid {node_days} days would outlive their CA, valid until {}: {}", utc(*ca_until), days_left_hint(*ca_days_left))]
    OutlivesCa {
        node_days: u32,
        ca_until: i64,
        ca_days_left: i64,
    },
    #[error("the CA expired at {}: certificates it issues would fail every check; create a new CA and rotate to it (docs/security.md, \"Rotating the CA\")", utc(*ca_until))]
    CaExpired { ca_until: i64 },
    #[error("{path} exists: refusing to replace a cluster CA (rotate with `shoal certs issue --also-trust`, see docs/security.md)")]
    Exists { path: PathBuf },
}

/// Starting the mesh failed.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("certificates: {0}")]
    Cert(#[from] CertError),
    #[error("cannot bind QUIC endpoint on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid config field {field}: {detail}")]
    Config { field: &'static str, detail: String },
    #[error("gossip (chitchat) failed to start: {detail}")]
    Gossip { detail: String },
}

/// `Mesh::publish` refused the document.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("this node is not the publisher (role {role:?})")]
    NotPublisher { role: crate::Role },
    #[error("document encoding failed: {detail}")]
    Encode { detail: String },
    #[error("document is {size_bytes} bytes, above the {max_bytes} byte cap")]
    TooLarge { size_bytes: u64, max_bytes: u64 },
    #[error("the mesh has shut down")]
    Stopped,
    #[error("cannot stamp the document: {detail} (nothing was published)")]
    Refused { detail: String },
    #[error("cannot record the stamped epoch in {path}: {detail} (nothing was published)")]
    EpochFile { path: String, detail: String },
}

/// A document transfer from a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("peer {peer}: connection failed: {detail}")]
    Connect { peer: SocketAddr, detail: String },
    #[error("peer {peer}: stream failed: {detail}")]
    Stream { peer: SocketAddr, detail: String },
    #[error("peer {peer}: traffic blocked by the fault hook")]
    Blocked { peer: SocketAddr },
    #[error("peer {peer}: does not hold the requested version")]
    NotHeld { peer: SocketAddr },
    #[error("peer {peer}: announced {size_bytes} bytes, above the {max_bytes} byte cap")]
    TooLarge {
        peer: SocketAddr,
        size_bytes: u64,
        max_bytes: u64,
    },
    #[error("peer {peer}: bad message: {detail}")]
    Decode { peer: SocketAddr, detail: String },
    #[error("peer {peer}: digest mismatch (expected {expected}, got {actual})")]
    Digest {
        peer: SocketAddr,
        expected: String,
        actual: String,
    },
    #[error("peer {peer}: timed out after {timeout_ms} ms")]
    Timeout { peer: SocketAddr, timeout_ms: u64 },
    #[error("peer {peer}: bad patch (asking for the full document instead): {detail}")]
    Patch { peer: SocketAddr, detail: String },
}

/// A certificate's validity bound as people read it (RFC 3339, UTC); unix seconds if the value
/// is out of the calendar's range.
fn utc(unix_secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("unix time {unix_secs} s"))
}

/// What to do about a request for node certificates longer than the CA has left.
fn days_left_hint(days: i64) -> String {
    if days >= 1 {
        format!("give --node-days at most the CA's remaining {days} days, or issue from a newer CA")
    } else {
        "the CA has less than a day left: issue from a newer CA".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bounds were printed as unix seconds (`valid only from unix time 1735686000 s`).
    #[test]
    fn an_expired_certificate_names_its_bounds_as_dates() {
        let e = CertError::Expired {
            path: "node.pem".into(),
            not_before: 1_735_686_000,
            not_after: 1_767_222_000,
            now: 1_767_225_600,
        };
        let text = e.to_string();
        assert!(
            text.contains("from 2024-12-31T23:00:00Z to 2025-12-31T23:00:00Z"),
            "{text}"
        );
        assert!(text.contains("clock reads 2026-01-01T00:00:00Z"), "{text}");
    }
}
