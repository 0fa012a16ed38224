//! Fixtures shared by this crate's unit tests and its integration tests (`tests/`). Not part of
//! the API: compiled for the crate's own tests and with the `test-support` feature only, which
//! nothing but this crate's dev-dependency on itself turns on.

use crate::model::{Destination, Forwarding, Protocol, SchedFlags, Service, ServiceKey, Tunnel};
use std::net::{IpAddr, Ipv4Addr};

/// The backend address 198.18.0.`last` (the benchmark range the tests use for hosts).
pub fn backend(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, last))
}

/// A TCP service on `vip:port`, scheduler "mh" with default flags, no persistence, and one
/// IPIP destination of weight 1 on port 80 per address in `backends`.
pub fn tcp_service(vip: IpAddr, port: u16, backends: impl IntoIterator<Item = IpAddr>) -> Service {
    Service {
        key: ServiceKey::Addr {
            addr: vip,
            port,
            protocol: Protocol::Tcp,
        },
        scheduler: "mh".into(),
        flags: SchedFlags::default(),
        persistence_timeout_s: 0,
        destinations: backends
            .into_iter()
            .map(|addr| Destination {
                addr,
                port: 80,
                forwarding: Forwarding::Tunnel(Tunnel::Ipip),
                weight: 1,
                upper_threshold: 0,
                lower_threshold: 0,
            })
            .collect(),
    }
}
