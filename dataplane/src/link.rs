//! Interfaces and addresses over rtnetlink: the dummy interface that holds the VIPs, and the
//! tunnel interface of a backend. Only the few calls Shoal needs.

use crate::error::DataplaneError;
use crate::netlink::{encode, NlConn};
use neli::consts::nl::NlmF;
use neli::consts::rtnl::{Arphrd, Ifa, IfaF, Iff, Ifla, IflaInfo, RtAddrFamily, RtScope, Rtm};
use neli::consts::socket::NlFamily;
use neli::rtnl::{Ifaddrmsg, IfaddrmsgBuilder, Ifinfomsg, IfinfomsgBuilder, RtattrBuilder};
use neli::types::{Buffer, RtBuffer};
use neli::FromBytesWithInput;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

fn bad(op: &str, e: impl ToString) -> DataplaneError {
    DataplaneError::Malformed {
        op: op.to_string(),
        detail: e.to_string(),
    }
}

/// One link as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: i32,
    pub name: String,
    pub up: bool,
}

pub struct Rtnl {
    conn: NlConn,
}

impl Rtnl {
    pub fn open() -> Result<Self, DataplaneError> {
        Ok(Rtnl {
            conn: NlConn::open(NlFamily::Route, "rtnetlink")?,
        })
    }

    fn one(
        &mut self,
        op: &str,
        entry: &str,
        bytes: Vec<u8>,
        seq: u32,
    ) -> Result<i32, DataplaneError> {
        let r = self.conn.transact(&[(seq, bytes)])?;
        let code = r.first().copied().unwrap_or(0);
        if code == libc::EPERM || code == libc::EACCES {
            return Err(DataplaneError::Permission {
                action: format!("{op} {entry}"),
            });
        }
        Ok(code)
    }

    /// Sends one dump request (`what` names it in errors) and returns every reply's payload.
    fn dump<P>(&mut self, what: &str, ty: Rtm, msg: P) -> Result<Vec<Vec<u8>>, DataplaneError>
    where
        P: neli::Size + neli::ToBytes,
    {
        let seq = self.conn.next_seq();
        let bytes = encode(ty, NlmF::REQUEST | NlmF::DUMP, seq, self.conn.pid(), msg)?;
        self.conn
            .dump(seq, &bytes)?
            .map_err(|errno| DataplaneError::from_errno("list", what, errno))
    }

    pub fn links(&mut self) -> Result<Vec<Link>, DataplaneError> {
        let msg = IfinfomsgBuilder::default()
            .ifi_family(RtAddrFamily::Unspecified)
            .build()
            .map_err(|e| bad("list links", e))?;
        let payloads = self.dump("links", Rtm::Getlink, msg)?;
        let mut out = Vec::new();
        for p in payloads {
            let info = Ifinfomsg::from_bytes_with_input(&mut Cursor::new(&p[..]), p.len())
                .map_err(|e| bad("list links", e))?;
            let name = info
                .rtattrs()
                .iter()
                .find(|a| *a.rta_type() == Ifla::Ifname)
                .map(|a| {
                    String::from_utf8_lossy(a.rta_payload().as_ref())
                        .trim_end_matches('\0')
                        .to_string()
                })
                .unwrap_or_default();
            out.push(Link {
                index: *info.ifi_index(),
                name,
                up: info.ifi_flags().contains(Iff::UP),
            });
        }
        Ok(out)
    }

    pub fn link(&mut self, name: &str) -> Result<Option<Link>, DataplaneError> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }

    /// Create a dummy interface unless it exists; returns whether it was created.
    pub fn ensure_dummy(&mut self, name: &str) -> Result<bool, DataplaneError> {
        if self.link(name)?.is_some() {
            return Ok(false);
        }
        let mut ifname = name.as_bytes().to_vec();
        ifname.push(0);
        let kind = RtattrBuilder::default()
            .rta_type(IflaInfo::Kind)
            .rta_payload(Buffer::from(b"dummy".to_vec()))
            .build()
            .map_err(|e| bad("create link", e))?;
        let linkinfo = RtattrBuilder::default()
            .rta_type(Ifla::Linkinfo)
            .rta_payload(Buffer::from(Vec::new()))
            .build()
            .map_err(|e| bad("create link", e))?
            .nest(&kind)
            .map_err(|e| bad("create link", e))?;
        let mut attrs = RtBuffer::new();
        attrs.push(
            RtattrBuilder::default()
                .rta_type(Ifla::Ifname)
                .rta_payload(Buffer::from(ifname))
                .build()
                .map_err(|e| bad("create link", e))?,
        );
        attrs.push(linkinfo);
        let msg = IfinfomsgBuilder::default()
            .ifi_family(RtAddrFamily::Unspecified)
            .ifi_type(Arphrd::from(0))
            .rtattrs(attrs)
            .build()
            .map_err(|e| bad("create link", e))?;
        let seq = self.conn.next_seq();
        let flags = NlmF::REQUEST | NlmF::ACK | NlmF::CREATE | NlmF::EXCL;
        let bytes = encode(Rtm::Newlink, flags, seq, self.conn.pid(), msg)?;
        match self.one("create dummy interface", name, bytes, seq)? {
            0 => Ok(true),
            libc::EEXIST => Ok(false),
            libc::EOPNOTSUPP => Err(DataplaneError::Unsupported {
                what: format!("dummy interface {name}"),
                hint: "the kernel lacks the dummy driver (modprobe dummy)".into(),
            }),
            errno => Err(DataplaneError::from_errno(
                "create dummy interface",
                name,
                errno,
            )),
        }
    }

    /// Bring a link up; returns whether it was down.
    pub fn set_up(&mut self, name: &str) -> Result<bool, DataplaneError> {
        let link = self
            .link(name)?
            .ok_or_else(|| DataplaneError::from_errno("bring up", name, libc::ENODEV))?;
        if link.up {
            return Ok(false);
        }
        let msg = IfinfomsgBuilder::default()
            .ifi_family(RtAddrFamily::Unspecified)
            .ifi_index(link.index)
            .ifi_flags(Iff::UP)
            .ifi_change(Iff::UP)
            .build()
            .map_err(|e| bad("bring up", e))?;
        let seq = self.conn.next_seq();
        let bytes = encode(
            Rtm::Newlink,
            NlmF::REQUEST | NlmF::ACK,
            seq,
            self.conn.pid(),
            msg,
        )?;
        match self.one("bring up", name, bytes, seq)? {
            0 => Ok(true),
            errno => Err(DataplaneError::from_errno("bring up", name, errno)),
        }
    }

    /// The addresses on the link with this index.
    pub fn addresses(&mut self, index: i32) -> Result<BTreeSet<IpAddr>, DataplaneError> {
        Ok(self.prefixed_addresses(index)?.into_keys().collect())
    }

    /// [`Self::addresses`] with the prefix length each was added with (32 or 128 for those
    /// Shoal adds; an operator's `ip addr add 203.0.113.9/24` is 24).
    pub fn prefixed_addresses(
        &mut self,
        index: i32,
    ) -> Result<BTreeMap<IpAddr, u8>, DataplaneError> {
        let msg = IfaddrmsgBuilder::default()
            .ifa_family(RtAddrFamily::Unspecified)
            .ifa_prefixlen(0)
            .ifa_scope(RtScope::Universe)
            .ifa_index(0)
            .build()
            .map_err(|e| bad("list addresses", e))?;
        let payloads = self.dump("addresses", Rtm::Getaddr, msg)?;
        let mut out = BTreeMap::new();
        for p in payloads {
            let m = Ifaddrmsg::from_bytes_with_input(&mut Cursor::new(&p[..]), p.len())
                .map_err(|e| bad("list addresses", e))?;
            // Only global addresses are VIPs; the kernel adds an IPv6 link-local one by itself.
            if *m.ifa_index() as i32 != index || *m.ifa_scope() != RtScope::Universe {
                continue;
            }
            let pick = |ty: Ifa| {
                m.rtattrs()
                    .iter()
                    .find(|a| *a.rta_type() == ty)
                    .map(|a| a.rta_payload().as_ref().to_vec())
            };
            if let Some(b) = pick(Ifa::Local).or_else(|| pick(Ifa::Address)) {
                if let Some(ip) = ip_from(&b) {
                    out.insert(ip, *m.ifa_prefixlen());
                }
            }
        }
        Ok(out)
    }

    /// Add or remove a host address (/32 or /128) on a link. Adding an address that is there
    /// or removing one that is not counts as done (returns false).
    pub fn set_address(
        &mut self,
        index: i32,
        ip: IpAddr,
        present: bool,
    ) -> Result<bool, DataplaneError> {
        let (seq, bytes) = self.encode_address(index, ip, present, None)?;
        let (_, verb) = address_verb(present);
        let code = self.one(verb, &ip.to_string(), bytes, seq)?;
        address_outcome(ip, present, code)
    }

    /// `set_address` for many addresses in one send (in batches of `netlink::BATCH_MAX`): one
    /// result per address, in order. `Err` only when the socket itself failed.
    pub fn set_addresses(
        &mut self,
        index: i32,
        changes: &[(IpAddr, bool)],
    ) -> Result<Vec<Result<bool, DataplaneError>>, DataplaneError> {
        self.set_addresses_read(index, changes, &BTreeMap::new())
    }

    /// [`Self::set_addresses`], deleting each address with the prefix length it was read with
    /// (`prefixed_addresses`; a host prefix when not listed): the kernel does not find an
    /// address under another prefix, answers that it is not there, and the delete would count
    /// as done while the address stays (a probe: a /24 added by hand, "repaired" every drift
    /// check).
    pub fn set_addresses_read(
        &mut self,
        index: i32,
        changes: &[(IpAddr, bool)],
        read: &BTreeMap<IpAddr, u8>,
    ) -> Result<Vec<Result<bool, DataplaneError>>, DataplaneError> {
        let mut requests = Vec::with_capacity(changes.len());
        let mut outcomes: Vec<Option<Result<bool, DataplaneError>>> = Vec::new();
        for (ip, present) in changes {
            let prefix = read.get(ip).copied().filter(|_| !*present);
            match self.encode_address(index, *ip, *present, prefix) {
                Ok(request) => {
                    requests.push(request);
                    outcomes.push(None);
                }
                Err(e) => outcomes.push(Some(Err(e))),
            }
        }
        let mut codes = self.conn.transact(&requests)?.into_iter();
        Ok(outcomes
            .into_iter()
            .zip(changes)
            .map(|(outcome, (ip, present))| {
                outcome.unwrap_or_else(|| {
                    let code = codes.next().unwrap_or(0);
                    if code == libc::EACCES && *present && ip.is_ipv6() {
                        return Err(DataplaneError::ipv6_disabled(*ip));
                    }
                    if code == libc::EPERM || code == libc::EACCES {
                        let (_, verb) = address_verb(*present);
                        return Err(DataplaneError::Permission {
                            action: format!("{verb} {ip}"),
                        });
                    }
                    address_outcome(*ip, *present, code)
                })
            })
            .collect())
    }

    /// The request that adds (`present`) or deletes `ip` on link `index`, with its sequence;
    /// as a host address unless `prefix` says otherwise.
    fn encode_address(
        &mut self,
        index: i32,
        ip: IpAddr,
        present: bool,
        prefix: Option<u8>,
    ) -> Result<(u32, Vec<u8>), DataplaneError> {
        let (family, host, bytes) = match ip {
            IpAddr::V4(a) => (RtAddrFamily::Inet, 32u8, a.octets().to_vec()),
            IpAddr::V6(a) => (RtAddrFamily::Inet6, 128u8, a.octets().to_vec()),
        };
        let plen = prefix.unwrap_or(host);
        let mut attrs = RtBuffer::new();
        for ty in [Ifa::Local, Ifa::Address] {
            attrs.push(
                RtattrBuilder::default()
                    .rta_type(ty)
                    .rta_payload(Buffer::from(bytes.clone()))
                    .build()
                    .map_err(|e| bad("set address", e))?,
            );
        }
        let msg = IfaddrmsgBuilder::default()
            .ifa_family(family)
            .ifa_prefixlen(plen)
            // A VIP never runs duplicate address detection: it is on several nodes by design,
            // and a tentative address would not answer neighbour solicitations for ~1 s.
            .ifa_flags(IfaF::NODAD)
            .ifa_scope(RtScope::Universe)
            .ifa_index(index as u32)
            .rtattrs(attrs)
            .build()
            .map_err(|e| bad("set address", e))?;
        let seq = self.conn.next_seq();
        let (ty, _) = address_verb(present);
        let flags = if present {
            NlmF::REQUEST | NlmF::ACK | NlmF::CREATE | NlmF::EXCL
        } else {
            NlmF::REQUEST | NlmF::ACK
        };
        Ok((seq, encode(ty, flags, seq, self.conn.pid(), msg)?))
    }
}

/// The message type and the words for adding (`present`) or deleting an address.
fn address_verb(present: bool) -> (Rtm, &'static str) {
    if present {
        (Rtm::Newaddr, "add address")
    } else {
        (Rtm::Deladdr, "delete address")
    }
}

/// What the kernel's answer `code` to an address change means: `Ok(true)` changed,
/// `Ok(false)` already so (the address existed / was already gone).
fn address_outcome(ip: IpAddr, present: bool, code: i32) -> Result<bool, DataplaneError> {
    let (_, verb) = address_verb(present);
    match code {
        0 => Ok(true),
        libc::EEXIST if present => Ok(false),
        libc::EADDRNOTAVAIL if !present => Ok(false),
        errno => Err(DataplaneError::from_errno(verb, &ip.to_string(), errno)),
    }
}

fn ip_from(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        16 => {
            let a: [u8; 16] = b.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(a)))
        }
        _ => None,
    }
}
