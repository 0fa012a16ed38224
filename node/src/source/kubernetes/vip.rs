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
//! every namespace. Services of one namespace with the same sharing key
//! (`shoal.io/allow-shared-ip`) and no common port may hold one address together.
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
    /// A Service left unpublished until its owner fixes it (a bad annotation): its status
    /// addresses are kept from fresh allocations, so fixing it brings the same VIP back, but
    /// it gets no VIP and yields its addresses to any published Service that wants them.
    pub unpublished: bool,
}

/// The pools are ShoalPools, or in a namespaced install the one pool of its `vip_pools`
/// setting: the messages name neither alone (they named ShoalPools to namespaced installs, which
/// have none: a probe).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
pub enum VipProblem {
    #[error("VIP {vip} is also claimed by {holder}, which keeps it (share it with the same shoal.io/allow-shared-ip key and different ports)")]
    Conflict { vip: IpAddr, holder: String },
    #[error("requested VIP {vip} is not in any VIP pool that namespace {namespace} may use (the ShoalPools, or vip_pools in a namespaced install)")]
    NotInPool { vip: IpAddr, namespace: String },
    #[error("requested VIP {vip} is the network, broadcast or subnet-router address of a VIP pool's network, which hosts do not answer for; request another address of the pool")]
    NetworkAddress { vip: IpAddr },
    #[error("requested VIP {vip} is {family}, but spec.ipFamilies does not list {family}")]
    FamilyNotServed { vip: IpAddr, family: &'static str },
    #[error("no free {family} address left in the VIP pools namespace {namespace} may use")]
    PoolsExhausted {
        family: &'static str,
        namespace: String,
    },
    #[error("no {family} VIP requested and no VIP pool with autoAssign (a ShoalPool, or vip_pools in a namespaced install) gives {family} addresses to namespace {namespace}")]
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
        // Keys are scoped to a namespace: a tenant who guesses another's key must not attach
        // its ports to that tenant's address.
        self.holders.iter().all(|h| {
            h.sharing_key.as_ref() == Some(key)
                && h.namespace == c.namespace
                && h.ports.is_disjoint(&c.ports)
                && h.key != c.key
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
    // Addresses of unpublished Services: nobody is allocated them; a published claim that
    // wants one (request or status) takes it and the unpublished one loses it.
    let mut reserved: BTreeMap<IpAddr, &Claim> = BTreeMap::new();
    for c in claims.iter().filter(|c| c.unpublished) {
        for ip in c.current.iter().filter(|ip| in_usable_pool(c, ip)) {
            reserved.entry(*ip).or_insert(c);
        }
    }
    for c in claims.iter().filter(|c| !c.unpublished) {
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
                Some(ip) if usable_by(pools, &c.namespace).any(|p| p.spans(ip)) => {
                    out.add_problem(&c.key, VipProblem::NetworkAddress { vip: *ip })
                }
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
    for (ip, c) in reserved {
        match held.get(&ip) {
            Some(h) => out.add_problem(
                &c.key,
                VipProblem::Conflict {
                    vip: ip,
                    holder: h.holders[0].key.clone(),
                },
            ),
            None => {
                held.insert(ip, Holding { holders: vec![c] });
            }
        }
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

    for c in claims.iter().filter(|c| !c.unpublished) {
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
mod tests;
