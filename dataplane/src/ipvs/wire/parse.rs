//! Parsing the kernel's replies: netlink framing, error codes, and GET_SERVICE / GET_DEST
//! answers back into model values.

use super::*;

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

/// A service's key from its attributes (`find` looks one up by type).
fn service_key<'a>(find: impl Fn(u16) -> Option<&'a [u8]>) -> Result<ServiceKey, DataplaneError> {
    let af = u16_ne(find(SVC_ATTR_AF), "service family")?;
    let family = if af == libc::AF_INET6 as u16 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    // The kernel sends FWMARK for a fwmark service and PROTOCOL/ADDR/PORT otherwise.
    if find(SVC_ATTR_ADDR).is_none() {
        let mark = u32_ne(find(SVC_ATTR_FWMARK), "fwmark")?;
        return Ok(ServiceKey::Fwmark { mark, family });
    }
    let proto = u16_ne(find(SVC_ATTR_PROTOCOL), "protocol")?;
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
    Ok(ServiceKey::Addr {
        addr: parse_addr(find(SVC_ATTR_ADDR), af, "service address")?,
        port: u16_be(find(SVC_ATTR_PORT), "service port")?,
        protocol,
    })
}

/// The payload of the first attribute of type `ty` in `attrs` (a run of netlink attributes),
/// read in place. neli's parser copies every attribute into its own buffer, which is what a
/// full read needs; the check before a flush wants only the key of each of 10,000 services.
fn find_in_place(attrs: &[u8], ty: u16) -> Result<Option<&[u8]>, DataplaneError> {
    const NLA_HDR_LEN: usize = 4;
    const NLA_TYPE_MASK: u16 = 0x3fff; // without the nested / byte-order bits
    let mut pos = 0;
    while pos + NLA_HDR_LEN <= attrs.len() {
        let len = u16::from_ne_bytes([attrs[pos], attrs[pos + 1]]) as usize;
        let at = u16::from_ne_bytes([attrs[pos + 2], attrs[pos + 3]]) & NLA_TYPE_MASK;
        if len < NLA_HDR_LEN || pos + len > attrs.len() {
            return Err(malformed(
                "dump services",
                format!("bad attribute length {len} at {pos}"),
            ));
        }
        if at == ty {
            return Ok(Some(&attrs[pos + NLA_HDR_LEN..pos + len]));
        }
        pos += (len + 3) & !3;
    }
    Ok(None)
}

/// Only the key of one GET_SERVICE reply message, decoded in place (no allocation): the cheap
/// check before a flush lists 10,000 services this way.
pub fn parse_service_key(payload: &[u8]) -> Result<ServiceKey, DataplaneError> {
    let top = payload
        .get(GENL_HDR_LEN..)
        .ok_or_else(|| malformed("dump services", "short generic netlink message"))?;
    let svc = find_in_place(top, CMD_ATTR_SERVICE)?
        .ok_or_else(|| malformed("dump services", "reply without a service"))?;
    // Validate the whole nest once, so that `find` below can treat a malformed one as absent.
    find_in_place(svc, u16::MAX)?;
    service_key(|ty| find_in_place(svc, ty).ok().flatten())
}

/// Decode one GET_SERVICE reply message into the service (no destinations) and its counters.
pub fn parse_service(payload: &[u8]) -> Result<(Service, Stats), DataplaneError> {
    let top = genl_attrs(payload)?;
    let svc = find_nested(&top, CMD_ATTR_SERVICE)
        .ok_or_else(|| malformed("dump services", "reply without a service"))?;
    let a = nested_attrs(svc)?;
    let key = service_key(|ty| find(&a, ty))?;
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
            port: flags & SVC_F_SCHED2 != 0,
            fallback: flags & SVC_F_SCHED1 != 0,
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
