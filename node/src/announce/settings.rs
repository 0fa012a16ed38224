//! The announce settings: `--announce`, `--interface`, the drain on shutdown and the `[bgp]`
//! table of the config file, checked, with every error naming the setting that is wrong.

use super::decide::Mode;
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `[bgp]` as written in the config file.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpFile {
    pub local_asn: Option<u64>,
    pub router_id: Option<Ipv4Addr>,
    pub table: Option<u32>,
    pub bird: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub hold_time_s: Option<u64>,
    pub bfd: Option<bool>,
    pub bfd_interval_ms: Option<u64>,
    pub bfd_multiplier: Option<u32>,
    #[serde(default)]
    pub peers: Vec<PeerFile>,
}

/// `[[bgp.peers]]` as written in the config file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerFile {
    pub address: IpAddr,
    pub asn: u64,
    pub port: Option<u16>,
    pub password: Option<String>,
    pub hold_time_s: Option<u64>,
    pub bfd: Option<bool>,
}

/// Checked BGP settings.
#[derive(Debug, Clone, PartialEq)]
pub struct BgpSettings {
    pub local_asn: u32,
    pub router_id: Option<Ipv4Addr>,
    /// Kernel routing table shoal writes the announced VIPs' host routes into.
    pub table: u32,
    /// The `bird` binary (BIRD 2).
    pub bird: PathBuf,
    /// Where bird.conf, the control socket and the pid file live.
    pub state_dir: PathBuf,
    pub bfd_interval_ms: u64,
    pub bfd_multiplier: u32,
    pub peers: Vec<Peer>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    /// BIRD protocol name: `peer1`, `peer2`, ... in the order of the file.
    pub name: String,
    pub address: IpAddr,
    pub asn: u32,
    pub port: u16,
    pub password: Option<String>,
    pub hold_time_s: u64,
    pub bfd: bool,
}

/// Checked announce settings (mode `None`: announce nothing, as before this feature).
#[derive(Debug, Clone, PartialEq)]
pub struct AnnounceSettings {
    pub mode: Option<Mode>,
    /// L2: the interface ARP/NDP is answered on.
    pub interface: Option<String>,
    pub withdraw_when_no_backends: bool,
    /// On SIGTERM: withdraw, keep the dataplane this long, then exit.
    pub shutdown_drain: Duration,
    /// A frozen node's watchdog withdraws after this long without a beat.
    pub freeze_withdraw: Duration,
    pub bgp: Option<BgpSettings>,
}

impl Default for AnnounceSettings {
    fn default() -> Self {
        AnnounceSettings {
            mode: None,
            interface: None,
            withdraw_when_no_backends: true,
            shutdown_drain: Duration::from_secs(5),
            freeze_withdraw: Duration::from_millis(1000),
            bgp: None,
        }
    }
}

/// A setting that is wrong: `field` names it as written in the config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("setting `{field}`: {message}")]
pub struct SettingError {
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> SettingError {
    SettingError {
        field: field.into(),
        message: message.into(),
    }
}

/// `freeze_withdraw_ms`: below 200 ms a busy node withdraws for nothing; above a minute a
/// frozen node keeps attracting traffic it cannot serve.
pub const FREEZE_WITHDRAW_MS: std::ops::RangeInclusive<u64> = 200..=60_000;
/// `shutdown_drain_s`: at most an hour of draining on SIGTERM.
pub const SHUTDOWN_DRAIN_S: std::ops::RangeInclusive<u64> = 0..=3_600;

pub const ASN_MAX: u64 = 4_294_967_294;
pub const DEFAULT_TABLE: u32 = 120;
/// The highest `bgp.table` accepted: BIRD learned nothing from tables 4294967294 and up.
pub const TABLE_MAX: u32 = i32::MAX as u32;
pub const DEFAULT_HOLD_TIME_S: u64 = 9;

fn asn(field: String, v: u64) -> Result<u32, SettingError> {
    if v == 0 || v > ASN_MAX {
        return Err(err(
            field,
            format!("AS number {v} is out of range 1-{ASN_MAX}"),
        ));
    }
    Ok(v as u32)
}

fn hold(field: String, v: u64) -> Result<u64, SettingError> {
    if v != 0 && !(3..=65535).contains(&v) {
        return Err(err(field, format!("hold time {v} s must be 0 or 3-65535")));
    }
    Ok(v)
}

/// Checks `[bgp]` for node `node_id` (the default state dir is per node).
pub fn bgp_settings(file: &BgpFile, node_id: &str) -> Result<BgpSettings, SettingError> {
    let local_asn = asn(
        "bgp.local_asn".into(),
        file.local_asn
            .ok_or_else(|| err("bgp.local_asn", "missing (this node's AS number)"))?,
    )?;
    let table = file.table.unwrap_or(DEFAULT_TABLE);
    if matches!(table, 0 | 253..=255) {
        return Err(err(
            "bgp.table",
            format!("{table} is one of the kernel's own tables; pick another (e.g. 120)"),
        ));
    }
    // BIRD's kernel protocol learned nothing from tables 4294967294 and 4294967295 while the
    // report said every VIP was announced (an audit); the signed 32-bit range is known to work.
    if table > TABLE_MAX {
        return Err(err(
            "bgp.table",
            format!("{table} is over {TABLE_MAX}, beyond what BIRD imports routes from"),
        ));
    }
    let default_hold = hold(
        "bgp.hold_time_s".into(),
        file.hold_time_s.unwrap_or(DEFAULT_HOLD_TIME_S),
    )?;
    let bfd_interval_ms = file.bfd_interval_ms.unwrap_or(100);
    if !(10..=10_000).contains(&bfd_interval_ms) {
        return Err(err(
            "bgp.bfd_interval_ms",
            format!("{bfd_interval_ms} must be 10-10000"),
        ));
    }
    let bfd_multiplier = file.bfd_multiplier.unwrap_or(3);
    if !(1..=255).contains(&bfd_multiplier) {
        return Err(err(
            "bgp.bfd_multiplier",
            format!("{bfd_multiplier} must be 1-255"),
        ));
    }
    if file.peers.is_empty() {
        return Err(err(
            "bgp.peers",
            "no peer: add at least one [[bgp.peers]] with address and asn",
        ));
    }
    let mut peers = Vec::new();
    for (k, p) in file.peers.iter().enumerate() {
        let at = |f: &str| format!("bgp.peers[{k}].{f}");
        if p.address.is_unspecified() || p.address.is_multicast() || p.address.is_loopback() {
            return Err(err(
                at("address"),
                format!("{} cannot be a BGP neighbour", p.address),
            ));
        }
        if peers.iter().any(|q: &Peer| q.address == p.address) {
            return Err(err(at("address"), format!("{} is listed twice", p.address)));
        }
        if let Some(pw) = &p.password {
            if pw.is_empty()
                || pw.len() > 80
                || pw.chars().any(|c| c == '"' || c == '\\' || c.is_control())
            {
                return Err(err(
                    at("password"),
                    "must be 1-80 characters without quotes, backslashes or control characters",
                ));
            }
        }
        peers.push(Peer {
            name: format!("peer{}", k + 1),
            address: p.address,
            asn: asn(at("asn"), p.asn)?,
            port: p.port.unwrap_or(179),
            password: p.password.clone(),
            hold_time_s: match p.hold_time_s {
                Some(h) => hold(at("hold_time_s"), h)?,
                None => default_hold,
            },
            bfd: p.bfd.or(file.bfd).unwrap_or(true),
        });
    }
    let safe_id: String = node_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let state_dir = file
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/run/shoal/bird-{safe_id}")));
    check_control_path(&state_dir, Some(node_id.len()))?;
    if let Some(id) = file.router_id {
        if id.is_unspecified() {
            return Err(err("bgp.router_id", "0.0.0.0 is not a router id"));
        }
    }
    Ok(BgpSettings {
        local_asn,
        router_id: file.router_id,
        table,
        bird: file.bird.clone().unwrap_or_else(|| PathBuf::from("bird")),
        state_dir,
        bfd_interval_ms,
        bfd_multiplier,
        peers,
    })
}

/// The longest path a Unix socket can be bound to on Linux (`sun_path` is 108 bytes with the
/// terminating NUL). A longer control socket path makes BIRD exit at once (`Socket path too
/// long`) although `bird -p` accepts its config.
pub const SOCKET_PATH_MAX: usize = 107;

/// BIRD's control socket in `state_dir`.
pub fn control_socket(state_dir: &Path) -> PathBuf {
    state_dir.join("bird.ctl")
}

/// Refuses a `state_dir` whose control socket path is longer than [`SOCKET_PATH_MAX`] bytes.
/// `node_id_len`: the node id's length, named in the error when the state dir is the default
/// (`/run/shoal/bird-<node id>`), which a long node id makes too long.
pub fn check_control_path(
    state_dir: &Path,
    node_id_len: Option<usize>,
) -> Result<(), SettingError> {
    let control = control_socket(state_dir);
    let len = control.as_os_str().len();
    if len <= SOCKET_PATH_MAX {
        return Ok(());
    }
    let id = node_id_len
        .map(|n| format!(" (the node id is {n} characters; the default state dir is /run/shoal/bird-<node id>)"))
        .unwrap_or_default();
    Err(err(
        "bgp.state_dir",
        format!(
            "BIRD's control socket {} would be {len} bytes, over the Unix socket limit of {SOCKET_PATH_MAX}{id}: set bgp.state_dir to a shorter directory",
            control.display()
        ),
    ))
}

/// The router id BIRD runs with: `bgp.router_id`, else this node's own IPv4 address (the
/// gossip listen address, `node_addr`). Without either BIRD would pick an interface address
/// itself, which on a load balancer can be a VIP or a cluster IP every node has (duplicate
/// router ids break BGP), so that is refused.
pub fn router_id(bgp: &BgpSettings, node_addr: Option<IpAddr>) -> Result<Ipv4Addr, SettingError> {
    if let Some(id) = bgp.router_id {
        return Ok(id);
    }
    let v4 = match node_addr {
        Some(IpAddr::V4(a)) => Some(a),
        Some(IpAddr::V6(a)) => a.to_ipv4_mapped(),
        None => None,
    };
    match v4 {
        Some(a) if !a.is_unspecified() && !a.is_loopback() && !a.is_multicast() => Ok(a),
        _ => Err(err(
            "bgp.router_id",
            format!(
                "missing, and this node's address ({}) is no usable IPv4 address to default to: set bgp.router_id to this node's own IPv4 address (unique per node)",
                node_addr.map(|a| a.to_string()).unwrap_or_else(|| "unknown".into())
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BgpSettings, String> {
        #[derive(Deserialize)]
        struct F {
            bgp: BgpFile,
        }
        let f: F = toml::from_str(text).map_err(|e| e.to_string())?;
        bgp_settings(&f.bgp, "n1").map_err(|e| e.to_string())
    }

    const OK: &str = r#"
[bgp]
local_asn = 64512
[[bgp.peers]]
address = "198.18.1.1"
asn = 64500
"#;

    #[test]
    fn defaults() {
        let s = parse(OK).unwrap();
        assert_eq!(s.local_asn, 64512);
        assert_eq!(s.table, 120);
        assert_eq!(s.bfd_interval_ms, 100);
        assert_eq!(s.bfd_multiplier, 3);
        assert_eq!(s.peers[0].name, "peer1");
        assert_eq!(s.peers[0].hold_time_s, 9);
        assert!(s.peers[0].bfd);
        assert_eq!(s.state_dir, PathBuf::from("/run/shoal/bird-n1"));
    }

    #[test]
    fn a_control_socket_path_over_the_unix_limit_is_refused() {
        #[derive(Deserialize)]
        struct F {
            bgp: BgpFile,
        }
        let f: F = toml::from_str(OK).unwrap();
        // /run/shoal/bird-<id>/bird.ctl is 25 bytes plus the id: 82 fit, 83 do not.
        assert!(bgp_settings(&f.bgp, &"n".repeat(82)).is_ok());
        let e = bgp_settings(&f.bgp, &"n".repeat(83)).unwrap_err();
        assert_eq!(e.field, "bgp.state_dir");
        assert!(e.message.contains("108 bytes"), "{e}");
        assert!(e.message.contains("node id is 83 characters"), "{e}");
        let long = format!("/{}", "d".repeat(98));
        let e = parse(&OK.replace(
            "local_asn = 64512",
            &format!("local_asn = 64512\nstate_dir = \"{long}\""),
        ))
        .unwrap_err();
        assert!(e.contains("bgp.state_dir") && e.contains("107"), "{e}");
        let ok = format!("/{}", "d".repeat(97));
        assert!(check_control_path(Path::new(&ok), None).is_ok());
    }

    #[test]
    fn the_router_id_defaults_to_the_nodes_ipv4_address() {
        let mut s = parse(OK).unwrap();
        let v4: IpAddr = "198.18.0.11".parse().unwrap();
        assert_eq!(router_id(&s, Some(v4)).unwrap().to_string(), "198.18.0.11");
        let mapped: IpAddr = "::ffff:198.18.0.12".parse().unwrap();
        assert_eq!(
            router_id(&s, Some(mapped)).unwrap().to_string(),
            "198.18.0.12"
        );
        for bad in ["0.0.0.0", "127.0.0.1", "2001:db8::1", "::"] {
            let e = router_id(&s, Some(bad.parse().unwrap())).unwrap_err();
            assert_eq!(e.field, "bgp.router_id", "{bad}");
            assert!(e.message.contains(bad), "{e}");
        }
        assert!(router_id(&s, None).is_err());
        s.router_id = Some("198.18.0.99".parse().unwrap());
        assert_eq!(
            router_id(&s, Some("2001:db8::1".parse().unwrap()))
                .unwrap()
                .to_string(),
            "198.18.0.99"
        );
        let e = parse(&OK.replace(
            "local_asn = 64512",
            "local_asn = 64512\nrouter_id = \"0.0.0.0\"",
        ))
        .unwrap_err();
        assert!(e.contains("bgp.router_id"), "{e}");
    }

    #[test]
    fn unknown_peer_field_is_named() {
        let e = parse(&format!("{OK}pasword = \"x\"\n")).unwrap_err();
        assert!(e.contains("pasword"), "{e}");
    }

    #[test]
    fn asn_out_of_range_is_named() {
        let e = parse(&OK.replace("asn = 64500", "asn = 4294967295")).unwrap_err();
        assert!(
            e.contains("bgp.peers[0].asn") && e.contains("out of range"),
            "{e}"
        );
        let e = parse(&OK.replace("local_asn = 64512", "local_asn = 0")).unwrap_err();
        assert!(e.contains("bgp.local_asn"), "{e}");
    }

    #[test]
    fn bad_peers_are_named() {
        let e = parse(&OK.replace("198.18.1.1", "0.0.0.0")).unwrap_err();
        assert!(e.contains("bgp.peers[0].address"), "{e}");
        let e = parse(&OK.replace("198.18.1.1", "not-an-ip")).unwrap_err();
        assert!(e.contains("address"), "{e}");
        let e = parse("[bgp]\nlocal_asn = 1\n").unwrap_err();
        assert!(e.contains("bgp.peers"), "{e}");
        let e = parse(&format!("{OK}password = \"a\\\"b\"\n")).unwrap_err();
        assert!(e.contains("bgp.peers[0].password"), "{e}");
        let e =
            parse(&OK.replace("local_asn = 64512", "local_asn = 64512\ntable = 254")).unwrap_err();
        assert!(e.contains("bgp.table"), "{e}");
        for table in ["4294967295", "2147483648"] {
            let e = parse(&OK.replace(
                "local_asn = 64512",
                &format!("local_asn = 64512\ntable = {table}"),
            ))
            .unwrap_err();
            assert!(e.contains("bgp.table") && e.contains("2147483647"), "{e}");
        }
        let max = OK.replace("local_asn = 64512", "local_asn = 64512\ntable = 2147483647");
        assert_eq!(parse(&max).map(|s| s.table).ok(), Some(TABLE_MAX));
    }
}
