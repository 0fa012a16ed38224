//! Which addresses and networks load-balanced traffic may use: one table of the special
//! ranges drives both the address check (VIPs, backends, endpoints) and the pool check
//! (`shoal backend-init --pool`, ShoalPools), so the two cannot disagree.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Ranges no VIP or backend may use, with why, most specific first where they nest (the
/// broadcast address inside 240/4; `::` and `::1` inside the IPv4-compatible `::/96`).
const SPECIAL: &[(IpAddr, u8, &str)] = &[
    (v4(0, 0, 0, 0), 8, "0.0.0.0/8 is \"this network\""),
    (v4(255, 255, 255, 255), 32, "broadcast"),
    (v4(224, 0, 0, 0), 4, "multicast"),
    (v4(240, 0, 0, 0), 4, "240.0.0.0/4 is reserved"),
    (v4(127, 0, 0, 0), 8, "loopback"),
    (v4(169, 254, 0, 0), 16, "link-local"),
    (v6([0; 8]), 128, "unspecified"),
    (v6([0, 0, 0, 0, 0, 0, 0, 1]), 128, "loopback"),
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0]), 8, "multicast"),
    (v6([0xfe80, 0, 0, 0, 0, 0, 0, 0]), 10, "link-local"),
    (
        v6([0, 0, 0, 0, 0, 0xffff, 0, 0]),
        96,
        "IPv4-mapped: write the IPv4 address",
    ),
    // ::a.b.c.d, deprecated by RFC 4291.
    (
        v6([0; 8]),
        96,
        "IPv4-compatible (deprecated): write the IPv4 address",
    ),
];

const fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

const fn v6(s: [u16; 8]) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
    ))
}

fn special() -> impl Iterator<Item = (IpNet, &'static str)> {
    SPECIAL
        .iter()
        .filter_map(|&(addr, len, why)| Some((IpNet::new(addr, len).ok()?, why)))
}

/// Why an address cannot carry load-balanced traffic (a VIP or a backend), if it cannot.
pub fn not_unicast(ip: IpAddr) -> Option<&'static str> {
    special()
        .find(|(net, _)| net.contains(&ip))
        .map(|(_, why)| why)
}

/// The widest VIP pool a backend accepts as local (`shoal backend-init --pool`): a local route
/// for a wider one would take over addresses the host reaches through its gateway.
pub const POOL_PREFIX_MIN_V4: u8 = 8;
pub const POOL_PREFIX_MIN_V6: u8 = 32;

/// Why `net` cannot be a pool of VIPs that a backend makes local, if it cannot: host bits set
/// (a typo for another network), wider than a /8 (IPv4) or /32 (IPv6), or reaching into
/// addresses that are not unicast (loopback, multicast...). A `0.0.0.0/0` pool made every
/// address local to the backend, its default route included (the audit of 2026-12-06).
pub fn not_a_vip_pool(net: IpNet) -> Option<String> {
    if net.trunc() != net {
        return Some(format!("{net} has host bits set: write {}", net.trunc()));
    }
    let min = match net {
        IpNet::V4(_) => POOL_PREFIX_MIN_V4,
        IpNet::V6(_) => POOL_PREFIX_MIN_V6,
    };
    if net.prefix_len() < min {
        return Some(format!(
            "{net} is wider than a /{min}: a local route for it would take over addresses this \
             host reaches through its gateway"
        ));
    }
    // Two networks overlap when either holds the other's first address.
    special()
        .find(|(r, _)| r.contains(&net.network()) || net.contains(&r.network()))
        .map(|(r, why)| format!("{net} overlaps {r} ({why})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_special_range_is_refused_at_both_ends_and_its_neighbours_are_not() {
        for (net, why) in special() {
            for edge in [net.network(), net.broadcast()] {
                // Nested ranges answer with the inner one's reason (255.255.255.255).
                assert!(not_unicast(edge).is_some(), "{edge} in {net} ({why})");
            }
        }
        for ok in [
            "1.0.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "223.255.255.255",
            "198.18.0.1",
            "::1:0:0:0",
            "::1:0.0.0.1",
            "fec0::1",
            "fe7f::1",
            "feff::1",
            "2001:db8::1",
        ] {
            let ip: IpAddr = ok.parse().unwrap();
            assert_eq!(not_unicast(ip), None, "{ok}");
        }
        for (bad, says) in [
            ("0.1.2.3", "this network"),
            ("255.255.255.255", "broadcast"),
            ("255.255.255.254", "reserved"),
            ("239.1.1.1", "multicast"),
            ("127.1.2.3", "loopback"),
            ("169.254.9.9", "link-local"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("ff02::1", "multicast"),
            ("febf::1", "link-local"),
            ("::ffff:10.0.0.1", "IPv4-mapped"),
            ("::10.0.0.1", "IPv4-compatible"),
        ] {
            let ip: IpAddr = bad.parse().unwrap();
            assert!(not_unicast(ip).unwrap_or_default().contains(says), "{bad}");
        }
    }

    #[test]
    fn vip_pools_that_would_take_over_the_host_are_refused() {
        let why = |net: &str| not_a_vip_pool(net.parse().unwrap());
        for ok in [
            "203.0.113.0/24",
            "198.18.0.0/15",
            "10.0.0.0/8",
            "2001:db8::/48",
        ] {
            assert_eq!(why(ok), None, "{ok}");
        }
        for (net, says) in [
            ("0.0.0.0/0", "wider than a /8"),
            ("128.0.0.0/1", "wider than a /8"),
            ("2000::/3", "wider than a /32"),
            ("10.0.0.7/24", "host bits set: write 10.0.0.0/24"),
            ("0.0.0.0/8", "\"this network\""),
            ("127.0.0.0/8", "loopback"),
            ("127.0.0.5/32", "loopback"),
            ("169.254.0.0/24", "link-local"),
            ("224.0.0.0/8", "multicast"),
            ("240.0.0.0/8", "reserved"),
            ("255.255.255.255/32", "broadcast"),
            ("255.255.255.0/24", "broadcast"),
            ("::1/128", "loopback"),
            ("fe80::/64", "link-local"),
            ("ff02::/64", "multicast"),
            ("::ffff:0:0/96", "IPv4-mapped"),
            // Missing from the pool list before the two checks shared one table.
            ("::a00:0/104", "IPv4-compatible"),
        ] {
            let got = why(net).unwrap_or_default();
            assert!(got.contains(says), "{net}: {got}");
        }
    }
}
