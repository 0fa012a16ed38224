//! The `shoal.io/...` Service annotations: parsing, defaults, and errors that name the annotation.
//!
//! | annotation | values | default |
//! |---|---|---|
//! | `shoal.io/vip` | an IPv4 or IPv6 address, or one of each comma-separated (dual-stack) | `spec.loadBalancerIP`, else allocated from a pool |
//! | `shoal.io/allow-shared-ip` | a sharing key: Services of one namespace with the same key and no common port share a VIP | none |
//! | `shoal.io/scheduler` | `mh rr wrr lc wlc sh dh sed nq lblc lblcr fo ovf twos` | `mh` |
//! | `shoal.io/mh-port` | `true`/`false` (only with `mh`) | `true` with `mh` (as in the rules file), `false` with `sessionAffinity: ClientIP` |
//! | `shoal.io/mh-fallback` | `true`/`false` (only with `mh`) | `true` with `mh` |
//! | `shoal.io/sh-port` | `true`/`false` (only with `sh`) | `false` (sh is for affinity) |
//! | `shoal.io/sh-fallback` | `true`/`false` (only with `sh`) | `true` with `sh` (clients of a drained backend go elsewhere) |
//! | `shoal.io/forwarding` | `tunnel` (= `ipip`), `gue`, `gre`, `masq`, `route` | `tunnel` |
//! | `shoal.io/gue-port` | UDP port of the backends' GUE decapsulation | `6080` |
//! | `shoal.io/health-check` | `tcp`, `http`, `https`, `none` | `tcp` |
//! | `shoal.io/health-path` | HTTP path starting with `/` | `/` |
//! | `shoal.io/health-expect-status` | 100..=599 | `200` |
//! | `shoal.io/health-host` | Host header | none |
//! | `shoal.io/health-interval-ms` | >= 100 | `2000` |
//! | `shoal.io/health-timeout-ms` | 1..=interval | `1000`, or the interval when shorter |
//! | `shoal.io/health-rise` | 1..=100 | `2` |
//! | `shoal.io/health-fall` | 1..=100 | `3` |
//! | `shoal.io/health-port` | the TCP port probed, when not the backend's (required to check UDP/SCTP ports) | the backend's port; UDP/SCTP ports unchecked |

use crate::table::{HealthCheck, Probe};
use shoal_dataplane::model::{Forwarding, SchedFlags, Tunnel};
use std::collections::BTreeMap;
use std::net::IpAddr;

pub const VIP: &str = "shoal.io/vip";
pub const ALLOW_SHARED_IP: &str = "shoal.io/allow-shared-ip";
pub const SCHEDULER: &str = "shoal.io/scheduler";
pub const MH_PORT: &str = "shoal.io/mh-port";
pub const MH_FALLBACK: &str = "shoal.io/mh-fallback";
pub const SH_PORT: &str = "shoal.io/sh-port";
pub const SH_FALLBACK: &str = "shoal.io/sh-fallback";
pub const FORWARDING: &str = "shoal.io/forwarding";
pub const GUE_PORT: &str = "shoal.io/gue-port";
pub const HEALTH_CHECK: &str = "shoal.io/health-check";
pub const HEALTH_PATH: &str = "shoal.io/health-path";
pub const HEALTH_EXPECT_STATUS: &str = "shoal.io/health-expect-status";
pub const HEALTH_HOST: &str = "shoal.io/health-host";
pub const HEALTH_INTERVAL_MS: &str = "shoal.io/health-interval-ms";
pub const HEALTH_TIMEOUT_MS: &str = "shoal.io/health-timeout-ms";
pub const HEALTH_RISE: &str = "shoal.io/health-rise";
pub const HEALTH_FALL: &str = "shoal.io/health-fall";
pub const HEALTH_PORT: &str = "shoal.io/health-port";

/// IPVS schedulers Shoal lets a Service pick (the rules file's list: one validator, `validate.rs`).
pub use crate::validate::SCHEDULERS;

pub const DEFAULT_GUE_PORT: u16 = 6080;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
/// The value is shown cut to 64 characters: a 200,000-character annotation made a 200 KB log
/// line per pass (the audit of 2026-12-06).
#[error("annotation {annotation}={}: {reason}", crate::validate::shown(value))]
pub struct AnnotationError {
    pub annotation: String,
    pub value: String,
    pub reason: String,
}

fn bad(annotation: &str, value: &str, reason: impl Into<String>) -> AnnotationError {
    AnnotationError {
        annotation: annotation.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Everything the annotations decide about one Service (all its ports share it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSettings {
    /// At most one address per family.
    pub requested_vips: Vec<IpAddr>,
    /// `shoal.io/allow-shared-ip`: Services with the same key may share a VIP.
    pub sharing_key: Option<String>,
    pub scheduler: String,
    pub flags: SchedFlags,
    pub forwarding: Forwarding,
    pub health: Option<HealthCheck>,
    /// From `spec.loadBalancerSourceRanges`, not an annotation (set by translate).
    pub source_ranges: Vec<ipnet::IpNet>,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            requested_vips: Vec::new(),
            sharing_key: None,
            scheduler: "mh".to_string(),
            flags: SchedFlags {
                port: true,
                fallback: true,
            },
            forwarding: Forwarding::Tunnel(Tunnel::Ipip),
            health: Some(default_health()),
            source_ranges: Vec::new(),
        }
    }
}

fn default_health() -> HealthCheck {
    HealthCheck {
        probe: Probe::Tcp,
        interval_ms: 2000,
        timeout_ms: 1000,
        rise: 2,
        fall: 3,
        port: None,
    }
}

/// Parses the annotations; `load_balancer_ip` is the deprecated `spec.loadBalancerIP`, used
/// only when `shoal.io/vip` is absent. Stops at the first bad annotation: a Service that is
/// half understood is not published.
pub fn parse(
    annotations: &BTreeMap<String, String>,
    load_balancer_ip: Option<&str>,
) -> Result<ServiceSettings, AnnotationError> {
    let get = |k: &str| annotations.get(k).map(|v| v.trim());
    let requested_vips: Vec<IpAddr> = match (get(VIP), load_balancer_ip.map(str::trim)) {
        (Some(v), _) => {
            let ips = v
                .split(',')
                .map(|a| a.trim().parse::<IpAddr>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| bad(VIP, v, "not an IP address (or two, comma-separated)"))?;
            let v4 = ips.iter().filter(|ip| ip.is_ipv4()).count();
            if ips.len() > 2 || v4 > 1 || ips.len() - v4 > 1 {
                return Err(bad(VIP, v, "at most one IPv4 and one IPv6 address"));
            }
            ips
        }
        (None, Some(v)) if !v.is_empty() => vec![v
            .parse()
            .map_err(|_| bad("spec.loadBalancerIP", v, "not an IP address"))?],
        _ => Vec::new(),
    };
    let sharing_key = match get(ALLOW_SHARED_IP) {
        Some("") => return Err(bad(ALLOW_SHARED_IP, "", "empty sharing key")),
        Some(v) if v.len() > 253 => {
            return Err(bad(ALLOW_SHARED_IP, v, "longer than 253 characters"))
        }
        Some(v) => Some(v.to_string()),
        None => None,
    };
    let mut s = ServiceSettings {
        requested_vips,
        sharing_key,
        ..ServiceSettings::default()
    };

    if let Some(v) = get(SCHEDULER) {
        crate::validate::scheduler(v).map_err(|e| bad(SCHEDULER, v, e.message))?;
        s.scheduler = v.to_string();
    }
    // The hashing schedulers' flags, each under its scheduler's name; defaults as in the rules
    // file (mh: port and fallback; sh: fallback only, hashing the port would undo affinity).
    s.flags = match s.scheduler.as_str() {
        "mh" => SchedFlags {
            port: true,
            fallback: true,
        },
        "sh" => SchedFlags {
            port: false,
            fallback: true,
        },
        _ => SchedFlags::default(),
    };
    for (key, wants, is_port) in [
        (MH_PORT, "mh", true),
        (MH_FALLBACK, "mh", false),
        (SH_PORT, "sh", true),
        (SH_FALLBACK, "sh", false),
    ] {
        if let Some(v) = get(key) {
            let on = parse_bool(key, v)?;
            if s.scheduler != wants {
                if on {
                    return Err(bad(
                        key,
                        v,
                        format!("only valid with shoal.io/scheduler={wants}"),
                    ));
                }
                continue;
            }
            if is_port {
                s.flags.port = on;
            } else {
                s.flags.fallback = on;
            }
        }
    }

    let gue_port = match get(GUE_PORT) {
        Some(v) => {
            let port: u16 = parse_num(GUE_PORT, v)?;
            if port == 0 {
                return Err(bad(GUE_PORT, v, "port 0 is not usable"));
            }
            Some(port)
        }
        None => None,
    };
    if let Some(v) = get(FORWARDING) {
        s.forwarding = match v {
            "tunnel" | "ipip" => Forwarding::Tunnel(Tunnel::Ipip),
            "gue" => Forwarding::Tunnel(Tunnel::Gue {
                port: gue_port.unwrap_or(DEFAULT_GUE_PORT),
                flags: 0,
            }),
            "gre" => Forwarding::Tunnel(Tunnel::Gre { flags: 0 }),
            "masq" => Forwarding::Masq,
            "route" => Forwarding::Route,
            _ => {
                return Err(bad(
                    FORWARDING,
                    v,
                    "expected one of tunnel ipip gue gre masq route",
                ))
            }
        };
    }
    if let (Some(_), false) = (
        gue_port,
        matches!(s.forwarding, Forwarding::Tunnel(Tunnel::Gue { .. })),
    ) {
        return Err(bad(
            GUE_PORT,
            get(GUE_PORT).unwrap_or_default(),
            "only valid with shoal.io/forwarding=gue",
        ));
    }

    s.health = parse_health(&get)?;
    Ok(s)
}

/// The health annotations a Service sets beside `shoal.io/health-check: none`, which turns
/// checks off: they take no effect. Not refused (a Service the previous release published
/// would be dropped in a rolling upgrade), but said: they were taken without a word, even
/// values that do not parse, while the same keys beside `tcp` refuse the Service (a probe).
pub fn ignored_without_checks(annotations: &BTreeMap<String, String>) -> Vec<&'static str> {
    if annotations.get(HEALTH_CHECK).map(|v| v.trim()) != Some("none") {
        return Vec::new();
    }
    [
        HEALTH_PATH,
        HEALTH_EXPECT_STATUS,
        HEALTH_HOST,
        HEALTH_INTERVAL_MS,
        HEALTH_TIMEOUT_MS,
        HEALTH_RISE,
        HEALTH_FALL,
        HEALTH_PORT,
    ]
    .into_iter()
    .filter(|k| annotations.contains_key(*k))
    .collect()
}

fn parse_health<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
) -> Result<Option<HealthCheck>, AnnotationError> {
    let kind = get(HEALTH_CHECK).unwrap_or("tcp");
    let mut h = default_health();
    h.probe = match kind {
        "none" => return Ok(None),
        "tcp" => Probe::Tcp,
        "http" | "https" => {
            let path = get(HEALTH_PATH).unwrap_or("/");
            let expect_status = match get(HEALTH_EXPECT_STATUS) {
                Some(v) => parse_num(HEALTH_EXPECT_STATUS, v)?,
                None => 200,
            };
            Probe::Http {
                path: path.to_string(),
                expect_status,
                tls: kind == "https",
                host: get(HEALTH_HOST).map(str::to_string),
            }
        }
        other => {
            return Err(bad(
                HEALTH_CHECK,
                other,
                "expected one of tcp http https none",
            ))
        }
    };
    if !matches!(h.probe, Probe::Http { .. }) {
        for key in [HEALTH_PATH, HEALTH_EXPECT_STATUS, HEALTH_HOST] {
            if let Some(v) = get(key) {
                return Err(bad(
                    key,
                    v,
                    "only valid with shoal.io/health-check=http or https",
                ));
            }
        }
    }
    if let Some(v) = get(HEALTH_INTERVAL_MS) {
        h.interval_ms = parse_num(HEALTH_INTERVAL_MS, v)?;
    }
    h.timeout_ms = match get(HEALTH_TIMEOUT_MS) {
        Some(v) => parse_num(HEALTH_TIMEOUT_MS, v)?,
        // The default waits no longer than the interval: a shorter interval alone was refused
        // for a timeout the Service never set, and the Service went unpublished (a probe).
        None => h.timeout_ms.min(h.interval_ms),
    };
    for (key, slot) in [(HEALTH_RISE, &mut h.rise), (HEALTH_FALL, &mut h.fall)] {
        if let Some(v) = get(key) {
            *slot = parse_num(key, v)?;
        }
    }
    if let Some(v) = get(HEALTH_PORT) {
        h.port = Some(parse_num(HEALTH_PORT, v)?);
    }
    // The bounds are the rules file's: one validator for both sources.
    crate::validate::health(&h).map_err(|e| {
        use crate::validate::HealthField as F;
        let (key, default) = match e.field {
            crate::validate::Field::Health(F::IntervalMs) => {
                (HEALTH_INTERVAL_MS, h.interval_ms.to_string())
            }
            crate::validate::Field::Health(F::TimeoutMs) => {
                (HEALTH_TIMEOUT_MS, h.timeout_ms.to_string())
            }
            crate::validate::Field::Health(F::Rise) => (HEALTH_RISE, h.rise.to_string()),
            crate::validate::Field::Health(F::Fall) => (HEALTH_FALL, h.fall.to_string()),
            crate::validate::Field::Health(F::Path) => (HEALTH_PATH, "/".to_string()),
            crate::validate::Field::Health(F::ExpectStatus) => {
                (HEALTH_EXPECT_STATUS, String::new())
            }
            crate::validate::Field::Health(F::Port) => (HEALTH_PORT, String::new()),
            _ => (HEALTH_HOST, String::new()),
        };
        let value = get(key).map(str::to_string).unwrap_or(default);
        bad(key, &value, e.message)
    })?;
    Ok(Some(h))
}

fn parse_bool(key: &str, v: &str) -> Result<bool, AnnotationError> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(bad(key, v, "expected true or false")),
    }
}

fn parse_num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, AnnotationError> {
    v.parse().map_err(|_| bad(key, v, "not a number in range"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_annotations_give_the_documented_defaults() {
        let s = parse(&BTreeMap::new(), None).unwrap();
        assert_eq!(s.scheduler, "mh");
        assert!(s.flags.fallback && s.flags.port);
        assert_eq!(s.forwarding, Forwarding::Tunnel(Tunnel::Ipip));
        let h = s.health.unwrap();
        assert_eq!(
            (h.probe, h.interval_ms, h.timeout_ms, h.rise, h.fall),
            (Probe::Tcp, 2000, 1000, 2, 3)
        );
        assert!(s.requested_vips.is_empty());
        assert_eq!(s.sharing_key, None);
    }

    #[test]
    fn a_huge_bad_value_is_shown_cut() {
        let huge = "f".repeat(200_000);
        let err = parse(&ann(&[("shoal.io/scheduler", &huge)]), None).unwrap_err();
        let text = err.to_string();
        assert!(text.len() < 1_000, "{} bytes", text.len());
        assert!(
            text.contains("shoal.io/scheduler") && text.contains("200000 bytes"),
            "{text}"
        );
    }

    #[test]
    fn vip_annotation_wins_over_load_balancer_ip() {
        let s = parse(&ann(&[(VIP, "203.0.113.7")]), Some("203.0.113.9")).unwrap();
        assert_eq!(s.requested_vips, ["203.0.113.7".parse::<IpAddr>().unwrap()]);
        let s = parse(&BTreeMap::new(), Some("203.0.113.9")).unwrap();
        assert_eq!(s.requested_vips, ["203.0.113.9".parse::<IpAddr>().unwrap()]);
        let s = parse(&ann(&[(VIP, "203.0.113.7, 2001:db8::7")]), None).unwrap();
        assert_eq!(s.requested_vips.len(), 2);
        for two_of_a_family in ["203.0.113.7,203.0.113.8", "2001:db8::1,2001:db8::2"] {
            let e = parse(&ann(&[(VIP, two_of_a_family)]), None).unwrap_err();
            assert_eq!(e.annotation, VIP);
        }
        let e = parse(&BTreeMap::new(), Some("nope")).unwrap_err();
        assert_eq!(e.annotation, "spec.loadBalancerIP");
    }

    #[test]
    fn full_http_health_and_gue() {
        let s = parse(
            &ann(&[
                (SCHEDULER, "wrr"),
                (FORWARDING, "gue"),
                (GUE_PORT, "5555"),
                (HEALTH_CHECK, "https"),
                (HEALTH_PATH, "/healthz"),
                (HEALTH_EXPECT_STATUS, "204"),
                (HEALTH_HOST, "example.test"),
                (HEALTH_INTERVAL_MS, "500"),
                (HEALTH_TIMEOUT_MS, "400"),
                (HEALTH_RISE, "1"),
                (HEALTH_FALL, "5"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(s.scheduler, "wrr");
        assert_eq!(s.flags, SchedFlags::default());
        assert_eq!(
            s.forwarding,
            Forwarding::Tunnel(Tunnel::Gue {
                port: 5555,
                flags: 0
            })
        );
        assert_eq!(
            s.health,
            Some(HealthCheck {
                probe: Probe::Http {
                    path: "/healthz".into(),
                    expect_status: 204,
                    tls: true,
                    host: Some("example.test".into())
                },
                interval_ms: 500,
                timeout_ms: 400,
                rise: 1,
                fall: 5,
                port: None,
            })
        );
    }

    /// sh, like mh, skips drained backends by default (without it, every client that hashed to
    /// a health-drained backend was refused while it was down) and hashes the address only.
    #[test]
    fn sh_defaults_to_fallback_without_port_and_takes_its_own_flags() {
        let s = parse(&ann(&[(SCHEDULER, "sh")]), None).unwrap();
        assert!(s.flags.fallback && !s.flags.port, "{:?}", s.flags);
        let s = parse(
            &ann(&[(SCHEDULER, "sh"), (SH_PORT, "true"), (SH_FALLBACK, "false")]),
            None,
        )
        .unwrap();
        assert!(s.flags.port && !s.flags.fallback, "{:?}", s.flags);
        let s = parse(&ann(&[(SCHEDULER, "rr")]), None).unwrap();
        assert_eq!(s.flags, SchedFlags::default());
    }

    #[test]
    fn errors_name_the_annotation() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[(VIP, "1.2.3")], VIP),
            (&[(ALLOW_SHARED_IP, "")], ALLOW_SHARED_IP),
            (&[(SCHEDULER, "fastest")], SCHEDULER),
            (&[(SCHEDULER, "rr"), (MH_PORT, "true")], MH_PORT),
            (&[(MH_FALLBACK, "yes")], MH_FALLBACK),
            (&[(SH_FALLBACK, "true")], SH_FALLBACK),
            (&[(SCHEDULER, "sh"), (MH_PORT, "true")], MH_PORT),
            (&[(FORWARDING, "nat")], FORWARDING),
            (&[(GUE_PORT, "6000")], GUE_PORT),
            (&[(FORWARDING, "gue"), (GUE_PORT, "0")], GUE_PORT),
            (&[(HEALTH_CHECK, "icmp")], HEALTH_CHECK),
            (&[(HEALTH_PATH, "/x")], HEALTH_PATH),
            (&[(HEALTH_CHECK, "http"), (HEALTH_PATH, "x")], HEALTH_PATH),
            (
                &[(HEALTH_CHECK, "http"), (HEALTH_EXPECT_STATUS, "42")],
                HEALTH_EXPECT_STATUS,
            ),
            (&[(HEALTH_INTERVAL_MS, "10")], HEALTH_INTERVAL_MS),
            (&[(HEALTH_TIMEOUT_MS, "5000")], HEALTH_TIMEOUT_MS),
            (
                &[(HEALTH_INTERVAL_MS, "500"), (HEALTH_TIMEOUT_MS, "600")],
                HEALTH_TIMEOUT_MS,
            ),
            (&[(HEALTH_RISE, "0")], HEALTH_RISE),
            (&[(HEALTH_FALL, "-1")], HEALTH_FALL),
            (&[(HEALTH_PORT, "0")], HEALTH_PORT),
            (&[(HEALTH_PORT, "65536")], HEALTH_PORT),
            // Bounds the rules file had and the annotations lacked (one validator now).
            (
                &[(HEALTH_INTERVAL_MS, "18446744073709551615")],
                HEALTH_INTERVAL_MS,
            ),
            (
                &[(HEALTH_CHECK, "http"), (HEALTH_HOST, "a\r\nX-Injected: 1")],
                HEALTH_HOST,
            ),
            (
                &[(HEALTH_CHECK, "http"), (HEALTH_PATH, "/a b")],
                HEALTH_PATH,
            ),
        ];
        for (pairs, key) in cases {
            let e = parse(&ann(pairs), None).unwrap_err();
            assert_eq!(&e.annotation, key, "{pairs:?} -> {e}");
            assert!(e.to_string().contains(key));
        }
    }

    #[test]
    fn health_none_disables_probes() {
        assert_eq!(
            parse(&ann(&[(HEALTH_CHECK, "none")]), None).unwrap().health,
            None
        );
    }

    proptest! {
        /// Arbitrary annotation values never panic; an accepted result keeps its invariants.
        #[test]
        fn arbitrary_values_never_panic(
            key in proptest::sample::select(vec![VIP, ALLOW_SHARED_IP, SCHEDULER, MH_PORT, MH_FALLBACK, SH_PORT, SH_FALLBACK, FORWARDING,
                GUE_PORT, HEALTH_CHECK, HEALTH_PATH, HEALTH_EXPECT_STATUS, HEALTH_HOST,
                HEALTH_INTERVAL_MS, HEALTH_TIMEOUT_MS, HEALTH_RISE, HEALTH_FALL, HEALTH_PORT]),
            value in ".{0,12}",
        ) {
            match parse(&ann(&[(key, &value)]), None) {
                Ok(s) => {
                    prop_assert!(SCHEDULERS.contains(&s.scheduler.as_str()));
                    if let Some(h) = s.health {
                        prop_assert!(h.timeout_ms >= 1 && h.timeout_ms <= h.interval_ms);
                        prop_assert!(h.rise >= 1 && h.fall >= 1);
                    }
                }
                Err(e) => prop_assert_eq!(e.annotation, key),
            }
        }
    }

    /// The default timeout (1 s) waits no longer than a shorter interval: an interval alone
    /// below it was refused for a timeout the Service never set (a probe).
    #[test]
    fn the_default_timeout_follows_a_shorter_interval() {
        for (interval, timeout) in [("100", 100), ("500", 500), ("999", 999), ("5000", 1_000)] {
            let s = parse(&ann(&[(HEALTH_INTERVAL_MS, interval)]), None).unwrap();
            let h = s.health.expect("tcp by default");
            assert_eq!(h.timeout_ms, timeout, "interval {interval}");
        }
        let s = parse(
            &ann(&[(HEALTH_INTERVAL_MS, "500"), (HEALTH_TIMEOUT_MS, "50")]),
            None,
        )
        .unwrap();
        assert_eq!(s.health.map(|h| h.timeout_ms), Some(50), "set, kept");
    }

    #[test]
    fn health_annotations_beside_none_are_named() {
        let none = [
            (HEALTH_CHECK, "none"),
            (HEALTH_PATH, "/x"),
            (HEALTH_INTERVAL_MS, "abc"),
        ];
        assert!(parse(&ann(&none), None).unwrap().health.is_none());
        assert_eq!(
            ignored_without_checks(&ann(&none)),
            [HEALTH_PATH, HEALTH_INTERVAL_MS]
        );
        assert!(ignored_without_checks(&ann(&[(HEALTH_CHECK, "none")])).is_empty());
        let tcp = [(HEALTH_INTERVAL_MS, "500")];
        assert!(ignored_without_checks(&ann(&tcp)).is_empty());
    }
}
