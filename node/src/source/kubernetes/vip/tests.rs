//! Tests of VIP assignment (the parent module's `assign`).

use super::*;
use proptest::prelude::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
fn claim(key: &str, created_s: i64, requested: Option<&str>, current: &[&str]) -> Claim {
    let requested: Vec<IpAddr> = requested.map(ip).into_iter().collect();
    Claim {
        key: key.into(),
        namespace: key.split('/').next().unwrap().into(),
        created_s,
        families: vec![requested.first().map(Family::of).unwrap_or(Family::V4)],
        requested,
        current: current.iter().map(|s| ip(s)).collect(),
        sharing_key: None,
        ports: [("TCP".to_string(), 80)].into(),
        unpublished: false,
    }
}
fn pool(name: &str, nets: &[&str]) -> Pool {
    Pool {
        name: name.into(),
        nets: nets.iter().map(|n| n.parse().unwrap()).collect(),
        namespaces: BTreeSet::new(),
        auto_assign: true,
    }
}
fn pools(p: &[&str]) -> Vec<Pool> {
    vec![pool("default", p)]
}
fn vip(a: &Assignment, key: &str) -> IpAddr {
    a.vips[key][0]
}

#[test]
fn requests_status_and_allocation() {
    let p = pools(&["203.0.113.0/24", "198.51.100.0/24"]);
    let a = assign(
        &[
            claim("a/req", 5, Some("198.51.100.1"), &[]),
            claim("a/kept", 5, None, &["203.0.113.77"]),
            claim("a/new", 5, None, &[]),
        ],
        &p,
    );
    assert_eq!(vip(&a, "a/req"), ip("198.51.100.1"));
    assert_eq!(vip(&a, "a/kept"), ip("203.0.113.77"));
    let new = vip(&a, "a/new");
    assert!(p[0].contains(&new) && new != ip("203.0.113.0") && new != ip("203.0.113.255"));
    assert!(a.problems.is_empty());
}

/// The audit of 2026-12-06: a Service that failed validation kept its VIP in status while
/// allocation handed the same VIP to a new Service (two Services showed one address, and the
/// first took it back once fixed).
#[test]
fn an_unpublished_service_keeps_its_address_from_allocation_but_not_from_requests() {
    // The pool has room for two: the unpublished Service's address and one more.
    let p = pools(&["203.0.113.0/30"]);
    let mut broken = claim("a/broken", 1, None, &["203.0.113.1"]);
    broken.unpublished = true;
    let a = assign(&[broken.clone(), claim("a/new", 5, None, &[])], &p);
    assert_eq!(
        vip(&a, "a/new"),
        ip("203.0.113.2"),
        "the held address is skipped"
    );
    assert!(!a.vips.contains_key("a/broken"), "unpublished: no VIP");
    assert!(a.problems.is_empty(), "{:?}", a.problems);
    // A third Service finds the pool full rather than taking the held address.
    let a = assign(
        &[
            broken.clone(),
            claim("a/new", 5, None, &[]),
            claim("a/third", 6, None, &[]),
        ],
        &p,
    );
    assert!(matches!(
        a.problems["a/third"][..],
        [VipProblem::PoolsExhausted { .. }]
    ));
    // An explicit request wins over the unpublished holder, which is told.
    let a = assign(
        &[broken.clone(), claim("a/asks", 5, Some("203.0.113.1"), &[])],
        &p,
    );
    assert_eq!(vip(&a, "a/asks"), ip("203.0.113.1"));
    assert!(matches!(
        &a.problems["a/broken"][..],
        [VipProblem::Conflict { holder, .. }] if holder == "a/asks"
    ));
    // Fixed, it gets the same address back.
    broken.unpublished = false;
    let a = assign(&[broken, claim("a/new", 5, None, &["203.0.113.2"])], &p);
    assert_eq!(vip(&a, "a/broken"), ip("203.0.113.1"));
}

/// The audit of 2026-12-06: a Service in another namespace with the same sharing key joined
/// a tenant's address.
#[test]
fn sharing_keys_are_scoped_to_a_namespace() {
    let p = pools(&["203.0.113.0/24"]);
    let shared = |key: &str, port: u16| Claim {
        sharing_key: Some("web".into()),
        ports: [("TCP".to_string(), port)].into(),
        ..claim(key, 5, None, &[])
    };
    let a = assign(
        &[
            shared("a/one", 80),
            shared("a/two", 443),
            shared("b/three", 8080),
        ],
        &p,
    );
    assert_eq!(vip(&a, "a/one"), vip(&a, "a/two"));
    assert_ne!(vip(&a, "b/three"), vip(&a, "a/one"));
    // Asking for the other tenant's address explicitly is a conflict, not a share.
    let held = vip(&a, "a/one");
    let mut asks = shared("b/asks", 8080);
    asks.requested = vec![held];
    let one = Claim {
        current: vec![held],
        ..shared("a/one", 80)
    };
    let a = assign(&[one, asks], &p);
    assert_eq!(vip(&a, "a/one"), held);
    assert!(matches!(
        &a.problems["b/asks"][..],
        [VipProblem::Conflict { .. }]
    ));
}

/// A pool's network and broadcast addresses are not handed out; asked for, they are refused
/// with a reason of their own.
#[test]
fn network_and_broadcast_addresses_cannot_be_requested() {
    let p = pools(&["203.0.113.0/24", "2001:db8::/64"]);
    for (asked, pooled) in [
        ("203.0.113.0", false),
        ("203.0.113.255", false),
        ("2001:db8::", false),
        ("203.0.113.1", true),
        ("203.0.113.254", true),
    ] {
        let a = assign(&[claim("a/x", 5, Some(asked), &[])], &p);
        assert_eq!(a.vips.contains_key("a/x"), pooled, "{asked}");
        if !pooled {
            assert!(
                matches!(&a.problems["a/x"][..], [VipProblem::NetworkAddress { .. }]),
                "{asked}: {:?}",
                a.problems
            );
        }
    }
    // Held in status (written by an older build), it is moved to a usable address.
    let a = assign(&[claim("a/x", 5, None, &["203.0.113.0"])], &p);
    assert_ne!(vip(&a, "a/x"), ip("203.0.113.0"));
}

#[test]
fn a_request_outside_the_pools_gets_nothing() {
    let a = assign(
        &[claim("a/req", 5, Some("192.0.2.1"), &[])],
        &pools(&["203.0.113.0/24"]),
    );
    assert!(a.vips.is_empty());
    assert!(matches!(
        a.problems["a/req"][0],
        VipProblem::NotInPool { .. }
    ));
}

#[test]
fn pools_limited_to_namespaces_and_manual_pools() {
    let mut team = pool("team", &["198.51.100.0/24"]);
    team.namespaces = ["team".to_string()].into();
    let mut manual = pool("manual", &["192.0.2.0/24"]);
    manual.auto_assign = false;
    let p = vec![team, manual];
    let a = assign(
        &[
            claim("team/auto", 0, None, &[]),
            claim("other/auto", 0, None, &[]),
            claim("other/steal", 0, Some("198.51.100.9"), &[]),
            claim("other/manual", 0, Some("192.0.2.9"), &[]),
            // A status address in a pool the namespace may not use is not kept.
            claim("other/stale", 0, None, &["198.51.100.10"]),
        ],
        &p,
    );
    assert!(p[0].contains(&vip(&a, "team/auto")));
    assert!(matches!(
        a.problems["other/auto"][0],
        VipProblem::NoPools { .. }
    ));
    assert!(matches!(
        a.problems["other/steal"][0],
        VipProblem::NotInPool { .. }
    ));
    assert_eq!(vip(&a, "other/manual"), ip("192.0.2.9"));
    assert!(!a.vips.contains_key("other/stale"));
}

#[test]
fn sharing_key_and_disjoint_ports_share_one_address() {
    let mk = |key: &str, proto: &str, port: u16, share: Option<&str>, req: Option<&str>| {
        let mut c = claim(key, 0, req, &[]);
        c.ports = [(proto.to_string(), port)].into();
        c.sharing_key = share.map(str::to_string);
        c
    };
    let p = pools(&["203.0.113.0/24"]);
    // TCP and UDP of one DNS service, allocated from the pool.
    let a = assign(
        &[
            mk("dns/tcp", "TCP", 53, Some("dns"), None),
            mk("dns/udp", "UDP", 53, Some("dns"), None),
            mk("dns/other-key", "SCTP", 53, Some("nope"), None),
        ],
        &p,
    );
    assert_eq!(vip(&a, "dns/tcp"), vip(&a, "dns/udp"));
    assert_ne!(vip(&a, "dns/tcp"), vip(&a, "dns/other-key"));
    assert!(a.problems.is_empty(), "{:?}", a.problems);
    // Same request, same key, same port: the younger one loses.
    let a = assign(
        &[
            mk("x/a", "TCP", 80, Some("k"), Some("203.0.113.5")),
            mk("x/b", "TCP", 80, Some("k"), Some("203.0.113.5")),
            mk("x/c", "TCP", 81, Some("k"), Some("203.0.113.5")),
            mk("x/d", "TCP", 82, None, Some("203.0.113.5")),
        ],
        &p,
    );
    assert_eq!(vip(&a, "x/a"), ip("203.0.113.5"));
    assert_eq!(vip(&a, "x/c"), ip("203.0.113.5"));
    assert!(matches!(a.problems["x/b"][0], VipProblem::Conflict { .. }));
    assert!(matches!(a.problems["x/d"][0], VipProblem::Conflict { .. }));
}

#[test]
fn dual_stack_gets_one_address_per_family() {
    let p = pools(&["203.0.113.0/24", "2001:db8::/64"]);
    let mut c = claim("a/ds", 0, None, &[]);
    c.families = vec![Family::V6, Family::V4];
    let mut v6only = claim("a/v6", 0, None, &[]);
    v6only.families = vec![Family::V6];
    let a = assign(&[c, v6only], &p);
    let ds = &a.vips["a/ds"];
    assert_eq!(ds.len(), 2);
    assert!(ds[0].is_ipv6() && ds[1].is_ipv4(), "primary family first");
    assert_eq!(a.vips["a/v6"].len(), 1);
    assert!(a.vips["a/v6"][0].is_ipv6());
    // No IPv6 pool: the IPv4 half is still served, the IPv6 half is a problem.
    let mut c = claim("a/ds", 0, None, &[]);
    c.families = vec![Family::V4, Family::V6];
    let a = assign(&[c], &pools(&["203.0.113.0/24"]));
    assert_eq!(a.vips["a/ds"].len(), 1);
    assert!(matches!(
        a.problems["a/ds"][0],
        VipProblem::NoPools { family: "IPv6", .. }
    ));
}

#[test]
fn duplicate_request_older_wins_and_loser_is_reported() {
    let a = assign(
        &[
            claim("b/young", 20, Some("203.0.113.5"), &[]),
            claim("a/old", 10, Some("203.0.113.5"), &[]),
        ],
        &pools(&["203.0.113.0/24"]),
    );
    assert_eq!(vip(&a, "a/old"), ip("203.0.113.5"));
    assert_eq!(a.vips.get("b/young"), None);
    assert_eq!(
        a.problems["b/young"],
        [VipProblem::Conflict {
            vip: ip("203.0.113.5"),
            holder: "a/old".into()
        }]
    );
}

#[test]
fn status_holder_keeps_its_address_against_a_newer_request() {
    let a = assign(
        &[
            claim("a/holder", 30, None, &["203.0.113.5"]),
            claim("a/asker", 1, Some("203.0.113.5"), &[]),
        ],
        &pools(&["203.0.113.0/24"]),
    );
    assert_eq!(vip(&a, "a/holder"), ip("203.0.113.5"));
    assert!(matches!(
        a.problems["a/asker"][0],
        VipProblem::Conflict { .. }
    ));
}

#[test]
fn exhaustion_and_no_pools_are_problems() {
    let a = assign(
        &[
            claim("a/1", 0, None, &[]),
            claim("a/2", 0, None, &[]),
            claim("a/3", 0, None, &[]),
        ],
        &pools(&["203.0.113.0/31"]),
    );
    assert_eq!(a.vips.len(), 2);
    assert_eq!(a.problems.len(), 1);
    let a = assign(&[claim("a/1", 0, None, &[])], &[]);
    assert!(matches!(a.problems["a/1"][0], VipProblem::NoPools { .. }));
}

#[test]
fn ipv6_pools_allocate_without_scanning() {
    let mut c = claim("a/1", 0, None, &[]);
    c.families = vec![Family::V6];
    let a = assign(&[c], &pools(&["2001:db8::/64"]));
    assert!(vip(&a, "a/1").is_ipv6());
}

fn arb_claims() -> impl Strategy<Value = Vec<Claim>> {
    proptest::collection::vec(
        (
            0u8..12,
            0i64..5,
            proptest::option::of(0u8..6),
            proptest::option::of(0u8..10),
            proptest::option::of(0u8..2),
            0u16..3,
        ),
        0..12,
    )
    .prop_map(|v| {
        let mut seen = BTreeSet::new();
        v.into_iter()
            .filter(|(k, ..)| seen.insert(*k))
            .map(|(k, created, req, cur, share, port)| Claim {
                key: format!("ns/s{k}"),
                namespace: "ns".into(),
                created_s: created,
                families: vec![Family::V4],
                requested: req
                    .map(|r| IpAddr::from([203, 0, 113, r + 1]))
                    .into_iter()
                    .collect(),
                current: cur
                    .map(|c| IpAddr::from([203, 0, 113, c + 1]))
                    .into_iter()
                    .collect(),
                sharing_key: share.map(|s| format!("key{s}")),
                ports: [("TCP".to_string(), 80 + port)].into(),
                unpublished: false,
            })
            .collect()
    })
}

proptest! {
    /// An address is held by one Service, or by Services with one sharing key and
    /// pairwise disjoint ports; every claim is either served or has a problem; and the
    /// order of the input does not matter.
    #[test]
    fn sound_complete_and_order_independent(claims in arb_claims(), seed in any::<u64>()) {
        let p = pools(&["203.0.113.0/28"]);
        let a = assign(&claims, &p);
        let mut by_ip: BTreeMap<IpAddr, Vec<&Claim>> = BTreeMap::new();
        for (k, ips) in &a.vips {
            let c = claims.iter().find(|c| &c.key == k).unwrap();
            for ip in ips {
                prop_assert!(p[0].contains(ip));
                by_ip.entry(*ip).or_default().push(c);
            }
        }
        for holders in by_ip.values() {
            if holders.len() > 1 {
                for (i, x) in holders.iter().enumerate() {
                    prop_assert!(x.sharing_key.is_some());
                    for y in &holders[i + 1..] {
                        prop_assert_eq!(&x.sharing_key, &y.sharing_key);
                        prop_assert!(x.ports.is_disjoint(&y.ports));
                    }
                }
            }
        }
        for c in &claims {
            prop_assert!(a.vips.contains_key(&c.key) || a.problems.contains_key(&c.key));
            if let (Some(req), Some(got)) = (c.requested.first(), a.vips.get(&c.key)) {
                prop_assert_eq!(*req, got[0]);
            }
        }
        let mut shuffled = claims.clone();
        let n = shuffled.len().max(1);
        shuffled.rotate_left((seed as usize) % n);
        shuffled.reverse();
        prop_assert_eq!(assign(&shuffled, &p), a);
    }

    /// Writing the assignment back as status and assigning again changes nothing: this is
    /// what a new publisher sees after taking over.
    #[test]
    fn assignment_is_a_fixed_point_of_status(claims in arb_claims()) {
        let p = pools(&["203.0.113.0/28"]);
        let a = assign(&claims, &p);
        let after: Vec<Claim> = claims.iter().map(|c| Claim {
            current: a.vips.get(&c.key).cloned().unwrap_or_default(),
            ..c.clone()
        }).collect();
        prop_assert_eq!(assign(&after, &p).vips, a.vips);
    }
}
