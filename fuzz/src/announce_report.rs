//! Announcement reports other members gossip (`node/src/announce/mod.rs`, JSON in an app key),
//! shown by `/v1/cluster` and `shoal status`.

use shoal_node::announce::Report;

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(report) = serde_json::from_str::<Report>(text) {
        let again = serde_json::to_string(&report).expect("a report encodes");
        let back: Report = serde_json::from_str(&again).expect("an encoded report decodes");
        assert_eq!(back, report, "report round trip");
    }
}

pub fn seeds() -> Vec<Vec<u8>> {
    vec![
        br#"{"mode":"bgp","readiness":"ready","announced":["203.0.113.10","2001:db8::10"],"withheld":{"203.0.113.11":"no healthy backend"},"bgp":[{"name":"peer1","state":"up","bgp_state":"Established","info":""}]}"#.to_vec(),
        br#"{"mode":"l2","readiness":"ready","announced":[],"owned_elsewhere":{"203.0.113.12":"node-b"},"interface":"eth0"}"#.to_vec(),
    ]
}
