//! From [`Security`] to the endpoint's TLS configurations, at start-up and on reload.
//!
//! The same checks serve both: this node's own certificate must be valid for its cluster's DNS
//! name, and with node identity it must name its node id. A reload (new certificate before expiry, a CA bundle during a rotation) goes through the
//! same path as the start, so a file that would have been refused at start is refused on reload
//! and the configuration in use is kept.

use crate::certs::TlsMaterial;
use crate::config::Security;
use crate::error::MeshError;
use crate::transport::tls;
use crate::version::NodeId;
use std::net::SocketAddr;

/// How peers authenticate each other, without the material (kept for reloads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Every certificate names its node id (`Security::MutualTls`).
    NodeIdentity,
    /// One certificate for every node (`Security::ClusterIdentityOnly`).
    ClusterIdentityOnly,
    Insecure,
}

pub(crate) type TlsConfigs = (rustls::ServerConfig, rustls::ClientConfig);

/// The TLS configurations `security` asks for, and its mode. Logs a warning for the weaker modes.
pub(crate) fn start(
    security: &Security,
    node_id: &NodeId,
    cluster_id: &str,
    listen: SocketAddr,
    server_name: &str,
) -> Result<(TlsConfigs, Mode), MeshError> {
    match security {
        Security::MutualTls(material) => Ok((
            configs(Mode::NodeIdentity, node_id, cluster_id, material)?,
            Mode::NodeIdentity,
        )),
        Security::ClusterIdentityOnly(material) => {
            tracing::warn!("mesh security is cluster identity only: any holder of a cluster certificate can speak for any node id (docs/security.md)");
            Ok((
                configs(Mode::ClusterIdentityOnly, node_id, cluster_id, material)?,
                Mode::ClusterIdentityOnly,
            ))
        }
        Security::Insecure => {
            tracing::warn!("mesh security is Insecure: any host that reaches {listen} can join and inject rules");
            Ok((tls::insecure(server_name)?, Mode::Insecure))
        }
    }
}

/// The TLS configurations for `material` in `mode`; refused, naming the reason, when the
/// certificate is not valid for `cluster_id`'s DNS name, when it does not name `node_id` under
/// node identity, or in insecure mode (no material).
pub(crate) fn configs(
    mode: Mode,
    node_id: &NodeId,
    cluster_id: &str,
    material: &TlsMaterial,
) -> Result<TlsConfigs, MeshError> {
    if mode != Mode::Insecure {
        material.check_cluster(cluster_id, std::path::Path::new("node.pem"))?;
    }
    let server_name = crate::certs::cluster_server_name(cluster_id);
    match mode {
        Mode::NodeIdentity => {
            let named = material.node_id();
            if named.as_deref() != Some(node_id.as_str()) {
                let names = match &named {
                    Some(other) => format!("names node {other:?}"),
                    None => "names no node".to_string(),
                };
                return Err(MeshError::Config {
                    field: "node_id",
                    detail: format!(
                        "node.pem {names}, not {:?}: a node may only speak for the id its certificate names (issue one with `shoal certs issue --nodes {node_id}`, or run with cluster identity only)",
                        node_id.as_str()
                    ),
                });
            }
            Ok(tls::mutual(material, &server_name)?)
        }
        Mode::ClusterIdentityOnly => Ok(tls::mutual(material, &server_name)?),
        Mode::Insecure => Err(MeshError::Config {
            field: "security",
            detail: "an insecure mesh has no TLS material to reload".into(),
        }),
    }
}
