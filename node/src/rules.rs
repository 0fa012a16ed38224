//! The static rules file: TOML in, a checked [`RuleTable`] out, errors naming line and field.
//!
//! The format is documented in docs/rules.md. Parsing is pure (text in, table or error out) so
//! `shoal check`, the static source and tests share it. It is linear in the file's size: line
//! numbers come from one index of line starts, not from counting newlines per entry.

use crate::table::{Backend, HealthCheck, Probe, RuleTable, VirtualService};
use crate::validate;
use ipnet::IpNet;
use position::{from_toml_error, LineIndex};
use serde::Deserialize;
use shoal_dataplane::model::{Forwarding, Protocol, SchedFlags, Tunnel};
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use toml::Spanned;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesError {
    /// 1-based line of the offending value (of its table when the value was left out).
    pub line: usize,
    /// Dotted path of the field, e.g. `service[2].backend[0].port`; empty when the error is
    /// not about one field (TOML syntax the parser could not place).
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for RulesError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "line {}: {}", self.line, self.message)
        } else {
            write!(f, "line {}: {}: {}", self.line, self.field, self.message)
        }
    }
}

impl std::error::Error for RulesError {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    /// An empty table removes every service everywhere: the file must ask for it explicitly,
    /// so that an empty or truncated file is never mistaken for one.
    no_services: Option<Spanned<bool>>,
    /// Backends on 127.0.0.0/8 or ::1 only make sense on one host (the demo, tests).
    #[serde(default)]
    loopback_backends: bool,
    #[serde(default)]
    service: Vec<Spanned<RawService>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
// Fields an error can name are `Spanned` (optional ones `Option<Spanned<_>>`, defaulted in
// `check_service`), so the error points at the value's own line, not at its table's header.
struct RawService {
    name: Spanned<String>,
    vip: Spanned<IpAddr>,
    port: Spanned<u16>,
    #[serde(default = "default_protocol")]
    protocol: Protocol,
    /// Default `mh`.
    scheduler: Option<Spanned<String>>,
    mh_port: Option<Spanned<bool>>,
    /// Default: on with `mh`. Without it IPVS's mh keeps sending new flows to a weight-0
    /// (health-drained or removed) backend's slots, and those connections fail.
    mh_fallback: Option<Spanned<bool>>,
    /// Default off: sh is chosen for client affinity, which hashing the port would undo.
    sh_port: Option<Spanned<bool>>,
    /// Default: on with `sh`, for the same reason as `mh_fallback` (without it every client
    /// that hashes to a drained backend is refused while it is down).
    sh_fallback: Option<Spanned<bool>>,
    /// Default `tunnel`.
    forwarding: Option<Spanned<RawForwarding>>,
    /// Default `ipip`; only with tunnel forwarding.
    tunnel: Option<Spanned<RawTunnel>>,
    /// Only with a gue tunnel (the one encapsulation that carries a UDP port).
    tunnel_port: Option<Spanned<u16>>,
    #[serde(default)]
    backend: Vec<Spanned<RawBackend>>,
    health: Option<Spanned<RawHealth>>,
    /// Client networks allowed to reach this VIP/port (CIDRs of the VIP's family); absent or
    /// empty: everyone.
    #[serde(default)]
    source_ranges: Vec<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawForwarding {
    Tunnel,
    Masq,
    Route,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawTunnel {
    Ipip,
    Gue,
    Gre,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Spanned<IpAddr>,
    port: Option<Spanned<u16>>,
    /// Default 1.
    weight: Option<Spanned<u32>>,
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
    /// Default 1000.
    interval_ms: Option<Spanned<u64>>,
    /// Default 500.
    timeout_ms: Option<Spanned<u64>>,
    /// Default 2.
    rise: Option<Spanned<u32>>,
    /// Default 3.
    fall: Option<Spanned<u32>>,
    /// http(s) only; default "/".
    path: Option<Spanned<String>>,
    /// http(s) only; default 200.
    expect_status: Option<Spanned<u16>>,
    /// http(s) only.
    host: Option<Spanned<String>>,
    /// Default: the backend's port (required for a udp or sctp service).
    port: Option<Spanned<u16>>,
}

fn default_protocol() -> Protocol {
    Protocol::Tcp
}

/// An optional field's value, or its default when the file leaves it out.
fn or<T: Clone>(field: &Option<Spanned<T>>, default: T) -> T {
    field.as_ref().map_or(default, |v| v.get_ref().clone())
}

/// Source ranges per service: each becomes an nftables rule that packets to the VIP walk
/// through in order, so thousands would slow every packet to it.
pub const MAX_SOURCE_RANGES: usize = 256;

/// The largest rules file the static source reads and `shoal check` accepts (32 MiB, about
/// 50,000 services of 10 backends): a bigger file is refused with an error saying so, instead
/// of being read into memory whole (a path to /dev/zero would never end).
pub const MAX_FILE_BYTES: u64 = 32 << 20;

/// Why a rules file could not be loaded: not readable as a rules file (missing, not a regular
/// file, over [`MAX_FILE_BYTES`]), or its content fails the checks.
#[derive(Debug)]
pub enum LoadError {
    Read(std::io::Error),
    Rules(RulesError),
}

/// Reads the rules file at `path` ([`MAX_FILE_BYTES`] at most, regular files only) and checks it
/// ([`parse`]): what `shoal check` does, and a node's start for a follower's file.
pub fn load_file(path: &std::path::Path) -> Result<RuleTable, LoadError> {
    let text =
        shoal_gossip::small_file::read_to_string(path, MAX_FILE_BYTES).map_err(LoadError::Read)?;
    parse(&text).map_err(LoadError::Rules)
}

/// Parses and checks a rules file; the table comes out canonical.
pub fn parse(text: &str) -> Result<RuleTable, RulesError> {
    let lines = LineIndex::new(text);
    let raw: RawFile = toml::from_str(text).map_err(|e| from_toml_error(text, &lines, &e))?;
    let no_services = or(&raw.no_services, false);
    if raw.service.is_empty() && !no_services {
        // An empty file is most likely a truncated one (a ConfigMap emptied, a copy cut short):
        // the advice to publish nothing on purpose would wipe every service (a probe).
        let message = if text.trim().is_empty() {
            "the file is empty (truncated, or not written yet?), so it is not taken; a file that \
             removes every service on purpose says `no_services = true`"
        } else {
            "the file lists no service; an empty table removes every service on every node, so \
             write `no_services = true` to publish one on purpose"
        };
        return Err(RulesError {
            line: 1,
            field: "service".into(),
            message: message.into(),
        });
    }
    if no_services && !raw.service.is_empty() {
        return Err(RulesError {
            line: raw
                .no_services
                .as_ref()
                .map_or(1, |v| lines.line(v.span().start)),
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
        let raw_service = spanned.get_ref();
        let service = check_service(&ctx, i, raw_service, line)?;
        let err = |field: &str, offset: usize, message: String| RulesError {
            line: lines.line(offset),
            field: format!("service[{i}].{field}"),
            message,
        };
        if !names.insert(service.name.clone()) {
            return Err(err(
                "name",
                raw_service.name.span().start,
                format!("{:?} is used twice", service.name),
            ));
        }
        if !endpoints.insert((service.vip, service.port, service.protocol)) {
            return Err(err(
                "vip",
                raw_service.vip.span().start,
                format!(
                    "{} {} is already served by another service",
                    service.protocol,
                    SocketAddr::new(service.vip, service.port)
                ),
            ));
        }
        table.services.push(service);
    }
    // Every replica holds every VIP of the table: a backend at another service's VIP would send
    // that service's packets back into the replicas (`validate::service` refuses a service's
    // own VIP; this is the same across services).
    let vips: BTreeSet<std::net::IpAddr> = table.services.iter().map(|s| s.vip).collect();
    for (i, spanned) in raw.service.iter().enumerate() {
        for (j, backend) in spanned.get_ref().backend.iter().enumerate() {
            let address = backend.get_ref().address.get_ref();
            if vips.contains(address) {
                return Err(RulesError {
                    line: lines.line(backend.get_ref().address.span().start),
                    field: format!("service[{i}].backend[{j}].address"),
                    message: format!(
                        "{address} is a VIP of this table (every replica holds it), not a backend"
                    ),
                });
            }
        }
    }
    table.canonicalize();
    Ok(table)
}

/// Settings that parse but will not do what an operator expects; `shoal check` prints them.
/// Pure: one line per finding, naming the service.
pub fn warnings(table: &RuleTable) -> Vec<String> {
    let mut out = Vec::new();
    for s in &table.services {
        if s.forwarding == Forwarding::Masq {
            let forwarding = match s.vip {
                std::net::IpAddr::V4(_) => "net.ipv4.ip_forward = 1",
                std::net::IpAddr::V6(_) => "net.ipv6.conf.all.forwarding = 1",
            };
            out.push(format!(
                "service {:?}: masq needs each reply to come back through the replica that \
                 forwarded the request (the backends' route to the clients must point at it, \
                 and {forwarding} there): behind ECMP with several replicas, \
                 replies through another replica are dropped",
                s.name
            ));
        }
        let hashing = matches!(s.scheduler.as_str(), "mh" | "sh");
        if hashing && !s.flags.fallback && s.health.is_some() {
            let sched = &s.scheduler;
            out.push(format!(
                "service {:?}: health-checked {sched} service without {sched}_fallback: a \
                 backend drained to weight 0 keeps its share of new connections, and they \
                 fail; set {sched}_fallback = true",
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
    // An error about an optional field the file left out points at the service's header.
    let err = |field: &str, at: Option<std::ops::Range<usize>>, message: String| RulesError {
        line: at.map_or(line, |span| ctx.lines.line(span.start)),
        field: format!("service[{i}].{field}"),
        message,
    };
    let span = |v: &Option<Spanned<_>>| v.as_ref().map(Spanned::<_>::span);
    let scheduler = raw
        .scheduler
        .as_ref()
        .map_or("mh", |s| s.get_ref().as_str())
        .to_string();
    // Each hashing scheduler's flags under its own names; a flag turned on for a scheduler
    // that would ignore it is refused at its own line.
    for (name, value, wants) in [
        ("mh_port", &raw.mh_port, "mh"),
        ("mh_fallback", &raw.mh_fallback, "mh"),
        ("sh_port", &raw.sh_port, "sh"),
        ("sh_fallback", &raw.sh_fallback, "sh"),
    ] {
        if value.as_ref().is_some_and(|v| *v.get_ref()) && scheduler != wants {
            return Err(err(
                name,
                value.as_ref().map(|v| v.span()),
                format!("{name} needs scheduler \"{wants}\", not {scheduler:?}"),
            ));
        }
    }
    let flags = match scheduler.as_str() {
        "mh" => SchedFlags {
            port: or(&raw.mh_port, true),
            fallback: or(&raw.mh_fallback, true),
        },
        "sh" => SchedFlags {
            port: or(&raw.sh_port, false),
            fallback: or(&raw.sh_fallback, true),
        },
        _ => SchedFlags::default(),
    };
    let forwarding_kind = or(&raw.forwarding, RawForwarding::Tunnel);
    // Settings the chosen forwarding would silently ignore are refused: an operator who wrote
    // `tunnel = "gre"` next to `forwarding = "masq"` expects one of them to happen.
    if forwarding_kind != RawForwarding::Tunnel {
        let how = format!("{forwarding_kind:?}").to_lowercase();
        for (name, at) in [
            ("tunnel", raw.tunnel.as_ref().map(|t| t.span())),
            ("tunnel_port", span(&raw.tunnel_port)),
        ] {
            if at.is_some() {
                return Err(err(
                    name,
                    at,
                    format!(
                        "only forwarding = \"tunnel\" takes a {name}; this service forwards by \
                         {how}, which would ignore it"
                    ),
                ));
            }
        }
    }
    let tunnel_kind = or(&raw.tunnel, RawTunnel::Ipip);
    if tunnel_kind != RawTunnel::Gue && raw.tunnel_port.is_some() {
        let kind = format!("{tunnel_kind:?}").to_lowercase();
        return Err(err(
            "tunnel_port",
            span(&raw.tunnel_port),
            format!("only a gue tunnel takes a tunnel_port; {kind} carries no port"),
        ));
    }
    let forwarding = match forwarding_kind {
        RawForwarding::Masq => Forwarding::Masq,
        RawForwarding::Route => Forwarding::Route,
        RawForwarding::Tunnel => Forwarding::Tunnel(match tunnel_kind {
            RawTunnel::Ipip => Tunnel::Ipip,
            RawTunnel::Gue => Tunnel::Gue {
                port: *raw
                    .tunnel_port
                    .as_ref()
                    .ok_or_else(|| {
                        err(
                            "tunnel_port",
                            raw.tunnel.as_ref().map(|t| t.span()),
                            "gue needs a tunnel_port".into(),
                        )
                    })?
                    .get_ref(),
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
                weight: or(&b.weight, 1),
            }
        })
        .collect();
    let health = match &raw.health {
        None => None,
        Some(spanned) => Some(health_of(ctx, i, spanned)?),
    };
    let source_ranges = check_source_ranges(ctx, i, *raw.vip.get_ref(), &raw.source_ranges)?;
    let service = VirtualService {
        name: raw.name.get_ref().clone(),
        vip: *raw.vip.get_ref(),
        port: *raw.port.get_ref(),
        protocol: raw.protocol,
        scheduler,
        flags,
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

/// The rules file's name and line for a field the shared validator refused: the value's own
/// line, or its table's header when the file left the value out (a default was refused).
fn locate(
    ctx: &Ctx<'_>,
    i: usize,
    raw: &RawService,
    line: usize,
    e: validate::Invalid,
) -> RulesError {
    use validate::{BackendField, Field, HealthField};
    fn start<T>(v: &Option<Spanned<T>>) -> Option<usize> {
        v.as_ref().map(|v| v.span().start)
    }
    let (offset, field) = match e.field {
        Field::Name => (Some(raw.name.span().start), "name".to_string()),
        Field::Vip => (Some(raw.vip.span().start), "vip".into()),
        Field::Port => (Some(raw.port.span().start), "port".into()),
        Field::Scheduler => (start(&raw.scheduler), "scheduler".into()),
        // The flags follow the scheduler here (a flag for another one is refused before the
        // validator sees it), so a refusal is about the scheduler.
        Field::SchedFlags => (start(&raw.scheduler), "scheduler".into()),
        Field::TunnelPort => (start(&raw.tunnel_port), "tunnel_port".into()),
        Field::Backend(j, part) => {
            let b = &raw.backend[j];
            let (offset, name) = match part {
                BackendField::Address => (b.get_ref().address.span().start, "address"),
                BackendField::Port => (start(&b.get_ref().port).unwrap_or(b.span().start), "port"),
                BackendField::Weight => (
                    start(&b.get_ref().weight).unwrap_or(b.span().start),
                    "weight",
                ),
            };
            (Some(offset), format!("backend[{j}].{name}"))
        }
        Field::Health(part) => {
            let h = raw.health.as_ref().map(|h| h.get_ref());
            let (offset, name) = match part {
                HealthField::IntervalMs => (h.and_then(|h| start(&h.interval_ms)), "interval_ms"),
                HealthField::TimeoutMs => (h.and_then(|h| start(&h.timeout_ms)), "timeout_ms"),
                HealthField::Rise => (h.and_then(|h| start(&h.rise)), "rise"),
                HealthField::Fall => (h.and_then(|h| start(&h.fall)), "fall"),
                HealthField::Path => (h.and_then(|h| start(&h.path)), "path"),
                HealthField::ExpectStatus => {
                    (h.and_then(|h| start(&h.expect_status)), "expect_status")
                }
                HealthField::Host => (h.and_then(|h| start(&h.host)), "host"),
                HealthField::Port => (h.and_then(|h| start(&h.port)), "port"),
            };
            let table = raw.health.as_ref().map(|h| h.span().start);
            (offset.or(table), format!("health.{name}"))
        }
    };
    RulesError {
        line: offset.map_or(line, |o| ctx.lines.line(o)),
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
    let mut seen = BTreeSet::new();
    for (k, spanned) in raw.iter().enumerate() {
        let err = |message: String| RulesError {
            line: ctx.lines.line(spanned.span().start),
            field: format!("service[{i}].source_ranges[{k}]"),
            message,
        };
        let text = spanned.get_ref();
        let not_cidr = || {
            err(format!(
                "{} is not a network in CIDR form (e.g. 192.0.2.0/24 or 2001:db8::/32)",
                validate::shown(text)
            ))
        };
        let net: IpNet = text.parse().map_err(|_| not_cidr())?;
        // ipnet reads `010.0.0.0/8` as 10.0.0.0/8 where other tools read octal 8.0.0.0/8; the
        // address is held to the VIP's own parse, which refuses leading zeros.
        let address = text.split_once('/').map_or(text.as_str(), |(a, _)| a);
        if address.parse::<std::net::IpAddr>().is_err() {
            return Err(not_cidr());
        }
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
        // A repeat is most likely a typo for another network, which would then stay blocked.
        if !seen.insert(net) {
            return Err(err(format!("{net} is listed twice")));
        }
        out.push(net);
    }
    out.sort();
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
            // A tcp check only connects: these would be silently ignored.
            for (at, name) in [
                (h.path.as_ref().map(|v| v.span()), "path"),
                (h.expect_status.as_ref().map(|v| v.span()), "expect_status"),
                (h.host.as_ref().map(|v| v.span()), "host"),
            ] {
                if let Some(at) = at {
                    return Err(RulesError {
                        line: ctx.lines.line(at.start),
                        field: format!("service[{i}].health.{name}"),
                        message: format!("only http and https checks take {name}"),
                    });
                }
            }
            Probe::Tcp
        }
        RawProbeKind::Http | RawProbeKind::Https => Probe::Http {
            path: or(&h.path, "/".to_string()),
            expect_status: or(&h.expect_status, 200),
            tls: matches!(h.kind, RawProbeKind::Https),
            host: h.host.as_ref().map(|v| v.get_ref().clone()),
        },
    };
    let interval_ms = or(&h.interval_ms, 1000);
    Ok(HealthCheck {
        probe,
        interval_ms,
        // The default waits no longer than the interval: `interval_ms = 200` alone was refused
        // for a timeout of 500 the file never set (a probe).
        timeout_ms: or(&h.timeout_ms, 500.min(interval_ms)),
        rise: or(&h.rise, 2),
        fall: or(&h.fall, 3),
        port: h.port.as_ref().map(|p| *p.get_ref()),
    })
}

/// The example rules file the demo runs and docs/rules.md explains.
pub const EXAMPLE: &str = include_str!("../../docs/examples/rules.toml");

mod position;

#[cfg(test)]
mod tests;
