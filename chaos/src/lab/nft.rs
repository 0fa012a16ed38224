//! nftables scripts for the network faults, as plain text. Pure.
//!
//! Every drop happens where packets *arrive* (the input hook of the receiving node's namespace),
//! so the sender sees a silent loss, as on a real network; a drop on the sender's own output
//! would fail its `sendmsg` instead. Only the mesh's UDP port is touched: the harness keeps
//! reaching every admin API, and health probes keep flowing.

use std::net::Ipv4Addr;

pub const TABLE: &str = "shoal_chaos";

/// What one node's namespace drops on arrival.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inbound {
    /// Mesh packets from these addresses are dropped.
    pub cut_from: Vec<Ipv4Addr>,
    /// Percent of the remaining mesh packets dropped at random.
    pub loss_percent: Option<u8>,
}

impl Inbound {
    pub fn is_empty(&self) -> bool {
        self.cut_from.is_empty() && self.loss_percent.is_none_or(|p| p == 0)
    }
}

/// The `nft -f -` script that replaces this harness's table with `rules` (or removes it).
/// Declaring the table before deleting it makes the delete succeed when it does not exist yet.
pub fn script(mesh_port: u16, rules: &Inbound) -> String {
    let mut s = format!("table inet {TABLE}\ndelete table inet {TABLE}\n");
    if rules.is_empty() {
        return s;
    }
    s.push_str(&format!(
        "table inet {TABLE} {{\n  chain input {{\n    type filter hook input priority -10; policy accept;\n"
    ));
    let mut from = rules.cut_from.clone();
    from.sort();
    from.dedup();
    if !from.is_empty() {
        let set: Vec<String> = from.iter().map(|a| a.to_string()).collect();
        s.push_str(&format!(
            "    ip saddr {{ {} }} udp dport {mesh_port} drop\n",
            set.join(", ")
        ));
    }
    match rules.loss_percent {
        // numgen's range is 0..=99: everything is a plain drop.
        Some(p) if p >= 100 => s.push_str(&format!("    udp dport {mesh_port} drop\n")),
        Some(p) if p > 0 => s.push_str(&format!(
            "    udp dport {mesh_port} numgen random mod 100 < {p} drop\n"
        )),
        _ => {}
    }
    s.push_str("  }\n}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_rules_only_remove_the_table() {
        let s = script(7946, &Inbound::default());
        assert_eq!(s, "table inet shoal_chaos\ndelete table inet shoal_chaos\n");
        let zero = Inbound {
            loss_percent: Some(0),
            ..Inbound::default()
        };
        assert!(zero.is_empty());
    }

    #[test]
    fn cuts_and_loss_touch_only_the_mesh_port() {
        let rules = Inbound {
            cut_from: vec![
                Ipv4Addr::new(198, 18, 0, 13),
                Ipv4Addr::new(198, 18, 0, 12),
                Ipv4Addr::new(198, 18, 0, 12),
            ],
            loss_percent: Some(30),
        };
        let s = script(7946, &rules);
        assert!(
            s.contains("ip saddr { 198.18.0.12, 198.18.0.13 } udp dport 7946 drop"),
            "{s}"
        );
        assert!(
            s.contains("udp dport 7946 numgen random mod 100 < 30 drop"),
            "{s}"
        );
        assert!(s.contains("hook input"));
        assert!(!s.contains("hook output"));
        let all = script(
            7946,
            &Inbound {
                cut_from: vec![],
                loss_percent: Some(100),
            },
        );
        assert!(
            all.contains("    udp dport 7946 drop\n") && !all.contains("numgen"),
            "{all}"
        );
    }
}
