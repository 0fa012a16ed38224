//! The rules file (`node/src/rules.rs`): TOML from disk, written by people and by tools.

use shoal_node::rules;

/// Inputs past this are cut: the static source caps files at 32 MiB, and the parser's cost per
/// byte is what matters, not the size.
const MAX_INPUT: usize = 64 << 10;

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(&data[..data.len().min(MAX_INPUT)]) else {
        return;
    };
    match rules::parse(text) {
        Ok(table) => {
            // Canonical: names sorted and unique, backends sorted; nothing invalid let through.
            for pair in table.services.windows(2) {
                assert!(pair[0].name < pair[1].name, "services not canonical");
            }
            for s in &table.services {
                assert_ne!(s.port, 0, "port 0 accepted");
                assert!(
                    !s.vip.is_unspecified() && !s.vip.is_multicast(),
                    "bad VIP accepted"
                );
                for pair in s.backends.windows(2) {
                    assert!(
                        (pair[0].address, pair[0].port) < (pair[1].address, pair[1].port),
                        "backends not canonical or listed twice"
                    );
                }
                if let Some(h) = &s.health {
                    assert!(
                        h.timeout_ms <= h.interval_ms,
                        "timeout over interval accepted"
                    );
                }
            }
            // The table must survive the mesh's encoding.
            let cfg = bincode::config::standard();
            let bytes = bincode::serde::encode_to_vec(&table, cfg).expect("encodes");
            let (back, _): (shoal_node::table::RuleTable, usize) =
                bincode::serde::decode_from_slice(&bytes, cfg).expect("decodes");
            assert_eq!(back, table, "bincode round trip");
        }
        Err(e) => {
            // Errors point into the file.
            let lines = text.matches('\n').count() + 1;
            assert!(
                e.line <= lines,
                "error line {} past the end ({lines})",
                e.line
            );
        }
    }
}

pub fn seeds() -> Vec<Vec<u8>> {
    let mut out = vec![rules::EXAMPLE.as_bytes().to_vec()];
    out.push(b"no_services = true\n".to_vec());
    out.push(
        b"loopback_backends = true\n[[service]]\nname='a'\nvip='2001:db8::1'\nport=53\nprotocol='udp'\n\
          scheduler='wrr'\nforwarding='masq'\n[[service.backend]]\naddress='::1'\nport=5353\nweight=0\n"
            .to_vec(),
    );
    out.push(
        b"[[service]]\nname='g'\nvip='203.0.113.9'\nport=443\ntunnel='gue'\ntunnel_port=6080\n\
          [[service.backend]]\naddress='198.18.0.1'\n[service.health]\nkind='https'\npath='/h'\n\
          host='example.org'\nexpect_status=204\ninterval_ms=200\ntimeout_ms=100\nrise=1\nfall=1\n"
            .to_vec(),
    );
    out
}
