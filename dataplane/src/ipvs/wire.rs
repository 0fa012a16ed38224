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
    if s.flags.mh_fallback {
        f |= SVC_F_SCHED1;
    }
    if s.flags.mh_port {
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

/// One netlink message cut out of a receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

/// Split a receive buffer into messages (nlmsghdr framing, 4-byte aligned).
pub fn split_messages(buf: &[u8]) -> Result<Vec<RawMessage<'_>>, DataplaneError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + NLMSG_HDR_LEN <= buf.len() {
        let len = u32::from_ne_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]) as usize;
        if len < NLMSG_HDR_LEN || pos + len > buf.len() {
            return Err(malformed(
                "receive",
                format!("bad message length {len} at {pos}"),
            ));
        }
        out.push(RawMessage {
            ty: u16::from_ne_bytes([buf[pos + 4], buf[pos + 5]]),
            flags: u16::from_ne_bytes([buf[pos + 6], buf[pos + 7]]),
            seq: u32::from_ne_bytes([buf[pos + 8], buf[pos + 9], buf[pos + 10], buf[pos + 11]]),
            payload: &buf[pos + NLMSG_HDR_LEN..pos + len],
        });
        pos += (len + 3) & !3;
    }
    Ok(out)
}

/// For an NLMSG_ERROR message: 0 for an ACK, else the positive errno.
pub fn error_code(m: &RawMessage<'_>) -> Result<i32, DataplaneError> {
    let b = m
        .payload
        .get(..4)
        .ok_or_else(|| malformed("receive", "short error message"))?;
    // i32::MIN has no positive counterpart: negating it overflowed (found by fuzzing).
    i32::from_ne_bytes([b[0], b[1], b[2], b[3]])
        .checked_neg()
        .ok_or_else(|| malformed("receive", "error code out of range"))
}

/// The generic-netlink attributes of a message payload.
pub fn genl_attrs(payload: &[u8]) -> Result<GenlBuffer<u16, Buffer>, DataplaneError> {
    let body = payload
        .get(GENL_HDR_LEN..)
        .ok_or_else(|| malformed("receive", "short generic netlink message"))?;
    GenlBuffer::from_bytes_with_input(&mut Cursor::new(body), body.len())
        .map_err(|e| malformed("receive", e.to_string()))
}

fn nested_attrs(a: &Attr) -> Result<GenlBuffer<u16, Buffer>, DataplaneError> {
    let body = a.nla_payload().as_ref();
    GenlBuffer::from_bytes_with_input(&mut Cursor::new(body), body.len())
        .map_err(|e| malformed("receive", e.to_string()))
}

fn find(attrs: &GenlBuffer<u16, Buffer>, ty: u16) -> Option<&[u8]> {
    attrs
        .iter()
        .find(|a| *a.nla_type().nla_type() == ty)
        .map(|a| a.nla_payload().as_ref())
}

fn find_nested(attrs: &GenlBuffer<u16, Buffer>, ty: u16) -> Option<&Attr> {
    attrs.iter().find(|a| *a.nla_type().nla_type() == ty)
}

fn u16_ne(b: Option<&[u8]>, what: &str) -> Result<u16, DataplaneError> {
    let b = b.ok_or_else(|| malformed("dump", format!("missing {what}")))?;
    b.get(..2)
        .map(|x| u16::from_ne_bytes([x[0], x[1]]))
        .ok_or_else(|| malformed("dump", format!("short {what}")))
}

fn u16_be(b: Option<&[u8]>, what: &str) -> Result<u16, DataplaneError> {
    let b = b.ok_or_else(|| malformed("dump", format!("missing {what}")))?;
    b.get(..2)
        .map(|x| u16::from_be_bytes([x[0], x[1]]))
        .ok_or_else(|| malformed("dump", format!("short {what}")))
}

fn u32_ne(b: Option<&[u8]>, what: &str) -> Result<u32, DataplaneError> {
    let b = b.ok_or_else(|| malformed("dump", format!("missing {what}")))?;
    b.get(..4)
        .map(|x| u32::from_ne_bytes([x[0], x[1], x[2], x[3]]))
        .ok_or_else(|| malformed("dump", format!("short {what}")))
}

fn u64_ne(b: &[u8]) -> u64 {
    match b.len() {
        8.. => u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        4..=7 => u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as u64,
        _ => 0,
    }
}

fn parse_addr(b: Option<&[u8]>, af: u16, what: &str) -> Result<IpAddr, DataplaneError> {
    let b = b.ok_or_else(|| malformed("dump", format!("missing {what}")))?;
    // The kernel sends the whole 16-byte union; a v4 address is its first 4 bytes.
    if af == libc::AF_INET as u16 {
        let x = b
            .get(..4)
            .ok_or_else(|| malformed("dump", format!("short {what}")))?;
        Ok(IpAddr::V4(Ipv4Addr::new(x[0], x[1], x[2], x[3])))
    } else if af == libc::AF_INET6 as u16 {
        let x: [u8; 16] = b
            .get(..16)
            .and_then(|x| x.try_into().ok())
            .ok_or_else(|| malformed("dump", format!("short {what}")))?;
        Ok(IpAddr::V6(Ipv6Addr::from(x)))
    } else {
        Err(malformed(
            "dump",
            format!("unknown address family {af} in {what}"),
        ))
    }
}

fn parse_stats(attrs: &GenlBuffer<u16, Buffer>, stats64: u16, stats32: u16) -> Stats {
    let Some(nest) = find_nested(attrs, stats64).or_else(|| find_nested(attrs, stats32)) else {
        return Stats::default();
    };
    let Ok(inner) = nested_attrs(nest) else {
        return Stats::default();
    };
    let get = |ty| find(&inner, ty).map(u64_ne).unwrap_or(0);
    Stats {
        connections: get(STATS_CONNS),
        packets_in: get(STATS_INPKTS),
        packets_out: get(STATS_OUTPKTS),
        bytes_in: get(STATS_INBYTES),
        bytes_out: get(STATS_OUTBYTES),
    }
}

/// Decode one GET_SERVICE reply message into the service (no destinations) and its counters.
pub fn parse_service(payload: &[u8]) -> Result<(Service, Stats), DataplaneError> {
    let top = genl_attrs(payload)?;
    let svc = find_nested(&top, CMD_ATTR_SERVICE)
        .ok_or_else(|| malformed("dump services", "reply without a service"))?;
    let a = nested_attrs(svc)?;
    let af = u16_ne(find(&a, SVC_ATTR_AF), "service family")?;
    let family = if af == libc::AF_INET6 as u16 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    // The kernel sends FWMARK for a fwmark service and PROTOCOL/ADDR/PORT otherwise.
    let key = if find(&a, SVC_ATTR_ADDR).is_none() {
        let mark = u32_ne(find(&a, SVC_ATTR_FWMARK), "fwmark")?;
        ServiceKey::Fwmark { mark, family }
    } else {
        let proto = u16_ne(find(&a, SVC_ATTR_PROTOCOL), "protocol")?;
        let protocol = match proto as i32 {
            libc::IPPROTO_TCP => Protocol::Tcp,
            libc::IPPROTO_UDP => Protocol::Udp,
            libc::IPPROTO_SCTP => Protocol::Sctp,
            other => {
                return Err(malformed(
                    "dump services",
                    format!("unknown protocol {other}"),
                ))
            }
        };
        ServiceKey::Addr {
            addr: parse_addr(find(&a, SVC_ATTR_ADDR), af, "service address")?,
            port: u16_be(find(&a, SVC_ATTR_PORT), "service port")?,
            protocol,
        }
    };
    let sched = find(&a, SVC_ATTR_SCHED_NAME).unwrap_or_default();
    let scheduler = String::from_utf8_lossy(sched)
        .trim_end_matches('\0')
        .to_string();
    let flags = u32_ne(find(&a, SVC_ATTR_FLAGS), "flags").unwrap_or(0);
    let timeout = u32_ne(find(&a, SVC_ATTR_TIMEOUT), "timeout").unwrap_or(0);
    let service = Service {
        key,
        scheduler,
        flags: SchedFlags {
            mh_port: flags & SVC_F_SCHED2 != 0,
            mh_fallback: flags & SVC_F_SCHED1 != 0,
        },
        persistence_timeout_s: if flags & SVC_F_PERSISTENT != 0 {
            timeout
        } else {
            0
        },
        destinations: Vec::new(),
    };
    Ok((service, parse_stats(&a, SVC_ATTR_STATS64, SVC_ATTR_STATS)))
}

/// Decode one GET_DEST reply message. `service_af` is used when the kernel omits the dest family.
pub fn parse_dest(
    payload: &[u8],
    service_af: AddressFamily,
) -> Result<ObservedDestination, DataplaneError> {
    let top = genl_attrs(payload)?;
    let dest = find_nested(&top, CMD_ATTR_DEST)
        .ok_or_else(|| malformed("dump destinations", "reply without a destination"))?;
    let a = nested_attrs(dest)?;
    let af =
        u16_ne(find(&a, DEST_ATTR_ADDR_FAMILY), "dest family").unwrap_or(af_number(service_af));
    let fwd = u32_ne(find(&a, DEST_ATTR_FWD_METHOD), "forwarding method")? & FWD_MASK;
    let forwarding = match fwd {
        FWD_MASQ => Forwarding::Masq,
        FWD_DROUTE => Forwarding::Route,
        FWD_TUNNEL => {
            let ty = find(&a, DEST_ATTR_TUN_TYPE)
                .and_then(|b| b.first().copied())
                .unwrap_or(TUN_IPIP);
            let port = u16_be(find(&a, DEST_ATTR_TUN_PORT), "tunnel port").unwrap_or(0);
            let flags = u16_ne(find(&a, DEST_ATTR_TUN_FLAGS), "tunnel flags").unwrap_or(0);
            Forwarding::Tunnel(match ty {
                TUN_GUE => Tunnel::Gue { port, flags },
                TUN_GRE => Tunnel::Gre { flags },
                _ => Tunnel::Ipip,
            })
        }
        other => {
            return Err(malformed(
                "dump destinations",
                format!("unsupported forwarding method {other}"),
            ))
        }
    };
    Ok(ObservedDestination {
        destination: Destination {
            addr: parse_addr(find(&a, DEST_ATTR_ADDR), af, "dest address")?,
            port: u16_be(find(&a, DEST_ATTR_PORT), "dest port")?,
            forwarding,
            weight: u32_ne(find(&a, DEST_ATTR_WEIGHT), "weight")?,
            upper_threshold: u32_ne(find(&a, DEST_ATTR_U_THRESH), "upper threshold").unwrap_or(0),
            lower_threshold: u32_ne(find(&a, DEST_ATTR_L_THRESH), "lower threshold").unwrap_or(0),
        },
        active_connections: u32_ne(find(&a, DEST_ATTR_ACTIVE_CONNS), "active").unwrap_or(0),
        inactive_connections: u32_ne(find(&a, DEST_ATTR_INACT_CONNS), "inactive").unwrap_or(0),
        stats: parse_stats(&a, DEST_ATTR_STATS64, DEST_ATTR_STATS),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn svc(key: ServiceKey) -> Service {
        Service {
            key,
            scheduler: "mh".into(),
            flags: SchedFlags {
                mh_port: true,
                mh_fallback: false,
            },
            persistence_timeout_s: 0,
            destinations: Vec::new(),
        }
    }

    fn only_payload(bytes: &[u8]) -> Vec<u8> {
        let msgs = split_messages(bytes).unwrap();
        assert_eq!(msgs.len(), 1);
        msgs[0].payload.to_vec()
    }

    #[test]
    fn service_round_trips_v4_v6_fwmark() {
        let keys = [
            ServiceKey::Addr {
                addr: "203.0.113.10".parse().unwrap(),
                port: 8080,
                protocol: Protocol::Tcp,
            },
            ServiceKey::Addr {
                addr: "2001:db8::10".parse().unwrap(),
                port: 53,
                protocol: Protocol::Udp,
            },
            ServiceKey::Addr {
                addr: "203.0.113.11".parse().unwrap(),
                port: 9,
                protocol: Protocol::Sctp,
            },
            ServiceKey::Fwmark {
                mark: 0x5e00_0001,
                family: AddressFamily::Inet,
            },
        ];
        for key in keys {
            let mut s = svc(key);
            s.persistence_timeout_s = 300;
            s.flags.mh_fallback = true;
            let bytes = new_service(&s).unwrap().to_bytes(0x20, 7, 42).unwrap();
            let (back, _) = parse_service(&only_payload(&bytes)).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn request_header_carries_family_seq_and_ack() {
        let s = svc(ServiceKey::Fwmark {
            mark: 1,
            family: AddressFamily::Inet,
        });
        let bytes = del_service(&s.key).unwrap().to_bytes(0x20, 99, 5).unwrap();
        let m = &split_messages(&bytes).unwrap()[0];
        assert_eq!(m.ty, 0x20);
        assert_eq!(m.seq, 99);
        let flags = NlmF::from_bits_truncate(m.flags);
        assert!(flags.contains(NlmF::ACK) && flags.contains(NlmF::REQUEST));
        assert_eq!(m.payload[0], CMD_DEL_SERVICE);
        let dump = get_services().to_bytes(0x20, 1, 5).unwrap();
        let m = &split_messages(&dump).unwrap()[0];
        assert!(NlmF::from_bits_truncate(m.flags).contains(NlmF::DUMP));
    }

    #[test]
    fn destination_round_trips_every_forwarding() {
        let key = ServiceKey::Addr {
            addr: "203.0.113.10".parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
        };
        let fwds = [
            Forwarding::Tunnel(Tunnel::Ipip),
            Forwarding::Tunnel(Tunnel::Gue {
                port: 6080,
                flags: 1,
            }),
            Forwarding::Tunnel(Tunnel::Gre { flags: 3 }),
            Forwarding::Masq,
            Forwarding::Route,
        ];
        for (i, forwarding) in fwds.into_iter().enumerate() {
            let d = Destination {
                addr: if i % 2 == 0 {
                    "198.18.0.2".parse().unwrap()
                } else {
                    "2001:db8::2".parse().unwrap()
                },
                port: 8080 + i as u16,
                forwarding,
                weight: 7,
                upper_threshold: 100,
                lower_threshold: 10,
            };
            let bytes = set_dest(&key, &d).unwrap().to_bytes(0x20, 1, 1).unwrap();
            let back = parse_dest(&only_payload(&bytes), AddressFamily::Inet).unwrap();
            assert_eq!(back.destination, d);
        }
    }

    /// A reply shaped like the kernel's: 16-byte address union, stats64 nest.
    #[test]
    fn parses_kernel_shaped_reply_with_counters() {
        let mut addr = vec![203, 0, 113, 10];
        addr.extend_from_slice(&[0; 12]);
        let stats = nested(
            SVC_ATTR_STATS64,
            vec![
                attr(STATS_CONNS, 5u64.to_ne_bytes().to_vec()).unwrap(),
                attr(STATS_INPKTS, 50u64.to_ne_bytes().to_vec()).unwrap(),
                attr(STATS_OUTPKTS, 0u64.to_ne_bytes().to_vec()).unwrap(),
                attr(STATS_INBYTES, 5000u64.to_ne_bytes().to_vec()).unwrap(),
            ],
        )
        .unwrap();
        let mut flags = (SVC_F_SCHED2 | 0x2).to_ne_bytes().to_vec(); // 0x2 = HASHED, kernel-internal
        flags.extend_from_slice(&u32::MAX.to_ne_bytes());
        let inner = vec![
            attr(SVC_ATTR_AF, (libc::AF_INET as u16).to_ne_bytes().to_vec()).unwrap(),
            attr(SVC_ATTR_PROTOCOL, 6u16.to_ne_bytes().to_vec()).unwrap(),
            attr(SVC_ATTR_ADDR, addr).unwrap(),
            attr(SVC_ATTR_PORT, 80u16.to_be_bytes().to_vec()).unwrap(),
            attr(SVC_ATTR_SCHED_NAME, b"wrr\0".to_vec()).unwrap(),
            attr(SVC_ATTR_FLAGS, flags).unwrap(),
            attr(SVC_ATTR_TIMEOUT, 300u32.to_ne_bytes().to_vec()).unwrap(),
            stats,
        ];
        let req = Request {
            cmd: CMD_NEW_SERVICE,
            attrs: vec![nested(CMD_ATTR_SERVICE, inner).unwrap()],
            dump: false,
        };
        let bytes = req.to_bytes(0x20, 1, 0).unwrap();
        let (s, st) = parse_service(&only_payload(&bytes)).unwrap();
        assert_eq!(s.scheduler, "wrr");
        assert!(s.flags.mh_port && !s.flags.mh_fallback);
        // Timeout without the persistent flag is not persistence.
        assert_eq!(s.persistence_timeout_s, 0);
        assert_eq!(
            st,
            Stats {
                connections: 5,
                packets_in: 50,
                packets_out: 0,
                bytes_in: 5000,
                bytes_out: 0
            }
        );
    }

    #[test]
    fn error_and_batch_framing() {
        // Two ACK-style messages back to back: errno 0 and -EEXIST.
        let mut buf = Vec::new();
        for (seq, code) in [(5u32, 0i32), (6, -libc::EEXIST)] {
            buf.extend_from_slice(&36u32.to_ne_bytes());
            buf.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            buf.extend_from_slice(&0u16.to_ne_bytes());
            buf.extend_from_slice(&seq.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(&code.to_ne_bytes());
            buf.extend_from_slice(&[0u8; 16]);
        }
        let msgs = split_messages(&buf).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(error_code(&msgs[0]).unwrap(), 0);
        assert_eq!(error_code(&msgs[1]).unwrap(), libc::EEXIST);
        assert_eq!(msgs[1].seq, 6);
        // A length that runs past the buffer is an error, not a panic.
        let mut bad = buf.clone();
        bad[0] = 200;
        assert!(split_messages(&bad).is_err());
    }

    #[test]
    fn rejects_bad_scheduler_names() {
        let mut s = svc(ServiceKey::Fwmark {
            mark: 1,
            family: AddressFamily::Inet,
        });
        s.scheduler = "a-scheduler-name-too-long".into();
        let e = new_service(&s).unwrap_err();
        assert!(e.to_string().contains("scheduler"), "{e}");
        s.scheduler = String::new();
        assert!(new_service(&s).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(msgs) = split_messages(&bytes) {
                for m in msgs {
                    let _ = error_code(&m);
                    let _ = parse_service(m.payload);
                    let _ = parse_dest(m.payload, AddressFamily::Inet);
                }
            }
            let _ = parse_service(&bytes);
            let _ = parse_dest(&bytes, AddressFamily::Inet6);
        }
    }
}
