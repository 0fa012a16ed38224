//! VIP assignment: honor requests, keep what status already shows, allocate the rest from pools.
//!
//! The allocation is a pure function of its input, so a new publisher that reads the same
//! Services and pools computes the same VIPs. Stability across publisher changes comes from two
//! rules: an address already in a Service's `status.loadBalancer.ingress` (and inside a pool the
//! Service's namespace may use) is kept, and fresh allocations start at a position derived from
//! `sha256(namespace/name)` (or from the sharing key), probing forward, with claimants processed
//! in a fixed order.
//!
//! Each Service asks for one address per IP family it lists (`spec.ipFamilies`). A requested
//! address must lie in a pool that the Service's namespace may use; pools with `autoAssign`
//! off only serve requests; pools limited to some namespaces are tried before pools open to
//! every namespace. Services with the same sharing key (`shoal.io/allow-shared-ip`)
//! and no common port may hold one address together.
//!
//! Conflicts are never resolved silently: when two Services claim one address and cannot
//! share it, the one that already holds it in status wins, else the older one (then the
//! smaller key); every loser gets a [`VipProblem::Conflict`] so the shell can emit an Event.

use super::pools::Pool;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// An IP family, as in `spec.ipFamilies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
    /// The Kubernetes spelling (`IPv4`, `IPv6`).
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// One Service asking for VIPs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// `namespace/name`, unique.
    pub key: String,
    pub namespace: String,
    /// Seconds since the epoch of `metadata.creationTimestamp`; older wins conflicts.
    pub created_s: i64,
    /// The families to serve, primary first (from `spec.ipFamilies`); never empty.
    pub families: Vec<Family>,
    /// From `shoal.io/vip` or `spec.loadBalancerIP`, at most one per family.
    pub requested: Vec<IpAddr>,
    /// Addresses currently in `status.loadBalancer.ingress`.
    pub current: Vec<IpAddr>,
    /// `shoal.io/allow-shared-ip`.
    pub sharing_key: Option<String>,
    /// `(protocol, port)` of every port; two sharers must have none in common.
    pub ports: BTreeSet<(String, u16)>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
pub enum VipProblem {
    #[error("VIP {vip} is also claimed by {holder}, which keeps it (share it with the same shoal.io/allow-shared-ip key and different ports)")]
    Conflict { vip: IpAddr, holder: String },
    #[error("requested VIP {vip} is not in any ShoalPool that namespace {namespace} may use")]
    NotInPool { vip: IpAddr, namespace: String },
    #[error("requested VIP {vip} is {family}, but spec.ipFamilies does not list {family}")]
    FamilyNotServed { vip: IpAddr, family: &'static str },
    #[error("no free {family} address left in the ShoalPools namespace {namespace} may use")]
    PoolsExhausted {
        family: &'static str,
        namespace: String,
    },
    #[error("no {family} VIP requested and no ShoalPool with autoAssign gives {family} addresses to namespace {namespace}")]
    NoPools {
        family: &'static str,
        namespace: String,
    },
}

/// The assignment for every claim, plus problems for claims that lost or could not be served.
/// A claim that lost its status address to an explicit request still gets a fresh address
/// (and a problem saying why it moved).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    /// Addresses per claim key, in the claim's family order; a claim with none is absent.
    pub vips: BTreeMap<String, Vec<IpAddr>>,
    pub problems: BTreeMap<String, Vec<VipProblem>>,
}

impl Assignment {
    fn add_problem(&mut self, key: &str, p: VipProblem) {
        let v = self.problems.entry(key.to_string()).or_default();
        if !v.contains(&p) {
            v.push(p);
            v.sort();
        }
    }
}

/// Pools that `namespace` may use, in order.
fn usable_by<'a>(pools: &'a [Pool], namespace: &'a str) -> impl Iterator<Item = &'a Pool> + 'a {
    pools.iter().filter(move |p| p.allows(namespace))
}

/// Holders of one address so far.
struct Holding<'a> {
    holders: Vec<&'a Claim>,
}

impl Holding<'_> {
    /// A claim may join the holders when all of them and it share one key and no port.
    fn accepts(&self, c: &Claim) -> bool {
        let Some(key) = &c.sharing_key else {
            return false;
        };
        self.holders.iter().all(|h| {
            h.sharing_key.as_ref() == Some(key) && h.ports.is_disjoint(&c.ports) && h.key != c.key
        })
    }
}

pub fn assign(claims: &[Claim], pools: &[Pool]) -> Assignment {
    let mut out = Assignment::default();
    let mut chosen: BTreeMap<(String, Family), IpAddr> = BTreeMap::new();
    let in_usable_pool =
        |c: &Claim, ip: &IpAddr| usable_by(pools, &c.namespace).any(|p| p.contains(ip));

    // Every address somebody wants, with who wants it and how strongly (request > status).
    let mut wanted: BTreeMap<IpAddr, Vec<(&Claim, bool)>> = BTreeMap::new();
    let mut needs_pool: Vec<(&Claim, Family)> = Vec::new();
    for c in claims {
        for ip in &c.requested {
            if !c.families.contains(&Family::of(ip)) {
                out.add_problem(
                    &c.key,
                    VipProblem::FamilyNotServed {
                        vip: *ip,
                        family: Family::of(ip).name(),
                    },
                );
            }
        }
        for &family in &c.families {
            let requested = c.requested.iter().find(|ip| Family::of(ip) == family);
            match requested {
                Some(ip) if in_usable_pool(c, ip) => wanted.entry(*ip).or_default().push((c, true)),
                Some(ip) => out.add_problem(
                    &c.key,
                    VipProblem::NotInPool {
                        vip: *ip,
                        namespace: c.namespace.clone(),
                    },
                ),
                None => match c
                    .current
                    .iter()
                    .find(|ip| Family::of(ip) == family && in_usable_pool(c, ip))
                {
                    Some(ip) => wanted.entry(*ip).or_default().push((c, false)),
                    None => needs_pool.push((c, family)),
                },
            }
        }
    }

    let mut held: BTreeMap<IpAddr, Holding> = BTreeMap::new();
    for (ip, mut claimants) in wanted {
        claimants.sort_by(|(a, _), (b, _)| {
            let lacks = |c: &Claim| !c.current.contains(&ip);
            (lacks(a), a.created_s, &a.key).cmp(&(lacks(b), b.created_s, &b.key))
        });
        let mut holding = Holding {
            holders: Vec::new(),
        };
        for (c, requested) in claimants {
            if holding.holders.is_empty() || holding.accepts(c) {
                holding.holders.push(c);
                chosen.insert((c.key.clone(), Family::of(&ip)), ip);
                continue;
            }
            out.add_problem(
                &c.key,
                VipProblem::Conflict {
                    vip: ip,
                    holder: holding.holders[0].key.clone(),
                },
            );
            if !requested {
                needs_pool.push((c, Family::of(&ip)));
            }
        }
        held.insert(ip, holding);
    }

    needs_pool.sort_by(|(a, fa), (b, fb)| (&a.key, fa).cmp(&(&b.key, fb)));
    needs_pool.dedup_by(|(a, fa), (b, fb)| a.key == b.key && fa == fb);
    for (c, family) in needs_pool {
        if chosen.contains_key(&(c.key.clone(), family)) {
            continue;
        }
        // A sharer first joins an address its group already holds.
        let joinable = held
            .iter()
            .find(|(ip, h)| Family::of(ip) == family && in_usable_pool(c, ip) && h.accepts(c));
        if let Some((&ip, _)) = joinable {
            if let Some(h) = held.get_mut(&ip) {
                h.holders.push(c);
            }
            chosen.insert((c.key.clone(), family), ip);
            continue;
        }
        let mut candidates: Vec<&Pool> = usable_by(pools, &c.namespace)
            .filter(|p| p.auto_assign && p.has_family(family))
            .collect();
        // Pools reserved for some namespaces come before pools open to all.
        candidates.sort_by_key(|p| p.namespaces.is_empty());
        if candidates.is_empty() {
            out.add_problem(
                &c.key,
                VipProblem::NoPools {
                    family: family.name(),
                    namespace: c.namespace.clone(),
                },
            );
            continue;
        }
        let seed = c.sharing_key.as_deref().unwrap_or(&c.key);
        match allocate(seed, family, &candidates, &held) {
            Some(ip) => {
                held.insert(ip, Holding { holders: vec![c] });
                chosen.insert((c.key.clone(), family), ip);
            }
            None => out.add_problem(
                &c.key,
                VipProblem::PoolsExhausted {
                    family: family.name(),
                    namespace: c.namespace.clone(),
                },
            ),
        }
    }

    for c in claims {
        let ips: Vec<IpAddr> = c
            .families
            .iter()
            .filter_map(|f| chosen.get(&(c.key.clone(), *f)).copied())
            .collect();
        if !ips.is_empty() {
            out.vips.insert(c.key.clone(), ips);
        }
    }
    out
}

/// Usable host addresses of a network: IPv4 prefixes up to /30 lose network and broadcast,
/// IPv6 ones the subnet-router anycast address.
pub fn usable(net: &ipnet::IpNet) -> (u128, u128) {
    match net {
        ipnet::IpNet::V4(n) => {
            let first = u32::from(n.network()) as u128;
            let len = 1u128 << (32 - n.prefix_len());
            if n.prefix_len() <= 30 {
                (first + 1, len - 2)
            } else {
                (first, len)
            }
        }
        ipnet::IpNet::V6(n) => {
            let first = u128::from(n.network());
            let bits = 128 - n.prefix_len() as u32;
            let len = if bits >= 128 {
                u128::MAX
            } else {
                1u128 << bits
            };
            if len > 1 {
                (first + 1, len - 1)
            } else {
                (first, len)
            }
        }
    }
}

fn to_ip(net: &ipnet::IpNet, n: u128) -> IpAddr {
    match net {
        ipnet::IpNet::V4(_) => IpAddr::V4((n as u32).into()),
        ipnet::IpNet::V6(_) => IpAddr::V6(n.into()),
    }
}

/// First free address at or after the seed's hash position, trying networks in order.
fn allocate<T>(
    seed: &str,
    family: Family,
    pools: &[&Pool],
    taken: &BTreeMap<IpAddr, T>,
) -> Option<IpAddr> {
    let digest = Sha256::digest(seed.as_bytes());
    let mut h = [0u8; 16];
    h.copy_from_slice(&digest[..16]);
    let hash = u128::from_be_bytes(h);
    for net in pools
        .iter()
        .flat_map(|p| p.nets.iter())
        .filter(|n| Family::of(&n.network()) == family)
    {
        let (first, len) = usable(net);
        let start = hash % len;
        // At most |taken| addresses can be occupied, so a free one is found within that many
        // steps whenever the network is not full: the probe is bounded even for IPv6.
        let steps = len.min(taken.len() as u128 + 1);
        for i in 0..steps {
            // (start + i) % len without overflowing on huge IPv6 networks.
            let offset = if i >= len - start {
                i - (len - start)
            } else {
                start + i
            };
            let ip = to_ip(net, first + offset);
            if !taken.contains_key(&ip) {
                return Some(ip);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
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
}
