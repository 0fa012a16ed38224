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
mod tests;
