//! The workload: numbered edits of the publisher's rules file, each one derived from (seed, edit).
//!
//! Edit `n` carries `n` in the weight of the `marker` service's backend, so any table read back
//! from a node names the edit it came from, and the checkers can compare the whole table with
//! what edit `n` wrote. A `health` service probes two backends in the control namespace: one
//! listens (up), one does not (down), so the right verdicts are known in advance.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

/// Weights are at most 65535, so the marker counts modulo this.
pub const MARKER_MODULO: u64 = 65_536;
pub const MARKER_SERVICE: &str = "marker";
pub const HEALTH_SERVICE: &str = "health";
/// How many optional services an edit draws from.
const POOL: u64 = 6;

/// Where the health service's backends live (the control namespace holds both addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthBackends {
    pub up: Ipv4Addr,
    pub down: Ipv4Addr,
    pub port: u16,
}

/// The services edit `n` contains, by name, sorted: what a table read back must list.
pub fn expected_services(seed: u64, n: u64) -> Vec<String> {
    let mut names = vec![HEALTH_SERVICE.to_string(), MARKER_SERVICE.to_string()];
    let mut rng = StdRng::seed_from_u64(seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    for k in 0..POOL {
        if rng.gen_bool(0.5) {
            names.push(format!("svc-{k}"));
        }
    }
    names.sort();
    names
}

/// The rules file (docs/rules.md format) of edit `n`.
pub fn rules_toml(seed: u64, n: u64, health: &HealthBackends) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# shoal-chaos workload: seed {seed} edit {n}");
    let marker = n % MARKER_MODULO;
    let _ = write!(
        out,
        "[[service]]\nname = \"{MARKER_SERVICE}\"\nvip = \"203.0.113.1\"\nport = 80\n\
         [[service.backend]]\naddress = \"198.18.1.1\"\nweight = {marker}\n\n"
    );
    let _ = write!(
        out,
        "[[service]]\nname = \"{HEALTH_SERVICE}\"\nvip = \"203.0.113.2\"\nport = {port}\n\
         [[service.backend]]\naddress = \"{up}\"\n[[service.backend]]\naddress = \"{down}\"\n\
         [service.health]\nkind = \"tcp\"\ninterval_ms = 200\ntimeout_ms = 150\nrise = 2\nfall = 2\n\n",
        port = health.port,
        up = health.up,
        down = health.down,
    );
    let mut rng = StdRng::seed_from_u64(seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    for k in 0..POOL {
        if !rng.gen_bool(0.5) {
            continue;
        }
        let backends = 1 + (n + k) % 4;
        let _ = write!(
            out,
            "[[service]]\nname = \"svc-{k}\"\nvip = \"203.0.113.{vip}\"\nport = {port}\n",
            vip = 10 + k,
            port = 8000 + k,
        );
        for b in 0..backends {
            let _ = write!(
                out,
                "[[service.backend]]\naddress = \"198.18.2.{addr}\"\nweight = {w}\n",
                addr = 10 + b,
                w = 1 + (n + b) % 5,
            );
        }
        out.push('\n');
    }
    out
}

/// Writes `content` to `path` atomically (temporary file in the same folder, then rename), so
/// the publisher never reads half a file.
pub fn write_atomically(path: &Path, content: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Reads the edit number back from a `/v1/table` answer's `table` object.
pub fn marker_of(table: &serde_json::Value) -> Option<u64> {
    table["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == MARKER_SERVICE)?["backends"][0]["weight"]
        .as_u64()
}

/// The sorted service names of a `/v1/table` answer's `table` object.
pub fn service_names(table: &serde_json::Value) -> Vec<String> {
    let mut names: Vec<String> = table["services"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    const HB: HealthBackends = HealthBackends {
        up: Ipv4Addr::new(198, 18, 0, 2),
        down: Ipv4Addr::new(198, 18, 0, 3),
        port: 8080,
    };

    #[test]
    fn rules_parse_and_list_the_expected_services() {
        for n in 0..40 {
            let text = rules_toml(3, n, &HB);
            let doc: toml::Value = toml::from_str(&text).unwrap();
            let mut names: Vec<String> = doc["service"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["name"].as_str().unwrap().to_string())
                .collect();
            names.sort();
            assert_eq!(names, expected_services(3, n), "edit {n}");
        }
    }

    #[test]
    fn edits_differ_and_repeat_per_seed() {
        assert_eq!(rules_toml(1, 5, &HB), rules_toml(1, 5, &HB));
        assert_ne!(rules_toml(1, 5, &HB), rules_toml(1, 6, &HB));
    }

    #[test]
    fn marker_reads_back() {
        let table = serde_json::json!({"services": [
            {"name": "health", "backends": []},
            {"name": "marker", "backends": [{"weight": 17}]},
        ]});
        assert_eq!(marker_of(&table), Some(17));
        assert_eq!(service_names(&table), vec!["health", "marker"]);
        assert_eq!(marker_of(&serde_json::json!({})), None);
    }
}
