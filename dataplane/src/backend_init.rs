//! `shoal backend-init`: what a backend pod needs to answer tunnelled traffic for its VIPs.
//!
//! IPVS tunnel mode delivers IPIP packets addressed to the pod; the pod decapsulates on
//! `tunl0` (`ip6tnl0` for IPv6), must treat the VIP as a local address, must not drop
//! decapsulated packets by reverse-path filtering, and must neither answer ARP for the VIP nor
//! use it as an ARP source. The VIP becomes local in one of two ways:
//! - `--vip ADDR`: the address is put on `tunl0` (the backend must know it in advance);
//! - `--pool CIDR`: a local route for the whole pool on `lo` (`ip route add local CIDR dev lo
//!   table local`), so every address of the pool is accepted, including VIPs allocated after
//!   the pod started. Replies leave with the VIP as source, which is what the client expects.
//!
//! After preparing, it checks the result the way the kernel will use it (`ip route get` of an
//! address of each pool and of each VIP must say `local`; the tunnel devices are up; the
//! sysctls read back) and reports each check it ran.

use crate::error::DataplaneError;
use crate::link::Rtnl;
use crate::local_route::{RouteKind, Routes};
use crate::sysctl::Sysctl;
use ipnet::IpNet;
use std::net::IpAddr;

/// The sysctls a backend needs, as `(key, value)`.
pub fn backend_sysctls() -> Vec<(&'static str, &'static str)> {
    vec![
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
        ("net.ipv4.conf.tunl0.rp_filter", "0"),
        ("net.ipv4.conf.all.arp_ignore", "1"),
        ("net.ipv4.conf.all.arp_announce", "2"),
    ]
}

/// What a backend accepts: single VIPs and whole pools.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accept {
    pub vips: Vec<IpAddr>,
    pub pools: Vec<IpNet>,
}

impl Accept {
    /// The tunnel devices needed: `tunl0` always (IPv4 in IPv4), `ip6tnl0` when any VIP or
    /// pool is IPv6 (IPVS tunnels an IPv6 service's packets in IPv6).
    pub fn tunnel_devices(&self) -> Vec<&'static str> {
        let v6 = self.vips.iter().any(IpAddr::is_ipv6)
            || self.pools.iter().any(|p| matches!(p, IpNet::V6(_)));
        if v6 {
            vec!["tunl0", "ip6tnl0"]
        } else {
            vec!["tunl0"]
        }
    }
}

/// The address of `pool` that the check looks up: its first host address.
pub fn probe_address(pool: &IpNet) -> IpAddr {
    pool.trunc().hosts().next().unwrap_or(pool.network())
}

/// What `prepare` did and what it checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Changes made (empty on a rerun).
    pub changed: Vec<String>,
    /// Each check that ran, with its result (all passed, or `prepare` returned an error).
    pub checks: Vec<String>,
}

/// Prepare this network namespace; idempotent.
pub fn prepare(accept: &Accept) -> Result<Report, DataplaneError> {
    prepare_with(accept, &Sysctl::default())
}

fn module_hint(dev: &str) -> String {
    let module = if dev == "ip6tnl0" {
        "ip6_tunnel"
    } else {
        "ipip"
    };
    format!("load the {module} module on the node (modprobe {module}); it creates {dev} in every network namespace")
}

/// A pool that holds an address of one of this host's interfaces (the pod's own address, a
/// node's) would make it local on `lo` too and take the host's traffic for its network with
/// it: refused before anything changes.
fn refuse_pools_holding_host_addresses(
    rtnl: &mut Rtnl,
    pools: &[IpNet],
) -> Result<(), DataplaneError> {
    for link in rtnl.links()? {
        if link.name == "lo" || link.name == "tunl0" || link.name == "ip6tnl0" {
            continue;
        }
        for addr in rtnl.addresses(link.index)? {
            if let Some(pool) = pools.iter().find(|p| p.contains(&addr)) {
                return Err(DataplaneError::Invalid {
                    entry: pool.to_string(),
                    field: "pool".into(),
                    detail: format!(
                        "holds {addr}, an address of {}: a local route for the pool would take \
                         this host's own network",
                        link.name
                    ),
                });
            }
        }
    }
    Ok(())
}

pub fn prepare_with(accept: &Accept, sysctl: &Sysctl) -> Result<Report, DataplaneError> {
    let mut report = Report::default();
    let mut rtnl = Rtnl::open()?;
    if !accept.pools.is_empty() {
        refuse_pools_holding_host_addresses(&mut rtnl, &accept.pools)?;
    }
    let mut devices = Vec::new();
    for dev in accept.tunnel_devices() {
        let link = rtnl.link(dev)?.ok_or_else(|| DataplaneError::Unsupported {
            what: format!("{dev} (tunnel device)"),
            hint: module_hint(dev),
        })?;
        if rtnl.set_up(dev)? {
            report.changed.push(format!("{dev} up"));
        }
        devices.push(link);
    }
    let tunl0 = &devices[0];
    for vip in &accept.vips {
        if rtnl.set_address(tunl0.index, *vip, true)? {
            report.changed.push(format!("address {vip} on tunl0"));
        }
    }
    let mut routes = Routes::open()?;
    if !accept.pools.is_empty() {
        let lo = rtnl
            .link("lo")?
            .ok_or_else(|| DataplaneError::from_errno("find interface", "lo", libc::ENODEV))?;
        for pool in &accept.pools {
            if routes.add_local(*pool, lo.index)? {
                report
                    .changed
                    .push(format!("local route {} on lo", pool.trunc()));
            }
        }
    }
    for change in sysctl.set_all(&backend_sysctls())? {
        report.changed.push(change);
    }

    // Checks: what the kernel will do with a packet for each VIP and pool.
    let mut looked_up: Vec<(String, IpAddr)> = accept
        .vips
        .iter()
        .map(|v| (format!("VIP {v}"), *v))
        .collect();
    looked_up.extend(
        accept
            .pools
            .iter()
            .map(|p| (format!("pool {}", p.trunc()), probe_address(p))),
    );
    for (what, addr) in looked_up {
        match routes.lookup(addr)? {
            RouteKind::Local => report.checks.push(format!(
                "route get {addr} -> local: {what} is accepted by this pod (ok)"
            )),
            other => {
                return Err(DataplaneError::Invalid {
                    entry: what,
                    field: "route".into(),
                    detail: format!(
                        "`ip route get {addr}` says {other:?}, not local, after setup: a more \
                         specific route in the local table shadows it?"
                    ),
                })
            }
        }
    }
    for dev in accept.tunnel_devices() {
        let up = rtnl.link(dev)?.is_some_and(|l| l.up);
        if !up {
            return Err(DataplaneError::Invalid {
                entry: dev.into(),
                field: "state".into(),
                detail: "still down after setting it up".into(),
            });
        }
        report.checks.push(format!("{dev} is up (ok)"));
    }
    let differing = sysctl.differing(&backend_sysctls());
    if !differing.is_empty() {
        return Err(DataplaneError::Invalid {
            entry: "sysctls".into(),
            field: "value".into(),
            detail: format!("read back different: {}", differing.join(", ")),
        });
    }
    report.checks.push(format!(
        "sysctls read back: {} (ok)",
        backend_sysctls()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_is_a_host_address_inside_the_pool() {
        let p = |s: &str| s.parse::<IpNet>().unwrap();
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(probe_address(&p("203.0.113.0/24")), a("203.0.113.1"));
        assert_eq!(probe_address(&p("203.0.113.77/24")), a("203.0.113.1"));
        assert_eq!(probe_address(&p("203.0.113.7/32")), a("203.0.113.7"));
        assert_eq!(probe_address(&p("2001:db8::/64")), a("2001:db8::"));
        for pool in ["203.0.113.64/27", "203.0.113.8/31", "2001:db8:1::/120"] {
            let net = p(pool);
            assert!(net.contains(&probe_address(&net)), "{pool}");
        }
    }

    #[test]
    fn ipv6_needs_the_ipv6_tunnel_device_too() {
        let v4 = Accept {
            vips: vec!["203.0.113.10".parse().unwrap()],
            pools: vec!["203.0.113.0/24".parse().unwrap()],
        };
        assert_eq!(v4.tunnel_devices(), ["tunl0"]);
        let v6 = Accept {
            vips: vec![],
            pools: vec!["2001:db8::/64".parse().unwrap()],
        };
        assert_eq!(v6.tunnel_devices(), ["tunl0", "ip6tnl0"]);
    }
}
