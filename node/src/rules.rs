//! The static rules file: TOML in, a checked [`RuleTable`] out, errors naming line and field.
//!
//! The format is documented in docs/rules.md. Parsing is pure (text in, table or error out) so
//! `shoal check`, the static source and tests share it. It is linear in the file's size: line
//! numbers come from one index of line starts, not from counting newlines per entry.

use crate::table::{Backend, HealthCheck, Probe, RuleTable, VirtualService};
use crate::validate;
use ipnet::IpNet;
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
    /// An empty table removes every service everywhere: the file must ask for it explicitly,
    /// so that an empty or truncated file is never mistaken for one.
    #[serde(default)]
    no_services: bool,
    /// Backends on 127.0.0.0/8 or ::1 only make sense on one host (the demo, tests).
    #[serde(default)]
    loopback_backends: bool,
    #[serde(default)]
    service: Vec<Spanned<RawService>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    vip: Spanned<IpAddr>,
    port: Spanned<u16>,
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
    /// Client networks allowed to reach this VIP/port (CIDRs of the VIP's family); absent or
    /// empty: everyone.
    #[serde(default)]
    source_ranges: Vec<Spanned<String>>,
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
    address: Spanned<IpAddr>,
    port: Option<Spanned<u16>>,
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

/// Source ranges per service: each becomes an nftables rule that packets to the VIP walk
/// through in order, so thousands would slow every packet to it.
pub const MAX_SOURCE_RANGES: usize = 256;

/// The largest rules file the static source reads and `shoal check` accepts (32 MiB, about
/// 50,000 services of 10 backends): a bigger file is refused with an error saying so, instead
/// of being read into memory whole (a path to /dev/zero would never end).
pub const MAX_FILE_BYTES: u64 = 32 << 20;

/// Parses and checks a rules file; the table comes out canonical.
pub fn parse(text: &str) -> Result<RuleTable, RulesError> {
    let lines = LineIndex::new(text);
    let raw: RawFile = toml::from_str(text).map_err(|e| from_toml_error(text, &lines, &e))?;
    if raw.service.is_empty() && !raw.no_services {
        return Err(RulesError {
            line: 1,
            field: "service".into(),
            message: "the file lists no service; an empty table removes every service on every \
                      node, so write `no_services = true` to publish one on purpose"
                .into(),
        });
    }
    if raw.no_services && !raw.service.is_empty() {
        return Err(RulesError {
            line: 1,
            field: "no_services".into(),
            message: format!(
                "is true but the file lists {} service(s)",
                raw.service.len()
            ),
        });
    }
    let ctx = Ctx {
        lines: &lines,
        loopback_backends: raw.loopback_backends,
    };
    let mut table = RuleTable::default();
    let mut names = BTreeSet::new();
    let mut endpoints = BTreeSet::new();
    for (i, spanned) in raw.service.iter().enumerate() {
        let line = lines.line(spanned.span().start);
        let service = check_service(&ctx, i, spanned.get_ref(), line)?;
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

/// What every check needs besides the entry itself.
struct Ctx<'a> {
    lines: &'a LineIndex,
    loopback_backends: bool,
}

fn check_service(
    ctx: &Ctx<'_>,
    i: usize,
    raw: &RawService,
    line: usize,
) -> Result<VirtualService, RulesError> {
    let err = |field: &str, message: String| RulesError {
        line,
        field: format!("service[{i}].{field}"),
        message,
    };
    let is_mh = raw.scheduler == "mh";
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
    let backends = raw
        .backend
        .iter()
        .map(|b| {
            let b = b.get_ref();
            Backend {
                address: *b.address.get_ref(),
                port: b
                    .port
                    .as_ref()
                    .map_or(*raw.port.get_ref(), |p| *p.get_ref()),
                weight: b.weight,
            }
        })
        .collect();
    let health = match &raw.health {
        None => None,
        Some(spanned) => Some(health_of(ctx, i, spanned)?),
    };
    let source_ranges = check_source_ranges(ctx, i, *raw.vip.get_ref(), &raw.source_ranges)?;
    let service = VirtualService {
        name: raw.name.clone(),
        vip: *raw.vip.get_ref(),
        port: *raw.port.get_ref(),
        protocol: raw.protocol,
        scheduler: raw.scheduler.clone(),
        flags: SchedFlags {
            // An explicit `true` on another scheduler is refused by the validator.
            mh_port: raw.mh_port.unwrap_or(is_mh),
            mh_fallback: raw.mh_fallback.unwrap_or(is_mh),
        },
        forwarding,
        backends,
        health,
        source_ranges,
    };
    let allow = validate::Allow {
        loopback_backends: ctx.loopback_backends,
    };
    validate::service(&service, allow).map_err(|e| locate(ctx, i, raw, line, e))?;
    Ok(service)
}

/// The rules file's name and line for a field the shared validator refused.
fn locate(
    ctx: &Ctx<'_>,
    i: usize,
    raw: &RawService,
    line: usize,
    e: validate::Invalid,
) -> RulesError {
    use validate::{BackendField, Field, HealthField};
    let at = |offset: usize| ctx.lines.line(offset);
    let (line, field) = match e.field {
        Field::Name => (line, "name".to_string()),
        Field::Vip => (at(raw.vip.span().start), "vip".into()),
        Field::Port => (at(raw.port.span().start), "port".into()),
        Field::Scheduler => (line, "scheduler".into()),
        Field::MhFlags => (line, "mh_port".into()),
        Field::TunnelPort => (line, "tunnel_port".into()),
        Field::Backend(j, part) => {
            let b = &raw.backend[j];
            let (offset, name) = match part {
                BackendField::Address => (b.get_ref().address.span().start, "address"),
                BackendField::Port => (
                    b.get_ref()
                        .port
                        .as_ref()
                        .map_or(b.span().start, |p| p.span().start),
                    "port",
                ),
                BackendField::Weight => (b.span().start, "weight"),
            };
            (at(offset), format!("backend[{j}].{name}"))
        }
        Field::Health(part) => {
            let name = match part {
                HealthField::IntervalMs => "interval_ms",
                HealthField::TimeoutMs => "timeout_ms",
                HealthField::Rise => "rise",
                HealthField::Fall => "fall",
                HealthField::Path => "path",
                HealthField::ExpectStatus => "expect_status",
                HealthField::Host => "host",
            };
            let offset = raw.health.as_ref().map_or(0, |h| h.span().start);
            (at(offset), format!("health.{name}"))
        }
    };
    RulesError {
        line,
        field: format!("service[{i}].{field}"),
        message: e.message,
    }
}

fn check_source_ranges(
    ctx: &Ctx<'_>,
    i: usize,
    vip: IpAddr,
    raw: &[Spanned<String>],
) -> Result<Vec<IpNet>, RulesError> {
    if raw.len() > MAX_SOURCE_RANGES {
        return Err(RulesError {
            line: ctx.lines.line(raw[MAX_SOURCE_RANGES].span().start),
            field: format!("service[{i}].source_ranges"),
            message: format!(
                "{} ranges; at most {MAX_SOURCE_RANGES} (merge neighbouring networks)",
                raw.len()
            ),
        });
    }
    let mut out = Vec::with_capacity(raw.len());
    for (k, spanned) in raw.iter().enumerate() {
        let err = |message: String| RulesError {
            line: ctx.lines.line(spanned.span().start),
            field: format!("service[{i}].source_ranges[{k}]"),
            message,
        };
        let text = spanned.get_ref().trim();
        let net: IpNet = text.parse().map_err(|_| {
            err(format!(
                "{text:?} is not a network in CIDR form (e.g. 192.0.2.0/24 or 2001:db8::/32)"
            ))
        })?;
        if net.trunc() != net {
            return Err(err(format!(
                "{net} has host bits set: write {} (or the /{} of the address alone)",
                net.trunc(),
                net.max_prefix_len()
            )));
        }
        if net.addr().is_ipv4() != vip.is_ipv4() {
            return Err(err(format!(
                "{net} is not of the VIP's address family ({vip})"
            )));
        }
        out.push(net);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The `[service.health]` table as a [`HealthCheck`]; its bounds are the validator's.
fn health_of(
    ctx: &Ctx<'_>,
    i: usize,
    spanned: &Spanned<RawHealth>,
) -> Result<HealthCheck, RulesError> {
    let h = spanned.get_ref();
    let probe = match h.kind {
        RawProbeKind::Tcp => {
            for (given, name) in [(h.path.is_some(), "path"), (h.host.is_some(), "host")] {
                if given {
                    return Err(RulesError {
                        line: ctx.lines.line(spanned.span().start),
                        field: format!("service[{i}].health.{name}"),
                        message: format!("only http and https checks take a {name}"),
                    });
                }
            }
            Probe::Tcp
        }
        RawProbeKind::Http | RawProbeKind::Https => Probe::Http {
            path: h.path.clone().unwrap_or_else(|| "/".to_string()),
            expect_status: h.expect_status,
            tls: matches!(h.kind, RawProbeKind::Https),
            host: h.host.clone(),
        },
    };
    Ok(HealthCheck {
        probe,
        interval_ms: h.interval_ms,
        timeout_ms: h.timeout_ms,
        rise: h.rise,
        fall: h.fall,
    })
}

/// Byte offset -> 1-based line, in O(log lines) per question after one O(n) pass.
struct LineIndex {
    /// Offsets of every '\n' in the text.
    newlines: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        LineIndex {
            newlines: text
                .bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i)
                .collect(),
        }
    }

    fn line(&self, offset: usize) -> usize {
        self.newlines.partition_point(|&nl| nl < offset) + 1
    }
}

fn from_toml_error(text: &str, lines: &LineIndex, e: &toml::de::Error) -> RulesError {
    let line = e.span().map(|s| lines.line(s.start)).unwrap_or(0);
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
        assert_eq!(e.line, 7, "the port's own line");
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

    const HEAD: &str = "[[service]]\nname='a'\nvip='203.0.113.1'\nport=80\n";

    /// Issue #15: `port = 0` was reported at the service's first line.
    #[test]
    fn port_zero_is_reported_at_its_own_line() {
        let e = parse("[[service]]\nname='a'\nvip='203.0.113.1'\n\nport=0\n").unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (5, "service[0].port"), "{e}");
        let e = parse(&format!(
            "{HEAD}forwarding='masq'\n[[service.backend]]\naddress='198.18.0.2'\n\nport=0\n"
        ))
        .unwrap_err();
        assert_eq!(
            (e.line, e.field.as_str()),
            (9, "service[0].backend[0].port"),
            "{e}"
        );
    }

    /// Issue #15: VIP 255.255.255.255 and other addresses no VIP can be were accepted.
    #[test]
    fn non_unicast_vips_are_refused_at_the_vip_line() {
        for vip in [
            "255.255.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "240.0.0.1",
            "127.0.0.1",
            "169.254.1.1",
            "::",
            "::1",
            "ff02::1",
            "fe80::1",
            "::ffff:203.0.113.1",
        ] {
            let e = parse(&format!("[[service]]\nname='a'\nport=80\nvip='{vip}'\n")).unwrap_err();
            assert_eq!(
                (e.line, e.field.as_str()),
                (4, "service[0].vip"),
                "{vip}: {e}"
            );
            assert!(e.message.contains("not a unicast address"), "{e}");
        }
        for vip in ["203.0.113.1", "10.0.0.1", "2001:db8::1"] {
            let text = format!("[[service]]\nname='a'\nport=80\nvip='{vip}'\n");
            assert!(parse(&text).is_ok(), "{vip}");
        }
    }

    /// Issue #15: backend 127.0.0.1 was accepted; a one-host lab must say so.
    #[test]
    fn loopback_backends_need_the_file_to_ask_for_them() {
        let text = format!("{HEAD}[[service.backend]]\naddress='127.0.0.1'\n");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.field, "service[0].backend[0].address");
        assert!(e.message.contains("loopback_backends = true"), "{e}");
        assert!(parse(&format!("loopback_backends = true\n{text}")).is_ok());
        let bcast = format!(
            "loopback_backends = true\n{HEAD}[[service.backend]]\naddress='255.255.255.255'\n"
        );
        assert!(parse(&bcast).is_err());
    }

    /// Issue #15: CR/LF in a health check's host or path went into the probe's request.
    #[test]
    fn control_characters_in_health_host_and_path_are_refused() {
        for (field, value) in [
            ("host", "a\\r\\nX-Injected: 1"),
            ("host", "a b"),
            ("host", ""),
            ("path", "/a\\r\\nX: 1"),
            ("path", "/a b"),
            ("path", "/\\u0000"),
        ] {
            let text = format!("{HEAD}[service.health]\nkind='http'\n{field}=\"{value}\"\n");
            let e = parse(&text).unwrap_err();
            assert_eq!(
                e.field,
                format!("service[0].health.{field}"),
                "{value:?}: {e}"
            );
        }
        let ok =
            format!("{HEAD}[service.health]\nkind='http'\nhost='example.org'\npath='/h?x=1'\n");
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn health_numbers_are_bounded() {
        for (field, value) in [
            ("interval_ms", "9223372036854775807"),
            ("interval_ms", "3600001"),
            ("rise", "101"),
            ("fall", "0"),
        ] {
            let text = format!("{HEAD}[service.health]\nkind='tcp'\n{field}={value}\n");
            let e = parse(&text).unwrap_err();
            assert_eq!(e.field, format!("service[0].health.{field}"), "{e}");
        }
    }

    /// Issue #15, broken behaviour 4: an empty file parsed as a table without services.
    #[test]
    fn an_empty_table_must_be_asked_for() {
        for empty in ["", "\n", "# nothing yet\n"] {
            let e = parse(empty).unwrap_err();
            assert_eq!(e.field, "service");
            assert!(e.message.contains("no_services = true"), "{e}");
        }
        assert_eq!(parse("no_services = true\n").unwrap(), RuleTable::default());
        let e = parse(&format!("no_services = true\n{HEAD}")).unwrap_err();
        assert_eq!(e.field, "no_services");
    }

    #[test]
    fn source_ranges_are_checked_and_kept_sorted() {
        let t = parse(&format!(
            "{HEAD}source_ranges=['198.51.100.0/24', '192.0.2.7/32', '198.51.100.0/24']\n"
        ))
        .unwrap();
        let got: Vec<String> = t.services[0]
            .source_ranges
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(got, ["192.0.2.7/32", "198.51.100.0/24"]);
        assert!(parse(HEAD).unwrap().services[0].source_ranges.is_empty());
        for (value, says) in [
            ("'198.51.100.7/24'", "host bits set: write 198.51.100.0/24"),
            ("'198.51.100.7'", "CIDR"),
            ("'2001:db8::/32'", "address family"),
            ("'nonsense'", "CIDR"),
        ] {
            let text = format!("{HEAD}\nsource_ranges=['192.0.2.0/24',\n {value}]\n");
            let e = parse(&text).unwrap_err();
            assert_eq!(e.field, "service[0].source_ranges[1]", "{value}: {e}");
            assert_eq!(e.line, 7, "{value}: the range's own line: {e}");
            assert!(e.message.contains(says), "{value}: {e}");
        }
        let many: Vec<String> = (0..=MAX_SOURCE_RANGES)
            .map(|k| format!("'10.{}.{}.0/24'", k / 256, k % 256))
            .collect();
        let e = parse(&format!("{HEAD}source_ranges=[{}]\n", many.join(","))).unwrap_err();
        assert_eq!(e.field, "service[0].source_ranges");
        let v6 = "[[service]]\nname='a'\nvip='2001:db8::1'\nport=80\nsource_ranges=['2001:db8:1::/48']\n";
        assert_eq!(parse(v6).unwrap().services[0].source_ranges.len(), 1);
    }

    #[test]
    fn line_index_counts_like_the_text() {
        let text = "a\nbb\n\nc";
        let idx = LineIndex::new(text);
        for offset in 0..=text.len() {
            assert_eq!(
                idx.line(offset),
                text[..offset].matches('\n').count() + 1,
                "{offset}"
            );
        }
    }
}
