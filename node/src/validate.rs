//! One validation of a rule table's services, whichever source built them: the static rules
//! file (`rules.rs`) and the Kubernetes annotations and translation (`source/kubernetes/`) both
//! call it, so a value one source refuses cannot reach the dataplane through the other.
//!
//! Pure: a [`VirtualService`] (or a [`HealthCheck`]) in, the first problem out as an
//! [`Invalid`] naming the [`Field`]; each source maps the field to its own name for it (a line
//! and `service[2].health.timeout_ms` in the rules file, `shoal.io/health-timeout-ms` on a
//! Service). What the model cannot express wrongly (a TCP check with a path, an unknown
//! forwarding name) is the sources' own parsing.

use crate::table::{HealthCheck, Probe, VirtualService};
use shoal_dataplane::model::{Forwarding, Protocol, Tunnel};
use std::collections::BTreeSet;
use std::net::SocketAddr;

mod address;
pub use address::{not_a_vip_pool, not_unicast, POOL_PREFIX_MIN_V4, POOL_PREFIX_MIN_V6};

/// IPVS schedulers a service may use; `mh` is the default because every replica builds the
/// same Maglev table from the same destinations, so flows survive a move between replicas.
pub const SCHEDULERS: &[&str] = &[
    "mh", "rr", "wrr", "lc", "wlc", "sh", "dh", "sed", "nq", "lblc", "lblcr", "fo", "ovf", "twos",
];
/// IPVS's largest weight (the kernel takes an int; ipvsadm caps it here).
pub const MAX_WEIGHT: u32 = 65535;
pub const NAME_LEN_MAX: usize = 253;
/// One hour: a longer probe interval is a typo, and bounded values keep time arithmetic safe.
pub const HEALTH_INTERVAL_MS: std::ops::RangeInclusive<u64> = 100..=3_600_000;
pub const RISE_FALL: std::ops::RangeInclusive<u32> = 1..=100;
/// Below this a probe's timeout measures the checker's own scheduling (a busy runtime, a
/// throttled pod) more than the backend, and a healthy backend flaps: 1 ms did in a probe. A
/// shorter `timeout_ms` is accepted (refusing it would drop a Service a release before
/// accepted, at the upgrade) and probes wait this long.
pub const HEALTH_TIMEOUT_MS_MIN: u64 = 50;
pub const PATH_LEN_MAX: usize = 2048;
pub const HOST_LEN_MAX: usize = 253;

/// Which part of a service is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Name,
    Vip,
    Port,
    Scheduler,
    /// The hashing schedulers' flags (`mh_port`, `mh_fallback`, `sh_port`, `sh_fallback`).
    SchedFlags,
    /// The GUE tunnel's UDP port.
    TunnelPort,
    /// The backend at this index (in the service's list).
    Backend(usize, BackendField),
    Health(HealthField),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendField {
    Address,
    Port,
    Weight,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthField {
    IntervalMs,
    TimeoutMs,
    Rise,
    Fall,
    Path,
    ExpectStatus,
    Host,
    /// The probed port (`health.port`).
    Port,
}

/// `text` quoted for an error, cut to its first 64 characters: a refused 3,000-character path
/// echoed whole would bury the message (and fill a log line per poll).
pub fn shown(text: &str) -> String {
    const SHOWN_CHARS: usize = 64;
    match text.char_indices().nth(SHOWN_CHARS) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &text[..cut], text.len()),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field:?}: {message}")]
pub struct Invalid {
    pub field: Field,
    pub message: String,
}

fn invalid(field: Field, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        message: message.into(),
    }
}

/// What a source allows beyond the defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allow {
    /// Backends on 127.0.0.0/8 or ::1 (a one-host lab; the rules file's `loopback_backends`).
    pub loopback_backends: bool,
}

/// Checks one service: name, VIP, port, scheduler and its flags, forwarding, every backend,
/// and the health check.
pub fn service(s: &VirtualService, allow: Allow) -> Result<(), Invalid> {
    if s.name.is_empty() || s.name.len() > NAME_LEN_MAX || s.name.contains(char::is_control) {
        return Err(invalid(
            Field::Name,
            format!("must be 1-{NAME_LEN_MAX} bytes without control characters"),
        ));
    }
    // Names people read in `shoal status` and metrics: two that print alike must not be two
    // services (`"web "`, a byte-order mark before `web`, a right-to-left override).
    if s.name.trim() != s.name || s.name.contains(is_invisible_format) {
        return Err(invalid(
            Field::Name,
            format!(
                "{} has leading or trailing spaces or invisible formatting characters",
                shown(&s.name)
            ),
        ));
    }
    // "café" typed as e + U+0301 prints as "café" typed as U+00E9: one name, one spelling.
    let nfc = icu_normalizer::ComposingNormalizerBorrowed::new_nfc();
    if !nfc.is_normalized(&s.name) {
        return Err(invalid(
            Field::Name,
            format!(
                "{} is not in Unicode normal form C: write it as {} (the same letters, \
                 composed), so that one name has one spelling",
                shown(&s.name),
                shown(&nfc.normalize(&s.name))
            ),
        ));
    }
    if s.port == 0 {
        return Err(invalid(Field::Port, "must be 1-65535"));
    }
    if let Some(why) = not_unicast(s.vip) {
        return Err(invalid(
            Field::Vip,
            format!("{} is not a unicast address a VIP can use ({why})", s.vip),
        ));
    }
    scheduler(&s.scheduler)?;
    if !matches!(s.scheduler.as_str(), "mh" | "sh") && (s.flags.port || s.flags.fallback) {
        return Err(invalid(
            Field::SchedFlags,
            format!(
                "port and fallback flags need scheduler \"mh\" or \"sh\", not {:?}",
                s.scheduler
            ),
        ));
    }
    if let Forwarding::Tunnel(Tunnel::Gue { port: 0, .. }) = s.forwarding {
        return Err(invalid(Field::TunnelPort, "port 0 is not usable"));
    }
    let mut seen = BTreeSet::new();
    for (j, b) in s.backends.iter().enumerate() {
        let field = |f| Field::Backend(j, f);
        if b.port == 0 {
            return Err(invalid(field(BackendField::Port), "must be 1-65535"));
        }
        // Tunnel and route forwarding keep the packet's destination port: the backend must
        // listen on the service port.
        if !matches!(s.forwarding, Forwarding::Masq) && b.port != s.port {
            return Err(invalid(
                field(BackendField::Port),
                format!(
                    "{} differs from the service port {}; only masq forwarding can change ports",
                    b.port, s.port
                ),
            ));
        }
        if b.address.is_ipv4() != s.vip.is_ipv4() {
            return Err(invalid(
                field(BackendField::Address),
                format!("{} is not of the VIP's address family", b.address),
            ));
        }
        // Every replica holds the VIP: a backend at the VIP would send each packet back into
        // the node that balances it (tunnel, route) or to the VIP again (masq), never to a
        // server.
        if b.address == s.vip {
            return Err(invalid(
                field(BackendField::Address),
                format!("{} is the service's own VIP, not a backend", b.address),
            ));
        }
        let loopback_ok = allow.loopback_backends && b.address.is_loopback();
        if let Some(why) = not_unicast(b.address).filter(|_| !loopback_ok) {
            let hint = if b.address.is_loopback() {
                "; set `loopback_backends = true` at the top of the file for a one-host lab"
            } else {
                ""
            };
            return Err(invalid(
                field(BackendField::Address),
                format!(
                    "{} is not a unicast address a backend can use ({why}){hint}",
                    b.address
                ),
            ));
        }
        if b.weight > MAX_WEIGHT {
            return Err(invalid(
                field(BackendField::Weight),
                format!("{} is over {MAX_WEIGHT}", b.weight),
            ));
        }
        if !seen.insert((b.address, b.port)) {
            return Err(invalid(
                field(BackendField::Address),
                format!("{} is listed twice", SocketAddr::new(b.address, b.port)),
            ));
        }
    }
    let Some(h) = &s.health else {
        return Ok(());
    };
    health(h)?;
    // tcp and http probes speak TCP to the backend's port: at a UDP-only backend every probe
    // is refused and every backend drained (found with real traffic).
    if s.protocol != Protocol::Tcp && h.port.is_none() {
        return Err(invalid(
            Field::Health(HealthField::Port),
            format!(
                "a {} service's backends cannot be probed on their service port (tcp and http \
                 checks connect over TCP); give the TCP port they answer checks on, or leave \
                 the health check out",
                s.protocol
            ),
        ));
    }
    Ok(())
}

/// A scheduler IPVS has (IPVS takes any name up to 15 characters and fails only when the
/// service is programmed; unknown names are refused here instead).
pub fn scheduler(name: &str) -> Result<(), Invalid> {
    if SCHEDULERS.contains(&name) {
        Ok(())
    } else {
        Err(invalid(
            Field::Scheduler,
            format!(
                "{} is not an IPVS scheduler, expected one of {}",
                shown(name),
                SCHEDULERS.join(" ")
            ),
        ))
    }
}

/// Checks a health check's bounds: they feed timers and an HTTP request line.
pub fn health(h: &HealthCheck) -> Result<(), Invalid> {
    let field = Field::Health;
    if h.port == Some(0) {
        return Err(invalid(field(HealthField::Port), "port 0 is not usable"));
    }
    if !HEALTH_INTERVAL_MS.contains(&h.interval_ms) {
        return Err(invalid(
            field(HealthField::IntervalMs),
            format!(
                "{} is outside {}-{}",
                h.interval_ms,
                HEALTH_INTERVAL_MS.start(),
                HEALTH_INTERVAL_MS.end()
            ),
        ));
    }
    if h.timeout_ms == 0 || h.timeout_ms > h.interval_ms {
        return Err(invalid(
            field(HealthField::TimeoutMs),
            format!(
                "{} must be between 1 and interval_ms ({})",
                h.timeout_ms, h.interval_ms
            ),
        ));
    }
    for (value, f) in [(h.rise, HealthField::Rise), (h.fall, HealthField::Fall)] {
        if !RISE_FALL.contains(&value) {
            return Err(invalid(
                field(f),
                format!(
                    "{value} is outside {}-{}",
                    RISE_FALL.start(),
                    RISE_FALL.end()
                ),
            ));
        }
    }
    if let Probe::Http {
        path,
        expect_status,
        host,
        ..
    } = &h.probe
    {
        if !path.starts_with('/') {
            return Err(invalid(
                field(HealthField::Path),
                format!("{} must start with /", shown(path)),
            ));
        }
        // The HTTP client normalises a URL's path: `/x/../y` would be asked as `/y`, `/a#f`
        // as `/a`. Refused, so that the path asked is the path written.
        if let Some(why) = path_rewritten_by_clients(path) {
            return Err(invalid(
                field(HealthField::Path),
                format!(
                    "{} {why}: the probe would request another path",
                    shown(path)
                ),
            ));
        }
        // The path and the host go into a request line: CR/LF would let a rule inject headers.
        if path.len() > PATH_LEN_MAX || path.chars().any(|c| c.is_control() || c == ' ') {
            return Err(invalid(
                field(HealthField::Path),
                format!(
                    "{} must be at most {PATH_LEN_MAX} bytes without spaces or control characters",
                    shown(path)
                ),
            ));
        }
        if !(100..=599).contains(expect_status) {
            return Err(invalid(
                field(HealthField::ExpectStatus),
                format!("{expect_status} is not an HTTP status (100-599)"),
            ));
        }
        // An interim answer (100 Continue, 103 Early Hints...) is followed by the final one,
        // which the client waits for: expecting it could never pass, and the backend showed
        // as down with "timeout" (a probe). 101 ends the exchange and can be expected.
        if (100..=199).contains(expect_status) && *expect_status != 101 {
            return Err(invalid(
                field(HealthField::ExpectStatus),
                format!(
                    "{expect_status} is an interim answer, never the final one a check reads \
                     (101 or 200-599)"
                ),
            ));
        }
        if let Some(host) = host {
            if host.is_empty()
                || host.len() > HOST_LEN_MAX
                || host.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(invalid(
                    field(HealthField::Host),
                    format!(
                        "{} must be 1-{HOST_LEN_MAX} bytes without spaces or control characters",
                        shown(host)
                    ),
                ));
            }
            if !is_host_header(host) {
                return Err(invalid(
                    field(HealthField::Host),
                    format!(
                        "{} is not a Host value: a name or IPv4 address, or an [IPv6] address, \
                         with an optional :port",
                        shown(host)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Why a client would request another path than `path`, if it would: a fragment, a dot
/// segment, a backslash (read as `/`), or a percent-encoded dot (decoded, then removed).
fn path_rewritten_by_clients(path: &str) -> Option<&'static str> {
    if path.contains('#') {
        return Some("has a fragment (#), which is never sent");
    }
    if path.contains('\\') {
        return Some("has a backslash, which clients send as /");
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2e") {
        return Some("has a percent-encoded dot (%2e), which clients decode");
    }
    let query_start = path.find('?').unwrap_or(path.len());
    if path[..query_start]
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Some("has a . or .. segment, which clients resolve");
    }
    None
}

/// Whether `host` is what RFC 9110 allows in a Host header: `uri-host [ ":" port ]`, the host
/// a name (letters, digits, `-`, `.`, `_`), an IPv4 address or a bracketed IPv6 address.
fn is_host_header(host: &str) -> bool {
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, after)) => {
                if v6.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                match after {
                    "" => return true,
                    _ => match after.strip_prefix(':') {
                        Some(port) => ("", Some(port)),
                        None => return false,
                    },
                }
            }
            None => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        },
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok());
    let name_ok = host.starts_with('[')
        || (!name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)));
    port_ok && name_ok
}

/// Unicode format characters that print as nothing or reorder what follows: byte-order mark,
/// zero-width spaces and joiners, bidirectional controls, soft hyphen.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Backend;
    use shoal_dataplane::model::{Protocol, SchedFlags};

    #[test]
    fn a_long_refused_value_is_shown_cut() {
        assert_eq!(shown("/x y"), "\"/x y\"");
        let mut check = svc().health.unwrap();
        if let Probe::Http { path, .. } = &mut check.probe {
            *path = format!("/{}", "é".repeat(3_000));
        }
        let err = health(&check).unwrap_err();
        assert!(err.message.len() < 300, "{}", err.message);
        assert!(err.message.contains("(6001 bytes)"), "{}", err.message);
    }

    fn svc() -> VirtualService {
        VirtualService {
            name: "web".into(),
            vip: "203.0.113.1".parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
            scheduler: "mh".into(),
            flags: SchedFlags {
                port: true,
                fallback: true,
            },
            forwarding: Forwarding::Tunnel(Tunnel::Ipip),
            backends: vec![Backend {
                address: "198.18.0.20".parse().unwrap(),
                port: 80,
                weight: 1,
            }],
            health: Some(HealthCheck {
                probe: Probe::Http {
                    path: "/".into(),
                    expect_status: 200,
                    tls: false,
                    host: None,
                },
                interval_ms: 1000,
                timeout_ms: 500,
                rise: 2,
                fall: 3,
                port: None,
            }),
            source_ranges: vec![],
        }
    }

    fn field_of(change: impl FnOnce(&mut VirtualService)) -> Option<Field> {
        let mut s = svc();
        change(&mut s);
        service(&s, Allow::default()).err().map(|e| e.field)
    }

    fn http(s: &mut VirtualService) -> (&mut String, &mut u16, &mut Option<String>) {
        match &mut s.health.as_mut().unwrap().probe {
            Probe::Http {
                path,
                expect_status,
                host,
                ..
            } => (path, expect_status, host),
            Probe::Tcp => unreachable!(),
        }
    }

    #[test]
    fn each_bound_names_its_field() {
        use BackendField as B;
        use HealthField as H;
        assert_eq!(field_of(|_| {}), None);
        assert_eq!(field_of(|s| s.name.clear()), Some(Field::Name));
        assert_eq!(field_of(|s| s.port = 0), Some(Field::Port));
        assert_eq!(
            field_of(|s| s.vip = "224.0.0.1".parse().unwrap()),
            Some(Field::Vip)
        );
        assert_eq!(
            field_of(|s| s.scheduler = "bogus".into()),
            Some(Field::Scheduler)
        );
        assert_eq!(
            field_of(|s| s.scheduler = "rr".into()),
            Some(Field::SchedFlags)
        );
        assert_eq!(
            field_of(|s| s.forwarding = Forwarding::Tunnel(Tunnel::Gue { port: 0, flags: 0 })),
            Some(Field::TunnelPort)
        );
        assert_eq!(
            field_of(|s| s.backends[0].port = 81),
            Some(Field::Backend(0, B::Port))
        );
        assert_eq!(
            field_of(|s| s.backends[0].address = "2001:db8::1".parse().unwrap()),
            Some(Field::Backend(0, B::Address))
        );
        assert_eq!(
            field_of(|s| s.backends[0].weight = MAX_WEIGHT + 1),
            Some(Field::Backend(0, B::Weight))
        );
        assert_eq!(
            field_of(|s| s.backends.push(s.backends[0].clone())),
            Some(Field::Backend(1, B::Address))
        );
        assert_eq!(
            field_of(|s| s.backends[0].address = s.vip),
            Some(Field::Backend(0, B::Address))
        );
        let h = |f: fn(&mut HealthCheck)| field_of(move |s| f(s.health.as_mut().unwrap()));
        assert_eq!(
            h(|h| h.interval_ms = 99),
            Some(Field::Health(H::IntervalMs))
        );
        assert_eq!(
            h(|h| h.interval_ms = u64::MAX),
            Some(Field::Health(H::IntervalMs))
        );
        assert_eq!(h(|h| h.timeout_ms = 0), Some(Field::Health(H::TimeoutMs)));
        assert_eq!(h(|h| h.timeout_ms = 1), None, "raised to 50 ms when probed");
        assert_eq!(h(|h| h.rise = 101), Some(Field::Health(H::Rise)));
        assert_eq!(h(|h| h.fall = 0), Some(Field::Health(H::Fall)));
        assert_eq!(
            field_of(|s| *http(s).0 = "/a\r\nX: y".into()),
            Some(Field::Health(H::Path))
        );
        assert_eq!(
            field_of(|s| *http(s).1 = 600),
            Some(Field::Health(H::ExpectStatus))
        );
        for interim in [100, 102, 103, 199] {
            assert_eq!(
                field_of(|s| *http(s).1 = interim),
                Some(Field::Health(H::ExpectStatus)),
                "{interim}"
            );
        }
        for status in [101, 200, 204, 599] {
            assert_eq!(field_of(|s| *http(s).1 = status), None, "{status}");
        }
        assert_eq!(
            field_of(|s| *http(s).2 = Some("a\r\nX-Injected: 1".into())),
            Some(Field::Health(H::Host))
        );
    }

    /// The audit of 2026-12-06: "café" composed and decomposed were two services that print
    /// alike.
    #[test]
    fn names_have_one_spelling() {
        let mut s = svc();
        s.name = "caf\u{e9}".into();
        assert_eq!(service(&s, Allow::default()), Ok(()));
        s.name = "cafe\u{301}".into();
        let e = service(&s, Allow::default()).unwrap_err();
        assert_eq!(e.field, Field::Name);
        assert!(
            e.message.contains("normal form C") && e.message.contains("\"caf\u{e9}\""),
            "{e}"
        );
    }

    #[test]
    fn loopback_backends_only_when_allowed() {
        let mut s = svc();
        s.backends[0].address = "127.0.0.1".parse().unwrap();
        assert!(service(&s, Allow::default()).is_err());
        assert!(service(
            &s,
            Allow {
                loopback_backends: true
            }
        )
        .is_ok());
    }

    /// The audit of 2026-12-06: paths the HTTP client rewrites, Host values that are not
    /// hosts, names that print like others, and IPv4-compatible IPv6 addresses were accepted.
    #[test]
    fn probe_paths_hosts_names_and_addresses_that_mislead_are_refused() {
        let probe = |path: &str, host: Option<&str>| HealthCheck {
            probe: Probe::Http {
                path: path.into(),
                expect_status: 200,
                tls: false,
                host: host.map(str::to_string),
            },
            interval_ms: 1000,
            timeout_ms: 500,
            rise: 2,
            fall: 2,
            port: None,
        };
        for path in ["/healthz", "/a/b?x=1&y=%20", "/a..b/.well-known", "/"] {
            assert!(health(&probe(path, None)).is_ok(), "{path}");
        }
        for (path, says) in [
            ("/a#frag", "fragment"),
            ("/x/../y", ". or .. segment"),
            ("/./z", ". or .. segment"),
            ("/x/..", ". or .. segment"),
            ("/%2e%2e/w", "percent-encoded dot"),
            ("/%2E/w", "percent-encoded dot"),
            ("/a\\b", "backslash"),
        ] {
            let err = health(&probe(path, None)).unwrap_err();
            assert_eq!(err.field, Field::Health(HealthField::Path), "{path}");
            assert!(err.message.contains(says), "{path}: {err}");
        }
        for host in [
            "example.com",
            "example.com:8080",
            "10.0.0.1:80",
            "[2001:db8::1]",
            "[2001:db8::1]:443",
            "svc_a.ns",
        ] {
            assert!(health(&probe("/", Some(host))).is_ok(), "{host}");
        }
        for host in [
            "a/b",
            "u@h:1",
            "h:",
            "h:99999",
            "2001:db8::1",
            "[2001:db8::1",
            "[nope]",
            "a?b",
        ] {
            let err = health(&probe("/", Some(host))).unwrap_err();
            assert_eq!(err.field, Field::Health(HealthField::Host), "{host}");
        }
        for name in [
            "web ",
            " web",
            "\u{feff}web",
            "\u{202e}gnp.exe",
            "we\u{200b}b",
        ] {
            assert_eq!(
                field_of(|x| x.name = name.into()),
                Some(Field::Name),
                "{name:?}"
            );
        }
        assert_eq!(field_of(|x| x.name = "café web/1".into()), None);
        for compat in ["::10.0.0.1", "::198.18.0.1"] {
            let ip: std::net::IpAddr = compat.parse().unwrap();
            assert!(
                not_unicast(ip).unwrap().contains("IPv4-compatible"),
                "{compat}"
            );
        }
        assert_eq!(not_unicast("2001:db8::10.0.0.1".parse().unwrap()), None);
    }
}
