//! `shoal backend-init`: what a backend pod needs to answer tunnelled traffic for a VIP.
//!
//! IPVS tunnel mode delivers IPIP packets addressed to the pod; the pod decapsulates on
//! `tunl0`, must own the VIP (on `tunl0`), must not drop decapsulated packets by reverse-path
//! filtering, and must neither answer ARP for the VIP nor use it as an ARP source.

use crate::error::DataplaneError;
use crate::link::Rtnl;
use crate::sysctl::Sysctl;
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

/// Prepare this network namespace; idempotent. Returns what it changed (empty on a rerun).
pub fn prepare(vips: &[IpAddr]) -> Result<Vec<String>, DataplaneError> {
    prepare_with(vips, &Sysctl::default())
}

pub fn prepare_with(vips: &[IpAddr], sysctl: &Sysctl) -> Result<Vec<String>, DataplaneError> {
    let mut changed = Vec::new();
    let mut rtnl = Rtnl::open()?;
    let link = rtnl.link("tunl0")?.ok_or_else(|| DataplaneError::Unsupported {
        what: "tunl0 (IPIP tunnel device)".into(),
        hint: "load the ipip module on the node (modprobe ipip); it creates tunl0 in every namespace".into(),
    })?;
    if rtnl.set_up("tunl0")? {
        changed.push("tunl0 up".to_string());
    }
    for vip in vips {
        if rtnl.set_address(link.index, *vip, true)? {
            changed.push(format!("address {vip} on tunl0"));
        }
    }
    for (key, value) in backend_sysctls() {
        if sysctl.set(key, value)? {
            changed.push(format!("{key}={value}"));
        }
    }
    Ok(changed)
}
