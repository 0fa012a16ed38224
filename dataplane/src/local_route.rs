//! Local routes over rtnetlink: `ip route add local PREFIX dev lo table local` (the kernel then
//! accepts every address of the prefix as its own, without an address per VIP) and the
//! `ip route get ADDR` lookup that proves it. Used by `shoal backend-init --pool`.

use crate::error::DataplaneError;
use crate::netlink::{encode, NlConn};
use ipnet::IpNet;
use neli::consts::nl::NlmF;
use neli::consts::rtnl::{RtAddrFamily, RtScope, RtTable, Rta, Rtm, Rtn, Rtprot};
use neli::consts::socket::NlFamily;
use neli::rtnl::{RtattrBuilder, Rtmsg, RtmsgBuilder};
use neli::types::{Buffer, RtBuffer};
use neli::FromBytesWithInput;
use std::io::Cursor;
use std::net::IpAddr;

/// How a lookup of one address came out: the route type the kernel chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// Delivered to this host (what a backend needs for a VIP).
    Local,
    /// Forwarded somewhere else.
    Unicast,
    /// Anything else (unreachable, blackhole, ...), as the kernel's number.
    Other(u8),
}

fn bad(op: &str, e: impl ToString) -> DataplaneError {
    DataplaneError::Malformed {
        op: op.to_string(),
        detail: e.to_string(),
    }
}

fn family_and_bytes(ip: IpAddr) -> (RtAddrFamily, Vec<u8>) {
    match ip {
        IpAddr::V4(a) => (RtAddrFamily::Inet, a.octets().to_vec()),
        IpAddr::V6(a) => (RtAddrFamily::Inet6, a.octets().to_vec()),
    }
}

pub struct Routes {
    conn: NlConn,
}

impl Routes {
    pub fn open() -> Result<Self, DataplaneError> {
        Ok(Routes {
            conn: NlConn::open(NlFamily::Route, "rtnetlink")?,
        })
    }

    /// `ip route add local PREFIX dev <ifindex> table local`; returns whether it was added
    /// (false: it was there already).
    pub fn add_local(&mut self, prefix: IpNet, ifindex: i32) -> Result<bool, DataplaneError> {
        let op = "add local route";
        let prefix = prefix.trunc();
        let (family, dst) = family_and_bytes(prefix.network());
        let mut attrs = RtBuffer::new();
        attrs.push(
            RtattrBuilder::default()
                .rta_type(Rta::Dst)
                .rta_payload(Buffer::from(dst))
                .build()
                .map_err(|e| bad(op, e))?,
        );
        attrs.push(
            RtattrBuilder::default()
                .rta_type(Rta::Oif)
                .rta_payload(Buffer::from(ifindex.to_ne_bytes().to_vec()))
                .build()
                .map_err(|e| bad(op, e))?,
        );
        let msg = RtmsgBuilder::default()
            .rtm_family(family)
            .rtm_dst_len(prefix.prefix_len())
            .rtm_src_len(0)
            .rtm_tos(0)
            .rtm_table(RtTable::Local)
            .rtm_protocol(Rtprot::Static)
            .rtm_scope(RtScope::Host)
            .rtm_type(Rtn::Local)
            .rtattrs(attrs)
            .build()
            .map_err(|e| bad(op, e))?;
        let seq = self.conn.next_seq();
        let flags = NlmF::REQUEST | NlmF::ACK | NlmF::CREATE | NlmF::EXCL;
        let bytes = encode(Rtm::Newroute, flags, seq, self.conn.pid(), msg)?;
        let code = self
            .conn
            .transact(&[(seq, bytes)])?
            .first()
            .copied()
            .unwrap_or(0);
        match code {
            0 => Ok(true),
            libc::EEXIST => Ok(false),
            errno => Err(DataplaneError::from_errno(op, &prefix.to_string(), errno)),
        }
    }

    /// `ip route get ADDR`: the type of route the kernel would use for a packet to `addr`.
    pub fn lookup(&mut self, addr: IpAddr) -> Result<RouteKind, DataplaneError> {
        let op = "look up route";
        let (family, dst) = family_and_bytes(addr);
        let len = if addr.is_ipv4() { 32 } else { 128 };
        let mut attrs = RtBuffer::new();
        attrs.push(
            RtattrBuilder::default()
                .rta_type(Rta::Dst)
                .rta_payload(Buffer::from(dst))
                .build()
                .map_err(|e| bad(op, e))?,
        );
        let msg = RtmsgBuilder::default()
            .rtm_family(family)
            .rtm_dst_len(len)
            .rtm_src_len(0)
            .rtm_tos(0)
            .rtm_table(RtTable::Unspec)
            .rtm_protocol(Rtprot::Unspec)
            .rtm_scope(RtScope::Universe)
            .rtm_type(Rtn::Unspec)
            .rtattrs(attrs)
            .build()
            .map_err(|e| bad(op, e))?;
        let seq = self.conn.next_seq();
        let bytes = encode(
            Rtm::Getroute,
            NlmF::REQUEST | NlmF::ACK,
            seq,
            self.conn.pid(),
            msg,
        )?;
        let replies = self
            .conn
            .dump(seq, &bytes)?
            .map_err(|errno| DataplaneError::from_errno(op, &addr.to_string(), errno))?;
        let p = replies
            .first()
            .ok_or_else(|| bad(op, format!("no answer for {addr}")))?;
        let m = Rtmsg::from_bytes_with_input(&mut Cursor::new(&p[..]), p.len())
            .map_err(|e| bad(op, e))?;
        Ok(match *m.rtm_type() {
            Rtn::Local => RouteKind::Local,
            Rtn::Unicast => RouteKind::Unicast,
            other => RouteKind::Other(u8::from(other)),
        })
    }
}
