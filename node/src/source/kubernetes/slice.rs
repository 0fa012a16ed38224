//! The part of an EndpointSlice that translation reads, as the publisher caches it.
//!
//! At 10,000 Services the caches were most of the publisher's memory, and most of that was the
//! typed `Endpoint`: about 350 bytes each before its address, mostly room for fields
//! translation never reads (`targetRef`, `nodeName`, `zone`, `hints`, `hostname`). A `Slice`
//! keeps the slice's identity, owning Service, address type, ports and, per endpoint, its
//! addresses and three conditions. It decodes from the same JSON as `EndpointSlice` (through
//! it), so the cache's decoding and its malformed-object problems are unchanged.

use super::translate::SERVICE_NAME_LABEL;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "EndpointSlice")]
pub struct Slice {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub uid: Option<String>,
    /// The `kubernetes.io/service-name` label: the Service the slice belongs to.
    pub service_name: Option<String>,
    pub address_type: String,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<SliceEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePort {
    pub name: Option<String>,
    pub port: Option<i32>,
    pub protocol: Option<String>,
}

/// One endpoint: its addresses and conditions as the API gives them (absent = unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub addresses: Vec<String>,
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

impl From<EndpointSlice> for Slice {
    fn from(s: EndpointSlice) -> Self {
        let m = s.metadata;
        let mut slice = Slice {
            service_name: m.labels.and_then(|mut l| l.remove(SERVICE_NAME_LABEL)),
            namespace: m.namespace,
            name: m.name,
            uid: m.uid,
            address_type: s.address_type,
            ports: s
                .ports
                .unwrap_or_default()
                .into_iter()
                .map(|p| SlicePort {
                    name: p.name,
                    port: p.port,
                    protocol: p.protocol,
                })
                .collect(),
            endpoints: s
                .endpoints
                .into_iter()
                .map(|e| {
                    let c = e.conditions.unwrap_or_default();
                    SliceEndpoint {
                        addresses: e.addresses,
                        ready: c.ready,
                        serving: c.serving,
                        terminating: c.terminating,
                    }
                })
                .collect(),
        };
        // `into_iter().map().collect()` reuses the typed Vec's buffer, sized for the much
        // larger typed entries: give the room back, or nothing is saved.
        slice.ports.shrink_to_fit();
        slice.endpoints.shrink_to_fit();
        slice
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_what_translation_reads_and_nothing_else() {
        let s: Slice = serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-x", "namespace": "n", "uid": "u1",
                         "labels": {"kubernetes.io/service-name": "web", "other": "x"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["198.18.0.1"], "conditions": {"ready": true},
                 "nodeName": "n1", "zone": "z", "targetRef": {"kind": "Pod", "name": "p"}},
                {"addresses": ["198.18.0.2"]},
            ],
        }))
        .unwrap();
        assert_eq!(
            s,
            Slice {
                namespace: Some("n".into()),
                name: Some("web-x".into()),
                uid: Some("u1".into()),
                service_name: Some("web".into()),
                address_type: "IPv4".into(),
                ports: vec![SlicePort {
                    name: Some("http".into()),
                    port: Some(8080),
                    protocol: Some("TCP".into()),
                }],
                endpoints: vec![
                    SliceEndpoint {
                        addresses: vec!["198.18.0.1".into()],
                        ready: Some(true),
                        serving: None,
                        terminating: None,
                    },
                    SliceEndpoint {
                        addresses: vec!["198.18.0.2".into()],
                        ready: None,
                        serving: None,
                        terminating: None,
                    },
                ],
            }
        );
        assert_eq!(s.endpoints.capacity(), s.endpoints.len());
        // What the typed model refuses is refused here too (the cache reports it).
        assert!(serde_json::from_value::<Slice>(json!({"endpoints": "no"})).is_err());
    }
}
