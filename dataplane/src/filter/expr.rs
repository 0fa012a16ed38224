//! A [`FilterRule`] as nftables expressions and back (pure; `nft.rs` puts them on the wire).
//!
//! The expressions are what `nft` itself generates for
//! `meta nfproto ipv4 ip daddr VIP meta l4proto tcp th dport PORT ip saddr NET/LEN accept`:
//! load a field into register 1, compare; the source prefix goes through a mask first.

use super::{FilterRule, Verdict};
use crate::model::Protocol;
use ipnet::IpNet;
use std::net::IpAddr;

/// `NFPROTO_IPV4`, `NFPROTO_IPV6` (the `meta nfproto` values of an inet table).
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

/// The expressions Shoal writes, with exactly the fields it uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// Load a meta key into register 1.
    Meta { key: MetaKey },
    /// Load `len` bytes at `offset` of a header into register 1.
    Payload { base: Header, offset: u32, len: u32 },
    /// Register 1 = (register 1 & mask) ^ 0.
    Mask { mask: Vec<u8> },
    /// Go on only if register 1 equals `value`.
    CmpEq { value: Vec<u8> },
    /// The rule's verdict.
    Verdict(Verdict),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaKey {
    Nfproto,
    L4proto,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    Network,
    Transport,
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn protocol_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// The expressions of one rule.
pub fn encode(rule: &FilterRule) -> Vec<Expr> {
    let v4 = rule.vip.is_ipv4();
    let (nfproto, daddr_at, saddr_at, len) = if v4 {
        (NFPROTO_IPV4, 16, 12, 4)
    } else {
        (NFPROTO_IPV6, 24, 8, 16)
    };
    let mut out = vec![
        Expr::Meta {
            key: MetaKey::Nfproto,
        },
        Expr::CmpEq {
            value: vec![nfproto],
        },
        Expr::Payload {
            base: Header::Network,
            offset: daddr_at,
            len,
        },
        Expr::CmpEq {
            value: ip_bytes(rule.vip),
        },
        Expr::Meta {
            key: MetaKey::L4proto,
        },
        Expr::CmpEq {
            value: vec![protocol_number(rule.protocol)],
        },
        Expr::Payload {
            base: Header::Transport,
            offset: 2,
            len: 2,
        },
        Expr::CmpEq {
            value: rule.port.to_be_bytes().to_vec(),
        },
    ];
    if let Some(src) = rule.source {
        out.push(Expr::Payload {
            base: Header::Network,
            offset: saddr_at,
            len,
        });
        out.push(Expr::Mask {
            mask: ip_bytes(src.netmask()),
        });
        out.push(Expr::CmpEq {
            value: ip_bytes(src.network()),
        });
    }
    out.push(Expr::Verdict(rule.verdict));
    out
}

/// The rule `exprs` encode, if they are exactly what [`encode`] writes; `None` for anything
/// else (a rule Shoal did not write).
pub fn decode(exprs: &[Expr]) -> Option<FilterRule> {
    use Expr::*;
    let (head, tail) = exprs.split_at_checked(8)?;
    let [Meta {
        key: MetaKey::Nfproto,
    }, CmpEq { value: nfproto }, Payload {
        base: Header::Network,
        offset: daddr_at,
        len,
    }, CmpEq { value: vip }, Meta {
        key: MetaKey::L4proto,
    }, CmpEq { value: l4 }, Payload {
        base: Header::Transport,
        offset: 2,
        len: 2,
    }, CmpEq { value: port }] = head
    else {
        return None;
    };
    let v4 = match (nfproto.as_slice(), *daddr_at, *len) {
        ([NFPROTO_IPV4], 16, 4) => true,
        ([NFPROTO_IPV6], 24, 16) => false,
        _ => return None,
    };
    let vip = ip_from(vip, v4)?;
    let protocol = match l4.as_slice() {
        [6] => Protocol::Tcp,
        [17] => Protocol::Udp,
        [132] => Protocol::Sctp,
        _ => return None,
    };
    let port = u16::from_be_bytes(port.as_slice().try_into().ok()?);
    let saddr_at = if v4 { 12 } else { 8 };
    let (source, verdict) = match tail {
        [Verdict(v)] => (None, *v),
        [Payload {
            base: Header::Network,
            offset,
            len: l,
        }, Mask { mask }, CmpEq { value: net }, Verdict(v)]
            if *offset == saddr_at && l == len =>
        {
            let mask = ip_from(mask, v4)?;
            let prefix = prefix_len(mask)?;
            let net = ip_from(net, v4)?;
            let range = IpNet::new(net, prefix).ok()?;
            if range.network() != net {
                return None;
            }
            (Some(range), *v)
        }
        _ => return None,
    };
    Some(FilterRule {
        vip,
        protocol,
        port,
        source,
        verdict,
    })
}

fn ip_from(bytes: &[u8], v4: bool) -> Option<IpAddr> {
    if v4 {
        let a: [u8; 4] = bytes.try_into().ok()?;
        Some(IpAddr::from(a))
    } else {
        let a: [u8; 16] = bytes.try_into().ok()?;
        Some(IpAddr::from(a))
    }
}

/// The prefix length of a contiguous netmask, `None` for a mask with holes.
fn prefix_len(mask: IpAddr) -> Option<u8> {
    let bits = match mask {
        IpAddr::V4(m) => u128::from(m.to_bits()) << 96,
        IpAddr::V6(m) => m.to_bits(),
    };
    let ones = bits.leading_ones();
    (bits.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_rule() -> impl Strategy<Value = FilterRule> {
        let v4 = (any::<u32>(), any::<u32>(), 0u8..=32).prop_map(|(vip, src, p)| {
            (
                IpAddr::from(vip.to_be_bytes()),
                IpAddr::from(src.to_be_bytes()),
                p,
            )
        });
        let v6 = (any::<u128>(), any::<u128>(), 0u8..=128).prop_map(|(vip, src, p)| {
            (
                IpAddr::from(vip.to_be_bytes()),
                IpAddr::from(src.to_be_bytes()),
                p,
            )
        });
        (
            prop_oneof![v4, v6],
            prop_oneof![
                Just(Protocol::Tcp),
                Just(Protocol::Udp),
                Just(Protocol::Sctp)
            ],
            any::<u16>(),
            any::<bool>(),
        )
            .prop_map(|((vip, src, prefix), protocol, port, has_source)| {
                let source = has_source.then(|| IpNet::new(src, prefix).unwrap().trunc());
                FilterRule {
                    vip,
                    protocol,
                    port,
                    source,
                    verdict: if has_source {
                        Verdict::Accept
                    } else {
                        Verdict::Drop
                    },
                }
            })
    }

    proptest! {
        #[test]
        fn every_rule_survives_the_round_trip(rule in arb_rule()) {
            prop_assert_eq!(decode(&encode(&rule)), Some(rule));
        }

        /// Dropping or changing any one expression never decodes as a Shoal rule by accident
        /// with the same meaning.
        #[test]
        fn a_damaged_rule_is_not_taken_for_the_original(rule in arb_rule(), at in any::<prop::sample::Index>()) {
            let mut exprs = encode(&rule);
            let i = at.index(exprs.len());
            exprs.remove(i);
            prop_assert_ne!(decode(&exprs), Some(rule));
        }
    }

    #[test]
    fn masks_with_holes_are_refused() {
        assert_eq!(prefix_len("255.255.0.0".parse().unwrap()), Some(16));
        assert_eq!(prefix_len("0.0.0.0".parse().unwrap()), Some(0));
        assert_eq!(prefix_len("255.255.255.255".parse().unwrap()), Some(32));
        assert_eq!(prefix_len("255.0.255.0".parse().unwrap()), None);
        assert_eq!(prefix_len("ffff:ffff::".parse().unwrap()), Some(32));
    }
}
