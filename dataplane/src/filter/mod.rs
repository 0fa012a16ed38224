//! Source ranges: which client addresses may reach a VIP's port (Kubernetes'
//! `loadBalancerSourceRanges`, the rules file's `source_ranges`).
//!
//! Every replica enforces them itself, from the replicated table, in a table of its own
//! (`inet shoal`, see [`nft`]). The decisions here are pure: [`rules`] turns the filters into
//! an ordered rule list (for each restricted VIP/protocol/port: one accept per allowed range
//! of the VIP's family, then a drop), and [`decide`] compares it with what the kernel holds.
//! [`reconcile_filter`] is the thin pass that reads, decides and writes through a
//! [`Firewall`]: nftables over netlink, or the in-memory twin ([`memory`]).
//!
//! Only packets to a restricted VIP *and* one of its restricted ports are looked at; every
//! other packet passes the chain untouched. A VIP with ranges none of which is of its address
//! family accepts nobody (as kube-proxy does): the drop rule stays alone.

pub mod expr;
pub mod memory;
pub mod nft;

use crate::error::DataplaneError;
use crate::model::Protocol;
use ipnet::IpNet;
use std::fmt;
use std::net::IpAddr;

/// The allowed sources of one VIP/protocol/port. An empty `ranges` means "no restriction" and
/// produces no rule at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFilter {
    pub vip: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    pub ranges: Vec<IpNet>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Accept,
    Drop,
}

/// One rule of the chain: packets to `vip`:`port`/`protocol` from `source` (any source when
/// `None`) get `verdict`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FilterRule {
    pub vip: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    pub source: Option<IpNet>,
    pub verdict: Verdict,
}

impl fmt::Display for FilterRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        };
        let family = if self.vip.is_ipv4() { "ip" } else { "ip6" };
        write!(f, "{family} daddr {} {proto} dport {}", self.vip, self.port)?;
        if let Some(src) = self.source {
            write!(f, " {family} saddr {src}")?;
        }
        match self.verdict {
            Verdict::Accept => write!(f, " accept"),
            Verdict::Drop => write!(f, " drop"),
        }
    }
}

/// The chain for `filters`, in a canonical order: sorted by VIP, protocol, port; for each,
/// the accepts of its ranges (of the VIP's family, host bits cleared, sorted, without
/// duplicates), then its drop. Filters without ranges give nothing; two filters for the same
/// VIP/protocol/port are merged (their ranges add up).
pub fn rules(filters: &[SourceFilter]) -> Vec<FilterRule> {
    use std::collections::{BTreeMap, BTreeSet};
    let mut by_key: BTreeMap<(IpAddr, Protocol, u16), BTreeSet<IpNet>> = BTreeMap::new();
    for f in filters.iter().filter(|f| !f.ranges.is_empty()) {
        let set = by_key.entry((f.vip, f.protocol, f.port)).or_default();
        set.extend(
            f.ranges
                .iter()
                .filter(|r| r.addr().is_ipv4() == f.vip.is_ipv4())
                .map(|r| r.trunc()),
        );
    }
    let mut out = Vec::new();
    for ((vip, protocol, port), ranges) in by_key {
        let rule = |source, verdict| FilterRule {
            vip,
            protocol,
            port,
            source,
            verdict,
        };
        out.extend(ranges.into_iter().map(|r| rule(Some(r), Verdict::Accept)));
        out.push(rule(None, Verdict::Drop));
    }
    out
}

/// What the kernel holds in Shoal's table, as read back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadBack {
    /// The rules of Shoal's chain that decode as [`FilterRule`]s, in chain order.
    pub rules: Vec<FilterRule>,
    /// Rules (or chains) in Shoal's table that Shoal did not write: someone else's edits.
    pub foreign: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The kernel already holds exactly the desired rules (or no table and none desired).
    Keep,
    /// Rebuild the table with the desired rules, atomically.
    Replace,
    /// Delete the table: nothing is restricted any more.
    Remove,
}

/// Pure: what to do to get from `actual` (`None`: no table) to `desired`.
pub fn decide(desired: &[FilterRule], actual: Option<&ReadBack>) -> Action {
    match actual {
        None if desired.is_empty() => Action::Keep,
        None => Action::Replace,
        Some(_) if desired.is_empty() => Action::Remove,
        Some(a) if a.foreign == 0 && a.rules == desired => Action::Keep,
        Some(_) => Action::Replace,
    }
}

/// Where source filters are programmed: nftables ([`nft::NftFirewall`]) or memory.
pub trait Firewall: Send {
    fn kind(&self) -> &'static str;
    /// Shoal's table as the kernel holds it; `None` when there is no table.
    fn read(&mut self) -> Result<Option<ReadBack>, DataplaneError>;
    /// Replaces Shoal's table with one holding exactly `rules`, in one atomic transaction.
    fn replace(&mut self, rules: &[FilterRule]) -> Result<(), DataplaneError>;
    /// Deletes Shoal's table if it exists.
    fn remove(&mut self) -> Result<(), DataplaneError>;
}

/// What one [`reconcile_filter`] pass changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterChange {
    Unchanged,
    Replaced { rules: usize },
    Removed,
}

/// One pass: read the table back, decide, write. Idempotent: a second pass with the same
/// filters changes nothing. When nothing is restricted, a firewall that cannot even be read
/// (no nf_tables module, no permission) is no error: there is nothing to enforce or remove
/// that this node could have written.
pub fn reconcile_filter(
    firewall: &mut dyn Firewall,
    filters: &[SourceFilter],
) -> Result<FilterChange, DataplaneError> {
    let desired = rules(filters);
    let actual = match firewall.read() {
        Ok(actual) => actual,
        Err(_) if desired.is_empty() => return Ok(FilterChange::Unchanged),
        Err(e) => return Err(e),
    };
    Ok(match decide(&desired, actual.as_ref()) {
        Action::Keep => FilterChange::Unchanged,
        Action::Replace => {
            firewall.replace(&desired)?;
            FilterChange::Replaced {
                rules: desired.len(),
            }
        }
        Action::Remove => {
            firewall.remove()?;
            FilterChange::Removed
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f(vip: &str, port: u16, ranges: &[&str]) -> SourceFilter {
        SourceFilter {
            vip: vip.parse().unwrap(),
            protocol: Protocol::Tcp,
            port,
            ranges: ranges.iter().map(|r| r.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn accepts_then_a_drop_per_restricted_port() {
        let r = rules(&[
            f("203.0.113.2", 80, &["198.51.100.7/24", "192.0.2.0/25"]),
            f("203.0.113.1", 443, &["192.0.2.0/24"]),
            f("203.0.113.3", 80, &[]),
        ]);
        let text: Vec<String> = r.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            text,
            [
                "ip daddr 203.0.113.1 tcp dport 443 ip saddr 192.0.2.0/24 accept",
                "ip daddr 203.0.113.1 tcp dport 443 drop",
                "ip daddr 203.0.113.2 tcp dport 80 ip saddr 192.0.2.0/25 accept",
                "ip daddr 203.0.113.2 tcp dport 80 ip saddr 198.51.100.0/24 accept",
                "ip daddr 203.0.113.2 tcp dport 80 drop",
            ]
        );
    }

    #[test]
    fn ranges_of_the_other_family_are_left_out_and_the_drop_stays() {
        let r = rules(&[f("2001:db8::1", 53, &["192.0.2.0/24"])]);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].verdict, Verdict::Drop);
        let r = rules(&[f("2001:db8::1", 53, &["192.0.2.0/24", "2001:db8:1::/48"])]);
        assert_eq!(
            r.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            [
                "ip6 daddr 2001:db8::1 tcp dport 53 ip6 saddr 2001:db8:1::/48 accept",
                "ip6 daddr 2001:db8::1 tcp dport 53 drop"
            ]
        );
    }

    #[test]
    fn decide_covers_every_case() {
        let want = rules(&[f("203.0.113.1", 80, &["192.0.2.0/24"])]);
        let same = ReadBack {
            rules: want.clone(),
            foreign: 0,
        };
        assert_eq!(decide(&[], None), Action::Keep);
        assert_eq!(decide(&want, None), Action::Replace);
        assert_eq!(decide(&want, Some(&same)), Action::Keep);
        assert_eq!(decide(&[], Some(&same)), Action::Remove);
        assert_eq!(decide(&[], Some(&ReadBack::default())), Action::Remove);
        let tampered = ReadBack {
            foreign: 1,
            ..same.clone()
        };
        assert_eq!(decide(&want, Some(&tampered)), Action::Replace);
        let shorter = ReadBack {
            rules: want[1..].to_vec(),
            foreign: 0,
        };
        assert_eq!(decide(&want, Some(&shorter)), Action::Replace);
    }

    fn arb_filter() -> impl Strategy<Value = SourceFilter> {
        (
            0u8..4,
            prop_oneof![Just(80u16), Just(443u16)],
            proptest::collection::vec((any::<u32>(), 8u8..=32), 0..4),
        )
            .prop_map(|(v, port, ranges)| SourceFilter {
                vip: IpAddr::from([203, 0, 113, v]),
                protocol: Protocol::Tcp,
                port,
                ranges: ranges
                    .into_iter()
                    .map(|(a, p)| IpNet::new(IpAddr::from(a.to_be_bytes()), p).unwrap())
                    .collect(),
            })
    }

    proptest! {
        /// The chain does not depend on the order filters or ranges come in, and every
        /// restricted port ends with its drop.
        #[test]
        fn rules_are_canonical(mut filters in proptest::collection::vec(arb_filter(), 0..6)) {
            let a = rules(&filters);
            filters.reverse();
            for f in &mut filters { f.ranges.reverse(); }
            prop_assert_eq!(&a, &rules(&filters));
            let mut sorted = a.clone();
            sorted.sort_by_key(|r| (r.vip, r.protocol, r.port, r.verdict, r.source));
            prop_assert_eq!(&a, &sorted);
            for (i, r) in a.iter().enumerate() {
                let last_of_key = a.get(i + 1).is_none_or(|n| (n.vip, n.port) != (r.vip, r.port));
                prop_assert_eq!(last_of_key, r.verdict == Verdict::Drop);
            }
        }
    }
}
