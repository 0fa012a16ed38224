//! The replicated document as a fetcher receives it (`gossip/src/transfer.rs` `decode_document`:
//! the rule table's bincode bytes), then what the node does with it: the desired dataplane state and the plan
//! against an empty kernel.

use shoal_node::table::RuleTable;

pub fn run(data: &[u8]) {
    let cfg = bincode::config::standard();
    let Some(table) = shoal_gossip::fuzzing::document::<RuleTable>(data) else {
        return;
    };
    let verdicts = shoal_node::health::Verdicts::default();
    let desired = shoal_node::desired::desired_state(&table, &verdicts);
    let _ = shoal_dataplane::plan::plan(&desired, &shoal_dataplane::plan::Actual::default());
    // What decodes re-encodes to the same table.
    let bytes = bincode::serde::encode_to_vec(&table, cfg).expect("a decoded table encodes");
    let (back, _): (RuleTable, usize) =
        bincode::serde::decode_from_slice(&bytes, cfg).expect("an encoded table decodes");
    assert_eq!(back, table, "document round trip");
}

pub fn seeds() -> Vec<Vec<u8>> {
    let cfg = bincode::config::standard();
    let mut out = Vec::new();
    for text in [shoal_node::rules::EXAMPLE, "no_services = true\n"] {
        if let Ok(table) = shoal_node::rules::parse(text) {
            if let Ok(bytes) = bincode::serde::encode_to_vec(&table, cfg) {
                out.push(bytes);
            }
        }
    }
    out
}
