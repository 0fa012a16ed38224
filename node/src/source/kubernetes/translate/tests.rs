//! Tests of the Kubernetes translation (the parent module's `translate`).

use super::*;
use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, ServicePort, ServiceSpec, ServiceStatus,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use proptest::prelude::*;
use shoal_dataplane::model::Protocol;

const CLASS: &str = "shoal.io/lb";

fn svc(name: &str, ports: &[(&str, i32)], ann: &[(&str, &str)]) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some("default".into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            annotations: Some(
                ann.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            load_balancer_class: Some(CLASS.into()),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| ServicePort {
                        name: (!n.is_empty()).then(|| n.to_string()),
                        port: *p,
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    }
}

fn slice(
    svc: &str,
    suffix: &str,
    port: (&str, i32),
    eps: &[(&str, Option<bool>)],
) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            namespace: Some("default".into()),
            name: Some(format!("{svc}-{suffix}")),
            labels: Some([(SERVICE_NAME_LABEL.to_string(), svc.to_string())].into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: eps
            .iter()
            .map(|(a, ready)| Endpoint {
                addresses: vec![a.to_string()],
                conditions: Some(EndpointConditions {
                    ready: *ready,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: (!port.0.is_empty()).then(|| port.0.to_string()),
            port: Some(port.1),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

/// The status a publisher wrote: `ip` in `status.loadBalancer.ingress`.
fn set_status(s: &mut Service, ip: &str) {
    s.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(vec![LoadBalancerIngress {
                ip: Some(ip.into()),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    });
}

fn run(services: &[Service], slices: &[EndpointSlice]) -> Translation {
    let pools = [
        crate::source::kubernetes::pools::from_cidrs(&["203.0.113.0/24".into()], "default")
            .unwrap(),
        crate::source::kubernetes::pools::from_cidrs(&["2001:db8::/64".into()], "default").unwrap(),
    ];
    // What the cache holds of each slice (the typed objects keep the tests close to the API).
    let slices: Vec<Slice> = slices.iter().cloned().map(Slice::from).collect();
    translate(
        services,
        &slices,
        &Settings {
            load_balancer_class: CLASS,
            pools: &pools,
        },
    )
}

#[test]
fn one_service_two_slices() {
    let t = run(
        &[svc(
            "web",
            &[("http", 80)],
            &[("shoal.io/vip", "203.0.113.10")],
        )],
        &[
            slice(
                "web",
                "a",
                ("http", 80),
                &[("198.18.0.3", Some(true)), ("198.18.0.9", Some(false))],
            ),
            slice("web", "b", ("http", 80), &[("198.18.0.2", None)]),
        ],
    );
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    assert_eq!(t.table.services.len(), 1);
    let vs = &t.table.services[0];
    assert_eq!(vs.name, "default/web:http");
    assert_eq!(vs.vip, "203.0.113.10".parse::<IpAddr>().unwrap());
    let addrs: Vec<String> = vs.backends.iter().map(|b| b.address.to_string()).collect();
    assert_eq!(addrs, ["198.18.0.2", "198.18.0.3"]);
    assert_eq!(t.vips["default/web"], [vs.vip]);
}

#[test]
fn other_classes_and_types_are_ignored() {
    let mut other = svc("other", &[("", 80)], &[]);
    other.spec.as_mut().unwrap().load_balancer_class = Some("metallb".into());
    let mut cluster_ip = svc("cip", &[("", 80)], &[]);
    cluster_ip.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
    let t = run(&[other, cluster_ip], &[]);
    assert_eq!(t.table, RuleTable::default());
    assert!(t.problems.is_empty());
}

#[test]
fn named_target_port_resolved_through_the_slice_and_masq_translates() {
    // Service port 80 -> targetPort "web" resolved to 8080 in the slice.
    let s = svc("app", &[("http", 80)], &[("shoal.io/forwarding", "masq")]);
    let t = run(
        &[s],
        &[slice("app", "x", ("http", 8080), &[("198.18.0.5", None)])],
    );
    assert_eq!(t.table.services[0].backends[0].port, 8080);
    // With tunnel forwarding the same slice is refused with a reason.
    let s = svc("app", &[("http", 80)], &[]);
    let t = run(
        &[s],
        &[slice("app", "x", ("http", 8080), &[("198.18.0.5", None)])],
    );
    assert!(t.table.services[0].backends.is_empty());
    assert_eq!(t.problems[0].reason, "TargetPortMismatch");
}

/// An endpoint no packet should go to is left out with an Event on its slice, and the port is
/// still published with the others (the audit of 2026-12-06: one such endpoint dropped the
/// whole port, and an endpoint at another Service's VIP was published as a backend).
#[test]
fn unusable_endpoints_are_skipped_and_the_port_kept() {
    let t = run(
        &[
            svc("web", &[("", 80)], &[("shoal.io/vip", "203.0.113.10")]),
            svc("api", &[("", 80)], &[("shoal.io/vip", "203.0.113.11")]),
        ],
        &[slice(
            "web",
            "a",
            ("", 80),
            &[
                ("198.18.0.7", None),
                ("127.0.0.1", None),
                ("240.0.0.1", None),
                ("203.0.113.10", None),
                ("203.0.113.11", None),
                ("224.0.0.5", None),
            ],
        )],
    );
    let web = t
        .table
        .services
        .iter()
        .find(|s| s.name == "default/web:80")
        .expect("the port is published");
    let backends: Vec<String> = web.backends.iter().map(|b| b.address.to_string()).collect();
    assert_eq!(backends, ["198.18.0.7"]);
    let skipped: Vec<&str> = t
        .problems
        .iter()
        .filter(|p| p.reason == "UnusableEndpoint" && p.object.name == "web-a")
        .map(|p| p.message.as_str())
        .collect();
    assert_eq!(skipped.len(), 5, "{:?}", t.problems);
    for (addr, says) in [
        ("127.0.0.1", "loopback"),
        ("240.0.0.1", "reserved"),
        ("203.0.113.10", "VIP"),
        ("203.0.113.11", "VIP"),
        ("224.0.0.5", "multicast"),
    ] {
        assert!(
            skipped
                .iter()
                .any(|m| m.contains(&format!("address {addr} ")) && m.contains(says)),
            "{addr}: {skipped:?}"
        );
    }
    assert!(t.problems.iter().all(|p| p.reason != "InvalidService"));
}

/// A Service left out for a bad annotation keeps the address its status shows from new
/// Services; one that asks for it takes it and the status of the broken one is cleared (the
/// audit of 2026-12-06 saw two Services showing one VIP).
#[test]
fn an_unpublished_service_holds_its_vip_until_another_asks_for_it() {
    let with_status = |mut s: Service, ip: &str| {
        set_status(&mut s, ip);
        s
    };
    let broken = with_status(
        svc("broken", &[("", 80)], &[("shoal.io/scheduler", "fastest")]),
        "203.0.113.20",
    );
    // A pool of one address: the new Service would have been given the broken one's.
    let pools =
        [
            crate::source::kubernetes::pools::from_cidrs(&["203.0.113.20/32".into()], "default")
                .unwrap(),
        ];
    let settings = Settings {
        load_balancer_class: CLASS,
        pools: &pools,
    };
    let none: [Slice; 0] = [];
    let t = translate(
        &[broken.clone(), svc("new", &[("", 80)], &[])],
        &none,
        &settings,
    );
    assert!(
        t.vips
            .get("default/new")
            .is_none_or(|v| !v.contains(&"203.0.113.20".parse().unwrap())),
        "{:?}",
        t.vips
    );
    assert!(!t.clear.contains("default/broken"));
    assert!(
        t.problems
            .iter()
            .any(|p| p.object.name == "new" && p.reason == "VipUnavailable"),
        "{:?}",
        t.problems
    );
    // Asked for by name, the address moves and the broken Service's status is cleared.
    let asks = svc("asks", &[("", 80)], &[("shoal.io/vip", "203.0.113.20")]);
    let t = translate(&[broken, asks], &none, &settings);
    assert_eq!(t.vips["default/asks"][0].to_string(), "203.0.113.20");
    assert!(t.clear.contains("default/broken"), "{:?}", t.clear);
    assert!(
        t.problems
            .iter()
            .any(|p| p.object.name == "broken" && p.reason == "VipConflict"),
        "{:?}",
        t.problems
    );
}

#[test]
fn source_ranges_reach_every_port_and_family_and_bad_ones_fail_closed() {
    let mut s = svc("web", &[("http", 80), ("https", 443)], &[]);
    let spec = s.spec.as_mut().unwrap();
    spec.load_balancer_source_ranges = Some(vec!["198.51.100.7/24".into(), " 192.0.2.0/25".into()]);
    spec.ip_families = Some(vec!["IPv4".into(), "IPv6".into()]);
    let t = run(&[s.clone()], &[]);
    assert_eq!(t.table.services.len(), 4, "two ports x two families");
    for vs in &t.table.services {
        let got: Vec<String> = vs.source_ranges.iter().map(|r| r.to_string()).collect();
        assert_eq!(got, ["192.0.2.0/25", "198.51.100.0/24"], "{}", vs.name);
    }
    // The IPv6 VIP has no range of its family: it accepts nobody, and the owner is told.
    let reasons: Vec<_> = t.problems.iter().map(|p| p.reason).collect();
    assert_eq!(reasons, ["SourceRangesFamily"], "{:?}", t.problems);

    // The legacy annotation when the field is empty.
    let mut legacy = svc(
        "old",
        &[("", 80)],
        &[(SOURCE_RANGES_ANNOTATION, "192.0.2.0/24, 198.51.100.0/24")],
    );
    legacy.spec.as_mut().unwrap().load_balancer_source_ranges = Some(vec![]);
    let t = run(&[legacy], &[]);
    assert_eq!(t.table.services[0].source_ranges.len(), 2);

    // A bad entry: not published at all (leaving it out would widen access).
    s.spec.as_mut().unwrap().load_balancer_source_ranges =
        Some(vec!["192.0.2.0/24".into(), "192.0.2.300/24".into()]);
    let t = run(&[s, svc("other", &[("", 80)], &[])], &[]);
    assert_eq!(t.table.services.len(), 1);
    assert_eq!(t.table.services[0].name, "default/other:80");
    assert!(t.table.services[0].source_ranges.is_empty());
    assert_eq!(t.problems[0].reason, "InvalidSourceRange");
    assert!(
        t.problems[0].message.contains("192.0.2.300/24"),
        "{:?}",
        t.problems
    );
}

#[test]
fn a_bad_service_is_skipped_and_the_rest_published() {
    let t = run(
        &[
            svc("bad", &[("", 80)], &[("shoal.io/scheduler", "fastest")]),
            svc("good", &[("", 80)], &[]),
        ],
        &[slice(
            "good",
            "a",
            ("", 80),
            &[("198.18.0.7", None), ("not-an-ip", None)],
        )],
    );
    assert_eq!(t.table.services.len(), 1);
    assert_eq!(t.table.services[0].name, "default/good:80");
    assert_eq!(t.table.services[0].backends.len(), 1);
    let reasons: Vec<_> = t
        .problems
        .iter()
        .map(|p| (p.object.name.as_str(), p.reason))
        .collect();
    assert!(
        reasons.contains(&("bad", "InvalidAnnotation")),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&("good-a", "MalformedEndpointSlice")),
        "{reasons:?}"
    );
}

#[test]
fn existing_status_is_kept() {
    let mut s = svc("kept", &[("", 80)], &[]);
    set_status(&mut s, "203.0.113.200");
    let t = run(&[s], &[]);
    assert_eq!(t.vips["default/kept"][0].to_string(), "203.0.113.200");
}

#[test]
fn same_vip_twice_is_a_conflict_problem() {
    let t = run(
        &[
            svc("a", &[("", 80)], &[("shoal.io/vip", "203.0.113.1")]),
            svc("b", &[("", 81)], &[("shoal.io/vip", "203.0.113.1")]),
        ],
        &[],
    );
    assert_eq!(t.table.services.len(), 1);
    assert_eq!(t.problems.len(), 1);
    assert_eq!(t.problems[0].reason, "VipConflict");
}

fn with_conditions(
    mut s: EndpointSlice,
    ready: bool,
    serving: bool,
    terminating: bool,
) -> EndpointSlice {
    for ep in &mut s.endpoints {
        ep.conditions = Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        });
    }
    s
}

#[test]
fn terminating_endpoints_serve_only_when_no_ready_one_is_left() {
    let s = svc("roll", &[("", 80)], &[]);
    let old = with_conditions(
        slice("roll", "old", ("", 80), &[("198.18.0.1", None)]),
        false,
        true,
        true,
    );
    let gone = with_conditions(
        slice("roll", "gone", ("", 80), &[("198.18.0.3", None)]),
        false,
        false,
        true,
    );
    let new = slice("roll", "new", ("", 80), &[("198.18.0.2", Some(true))]);
    let addrs = |t: &Translation| -> Vec<String> {
        t.table.services[0]
            .backends
            .iter()
            .map(|b| b.address.to_string())
            .collect()
    };
    let t = run(std::slice::from_ref(&s), &[old.clone(), gone.clone(), new]);
    assert_eq!(addrs(&t), ["198.18.0.2"]);
    let t = run(&[s], &[old, gone]);
    assert_eq!(
        addrs(&t),
        ["198.18.0.1"],
        "serving terminating endpoint as fallback"
    );
}

#[test]
fn dual_stack_and_ipv6_only_services_get_a_vip_and_backends_per_family() {
    let mut ds = svc("ds", &[("http", 80)], &[]);
    ds.spec.as_mut().unwrap().ip_families = Some(vec!["IPv6".into(), "IPv4".into()]);
    let mut v6 = svc("v6", &[("http", 80)], &[]);
    v6.spec.as_mut().unwrap().ip_families = Some(vec!["IPv6".into()]);
    let mut slices = vec![slice("ds", "v4", ("http", 80), &[("198.18.0.1", None)])];
    for (svc_name, addr) in [("ds", "2001:db8:1::1"), ("v6", "2001:db8:1::2")] {
        let mut s6 = slice(svc_name, "v6", ("http", 80), &[(addr, None)]);
        s6.address_type = "IPv6".into();
        slices.push(s6);
    }
    let t = run(&[ds, v6], &slices);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let got: Vec<(String, bool, String)> = t
        .table
        .services
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                s.vip.is_ipv6(),
                s.backends[0].address.to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "default/ds:http".to_string(),
                true,
                "2001:db8:1::1".to_string()
            ),
            (
                "default/ds:http@IPv4".to_string(),
                false,
                "198.18.0.1".to_string()
            ),
            (
                "default/v6:http".to_string(),
                true,
                "2001:db8:1::2".to_string()
            ),
        ]
    );
    assert_eq!(t.vips["default/ds"].len(), 2);
}

#[test]
fn statuses_to_clear_and_notes_about_affinity_and_local() {
    // Left the class: now a ClusterIP Service, still showing our address.
    let mut left = svc("left", &[("", 80)], &[]);
    left.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
    left.spec.as_mut().unwrap().load_balancer_class = None;
    set_status(&mut left, "203.0.113.20");
    // Another controller's LoadBalancer: never touched.
    let mut theirs = svc("theirs", &[("", 80)], &[]);
    theirs.spec.as_mut().unwrap().load_balancer_class = None;
    set_status(&mut theirs, "203.0.113.21");
    // Ours but its request is outside every pool: shows nothing.
    let mut outside = svc("outside", &[("", 80)], &[("shoal.io/vip", "192.0.2.1")]);
    set_status(&mut outside, "192.0.2.1");
    let mut sticky = svc("sticky", &[("", 80)], &[("shoal.io/scheduler", "rr")]);
    sticky.spec.as_mut().unwrap().session_affinity = Some("ClientIP".into());
    let mut ok_sticky = svc("ok-sticky", &[("", 80)], &[]);
    ok_sticky.spec.as_mut().unwrap().session_affinity = Some("ClientIP".into());
    let mut local = svc("local", &[("", 80)], &[]);
    local.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
    let masq = svc("masq", &[("", 80)], &[("shoal.io/forwarding", "masq")]);
    let unchecked = svc(
        "unchecked",
        &[("", 80)],
        &[
            ("shoal.io/health-check", "none"),
            ("shoal.io/health-interval-ms", "abc"),
        ],
    );
    let t = run(
        &[
            left, theirs, outside, sticky, ok_sticky, local, masq, unchecked,
        ],
        &[],
    );
    let clear: Vec<&str> = t.clear.iter().map(String::as_str).collect();
    assert_eq!(clear, ["default/left", "default/outside"]);
    let reasons: Vec<(&str, &str)> = t
        .problems
        .iter()
        .map(|p| (p.object.name.as_str(), p.reason))
        .collect();
    assert_eq!(
        reasons,
        [
            ("local", "ExternalTrafficPolicyLocal"),
            ("masq", "MasqNeedsSymmetricReplies"),
            ("outside", "VipNotInPool"),
            ("sticky", "SessionAffinityNotHonored"),
            ("unchecked", "IgnoredAnnotation"),
        ]
    );
    // Warned, and published as asked.
    assert!(t
        .table
        .services
        .iter()
        .any(|s| s.name.starts_with("default/unchecked")));
    assert!(
        t.table
            .services
            .iter()
            .any(|s| s.name.starts_with("default/masq") && s.forwarding == Forwarding::Masq),
        "{:?}",
        t.table.services
    );
}

proptest! {
    /// Input order never changes the output, and table names are unique.
    #[test]
    fn order_independent(n in 1usize..6, ready in proptest::collection::vec(any::<Option<bool>>(), 6), rot in 0usize..6) {
        let services: Vec<Service> = (0..n).map(|i| svc(&format!("s{i}"), &[("p", 80), ("q", 443)], &[])).collect();
        let slices: Vec<EndpointSlice> = (0..n).map(|i| {
            let addr = format!("198.18.0.{i}");
            slice(&format!("s{i}"), "a", ("p", 80), &[(addr.as_str(), ready[i])])
        }).collect();
        let a = run(&services, &slices);
        let mut s2 = services.clone();
        s2.rotate_left(rot % n);
        let mut l2 = slices.clone();
        l2.reverse();
        prop_assert_eq!(&run(&s2, &l2), &a);
        let names: BTreeSet<_> = a.table.services.iter().map(|s| &s.name).collect();
        prop_assert_eq!(names.len(), a.table.services.len());
        prop_assert_eq!(a.table.services.len(), 2 * n);
    }
}

/// A UDP port of a Service got the default tcp health check: the probes went to a port a
/// UDP-only backend does not serve over TCP, and every backend was drained. A UDP port is
/// now checked only through `shoal.io/health-port`; otherwise the endpoints' readiness decides.
#[test]
fn udp_ports_are_health_checked_only_through_a_health_port() {
    let mut dns = svc(
        "dns",
        &[("dns-tcp", 53), ("dns", 53)],
        &[("shoal.io/vip", "203.0.113.53")],
    );
    if let Some(p) = dns
        .spec
        .as_mut()
        .and_then(|s| s.ports.as_mut())
        .and_then(|p| p.get_mut(1))
    {
        p.protocol = Some("UDP".into());
    }
    let slices = [
        slice("dns", "a", ("dns-tcp", 53), &[("198.18.0.2", Some(true))]),
        slice("dns", "b", ("dns", 53), &[("198.18.0.2", Some(true))]),
    ];
    let t = run(std::slice::from_ref(&dns), &slices);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let health = |t: &Translation, proto: Protocol| {
        t.table
            .services
            .iter()
            .find(|s| s.protocol == proto)
            .map(|s| s.health.clone())
    };
    assert!(matches!(health(&t, Protocol::Tcp), Some(Some(_))));
    assert_eq!(health(&t, Protocol::Udp), Some(None));

    if let Some(a) = dns.metadata.annotations.as_mut() {
        a.insert("shoal.io/health-port".into(), "8053".into());
    }
    let t = run(&[dns], &slices);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let udp = health(&t, Protocol::Udp).flatten();
    assert_eq!(udp.map(|h| h.port), Some(Some(8053)));
}

/// Two ports with one number and protocol, or one name twice, leave the Service out with an
/// Event naming the port (the dataplane merged the two entries silently: a probe); the other
/// Services are published.
#[test]
fn a_service_with_a_port_twice_is_not_published() {
    let t = run(
        &[
            svc("same-number", &[("a", 8080), ("b", 8080)], &[]),
            svc("same-name", &[("a", 9090), ("a", 9091)], &[]),
            svc("web", &[("http", 80)], &[]),
        ],
        &[slice(
            "web",
            "a",
            ("http", 80),
            &[("198.18.0.3", Some(true))],
        )],
    );
    let names: Vec<&str> = t.table.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["default/web:http"]);
    let dup: Vec<(&str, &str)> = t
        .problems
        .iter()
        .filter(|p| p.reason == "DuplicatePort")
        .map(|p| (p.object.name.as_str(), p.message.as_str()))
        .collect();
    assert_eq!(dup.len(), 2, "{:?}", t.problems);
    assert!(
        dup[0].0 == "same-name" && dup[0].1.contains("\"a\" is used twice"),
        "{dup:?}"
    );
    assert!(
        dup[1].0 == "same-number" && dup[1].1.contains("8080/TCP"),
        "{dup:?}"
    );
    assert!(!t.vips.contains_key("default/same-number"));
}

/// A Service whose ports times endpoints pass the bound is left out with an Event (300 ports
/// and 1,000 endpoints took 1.7 GiB on every replica: a probe); one at the bound is published.
#[test]
fn a_service_past_the_backend_bound_is_not_published() {
    let endpoints: Vec<String> = (0..1_000)
        .map(|i| format!("198.18.{}.{}", i / 250, 1 + i % 250))
        .collect();
    let eps: Vec<(&str, Option<bool>)> =
        endpoints.iter().map(|a| (a.as_str(), Some(true))).collect();
    let ports = |n: usize| -> Vec<(String, i32)> {
        (0..n)
            .map(|i| (format!("p{i}"), 1_000 + i as i32))
            .collect()
    };
    let service = |name: &str, n: usize| {
        let ports = ports(n);
        let refs: Vec<(&str, i32)> = ports.iter().map(|(n, p)| (n.as_str(), *p)).collect();
        svc(name, &refs, &[])
    };
    let slices = |name: &str, n: usize| -> Vec<EndpointSlice> {
        ports(n)
            .iter()
            .map(|(p, number)| slice(name, p, (p.as_str(), *number), &eps))
            .collect()
    };
    let at_bound = MAX_BACKENDS_PER_SERVICE / 1_000;
    let t = run(
        &[service("big", at_bound + 1), service("fits", at_bound)],
        &[slices("big", at_bound + 1), slices("fits", at_bound)].concat(),
    );
    let published: BTreeSet<&str> = t
        .table
        .services
        .iter()
        .map(|s| s.name.split(':').next().unwrap_or_default())
        .collect();
    assert_eq!(published, BTreeSet::from(["default/fits"]));
    let too_many: Vec<&Problem> = t
        .problems
        .iter()
        .filter(|p| p.reason == "TooManyBackends")
        .collect();
    assert_eq!(too_many.len(), 1, "{:?}", t.problems);
    assert_eq!(too_many[0].object.name, "big");
    assert!(
        too_many[0].message.contains("51000 backends"),
        "{}",
        too_many[0].message
    );
}
