//! Tests that touch this host's kernel read-only: rtnetlink parsing against real replies, and
//! the start-up error when IPVS is missing (this development host has no IPVS).

use shoal_dataplane::link::Rtnl;
use shoal_dataplane::{DataplaneError, IpvsDataplane, IpvsOptions};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

#[test]
fn lists_loopback_and_its_address() {
    let mut rtnl = Rtnl::open().expect("rtnetlink socket");
    let lo = rtnl.link("lo").expect("list links").expect("lo exists");
    assert!(lo.index > 0);
    let addrs = rtnl.addresses(lo.index).expect("list addresses");
    // 127.0.0.1 is host-scoped, so it is not a VIP candidate and must not be listed.
    assert!(
        !addrs.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
        "{addrs:?}"
    );
    assert!(rtnl.link("no-such-link0").expect("list links").is_none());
}

#[test]
fn open_without_ipvs_reports_it_clearly() {
    if Path::new("/proc/net/ip_vs").exists() {
        eprintln!("SKIPPED: this host has IPVS; the VM lab covers the real path");
        return;
    }
    match IpvsDataplane::open(&IpvsOptions::default()) {
        Err(DataplaneError::Unsupported { what, hint }) => {
            assert_eq!(what, "IPVS");
            assert!(hint.contains("ip_vs"), "{hint}");
        }
        Err(DataplaneError::Permission { .. }) => {}
        Err(e) => panic!("expected Unsupported, got: {e}"),
        Ok(_) => panic!("opened IPVS on a host without IPVS"),
    }
}
