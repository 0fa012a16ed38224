//! What `/v1/cluster` and `shoal status` show about health: per service, per backend, the
//! verdict, since when, why, and each checker's last word.

use super::hysteresis::CheckState;
use super::judged::Judged;
use super::result::ProbeResult;
use super::verdict::{Basis, Verdict};
use serde::Serialize;
use shoal_gossip::version::NodeId;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// Serializes as `{"<service>": {"<addr>:<port>": BackendReport}}` (IPv6 in brackets).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct HealthReport {
    /// Service name -> backend socket address -> its verdict. Services without a health check
    /// are absent (always up).
    pub services: BTreeMap<String, BTreeMap<String, BackendReport>>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendReport {
    pub address: IpAddr,
    pub port: u16,
    pub verdict: Verdict,
    /// When this node's verdict last changed, or when it first judged the backend.
    pub since_unix_ms: u64,
    pub basis: Basis,
    /// The assigned checkers, best-ranked first, each with its last gossiped opinion.
    pub checkers: Vec<CheckerReport>,
    /// Live members that are not assigned but still publish an opinion (handing over).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub former_checkers: Vec<CheckerReport>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckerReport {
    pub node: String,
    pub state: CheckState,
    pub last_result: ProbeResult,
    /// When its last probe finished, as last gossiped: refreshed on every change of state or
    /// result and otherwise every 10 s. 0 before the first.
    pub last_probe_unix_ms: u64,
    /// When its state last changed; 0 when it has not reported yet.
    pub since_unix_ms: u64,
}

/// Builds the report from the verdicts and the times they last changed.
pub fn build(judged: &Judged) -> HealthReport {
    let mut services: BTreeMap<String, BTreeMap<String, BackendReport>> = BTreeMap::new();
    let verdicts = judged
        .services
        .iter()
        .flat_map(|s| s.verdicts.iter().zip(&s.since_ms));
    for (v, since) in verdicts {
        let opinion = |n: &NodeId| {
            let o = v.opinions.iter().find(|(who, _)| who == n).map(|(_, o)| o);
            CheckerReport {
                node: n.to_string(),
                state: o.map_or(CheckState::Unknown, |o| o.state),
                last_result: o.map_or(ProbeResult::Pending, |o| o.last_result),
                last_probe_unix_ms: o.map_or(0, |o| o.last_probe_ms),
                since_unix_ms: o.map_or(0, |o| o.since_ms),
            }
        };
        let socket = SocketAddr::new(v.backend.address, v.backend.port);
        services
            .entry(v.backend.service.clone())
            .or_default()
            .insert(
                socket.to_string(),
                BackendReport {
                    address: v.backend.address,
                    port: v.backend.port,
                    verdict: v.verdict,
                    since_unix_ms: *since,
                    basis: v.basis,
                    checkers: v.checkers.iter().map(opinion).collect(),
                    former_checkers: v
                        .opinions
                        .iter()
                        .filter(|(n, _)| !v.checkers.contains(n))
                        .map(|(n, _)| opinion(n))
                        .collect(),
                },
            );
    }
    HealthReport { services }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::judged::JudgedService;
    use crate::health::verdict::{BackendRef, BackendVerdict};
    use crate::health::wire::Observation;
    use std::sync::Arc;

    #[test]
    fn shape_matches_the_admin_api() {
        let backend = BackendRef {
            service: "web".into(),
            address: "::1".parse().unwrap(),
            port: 8080,
        };
        let seen = Observation {
            address: backend.address,
            port: 8080,
            state: CheckState::Down,
            last_result: ProbeResult::Status(503),
            last_probe_ms: 7,
            since_ms: 5,
        };
        let v = BackendVerdict {
            backend: backend.clone(),
            at: (backend.address, 80, shoal_dataplane::model::Protocol::Tcp),
            verdict: Verdict::Down,
            basis: Basis::Checkers { up: 0, down: 1 },
            checkers: vec![NodeId::new("a"), NodeId::new("b")],
            opinions: vec![(NodeId::new("a"), seen)],
        };
        let judged = Judged {
            services: vec![Arc::new(JudgedService {
                verdicts: vec![v],
                since_ms: vec![42],
            })],
        };
        let json = serde_json::to_value(build(&judged)).unwrap();
        let b = &json["web"]["[::1]:8080"];
        assert_eq!(b["verdict"], "down");
        assert_eq!(b["since_unix_ms"], 42);
        assert_eq!(b["basis"]["from"], "checkers");
        assert_eq!(b["checkers"][0]["last_result"], "status 503");
        assert_eq!(b["checkers"][1]["state"], "unknown");
        assert_eq!(b["checkers"][1]["last_result"], "pending");
        assert!(b.get("former_checkers").is_none());
    }
}
