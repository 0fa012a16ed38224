//! What the harness saw of one node at one moment, parsed leniently from the admin API's JSON.
//!
//! Parsing never fails on a missing field: the checkers see `None` and decide. A malformed
//! answer is an error naming the endpoint and field, recorded as a failed poll.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// `(epoch, seq, origin)`, ordered like `shoal_gossip::version::Version` (origins compare
/// numeric-aware: `n9 < n10`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ver {
    pub epoch: u64,
    pub seq: u64,
    pub origin: String,
}

impl Ord for Ver {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.epoch, self.seq)
            .cmp(&(other.epoch, other.seq))
            .then_with(|| shoal_gossip::version::natural_cmp(&self.origin, &other.origin))
    }
}

impl PartialOrd for Ver {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Ver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.epoch, self.seq, self.origin)
    }
}

/// A field of an admin answer that was present but not of the documented shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{endpoint}: field {field} is malformed")]
pub struct ParseError {
    pub endpoint: &'static str,
    pub field: &'static str,
}

fn ver(v: &Value, endpoint: &'static str, field: &'static str) -> Result<Option<Ver>, ParseError> {
    if v.is_null() {
        return Ok(None);
    }
    let bad = ParseError { endpoint, field };
    Ok(Some(Ver {
        epoch: v["epoch"].as_u64().ok_or(bad.clone())?,
        seq: v["seq"].as_u64().ok_or(bad.clone())?,
        origin: v["origin"].as_str().ok_or(bad)?.to_string(),
    }))
}

/// One poll of one node: `/v1/cluster`, `/v1/dataplane` and `/v1/table` together.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeObs {
    /// Milliseconds since the run started, when the answers arrived.
    pub t_ms: u64,
    /// Lab node index (0-based) and the harness's count of starts of that node.
    pub node: usize,
    pub incarnation: u32,
    pub publisher: Option<String>,
    pub head: Option<Ver>,
    pub head_digest: Option<String>,
    /// Members this node believes alive.
    pub alive: Vec<String>,
    /// What the dataplane holds (`/v1/dataplane`).
    pub applied: Option<Ver>,
    pub matches_table: bool,
    /// `/v1/table`: the table at this node's head.
    pub table_version: Option<Ver>,
    pub table_digest: Option<String>,
    pub table_marker: Option<u64>,
    pub table_services: Vec<String>,
    /// Health verdicts: "service|addr:port" -> "up"/"down".
    pub health: BTreeMap<String, String>,
}

impl NodeObs {
    /// Fills the fields that come from `/v1/cluster`.
    pub fn read_cluster(&mut self, v: &Value) -> Result<(), ParseError> {
        const E: &str = "/v1/cluster";
        self.publisher = v["publisher"].as_str().map(String::from);
        self.head = ver(&v["head"], E, "head")?;
        self.head_digest = v["head"]["digest"].as_str().map(String::from);
        self.alive = v["members"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter(|m| m["alive"].as_bool() == Some(true))
                    .filter_map(|m| m["id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        self.alive.sort();
        self.health.clear();
        if let Some(services) = v["health"].as_object() {
            for (service, backends) in services {
                let Some(backends) = backends.as_object() else {
                    return Err(ParseError {
                        endpoint: E,
                        field: "health",
                    });
                };
                for (addr, b) in backends {
                    let verdict = b["verdict"].as_str().ok_or(ParseError {
                        endpoint: E,
                        field: "health.verdict",
                    })?;
                    self.health
                        .insert(format!("{service}|{addr}"), verdict.to_string());
                }
            }
        }
        Ok(())
    }

    /// Fills the fields that come from `/v1/dataplane`.
    pub fn read_dataplane(&mut self, v: &Value) -> Result<(), ParseError> {
        self.applied = ver(&v["version"], "/v1/dataplane", "version")?;
        self.matches_table = v["matches_table"].as_bool().unwrap_or(false);
        Ok(())
    }

    /// Fills the fields that come from `/v1/table` (`None` for a 404: no version yet).
    pub fn read_table(&mut self, v: Option<&Value>) -> Result<(), ParseError> {
        let Some(v) = v else {
            self.table_version = None;
            return Ok(());
        };
        self.table_version = ver(&v["version"], "/v1/table", "version")?;
        self.table_digest = v["digest"].as_str().map(String::from);
        self.table_marker = crate::workload::marker_of(&v["table"]);
        self.table_services = crate::workload::service_names(&v["table"]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_documented_shapes() {
        let mut o = NodeObs::default();
        o.read_cluster(&json!({
            "node": "n2", "publisher": "n1",
            "head": {"epoch": 3, "seq": 7, "origin": "n1", "digest": "ab", "size_bytes": 1, "holders": []},
            "members": [{"id": "n2", "alive": true}, {"id": "n1", "alive": true}, {"id": "n3", "alive": false}],
            "health": {"web": {"198.18.0.2:80": {"verdict": "up"}}}
        }))
        .unwrap();
        assert_eq!(o.publisher.as_deref(), Some("n1"));
        assert_eq!(
            o.head,
            Some(Ver {
                epoch: 3,
                seq: 7,
                origin: "n1".into()
            })
        );
        assert_eq!(o.alive, vec!["n1", "n2"]);
        assert_eq!(o.health["web|198.18.0.2:80"], "up");
        o.read_dataplane(&json!({"version": null, "matches_table": false}))
            .unwrap();
        assert_eq!(o.applied, None);
        o.read_table(Some(
            &json!({"version": {"epoch": 1, "seq": 2, "origin": "n1"}, "digest": "d",
            "table": {"services": [{"name": "marker", "backends": [{"weight": 9}]}]}}),
        ))
        .unwrap();
        assert_eq!(o.table_marker, Some(9));
    }

    #[test]
    fn malformed_fields_are_named() {
        let mut o = NodeObs::default();
        let err = o
            .read_cluster(&json!({"head": {"epoch": "x"}}))
            .unwrap_err();
        assert_eq!(err.field, "head");
        let err = o
            .read_dataplane(&json!({"version": {"epoch": 1}}))
            .unwrap_err();
        assert_eq!(err.endpoint, "/v1/dataplane");
    }
}
