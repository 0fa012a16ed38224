//! Tests of the IPVS netlink messages (the parent module): encode then decode.

use super::*;
use proptest::prelude::*;

fn svc(key: ServiceKey) -> Service {
    Service {
        key,
        scheduler: "mh".into(),
        flags: SchedFlags {
            port: true,
            fallback: false,
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
        s.flags.fallback = true;
        let bytes = new_service(&s).unwrap().to_bytes(0x20, 7, 42).unwrap();
        let payload = only_payload(&bytes);
        let (back, _) = parse_service(&payload).unwrap();
        assert_eq!(back, s);
        // The in-place key decode (the check before a flush) agrees with the full one.
        assert_eq!(parse_service_key(&payload).unwrap(), s.key);
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
    let payload = only_payload(&bytes);
    let (s, st) = parse_service(&payload).unwrap();
    assert_eq!(parse_service_key(&payload).unwrap(), s.key);
    assert_eq!(s.scheduler, "wrr");
    assert!(s.flags.port && !s.flags.fallback);
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

/// The in-place key decode refuses what the full decode refuses: a reply without a service,
/// without a port, or with an attribute running past its nest.
#[test]
fn the_in_place_key_decode_names_what_is_wrong() {
    let key_attrs_without = |skip: u16| {
        let mut addr = vec![203, 0, 113, 10];
        addr.extend_from_slice(&[0; 12]);
        let inner: Vec<Attr> = [
            (SVC_ATTR_AF, (libc::AF_INET as u16).to_ne_bytes().to_vec()),
            (SVC_ATTR_PROTOCOL, 6u16.to_ne_bytes().to_vec()),
            (SVC_ATTR_ADDR, addr),
            (SVC_ATTR_PORT, 80u16.to_be_bytes().to_vec()),
        ]
        .into_iter()
        .filter(|(ty, _)| *ty != skip)
        .map(|(ty, b)| attr(ty, b).unwrap())
        .collect();
        let req = Request {
            cmd: CMD_NEW_SERVICE,
            attrs: vec![nested(CMD_ATTR_SERVICE, inner).unwrap()],
            dump: false,
        };
        only_payload(&req.to_bytes(0x20, 1, 0).unwrap())
    };
    assert!(parse_service_key(&key_attrs_without(0)).is_ok());
    let e = parse_service_key(&key_attrs_without(SVC_ATTR_PORT)).unwrap_err();
    assert!(e.to_string().contains("service port"), "{e}");
    let e = parse_service_key(&key_attrs_without(SVC_ATTR_AF)).unwrap_err();
    assert!(e.to_string().contains("service family"), "{e}");
    // The first inner attribute claims more bytes than its nest holds.
    let mut bad = key_attrs_without(0);
    let inner_len_at = GENL_HDR_LEN + 4;
    bad[inner_len_at] = 0xff;
    let e = parse_service_key(&bad).unwrap_err();
    assert!(e.to_string().contains("attribute length"), "{e}");
    let e = parse_service_key(&bad[..GENL_HDR_LEN]).unwrap_err();
    assert!(e.to_string().contains("without a service"), "{e}");
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
                let _ = parse_service_key(m.payload);
                let _ = parse_dest(m.payload, AddressFamily::Inet);
            }
        }
        let _ = parse_service(&bytes);
        let _ = parse_service_key(&bytes);
        let _ = parse_dest(&bytes, AddressFamily::Inet6);
    }
}
