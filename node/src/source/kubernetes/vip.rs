//! VIP assignment: honor requests, keep what status already shows, allocate the rest from pools.
//!
//! The allocation is a pure function of its input, so a new publisher that reads the same
//! Services computes the same VIPs. Stability across publisher changes comes from two rules:
//! an address already in a Service's `status.loadBalancer.ingress` (and inside a pool) is
//! kept, and fresh allocations start at a position derived from `sha256(namespace/name)`,
//! probing forward, with claimants processed in a fixed order.
//!
//! Conflicts are never resolved silently: when two Services claim one address, the one that
//! already holds it in status wins, else the older one (then the smaller key); every loser
//! gets a [`VipProblem::Conflict`] so the shell can emit an Event and a log line.

use ipnet::IpNet;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("VIP pool {pool:?}: not a CIDR (expected e.g. 203.0.113.0/24)")]
    NotCidr { pool: String },
    #[error("VIP pools {a} and {b} overlap")]
    Overlap { a: IpNet, b: IpNet },
}

/// Parses and checks the configured pools (CIDRs, host bits cleared, no overlaps).
pub fn parse_pools(pools: &[String]) -> Result<Vec<IpNet>, PoolError> {
    let mut nets = Vec::with_capacity(pools.len());
    for p in pools {
        let net: IpNet = p
            .trim()
            .parse()
            .map_err(|_| PoolError::NotCidr { pool: p.clone() })?;
        let net = net.trunc();
        if let Some(other) = nets
            .iter()
            .find(|o: &&IpNet| o.contains(&net.network()) || net.contains(&o.network()))
        {
            return Err(PoolError::Overlap { a: *other, b: net });
        }
        nets.push(net);
    }
    Ok(nets)
}

/// One Service asking for a VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// `namespace/name`, unique.
    pub key: String,
    /// Seconds since the epoch of `metadata.creationTimestamp`; older wins conflicts.
    pub created_s: i64,
    /// From `shoal.io/vip` or `spec.loadBalancerIP`.
    pub requested: Option<IpAddr>,
    /// Addresses currently in `status.loadBalancer.ingress`.
    pub current: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VipProblem {
    #[error("VIP {vip} is also claimed by {holder}, which keeps it")]
    Conflict { vip: IpAddr, holder: String },
    #[error("no free address left in the VIP pools")]
    PoolsExhausted,
    #[error("no VIP requested and no VIP pools configured")]
    NoPools,
}

/// The assignment for every claim, plus problems for claims that lost or could not be served.
/// A claim that lost its status address to an explicit request still gets a fresh address
/// (and a problem saying why it moved).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    pub vips: BTreeMap<String, IpAddr>,
    pub problems: BTreeMap<String, VipProblem>,
}

pub fn assign(claims: &[Claim], pools: &[IpNet]) -> Assignment {
    let mut out = Assignment::default();
    let in_pool = |ip: &IpAddr| pools.iter().any(|p| p.contains(ip));

    // Every address somebody wants, with who wants it and how strongly.
    let mut wanted: BTreeMap<IpAddr, Vec<&Claim>> = BTreeMap::new();
    for c in claims {
        match c.requested {
            Some(ip) => wanted.entry(ip).or_default().push(c),
            None => {
                if let Some(ip) = c.current.iter().find(|&&ip| in_pool(&ip)) {
                    wanted.entry(*ip).or_default().push(c);
                }
            }
        }
    }
    let mut taken: BTreeSet<IpAddr> = BTreeSet::new();
    let mut needs_pool: Vec<&Claim> = Vec::new();
    for (ip, mut claimants) in wanted {
        claimants.sort_by(|a, b| {
            let holds = |c: &Claim| !c.current.contains(&ip);
            (holds(a), a.created_s, &a.key).cmp(&(holds(b), b.created_s, &b.key))
        });
        let winner = claimants[0];
        out.vips.insert(winner.key.clone(), ip);
        taken.insert(ip);
        for loser in &claimants[1..] {
            out.problems.insert(
                loser.key.clone(),
                VipProblem::Conflict {
                    vip: ip,
                    holder: winner.key.clone(),
                },
            );
            if loser.requested.is_none() {
                needs_pool.push(loser);
            }
        }
    }
    for c in claims {
        let placed = out.vips.contains_key(&c.key) || out.problems.contains_key(&c.key);
        if !placed {
            needs_pool.push(c);
        }
    }
    needs_pool.sort_by(|a, b| a.key.cmp(&b.key));
    needs_pool.dedup_by(|a, b| a.key == b.key);
    for c in needs_pool {
        if pools.is_empty() {
            out.problems.insert(c.key.clone(), VipProblem::NoPools);
            continue;
        }
        match allocate(&c.key, pools, &taken) {
            Some(ip) => {
                taken.insert(ip);
                out.vips.insert(c.key.clone(), ip);
            }
            None => {
                out.problems
                    .insert(c.key.clone(), VipProblem::PoolsExhausted);
            }
        }
    }
    out
}

/// Usable host addresses of a pool: IPv4 prefixes up to /30 lose network and broadcast.
fn usable(pool: &IpNet) -> (u128, u128) {
    let (first, len): (u128, u128) = match pool {
        IpNet::V4(n) => {
            let first = u32::from(n.network()) as u128;
            let len = 1u128 << (32 - n.prefix_len());
            if n.prefix_len() <= 30 {
                (first + 1, len - 2)
            } else {
                (first, len)
            }
        }
        IpNet::V6(n) => {
            let first = u128::from(n.network());
            let bits = 128 - n.prefix_len() as u32;
            // Skip the subnet-router anycast address (all host bits zero).
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
    };
    (first, len)
}

fn to_ip(pool: &IpNet, n: u128) -> IpAddr {
    match pool {
        IpNet::V4(_) => IpAddr::V4((n as u32).into()),
        IpNet::V6(_) => IpAddr::V6(n.into()),
    }
}

/// First free address at or after the key's hash position, trying pools in order.
fn allocate(key: &str, pools: &[IpNet], taken: &BTreeSet<IpAddr>) -> Option<IpAddr> {
    let digest = Sha256::digest(key.as_bytes());
    let mut h = [0u8; 16];
    h.copy_from_slice(&digest[..16]);
    let hash = u128::from_be_bytes(h);
    for pool in pools {
        let (first, len) = usable(pool);
        let start = hash % len;
        // At most |taken| addresses can be occupied, so a free one is found within that many
        // steps whenever the pool is not full: the probe is bounded even for IPv6 pools.
        let steps = len.min(taken.len() as u128 + 1);
        for i in 0..steps {
            // (start + i) % len without overflowing on huge IPv6 pools.
            let offset = if i >= len - start {
                i - (len - start)
            } else {
                start + i
            };
            let ip = to_ip(pool, first + offset);
            if !taken.contains(&ip) {
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
        Claim {
            key: key.into(),
            created_s,
            requested: requested.map(ip),
            current: current.iter().map(|s| ip(s)).collect(),
        }
    }
    fn pools(p: &[&str]) -> Vec<IpNet> {
        parse_pools(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn pool_errors_name_the_pool() {
        assert_eq!(
            parse_pools(&["203.0.113.0/24".into(), "bogus".into()]),
            Err(PoolError::NotCidr {
                pool: "bogus".into()
            })
        );
        assert!(matches!(
            parse_pools(&["203.0.113.0/24".into(), "203.0.113.128/25".into()]),
            Err(PoolError::Overlap { .. })
        ));
        assert_eq!(pools(&["203.0.113.9/24"])[0].to_string(), "203.0.113.0/24");
    }

    #[test]
    fn requests_status_and_allocation() {
        let p = pools(&["203.0.113.0/24"]);
        let a = assign(
            &[
                claim("a/req", 5, Some("198.51.100.1"), &[]),
                claim("a/kept", 5, None, &["203.0.113.77"]),
                claim("a/new", 5, None, &[]),
            ],
            &p,
        );
        assert_eq!(a.vips["a/req"], ip("198.51.100.1"));
        assert_eq!(a.vips["a/kept"], ip("203.0.113.77"));
        let new = a.vips["a/new"];
        assert!(p[0].contains(&new) && new != ip("203.0.113.0") && new != ip("203.0.113.255"));
        assert!(a.problems.is_empty());
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
        assert_eq!(a.vips.get("a/old"), Some(&ip("203.0.113.5")));
        assert_eq!(a.vips.get("b/young"), None);
        assert_eq!(
            a.problems["b/young"],
            VipProblem::Conflict {
                vip: ip("203.0.113.5"),
                holder: "a/old".into()
            }
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
        assert_eq!(a.vips["a/holder"], ip("203.0.113.5"));
        assert!(matches!(a.problems["a/asker"], VipProblem::Conflict { .. }));
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
        assert_eq!(a.problems["a/1"], VipProblem::NoPools);
    }

    #[test]
    fn ipv6_pools_allocate_without_scanning() {
        let a = assign(&[claim("a/1", 0, None, &[])], &pools(&["2001:db8::/64"]));
        assert!(a.vips["a/1"].is_ipv6());
    }

    fn arb_claims() -> impl Strategy<Value = Vec<Claim>> {
        proptest::collection::vec(
            (
                0u8..12,
                0i64..5,
                proptest::option::of(0u8..6),
                proptest::option::of(0u8..10),
            ),
            0..12,
        )
        .prop_map(|v| {
            let mut seen = BTreeSet::new();
            v.into_iter()
                .filter(|(k, ..)| seen.insert(*k))
                .map(|(k, created, req, cur)| Claim {
                    key: format!("ns/s{k}"),
                    created_s: created,
                    requested: req.map(|r| IpAddr::from([203, 0, 113, r])),
                    current: cur
                        .map(|c| IpAddr::from([203, 0, 113, c]))
                        .into_iter()
                        .collect(),
                })
                .collect()
        })
    }

    proptest! {
        /// No address is handed out twice, every claim is either served or has a problem,
        /// and the order of the input does not matter.
        #[test]
        fn unique_complete_and_order_independent(claims in arb_claims(), seed in any::<u64>()) {
            let p = pools(&["203.0.113.0/28"]);
            let a = assign(&claims, &p);
            let distinct: BTreeSet<_> = a.vips.values().collect();
            prop_assert_eq!(distinct.len(), a.vips.len());
            for c in &claims {
                prop_assert!(a.vips.contains_key(&c.key) || a.problems.contains_key(&c.key));
                if let (Some(req), Some(got)) = (c.requested, a.vips.get(&c.key)) {
                    prop_assert_eq!(req, *got);
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
                current: a.vips.get(&c.key).into_iter().copied().collect(),
                ..c.clone()
            }).collect();
            prop_assert_eq!(assign(&after, &p).vips, a.vips);
        }
    }
}
