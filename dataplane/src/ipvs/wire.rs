//! IPVS generic-netlink messages: build requests from model values and parse replies back.
//! Pure bytes in, bytes out, so it is tested on hosts without IPVS (encode then decode).
//!
//! Numbers are from include/uapi/linux/ip_vs.h (checked against Linux 6.1).

use crate::error::DataplaneError;
use crate::model::{
    AddressFamily, Destination, Forwarding, ObservedDestination, Protocol, SchedFlags, Service,
    ServiceKey, Stats, Tunnel,
};
use neli::consts::nl::NlmF;
use neli::genl::{AttrTypeBuilder, Genlmsghdr, GenlmsghdrBuilder, Nlattr, NlattrBuilder};
use neli::nl::{NlPayload, NlmsghdrBuilder};
use neli::types::{Buffer, GenlBuffer};
use neli::{FromBytesWithInput, Size, ToBytes};
use std::io::Cursor;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

mod parse;
pub use parse::{
    error_code, genl_attrs, parse_dest, parse_service, parse_service_key, split_messages,
    RawMessage,
};

pub const IPVS_GENL_NAME: &str = "IPVS";
pub const IPVS_GENL_VERSION: u8 = 1;

pub const CMD_NEW_SERVICE: u8 = 1;
pub const CMD_SET_SERVICE: u8 = 2;
pub const CMD_DEL_SERVICE: u8 = 3;
pub const CMD_GET_SERVICE: u8 = 4;
pub const CMD_NEW_DEST: u8 = 5;
pub const CMD_SET_DEST: u8 = 6;
pub const CMD_DEL_DEST: u8 = 7;
pub const CMD_GET_DEST: u8 = 8;
pub const CMD_FLUSH: u8 = 17;

pub const CMD_ATTR_SERVICE: u16 = 1;
pub const CMD_ATTR_DEST: u16 = 2;

pub const SVC_ATTR_AF: u16 = 1;
pub const SVC_ATTR_PROTOCOL: u16 = 2;
pub const SVC_ATTR_ADDR: u16 = 3;
pub const SVC_ATTR_PORT: u16 = 4;
pub const SVC_ATTR_FWMARK: u16 = 5;
pub const SVC_ATTR_SCHED_NAME: u16 = 6;
pub const SVC_ATTR_FLAGS: u16 = 7;
pub const SVC_ATTR_TIMEOUT: u16 = 8;
pub const SVC_ATTR_NETMASK: u16 = 9;
pub const SVC_ATTR_STATS: u16 = 10;
pub const SVC_ATTR_STATS64: u16 = 12;

pub const DEST_ATTR_ADDR: u16 = 1;
pub const DEST_ATTR_PORT: u16 = 2;
pub const DEST_ATTR_FWD_METHOD: u16 = 3;
pub const DEST_ATTR_WEIGHT: u16 = 4;
pub const DEST_ATTR_U_THRESH: u16 = 5;
pub const DEST_ATTR_L_THRESH: u16 = 6;
pub const DEST_ATTR_ACTIVE_CONNS: u16 = 7;
pub const DEST_ATTR_INACT_CONNS: u16 = 8;
pub const DEST_ATTR_STATS: u16 = 10;
pub const DEST_ATTR_ADDR_FAMILY: u16 = 11;
pub const DEST_ATTR_STATS64: u16 = 12;
pub const DEST_ATTR_TUN_TYPE: u16 = 13;
pub const DEST_ATTR_TUN_PORT: u16 = 14;
pub const DEST_ATTR_TUN_FLAGS: u16 = 15;

pub const STATS_CONNS: u16 = 1;
pub const STATS_INPKTS: u16 = 2;
pub const STATS_OUTPKTS: u16 = 3;
pub const STATS_INBYTES: u16 = 4;
pub const STATS_OUTBYTES: u16 = 5;

pub const SVC_F_PERSISTENT: u32 = 0x0001;
pub const SVC_F_SCHED1: u32 = 0x0008; // mh-fallback
pub const SVC_F_SCHED2: u32 = 0x0010; // mh-port

pub const FWD_MASQ: u32 = 0;
pub const FWD_TUNNEL: u32 = 2;
pub const FWD_DROUTE: u32 = 3;
pub const FWD_MASK: u32 = 0x7;

pub const TUN_IPIP: u8 = 0;
pub const TUN_GUE: u8 = 1;
pub const TUN_GRE: u8 = 2;

/// Longest scheduler name the kernel accepts (IP_VS_SCHEDNAME_MAXLEN - 1 for the NUL).
pub const SCHED_NAME_MAX: usize = 15;

const NLMSG_HDR_LEN: usize = 16;
const GENL_HDR_LEN: usize = 4;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;

type Attr = Nlattr<u16, Buffer>;

fn malformed(op: &str, detail: impl Into<String>) -> DataplaneError {
    DataplaneError::Malformed {
        op: op.to_string(),
        detail: detail.into(),
    }
}

fn attr(ty: u16, payload: Vec<u8>) -> Result<Attr, DataplaneError> {
    NlattrBuilder::default()
        .nla_type(
            AttrTypeBuilder::default()
                .nla_type(ty)
                .build()
                .map_err(|e| malformed("encode", e.to_string()))?,
        )
        .nla_payload(Buffer::from(payload))
        .build()
        .map_err(|e| malformed("encode", e.to_string()))
}

fn nested(ty: u16, children: Vec<Attr>) -> Result<Attr, DataplaneError> {
    let mut outer = attr(ty, Vec::new())?;
    for c in &children {
        outer = outer
            .nest(c)
            .map_err(|e| malformed("encode", e.to_string()))?;
    }
    Ok(outer)
}

fn af_number(af: AddressFamily) -> u16 {
    match af {
        AddressFamily::Inet => libc::AF_INET as u16,
        AddressFamily::Inet6 => libc::AF_INET6 as u16,
    }
}

fn proto_number(p: Protocol) -> u16 {
    match p {
        Protocol::Tcp => libc::IPPROTO_TCP as u16,
        Protocol::Udp => libc::IPPROTO_UDP as u16,
        Protocol::Sctp => libc::IPPROTO_SCTP as u16,
    }
}

fn addr_bytes(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn key_family(key: &ServiceKey) -> AddressFamily {
    match key {
        ServiceKey::Addr { addr, .. } => AddressFamily::of(addr),
        ServiceKey::Fwmark { family, .. } => *family,
    }
}

/// The attributes that identify a service (enough for DEL_SERVICE and for naming it in dest ops).
fn key_attrs(key: &ServiceKey) -> Vec<Attr> {
    let mut out = Vec::new();
    let af = key_family(key);
    // attr() only fails on builder misuse, which these fixed shapes cannot hit.
    let mut push = |ty, payload| {
        if let Ok(a) = attr(ty, payload) {
            out.push(a);
        }
    };
    push(SVC_ATTR_AF, af_number(af).to_ne_bytes().to_vec());
    match key {
        ServiceKey::Addr {
            addr,
            port,
            protocol,
        } => {
            push(
                SVC_ATTR_PROTOCOL,
                proto_number(*protocol).to_ne_bytes().to_vec(),
            );
            push(SVC_ATTR_ADDR, addr_bytes(addr));
            push(SVC_ATTR_PORT, port.to_be_bytes().to_vec());
        }
        ServiceKey::Fwmark { mark, .. } => {
            push(SVC_ATTR_FWMARK, mark.to_ne_bytes().to_vec());
        }
    }
    out
}

pub fn flags_bits(s: &Service) -> u32 {
    let mut f = 0;
    if s.persistence_timeout_s > 0 {
        f |= SVC_F_PERSISTENT;
    }
    if s.flags.fallback {
        f |= SVC_F_SCHED1;
    }
    if s.flags.port {
        f |= SVC_F_SCHED2;
    }
    f
}

/// A full service entry (key + settings), as NEW_SERVICE and SET_SERVICE need.
fn service_attrs(s: &Service) -> Result<Vec<Attr>, DataplaneError> {
    if s.scheduler.is_empty() || s.scheduler.len() > SCHED_NAME_MAX || !s.scheduler.is_ascii() {
        return Err(DataplaneError::Invalid {
            entry: s.key.to_string(),
            field: "scheduler".into(),
            detail: format!(
                "{:?} must be 1..={SCHED_NAME_MAX} ASCII characters",
                s.scheduler
            ),
        });
    }
    let mut out = key_attrs(&s.key);
    let mut name = s.scheduler.as_bytes().to_vec();
    name.push(0);
    out.push(attr(SVC_ATTR_SCHED_NAME, name)?);
    let mut flags = flags_bits(s).to_ne_bytes().to_vec();
    flags.extend_from_slice(&u32::MAX.to_ne_bytes());
    out.push(attr(SVC_ATTR_FLAGS, flags)?);
    out.push(attr(
        SVC_ATTR_TIMEOUT,
        s.persistence_timeout_s.to_ne_bytes().to_vec(),
    )?);
    // The kernel reads NETMASK raw: a v4 mask, or a prefix length for v6 (as ipvsadm sends).
    let netmask: u32 = match key_family(&s.key) {
        AddressFamily::Inet => u32::MAX,
        AddressFamily::Inet6 => 128,
    };
    out.push(attr(SVC_ATTR_NETMASK, netmask.to_ne_bytes().to_vec())?);
    Ok(out)
}

fn dest_attrs(d: &Destination, with_settings: bool) -> Result<Vec<Attr>, DataplaneError> {
    let mut out = vec![
        attr(DEST_ATTR_ADDR, addr_bytes(&d.addr))?,
        attr(DEST_ATTR_PORT, d.port.to_be_bytes().to_vec())?,
        attr(
            DEST_ATTR_ADDR_FAMILY,
            af_number(AddressFamily::of(&d.addr)).to_ne_bytes().to_vec(),
        )?,
    ];
    if !with_settings {
        return Ok(out);
    }
    let fwd = match d.forwarding {
        Forwarding::Tunnel(_) => FWD_TUNNEL,
        Forwarding::Masq => FWD_MASQ,
        Forwarding::Route => FWD_DROUTE,
    };
    out.push(attr(DEST_ATTR_FWD_METHOD, fwd.to_ne_bytes().to_vec())?);
    out.push(attr(DEST_ATTR_WEIGHT, d.weight.to_ne_bytes().to_vec())?);
    out.push(attr(
        DEST_ATTR_U_THRESH,
        d.upper_threshold.to_ne_bytes().to_vec(),
    )?);
    out.push(attr(
        DEST_ATTR_L_THRESH,
        d.lower_threshold.to_ne_bytes().to_vec(),
    )?);
    if let Forwarding::Tunnel(t) = d.forwarding {
        let (ty, port, flags) = match t {
            Tunnel::Ipip => (TUN_IPIP, 0u16, 0u16),
            Tunnel::Gue { port, flags } => (TUN_GUE, port, flags),
            Tunnel::Gre { flags } => (TUN_GRE, 0, flags),
        };
        // Plain IPIP omits the tunnel attributes so kernels older than 5.2 accept it.
        if ty != TUN_IPIP {
            out.push(attr(DEST_ATTR_TUN_TYPE, vec![ty])?);
            out.push(attr(DEST_ATTR_TUN_PORT, port.to_be_bytes().to_vec())?);
            out.push(attr(DEST_ATTR_TUN_FLAGS, flags.to_ne_bytes().to_vec())?);
        }
    }
    Ok(out)
}

/// One request, ready for the kernel: IPVS command plus top-level attributes.
#[derive(Debug)]
pub struct Request {
    pub cmd: u8,
    pub attrs: Vec<Attr>,
    pub dump: bool,
}

impl Request {
    /// Serialize with this family id and sequence number. Non-dump requests ask for an ACK so
    /// every message gets exactly one answer.
    pub fn to_bytes(&self, family: u16, seq: u32, pid: u32) -> Result<Vec<u8>, DataplaneError> {
        let genl: Genlmsghdr<u8, u16> = GenlmsghdrBuilder::default()
            .cmd(self.cmd)
            .version(IPVS_GENL_VERSION)
            .attrs(
                self.attrs
                    .iter()
                    .cloned()
                    .collect::<GenlBuffer<u16, Buffer>>(),
            )
            .build()
            .map_err(|e| malformed("encode", e.to_string()))?;
        let flags = if self.dump {
            NlmF::REQUEST | NlmF::DUMP
        } else {
            NlmF::REQUEST | NlmF::ACK
        };
        let msg = NlmsghdrBuilder::default()
            .nl_type(family)
            .nl_flags(flags)
            .nl_seq(seq)
            .nl_pid(pid)
            .nl_payload(NlPayload::Payload(genl))
            .build()
            .map_err(|e| malformed("encode", e.to_string()))?;
        let mut buf = Cursor::new(vec![0u8; msg.padded_size()]);
        msg.to_bytes(&mut buf)
            .map_err(|e| malformed("encode", e.to_string()))?;
        Ok(buf.into_inner())
    }
}

pub fn new_service(s: &Service) -> Result<Request, DataplaneError> {
    Ok(Request {
        cmd: CMD_NEW_SERVICE,
        attrs: vec![nested(CMD_ATTR_SERVICE, service_attrs(s)?)?],
        dump: false,
    })
}

pub fn set_service(s: &Service) -> Result<Request, DataplaneError> {
    Ok(Request {
        cmd: CMD_SET_SERVICE,
        attrs: vec![nested(CMD_ATTR_SERVICE, service_attrs(s)?)?],
        dump: false,
    })
}

pub fn del_service(key: &ServiceKey) -> Result<Request, DataplaneError> {
    Ok(Request {
        cmd: CMD_DEL_SERVICE,
        attrs: vec![nested(CMD_ATTR_SERVICE, key_attrs(key))?],
        dump: false,
    })
}

/// Delete every service (and its destinations): `ipvsadm -C`.
pub fn flush() -> Request {
    Request {
        cmd: CMD_FLUSH,
        attrs: Vec::new(),
        dump: false,
    }
}

pub fn new_dest(key: &ServiceKey, d: &Destination) -> Result<Request, DataplaneError> {
    dest_request(CMD_NEW_DEST, key, dest_attrs(d, true)?)
}

pub fn set_dest(key: &ServiceKey, d: &Destination) -> Result<Request, DataplaneError> {
    dest_request(CMD_SET_DEST, key, dest_attrs(d, true)?)
}

pub fn del_dest(key: &ServiceKey, addr: IpAddr, port: u16) -> Result<Request, DataplaneError> {
    let d = Destination {
        addr,
        port,
        forwarding: Forwarding::Masq,
        weight: 0,
        upper_threshold: 0,
        lower_threshold: 0,
    };
    dest_request(CMD_DEL_DEST, key, dest_attrs(&d, false)?)
}

fn dest_request(cmd: u8, key: &ServiceKey, dest: Vec<Attr>) -> Result<Request, DataplaneError> {
    Ok(Request {
        cmd,
        attrs: vec![
            nested(CMD_ATTR_SERVICE, key_attrs(key))?,
            nested(CMD_ATTR_DEST, dest)?,
        ],
        dump: false,
    })
}

pub fn get_services() -> Request {
    Request {
        cmd: CMD_GET_SERVICE,
        attrs: Vec::new(),
        dump: true,
    }
}

pub fn get_dests(key: &ServiceKey) -> Result<Request, DataplaneError> {
    Ok(Request {
        cmd: CMD_GET_DEST,
        attrs: vec![nested(CMD_ATTR_SERVICE, key_attrs(key))?],
        dump: true,
    })
}

#[cfg(test)]
mod tests;
