//! VIP pools: the cluster-scoped `ShoalPool` custom resource, its checks and its usage status.
//!
//! ```yaml
//! apiVersion: shoal.io/v1alpha1
//! kind: ShoalPool
//! metadata: {name: public}
//! spec:
//!   addresses: ["203.0.113.0/24", "2001:db8:1::/112"]
//!   namespaces: ["web", "shop"]   # optional: only Services in these namespaces (default: all)
//!   autoAssign: true              # optional: false = only explicit requests (default: true)
//! status: {used: 3, free: 250, message: ""}
//! ```
//!
//! Only the publisher reads pools. Pure: [`parse_pools`] turns the objects into [`Pool`]s and
//! [`PoolProblem`]s (a pool with a bad CIDR, or overlapping an older pool, is left out whole
//! and reported, the others still serve), [`usage`] counts addresses for the status.
//! A namespaced install (`--namespace`) cannot read cluster-scoped objects with its Role, so
//! there the pools come from the `vip_pools` setting instead (see [`from_cidrs`]).

use super::vip::{usable, Family};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

pub const GROUP: &str = "shoal.io";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "ShoalPool";
pub const PLURAL: &str = "shoalpools";

/// `spec` of a ShoalPool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolSpec {
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
    #[serde(default)]
    pub auto_assign: Option<bool>,
}

/// `status` of a ShoalPool, written by the publisher.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    /// Addresses held by Services (a shared address counts once).
    pub used: u64,
    /// Usable addresses left (saturates at 2^63-1 for large IPv6 ranges).
    pub free: u64,
    /// Empty when the pool is in use; else why it is ignored.
    pub message: String,
}

/// A ShoalPool as read from the API server (only the parts the publisher uses).
#[derive(Debug, Clone, Deserialize)]
pub struct ShoalPool {
    pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    #[serde(default)]
    pub spec: PoolSpec,
}

impl ShoalPool {
    pub fn object(&self) -> PoolObject {
        PoolObject {
            name: self.metadata.name.clone().unwrap_or_default(),
            created_s: self
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second())
                .unwrap_or(i64::MAX),
            spec: self.spec.clone(),
        }
    }
}

/// A checked pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    /// Host bits cleared.
    pub nets: Vec<IpNet>,
    /// Namespaces that may use the pool; empty = every namespace.
    pub namespaces: BTreeSet<String>,
    /// Whether Services without a request get addresses from it.
    pub auto_assign: bool,
}

impl Pool {
    pub fn allows(&self, namespace: &str) -> bool {
        self.namespaces.is_empty() || self.namespaces.contains(namespace)
    }
    /// Whether a VIP may come from the pool: inside one of its networks and not an address
    /// the network keeps for itself (IPv4 network and broadcast, IPv6 subnet-router anycast),
    /// which allocation skips too.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.nets.iter().any(|n| {
            let (first, len) = super::vip::usable(n);
            let at = match ip {
                IpAddr::V4(v4) => u32::from(*v4) as u128,
                IpAddr::V6(v6) => u128::from(*v6),
            };
            n.contains(ip) && at >= first && at - first < len
        })
    }
    /// Inside one of the pool's networks, usable or not.
    pub fn spans(&self, ip: &IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(ip))
    }
    pub fn has_family(&self, family: Family) -> bool {
        self.nets.iter().any(|n| Family::of(&n.network()) == family)
    }
}

/// A pool left out, with the reason (written to its status and as an Event).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolProblem {
    #[error("ShoalPool {pool}: {}; pool ignored", self.detail())]
    NotCidr { pool: String, value: String },
    #[error("ShoalPool {pool}: {}; pool ignored", self.detail())]
    Empty { pool: String },
    #[error("ShoalPool {pool}: {} of ShoalPool {other}; pool ignored", self.detail())]
    Overlap {
        pool: String,
        net: IpNet,
        other: String,
        other_net: IpNet,
    },
    /// A range no VIP may come from: wider than a /8 (/32) or reaching into loopback,
    /// multicast and the like (`validate::not_a_vip_pool`). A `0.0.0.0/0` pool handed out
    /// 10.96.0.1, a cluster's API ClusterIP (the audit of 2026-12-06).
    #[error("ShoalPool {pool}: {}; pool ignored", self.detail())]
    Unsafe { pool: String, why: String },
}

impl PoolProblem {
    /// What is wrong, without the pool's name or the consequence: the `vip_pools` setting says
    /// this under its own name, and there the start aborts rather than ignoring the pool.
    pub fn detail(&self) -> String {
        match self {
            PoolProblem::NotCidr { value, .. } => {
                format!("{value:?} is not a CIDR (expected e.g. 203.0.113.0/24)")
            }
            PoolProblem::Empty { .. } => "no addresses".into(),
            PoolProblem::Overlap { net, other_net, .. } => format!("{net} overlaps {other_net}"),
            PoolProblem::Unsafe { why, .. } => why.clone(),
        }
    }

    pub fn pool(&self) -> &str {
        match self {
            PoolProblem::NotCidr { pool, .. }
            | PoolProblem::Empty { pool }
            | PoolProblem::Overlap { pool, .. }
            | PoolProblem::Unsafe { pool, .. } => pool,
        }
    }
}

/// One ShoalPool object as read: name, creation time (older pools win overlaps), spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolObject {
    pub name: String,
    pub created_s: i64,
    pub spec: PoolSpec,
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Checks every pool; returns the usable ones (sorted by age, then name) and the problems.
pub fn parse_pools(objects: &[PoolObject]) -> (Vec<Pool>, Vec<PoolProblem>) {
    let mut sorted: Vec<&PoolObject> = objects.iter().collect();
    sorted.sort_by(|a, b| (a.created_s, &a.name).cmp(&(b.created_s, &b.name)));
    let mut pools: Vec<Pool> = Vec::new();
    let mut problems = Vec::new();
    'pools: for o in sorted {
        if o.spec.addresses.is_empty() {
            problems.push(PoolProblem::Empty {
                pool: o.name.clone(),
            });
            continue;
        }
        let mut nets: Vec<IpNet> = Vec::new();
        for a in &o.spec.addresses {
            let Ok(net) = a.trim().parse::<IpNet>() else {
                problems.push(PoolProblem::NotCidr {
                    pool: o.name.clone(),
                    value: a.clone(),
                });
                continue 'pools;
            };
            let net = net.trunc();
            if let Some(why) = crate::validate::not_a_vip_pool(net) {
                problems.push(PoolProblem::Unsafe {
                    pool: o.name.clone(),
                    why,
                });
                continue 'pools;
            }
            let clash = pools
                .iter()
                .flat_map(|p| p.nets.iter().map(move |n| (p.name.as_str(), n)))
                .chain(nets.iter().map(|n| (o.name.as_str(), n)))
                .find(|(_, n)| overlaps(n, &net))
                .map(|(name, n)| (name.to_string(), *n));
            if let Some((other, other_net)) = clash {
                problems.push(PoolProblem::Overlap {
                    pool: o.name.clone(),
                    net,
                    other,
                    other_net,
                });
                continue 'pools;
            }
            nets.push(net);
        }
        pools.push(Pool {
            name: o.name.clone(),
            nets,
            namespaces: o
                .spec
                .namespaces
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            auto_assign: o.spec.auto_assign.unwrap_or(true),
        });
    }
    (pools, problems)
}

/// The pool of a namespaced install: CIDRs from the `vip_pools` setting, for its namespace only.
pub fn from_cidrs(cidrs: &[String], namespace: &str) -> Result<Pool, PoolProblem> {
    let obj = PoolObject {
        name: "vip_pools".into(),
        created_s: 0,
        spec: PoolSpec {
            addresses: cidrs.to_vec(),
            namespaces: Some(vec![namespace.to_string()]),
            auto_assign: Some(true),
        },
    };
    let (mut pools, mut problems) = parse_pools(std::slice::from_ref(&obj));
    match problems.pop() {
        Some(p) => Err(p),
        None => Ok(pools.remove(0)),
    }
}

/// Status for every pool object: usage for the pools in use, the reason for the others.
pub fn usage<'a>(
    objects: &[PoolObject],
    pools: &[Pool],
    problems: &[PoolProblem],
    assigned: impl IntoIterator<Item = &'a IpAddr>,
) -> BTreeMap<String, PoolStatus> {
    let distinct: BTreeSet<&IpAddr> = assigned.into_iter().collect();
    let mut out = BTreeMap::new();
    for p in pools {
        let used = distinct.iter().filter(|ip| p.contains(ip)).count() as u64;
        let size: u128 = p
            .nets
            .iter()
            .map(|n| usable(n).1)
            .fold(0u128, u128::saturating_add);
        let free = size.saturating_sub(used as u128).min(i64::MAX as u128) as u64;
        out.insert(
            p.name.clone(),
            PoolStatus {
                used,
                free,
                message: String::new(),
            },
        );
    }
    for o in objects {
        if let Some(problem) = problems.iter().find(|x| x.pool() == o.name) {
            out.insert(
                o.name.clone(),
                PoolStatus {
                    used: 0,
                    free: 0,
                    message: problem.to_string(),
                },
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(name: &str, created_s: i64, addrs: &[&str]) -> PoolObject {
        PoolObject {
            name: name.into(),
            created_s,
            spec: PoolSpec {
                addresses: addrs.iter().map(|s| s.to_string()).collect(),
                ..PoolSpec::default()
            },
        }
    }

    #[test]
    fn bad_and_overlapping_pools_are_left_out_and_named() {
        let objects = [
            obj("young", 20, &["203.0.113.128/25"]),
            obj("old", 10, &["203.0.113.9/24"]),
            obj("typo", 5, &["203.0.113.0/33"]),
            obj("empty", 5, &[]),
            obj("v6", 30, &["2001:db8::/64", "198.51.100.0/24"]),
        ];
        let (pools, problems) = parse_pools(&objects);
        let names: Vec<_> = pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["old", "v6"]);
        assert_eq!(pools[0].nets[0].to_string(), "203.0.113.0/24");
        assert!(pools[1].has_family(Family::V6) && pools[1].has_family(Family::V4));
        let msgs: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert!(
            msgs.iter()
                .any(|m| m.contains("young") && m.contains("old")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter().any(|m| m.contains("203.0.113.0/33")),
            "{msgs:?}"
        );
        assert!(msgs.iter().any(|m| m.contains("empty")), "{msgs:?}");
        // Two overlapping networks inside one pool.
        let (pools, problems) = parse_pools(&[obj("self", 0, &["10.0.0.0/8", "10.1.0.0/16"])]);
        assert!(pools.is_empty());
        assert!(problems[0].to_string().contains("of ShoalPool self"));
    }

    /// The audit of 2026-12-06: a `0.0.0.0/0` pool handed out a cluster's API ClusterIP, and
    /// loopback or multicast pools wrote such VIPs into Service status.
    #[test]
    fn pools_no_vip_may_come_from_are_left_out_and_named() {
        let objects = [
            obj("all", 0, &["0.0.0.0/0"]),
            obj("all6", 0, &["::/0"]),
            obj("lo", 0, &["127.0.0.0/30"]),
            obj("mc", 0, &["224.0.0.0/30"]),
            obj("mapped", 0, &["::ffff:0:0/96"]),
            obj("ok", 0, &["203.0.113.0/24", "2001:db8::/64"]),
        ];
        let (pools, problems) = parse_pools(&objects);
        let names: Vec<_> = pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["ok"]);
        assert_eq!(problems.len(), 5);
        // Problems come in the pools' order: by creation, then name.
        for (problem, says) in problems.iter().zip([
            "wider than a /8",
            "wider than a /32",
            "loopback",
            "IPv4-mapped",
            "multicast",
        ]) {
            assert!(
                matches!(problem, PoolProblem::Unsafe { .. }) && problem.to_string().contains(says),
                "{problem}"
            );
        }
    }

    #[test]
    fn usage_counts_shared_addresses_once() {
        let objects = [obj("p", 0, &["203.0.113.0/29"]), obj("bad", 0, &["x"])];
        let (pools, problems) = parse_pools(&objects);
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        let b: IpAddr = "203.0.113.2".parse().unwrap();
        let outside: IpAddr = "192.0.2.1".parse().unwrap();
        let u = usage(&objects, &pools, &problems, [&a, &a, &b, &outside]);
        assert_eq!(
            u["p"],
            PoolStatus {
                used: 2,
                free: 4,
                message: String::new()
            }
        );
        assert!(u["bad"].message.contains("not a CIDR"));
        let big = [obj("big", 0, &["2001:db8::/32"])];
        let (pools, _) = parse_pools(&big);
        assert_eq!(
            usage(&big, &pools, &[], []).get("big").unwrap().free,
            i64::MAX as u64
        );
    }

    #[test]
    fn namespaced_install_pool() {
        let p = from_cidrs(&["203.0.113.0/24".into()], "app").unwrap();
        assert!(p.allows("app") && !p.allows("other"));
        assert!(from_cidrs(&["nope".into()], "app")
            .unwrap_err()
            .to_string()
            .contains("nope"));
    }
}
