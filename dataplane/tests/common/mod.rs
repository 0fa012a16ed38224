//! Strategies shared by the planner's property tests: managed and foreign services, a start
//! state in the in-memory twin, and a desired table.
#![allow(dead_code)]

use proptest::prelude::*;
use shoal_dataplane::model::*;
use shoal_dataplane::plan::{normalize, SHOAL_FWMARK_BASE};
use shoal_dataplane::{Desired, MemoryDataplane};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

pub fn shoal_vip(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1 + i))
}
pub fn foreign_vip(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1 + i))
}

pub fn forwarding() -> impl Strategy<Value = Forwarding> {
    prop_oneof![
        Just(Forwarding::Tunnel(Tunnel::Ipip)),
        Just(Forwarding::Tunnel(Tunnel::Gue {
            port: 6080,
            flags: 0
        })),
        Just(Forwarding::Masq),
        Just(Forwarding::Route),
    ]
}

pub fn destination() -> impl Strategy<Value = Destination> {
    (
        0u8..5,
        prop_oneof![Just(80u16), Just(8080)],
        forwarding(),
        0u32..4,
        0u32..2,
    )
        .prop_map(|(host, port, forwarding, weight, th)| Destination {
            addr: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10 + host)),
            port,
            forwarding,
            weight,
            upper_threshold: th * 100,
            lower_threshold: 0,
        })
}

pub fn key(foreign: bool) -> impl Strategy<Value = ServiceKey> {
    let addr_key = (
        0u8..3,
        prop_oneof![Just(80u16), Just(443)],
        prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)],
    )
        .prop_map(move |(i, port, protocol)| ServiceKey::Addr {
            addr: if foreign {
                foreign_vip(i)
            } else {
                shoal_vip(i)
            },
            port,
            protocol,
        });
    let base = if foreign { 0x100 } else { SHOAL_FWMARK_BASE };
    let mark_key = (0u32..2).prop_map(move |m| ServiceKey::Fwmark {
        mark: base + m,
        family: AddressFamily::Inet,
    });
    prop_oneof![4 => addr_key, 1 => mark_key]
}

pub fn service(foreign: bool) -> impl Strategy<Value = Service> {
    (
        key(foreign),
        prop_oneof![Just("mh"), Just("wrr"), Just("rr")],
        any::<bool>(),
        prop_oneof![Just(0u32), Just(300)],
        proptest::collection::vec(destination(), 0..5),
    )
        .prop_map(
            |(key, sched, mh_port, persistence_timeout_s, destinations)| {
                normalize(&Service {
                    key,
                    scheduler: sched.to_string(),
                    flags: SchedFlags {
                        port: mh_port,
                        fallback: false,
                    },
                    persistence_timeout_s,
                    destinations,
                })
            },
        )
}

pub fn by_key(services: Vec<Service>) -> BTreeMap<ServiceKey, Service> {
    services.into_iter().map(|s| (s.key.clone(), s)).collect()
}

#[derive(Debug, Clone)]
pub struct Case {
    pub desired: Desired,
    pub start: MemoryDataplane,
    pub foreign: BTreeMap<ServiceKey, Service>,
}

pub fn case() -> impl Strategy<Value = Case> {
    (
        proptest::collection::vec(service(false), 0..5),
        proptest::collection::vec(service(false), 0..5),
        proptest::collection::vec(service(true), 0..4),
        proptest::collection::btree_set(0u8..3, 0..3),
    )
        .prop_map(|(want, have, foreign, vips)| {
            let foreign = by_key(foreign);
            let dp = MemoryDataplane::new();
            for s in by_key(have).into_values().chain(foreign.values().cloned()) {
                dp.insert_service(s);
            }
            for v in vips {
                dp.set_vip(shoal_vip(v), true);
            }
            Case {
                desired: Desired {
                    services: by_key(want).into_values().collect(),
                },
                start: dp,
                foreign,
            }
        })
}
