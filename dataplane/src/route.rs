//! Host routes in one dedicated kernel routing table over rtnetlink: how the node tells its
//! BIRD which VIPs to announce (BIRD's kernel protocol learns that table and exports it over
//! BGP). The routes are `blackhole` host routes (/32, /128) tagged with Shoal's own routing
//! protocol number, so nothing else's routes are ever touched. The table is referenced by no
//! routing rule: it steers no packet on this node.

use crate::error::DataplaneError;
use crate::netlink::{encode, NlConn};
use neli::consts::nl::NlmF;
use neli::consts::rtnl::{RtAddrFamily, RtScope, RtTable, Rta, Rtm, Rtn, Rtprot};
use neli::consts::socket::NlFamily;
use neli::rtnl::{RtattrBuilder, Rtmsg, RtmsgBuilder};
use neli::types::{Buffer, RtBuffer};
use neli::FromBytesWithInput;
use std::collections::BTreeSet;
use std::io::Cursor;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `rtm_protocol` of Shoal's routes ("S"); `ip route show table N proto 83` lists them.
pub const SHOAL_RTPROT: u8 = 83;

fn bad(op: &str, e: impl ToString) -> DataplaneError {
    DataplaneError::Malformed {
        op: op.to_string(),
        detail: e.to_string(),
    }
}

/// The VIP host routes of one table.
pub struct RouteTable {
    conn: NlConn,
    table: u32,
}

impl RouteTable {
    /// `table` must not be one of the kernel's own (0, 253 default, 254 main, 255 local).
    pub fn open(table: u32) -> Result<Self, DataplaneError> {
        if matches!(table, 0 | 253..=255) {
            return Err(DataplaneError::Unsupported {
                what: format!("routing table {table}"),
                hint: "use a table of its own for the announced VIPs (e.g. 120)".into(),
            });
        }
        Ok(RouteTable {
            conn: NlConn::open(NlFamily::Route, "rtnetlink")?,
            table,
        })
    }

    pub fn table(&self) -> u32 {
        self.table
    }

    /// The host routes Shoal holds in the table.
    pub fn list(&mut self) -> Result<BTreeSet<IpAddr>, DataplaneError> {
        let mut out = BTreeSet::new();
        for family in [RtAddrFamily::Inet, RtAddrFamily::Inet6] {
            let msg = RtmsgBuilder::default()
                .rtm_family(family)
                .rtm_dst_len(0)
                .rtm_src_len(0)
                .rtm_tos(0)
                .rtm_table(RtTable::Unspec)
                .rtm_protocol(Rtprot::Unspec)
                .rtm_scope(RtScope::Universe)
                .rtm_type(Rtn::Unspec)
                .build()
                .map_err(|e| bad("list routes", e))?;
            let seq = self.conn.next_seq();
            let bytes = encode(
                Rtm::Getroute,
                NlmF::REQUEST | NlmF::DUMP,
                seq,
                self.conn.pid(),
                msg,
            )?;
            let payloads = self
                .conn
                .dump(seq, &bytes)?
                .map_err(|errno| DataplaneError::from_errno("list", "routes", errno))?;
            for p in payloads {
                let m = Rtmsg::from_bytes_with_input(&mut Cursor::new(&p[..]), p.len())
                    .map_err(|e| bad("list routes", e))?;
                if u8::from(*m.rtm_protocol()) != SHOAL_RTPROT {
                    continue;
                }
                let mut table = u32::from(u8::from(*m.rtm_table()));
                let mut dst = None;
                for a in m.rtattrs().iter() {
                    let payload = a.rta_payload().as_ref();
                    match *a.rta_type() {
                        Rta::Table => {
                            if let Ok(b) = <[u8; 4]>::try_from(payload) {
                                table = u32::from_ne_bytes(b);
                            }
                        }
                        Rta::Dst => dst = ip_from(payload),
                        _ => {}
                    }
                }
                let host = matches!((dst, *m.rtm_dst_len()), (Some(IpAddr::V4(_)), 32))
                    || matches!((dst, *m.rtm_dst_len()), (Some(IpAddr::V6(_)), 128));
                if table == self.table && host {
                    if let Some(ip) = dst {
                        out.insert(ip);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Adds or removes the host route of `ip`. Adding one that is there, or removing one that
    /// is not, counts as done (returns false).
    pub fn set(&mut self, ip: IpAddr, present: bool) -> Result<bool, DataplaneError> {
        let (family, plen, bytes) = match ip {
            IpAddr::V4(a) => (RtAddrFamily::Inet, 32u8, a.octets().to_vec()),
            IpAddr::V6(a) => (RtAddrFamily::Inet6, 128u8, a.octets().to_vec()),
        };
        let mut attrs = RtBuffer::new();
        attrs.push(
            RtattrBuilder::default()
                .rta_type(Rta::Dst)
                .rta_payload(Buffer::from(bytes))
                .build()
                .map_err(|e| bad("set route", e))?,
        );
        attrs.push(
            RtattrBuilder::default()
                .rta_type(Rta::Table)
                .rta_payload(Buffer::from(self.table.to_ne_bytes().to_vec()))
                .build()
                .map_err(|e| bad("set route", e))?,
        );
        let msg = RtmsgBuilder::default()
            .rtm_family(family)
            .rtm_dst_len(plen)
            .rtm_src_len(0)
            .rtm_tos(0)
            .rtm_table(RtTable::Unspec)
            .rtm_protocol(Rtprot::from(SHOAL_RTPROT))
            .rtm_scope(RtScope::Universe)
            .rtm_type(Rtn::Blackhole)
            .rtattrs(attrs)
            .build()
            .map_err(|e| bad("set route", e))?;
        let seq = self.conn.next_seq();
        let (ty, flags, verb) = if present {
            (
                Rtm::Newroute,
                NlmF::REQUEST | NlmF::ACK | NlmF::CREATE | NlmF::EXCL,
                "add route",
            )
        } else {
            (Rtm::Delroute, NlmF::REQUEST | NlmF::ACK, "delete route")
        };
        let out = encode(ty, flags, seq, self.conn.pid(), msg)?;
        let entry = format!("{ip} (table {})", self.table);
        let code = self
            .conn
            .transact(&[(seq, out)])?
            .first()
            .copied()
            .unwrap_or(0);
        match code {
            0 => Ok(true),
            libc::EEXIST if present => Ok(false),
            libc::ESRCH | libc::ENOENT if !present => Ok(false),
            libc::EPERM | libc::EACCES => Err(DataplaneError::Permission {
                action: format!("{verb} {entry}"),
            }),
            errno => Err(DataplaneError::from_errno(verb, &entry, errno)),
        }
    }

    /// Brings the table to exactly `want`; returns how many routes changed.
    pub fn sync(&mut self, want: &BTreeSet<IpAddr>) -> Result<usize, DataplaneError> {
        let have = self.list()?;
        let mut changed = 0;
        for ip in have.difference(want) {
            changed += usize::from(self.set(*ip, false)?);
        }
        for ip in want.difference(&have) {
            changed += usize::from(self.set(*ip, true)?);
        }
        Ok(changed)
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
