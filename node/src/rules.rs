//! The static rules file: TOML in, a checked [`RuleTable`] out, errors naming line and field.
//!
//! The format is documented in docs/rules.md. Parsing is pure (text in, table or error out) so
//! `shoal check`, the static source and tests share it.

use crate::table::{Backend, HealthCheck, Probe, RuleTable, VirtualService};
use serde::Deserialize;
use shoal_dataplane::model::{Forwarding, Protocol, SchedFlags, Tunnel};
use std::collections::BTreeSet;
use std::net::IpAddr;
use toml::Spanned;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {field}: {message}")]
pub struct RulesError {
    /// 1-based line of the offending entry.
    pub line: usize,
    /// Dotted path of the field, e.g. `service[2].backend[0].port`.
    pub field: String,
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    service: Vec<Spanned<RawService>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    vip: IpAddr,
    port: u16,
    #[serde(default = "default_protocol")]
    protocol: Protocol,
    #[serde(default = "default_scheduler")]
    scheduler: String,
    mh_port: Option<bool>,
    /// Default: on with `mh`. Without it IPVS's mh keeps sending new flows to a weight-0
    /// (health-drained or removed) backend's slots, and those connections fail.
    mh_fallback: Option<bool>,
    #[serde(default = "default_forwarding")]
    forwarding: RawForwarding,
    #[serde(default)]
    tunnel: RawTunnel,
    #[serde(default)]
    tunnel_port: Option<u16>,
    #[serde(default)]
    backend: Vec<Spanned<RawBackend>>,
    health: Option<Spanned<RawHealth>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawForwarding {
    Tunnel,
    Masq,
    Route,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawTunnel {
    #[default]
    Ipip,
    Gue,
    Gre,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: IpAddr,
    port: Option<u16>,
    #[serde(default = "default_weight")]
    weight: u32,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawProbeKind {
    Tcp,
    Http,
    Https,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    kind: RawProbeKind,
    #[serde(default = "default_interval_ms")]
    interval_ms: u64,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_rise")]
    rise: u32,
    #[serde(default = "default_fall")]
    fall: u32,
    path: Option<String>,
    #[serde(default = "default_expect_status")]
    expect_status: u16,
    host: Option<String>,
}

fn default_protocol() -> Protocol {
    Protocol::Tcp
}
fn default_scheduler() -> String {
    "mh".to_string()
}
fn default_forwarding() -> RawForwarding {
    RawForwarding::Tunnel
}
fn default_weight() -> u32 {
    1
}
fn default_interval_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    500
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}
fn default_expect_status() -> u16 {
    200
}

/// IPVS's largest weight (the kernel takes an int; ipvsadm caps it here).
const MAX_WEIGHT: u32 = 65535;
const MIN_HEALTH_INTERVAL_MS: u64 = 100;

/// Parses and checks a rules file; the table comes out canonical.
pub fn parse(text: &str) -> Result<RuleTable, RulesError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| from_toml_error(text, &e))?;
    let mut table = RuleTable::default();
    let mut names = BTreeSet::new();
    let mut endpoints = BTreeSet::new();
    for (i, spanned) in raw.service.iter().enumerate() {
        let line = line_of(text, spanned.span().start);
        let service = check_service(text, i, spanned.get_ref(), line)?;
        let err = |field: &str, message: String| RulesError {
            line,
            field: format!("service[{i}].{field}"),
            message,
        };
        if !names.insert(service.name.clone()) {
            return Err(err("name", format!("{:?} is used twice", service.name)));
        }
        if !endpoints.insert((service.vip, service.port, service.protocol)) {
            return Err(err(
                "vip",
                format!(
                    "{}:{} {:?} is already served by another service",
                    service.vip, service.port, service.protocol
                ),
            ));
        }
        table.services.push(service);
    }
    table.canonicalize();
    Ok(table)
}

/// Settings that parse but will not do what an operator expects; `shoal check` prints them.
/// Pure: one line per finding, naming the service.
pub fn warnings(table: &RuleTable) -> Vec<String> {
    let mut out = Vec::new();
    for s in &table.services {
        if s.scheduler == "mh" && !s.flags.mh_fallback && s.health.is_some() {
            out.push(format!(
                "service {:?}: health-checked mh service without mh_fallback: a backend drained \
                 to weight 0 keeps its share of new connections, and they fail; set \
                 mh_fallback = true",
                s.name
            ));
        }
    }
    out
}

fn check_service(
    text: &str,
    i: usize,
    raw: &RawService,
    line: usize,
) -> Result<VirtualService, RulesError> {
    let err = |field: &str, message: String| RulesError {
        line,
        field: format!("service[{i}].{field}"),
        message,
    };
    if raw.name.is_empty() || raw.name.len() > 253 {
        return Err(err("name", "must be 1-253 characters".into()));
    }
    if raw.port == 0 {
        return Err(err("port", "must be 1-65535".into()));
    }
    if raw.vip.is_unspecified() || raw.vip.is_multicast() {
        return Err(err("vip", format!("{} is not a unicast address", raw.vip)));
    }
    if raw.scheduler.is_empty()
        || raw.scheduler.len() > 15
        || !raw.scheduler.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(err(
            "scheduler",
            format!("{:?} is not an IPVS scheduler name", raw.scheduler),
        ));
    }
    let is_mh = raw.scheduler == "mh";
    if !is_mh && (raw.mh_port == Some(true) || raw.mh_fallback == Some(true)) {
        return Err(err(
            "mh_port",
            format!("mh flags need scheduler \"mh\", not {:?}", raw.scheduler),
        ));
    }
    let forwarding = match raw.forwarding {
        RawForwarding::Masq => Forwarding::Masq,
        RawForwarding::Route => Forwarding::Route,
        RawForwarding::Tunnel => Forwarding::Tunnel(match raw.tunnel {
            RawTunnel::Ipip => Tunnel::Ipip,
            RawTunnel::Gue => Tunnel::Gue {
                port: raw
                    .tunnel_port
                    .ok_or_else(|| err("tunnel_port", "gue needs a tunnel_port".into()))?,
                flags: 0,
            },
            RawTunnel::Gre => Tunnel::Gre { flags: 0 },
        }),
    };
    let mut backends = Vec::with_capacity(raw.backend.len());
    let mut seen = BTreeSet::new();
    for (j, spanned) in raw.backend.iter().enumerate() {
        let b = spanned.get_ref();
        let berr = |field: &str, message: String| RulesError {
            line: line_of(text, spanned.span().start),
            field: format!("service[{i}].backend[{j}].{field}"),
            message,
        };
        let port = b.port.unwrap_or(raw.port);
        if port == 0 {
            return Err(berr("port", "must be 1-65535".into()));
        }
        // Tunnel and route forwarding keep the packet's destination port: the backend
        // must listen on the service port.
        if !matches!(forwarding, Forwarding::Masq) && port != raw.port {
            return Err(berr(
                "port",
                format!(
                    "{port} differs from the service port {}; only masq forwarding can change ports",
                    raw.port
                ),
            ));
        }
        if b.address.is_ipv4() != raw.vip.is_ipv4() {
            return Err(berr(
                "address",
                format!("{} is not of the VIP's address family", b.address),
            ));
        }
        if b.address.is_unspecified() || b.address.is_multicast() {
            return Err(berr(
                "address",
                format!("{} is not a unicast address", b.address),
            ));
        }
        if b.weight > MAX_WEIGHT {
            return Err(berr("weight", format!("{} is over {MAX_WEIGHT}", b.weight)));
        }
        if !seen.insert((b.address, port)) {
            return Err(berr(
                "address",
                format!("{}:{port} is listed twice", b.address),
            ));
        }
        backends.push(Backend {
            address: b.address,
            port,
            weight: b.weight,
        });
    }
    let health = match &raw.health {
        None => None,
        Some(spanned) => Some(check_health(text, i, spanned)?),
    };
    Ok(VirtualService {
        name: raw.name.clone(),
        vip: raw.vip,
        port: raw.port,
        protocol: raw.protocol,
        scheduler: raw.scheduler.clone(),
        flags: SchedFlags {
            mh_port: is_mh && raw.mh_port.unwrap_or(true),
            mh_fallback: is_mh && raw.mh_fallback.unwrap_or(true),
        },
        forwarding,
        backends,
        health,
    })
}

fn check_health(
    text: &str,
    i: usize,
    spanned: &Spanned<RawHealth>,
) -> Result<HealthCheck, RulesError> {
    let h = spanned.get_ref();
    let err = |field: &str, message: String| RulesError {
        line: line_of(text, spanned.span().start),
        field: format!("service[{i}].health.{field}"),
        message,
    };
    if h.interval_ms < MIN_HEALTH_INTERVAL_MS {
        return Err(err(
            "interval_ms",
            format!("{} is under {MIN_HEALTH_INTERVAL_MS}", h.interval_ms),
        ));
    }
    if h.timeout_ms == 0 || h.timeout_ms > h.interval_ms {
        return Err(err(
            "timeout_ms",
            format!(
                "{} must be between 1 and interval_ms ({})",
                h.timeout_ms, h.interval_ms
            ),
        ));
    }
    if h.rise == 0 {
        return Err(err("rise", "must be at least 1".into()));
    }
    if h.fall == 0 {
        return Err(err("fall", "must be at least 1".into()));
    }
    let probe = match h.kind {
        RawProbeKind::Tcp => {
            if h.path.is_some() {
                return Err(err("path", "only http and https checks take a path".into()));
            }
            Probe::Tcp
        }
        RawProbeKind::Http | RawProbeKind::Https => {
            let path = h.path.clone().unwrap_or_else(|| "/".to_string());
            if !path.starts_with('/') {
                return Err(err("path", format!("{path:?} must start with /")));
            }
            if !(100..=599).contains(&h.expect_status) {
                return Err(err(
                    "expect_status",
                    format!("{} is not an HTTP status", h.expect_status),
                ));
            }
            Probe::Http {
                path,
                expect_status: h.expect_status,
                tls: matches!(h.kind, RawProbeKind::Https),
                host: h.host.clone(),
            }
        }
    };
    Ok(HealthCheck {
        probe,
        interval_ms: h.interval_ms,
        timeout_ms: h.timeout_ms,
        rise: h.rise,
        fall: h.fall,
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn from_toml_error(text: &str, e: &toml::de::Error) -> RulesError {
    let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
    // toml's message names the field for type and unknown-key errors; keep its first line.
    let message = e
        .message()
        .lines()
        .next()
        .unwrap_or("invalid TOML")
        .to_string();
    let field = e
        .span()
        .map(|s| text[s.start..s.end.min(text.len())].trim().to_string())
        .filter(|f| !f.is_empty() && f.len() < 80 && !f.contains('\n'))
        .unwrap_or_else(|| "(file)".to_string());
    RulesError {
        line,
        field,
        message,
    }
}

/// The example rules file the demo runs and docs/rules.md explains.
pub const EXAMPLE: &str = include_str!("../../docs/examples/rules.toml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses() {
        let table = parse(EXAMPLE).unwrap();
        assert!(table.services.len() >= 2);
        let web = table.services.iter().find(|s| s.name == "web").unwrap();
        assert_eq!(web.scheduler, "mh");
        assert!(web.flags.mh_port);
        assert_eq!(web.forwarding, Forwarding::Tunnel(Tunnel::Ipip));
    }

    #[test]
    fn defaults_are_mh_port_and_tunnel() {
        let t = parse("[[service]]\nname='a'\nvip='203.0.113.1'\nport=80\n[[service.backend]]\naddress='198.18.0.2'\n").unwrap();
        let s = &t.services[0];
        assert_eq!(s.protocol, Protocol::Tcp);
        assert_eq!(s.forwarding, Forwarding::Tunnel(Tunnel::Ipip));
        assert_eq!(s.backends[0].port, 80);
        assert_eq!(s.backends[0].weight, 1);
        assert!(s.flags.mh_port && s.flags.mh_fallback, "{:?}", s.flags);
    }

    #[test]
    fn mh_fallback_can_be_turned_off_and_check_warns_when_health_checked() {
        let base = "[[service]]\nname='a'\nvip='203.0.113.1'\nport=80\nmh_fallback=false\n";
        let t = parse(base).unwrap();
        assert!(!t.services[0].flags.mh_fallback);
        assert!(warnings(&t).is_empty(), "no health check: nothing drains");
        let t = parse(&format!("{base}[service.health]\nkind='tcp'\n")).unwrap();
        let w = warnings(&t);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("\"a\"") && w[0].contains("mh_fallback"),
            "{w:?}"
        );
        let on = parse(
            "[[service]]\nname='a'\nvip='203.0.113.1'\nport=80\n[service.health]\nkind='tcp'\n",
        )
        .unwrap();
        assert!(warnings(&on).is_empty());
    }

    #[test]
    fn other_schedulers_get_no_mh_flags() {
        let t = parse("[[service]]\nname='a'\nvip='203.0.113.1'\nport=80\nscheduler='rr'\n[service.health]\nkind='tcp'\n").unwrap();
        assert!(!t.services[0].flags.mh_fallback && !t.services[0].flags.mh_port);
        assert!(warnings(&t).is_empty());
        let e = parse(
            "[[service]]\nname='a'\nvip='203.0.113.1'\nport=80\nscheduler='rr'\nmh_fallback=true\n",
        )
        .unwrap_err();
        assert!(e.message.contains("mh flags"), "{e}");
    }

    #[test]
    fn bad_address_names_line_and_field() {
        let text = "[[service]]\nname='a'\nvip='203.0.113.1'\nport=80\n\n[[service.backend]]\naddress='198.18.0.999'\n";
        let e = parse(text).unwrap_err();
        assert_eq!(e.line, 7, "{e}");
        assert!(e.to_string().contains("address"), "{e}");
    }

    #[test]
    fn unknown_field_is_named() {
        let e = parse("[[service]]\nname='a'\nvip='203.0.113.1'\nport=80\nwieght=3\n").unwrap_err();
        assert_eq!(e.line, 5, "{e}");
        assert!(e.to_string().contains("wieght"), "{e}");
    }

    #[test]
    fn tunnel_backends_must_keep_the_port() {
        let e = parse("[[service]]\nname='a'\nvip='203.0.113.1'\nport=80\n[[service.backend]]\naddress='198.18.0.2'\nport=8080\n").unwrap_err();
        assert_eq!(e.field, "service[0].backend[0].port");
        assert_eq!(e.line, 5);
    }

    #[test]
    fn duplicate_names_and_endpoints_are_refused() {
        let dup = "[[service]]\nname='a'\nvip='203.0.113.1'\nport=80\n[[service]]\nname='a'\nvip='203.0.113.2'\nport=80\n";
        assert!(parse(dup).unwrap_err().message.contains("twice"));
        let same = "[[service]]\nname='a'\nvip='203.0.113.1'\nport=80\n[[service]]\nname='b'\nvip='203.0.113.1'\nport=80\n";
        let e = parse(same).unwrap_err();
        assert_eq!(e.line, 5);
        assert_eq!(e.field, "service[1].vip");
    }

    #[test]
    fn health_timeouts_are_checked() {
        let text = "[[service]]\nname='a'\nvip='203.0.113.1'\nport=80\n[service.health]\nkind='http'\ninterval_ms=1000\ntimeout_ms=2000\n";
        let e = parse(text).unwrap_err();
        assert_eq!(e.field, "service[0].health.timeout_ms");
        assert_eq!(e.line, 5);
    }

    #[test]
    fn output_is_canonical() {
        let a = parse("[[service]]\nname='b'\nvip='203.0.113.1'\nport=80\n[[service]]\nname='a'\nvip='203.0.113.2'\nport=80\n").unwrap();
        assert_eq!(a.services[0].name, "a");
    }
}
