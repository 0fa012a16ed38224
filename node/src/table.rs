//! The rule table: the document the publisher stamps and every replica programs.
//!
//! It is what sources (the static file, Kubernetes) produce and what the mesh replicates.
//! Invariant: `services` is sorted by name and names are unique, so equal content encodes
//! to equal bytes and therefore to equal digests on every node.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use shoal_dataplane::model::{Forwarding, Protocol, SchedFlags};
use std::net::IpAddr;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleTable {
    pub services: Vec<VirtualService>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualService {
    /// Unique within the table; for Kubernetes `namespace/name:port-name`.
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub scheduler: String,
    pub flags: SchedFlags,
    pub forwarding: Forwarding,
    /// Sorted by `(address, port)`.
    pub backends: Vec<Backend>,
    pub health: Option<HealthCheck>,
    /// Client networks allowed to reach `vip`:`port` (Kubernetes' `loadBalancerSourceRanges`,
    /// the rules file's `source_ranges`); empty = everyone. Every replica enforces them with
    /// nftables (shoal_dataplane::filter), so followers, which never see the source, do too.
    #[serde(default)]
    pub source_ranges: Vec<IpNet>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Backend {
    pub address: IpAddr,
    pub port: u16,
    pub weight: u32,
}

/// How to probe a service's backends, with hysteresis: `rise` successes in a row bring a
/// backend up, `fall` failures in a row take it down.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub probe: Probe,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub rise: u32,
    pub fall: u32,
    /// The TCP port to probe when it is not the backend's service port: a UDP or SCTP
    /// service's backends are checked only through one (tcp and http probes speak TCP).
    #[serde(default)]
    pub port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    Tcp,
    Http {
        path: String,
        expect_status: u16,
        /// HTTPS; certificates are not verified (backends are addressed by IP).
        tls: bool,
        host: Option<String>,
    },
}

impl RuleTable {
    /// Sorts services by name and backends by address, the canonical form every source must emit.
    pub fn canonicalize(&mut self) {
        self.services.sort_by(|a, b| a.name.cmp(&b.name));
        for service in &mut self.services {
            service.backends.sort_by_key(|b| (b.address, b.port));
            service.source_ranges.sort();
            service.source_ranges.dedup();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mesh moves tables as bincode, which cannot decode self-describing serde forms
    /// (internally tagged or untagged enums): every shape must survive the round trip.
    #[test]
    fn tables_survive_bincode() {
        let mut table = crate::rules::parse(crate::rules::EXAMPLE).unwrap();
        table.services[0].health = Some(HealthCheck {
            probe: Probe::Http {
                path: "/x".into(),
                expect_status: 204,
                tls: true,
                host: Some("h".into()),
            },
            interval_ms: 100,
            timeout_ms: 50,
            rise: 1,
            fall: 2,
            port: None,
        });
        table.services[1].health = Some(HealthCheck {
            probe: Probe::Tcp,
            interval_ms: 100,
            timeout_ms: 50,
            rise: 1,
            fall: 2,
            port: None,
        });
        let cfg = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&table, cfg).unwrap();
        let (back, _): (RuleTable, usize) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert_eq!(back, table);
    }
}
