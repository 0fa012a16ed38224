//! IPVS generic-netlink replies (`dataplane/src/ipvs/wire.rs`): bytes from the kernel.

use shoal_dataplane::ipvs::wire::{
    error_code, new_dest, new_service, parse_dest, parse_service, split_messages,
};
use shoal_dataplane::model::{
    AddressFamily, Destination, Forwarding, Protocol, SchedFlags, Service, ServiceKey, Tunnel,
};

pub fn run(data: &[u8]) {
    if let Ok(messages) = split_messages(data) {
        let mut covered = 0;
        for m in &messages {
            covered += m.payload.len();
            let _ = error_code(m);
            let _ = parse_service(m.payload);
            let _ = parse_dest(m.payload, AddressFamily::Inet);
            let _ = parse_dest(m.payload, AddressFamily::Inet6);
        }
        assert!(covered <= data.len(), "messages overlap");
    }
    let _ = parse_service(data);
    let _ = parse_dest(data, AddressFamily::Inet);
}

/// Replies shaped like the kernel's: the same attributes the requests carry.
pub fn seeds() -> Vec<Vec<u8>> {
    let family = 0x20;
    let keys = [
        ServiceKey::Addr {
            addr: "203.0.113.10".parse().expect("literal"),
            port: 80,
            protocol: Protocol::Tcp,
        },
        ServiceKey::Addr {
            addr: "2001:db8::10".parse().expect("literal"),
            port: 53,
            protocol: Protocol::Udp,
        },
        ServiceKey::Fwmark {
            mark: 7,
            family: AddressFamily::Inet,
        },
    ];
    let mut out = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let service = Service {
            key: key.clone(),
            scheduler: "mh".into(),
            flags: SchedFlags {
                port: true,
                fallback: i == 1,
            },
            persistence_timeout_s: 0,
            destinations: Vec::new(),
        };
        if let Ok(bytes) = new_service(&service).and_then(|r| r.to_bytes(family, 1, 0)) {
            out.push(bytes);
        }
        let addr = if i == 1 {
            "2001:db8::20".parse().expect("literal")
        } else {
            "198.18.0.20".parse().expect("literal")
        };
        for forwarding in [
            Forwarding::Masq,
            Forwarding::Route,
            Forwarding::Tunnel(Tunnel::Ipip),
            Forwarding::Tunnel(Tunnel::Gue {
                port: 6080,
                flags: 1,
            }),
        ] {
            let d = Destination {
                addr,
                port: 80,
                forwarding,
                weight: 3,
                upper_threshold: 0,
                lower_threshold: 0,
            };
            if let Ok(bytes) = new_dest(key, &d).and_then(|r| r.to_bytes(family, 2, 0)) {
                out.push(bytes);
            }
        }
    }
    // An ACK and an error, back to back.
    let mut acks = Vec::new();
    for code in [0i32, -libc::EEXIST] {
        acks.extend_from_slice(&36u32.to_ne_bytes());
        acks.extend_from_slice(&2u16.to_ne_bytes()); // NLMSG_ERROR
        acks.extend_from_slice(&0u16.to_ne_bytes());
        acks.extend_from_slice(&5u32.to_ne_bytes());
        acks.extend_from_slice(&0u32.to_ne_bytes());
        acks.extend_from_slice(&code.to_ne_bytes());
        acks.extend_from_slice(&[0u8; 16]);
    }
    out.push(acks);
    out
}
