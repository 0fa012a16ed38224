//! What a dataplane holds: virtual services, their destinations, and the VIPs on the node.
//!
//! These are plain values shared by the planner, the IPVS backend and the in-memory twin.
//! `Service::destinations` is kept sorted by `(addr, port)` by whoever builds it, so two
//! services compare equal exactly when the kernel would hold the same entries.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressFamily {
    Inet,
    Inet6,
}

impl AddressFamily {
    pub fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        }
    }
}

/// As written in rules files and `ipvsadm`'s options: `tcp`, `udp`, `sctp`.
impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        })
    }
}

impl fmt::Display for AddressFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressFamily::Inet => "IPv4",
            AddressFamily::Inet6 => "IPv6",
        })
    }
}

/// How IPVS identifies a virtual service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKey {
    Addr {
        addr: IpAddr,
        port: u16,
        protocol: Protocol,
    },
    Fwmark {
        mark: u32,
        family: AddressFamily,
    },
}

impl ServiceKey {
    /// The VIP this service answers on, if it is address-based.
    pub fn vip(&self) -> Option<IpAddr> {
        match self {
            ServiceKey::Addr { addr, .. } => Some(*addr),
            ServiceKey::Fwmark { .. } => None,
        }
    }

    /// The protocol this service answers, if it is address-based (a firewall mark may stand
    /// for several).
    pub fn protocol(&self) -> Option<Protocol> {
        match self {
            ServiceKey::Addr { protocol, .. } => Some(*protocol),
            ServiceKey::Fwmark { .. } => None,
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceKey::Addr {
                addr: IpAddr::V6(a),
                port,
                protocol,
            } => write!(f, "{protocol} [{a}]:{port}"),
            ServiceKey::Addr {
                addr,
                port,
                protocol,
            } => write!(f, "{protocol} {addr}:{port}"),
            ServiceKey::Fwmark { mark, family } => write!(f, "fwmark {mark} ({family})"),
        }
    }
}

/// Tunnel encapsulations IPVS supports (GUE and GRE need Linux >= 5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tunnel {
    Ipip,
    Gue { port: u16, flags: u16 },
    Gre { flags: u16 },
}

/// How IPVS forwards a packet to a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// Encapsulate; the backend answers the client directly.
    Tunnel(Tunnel),
    /// NAT; replies must come back through this node.
    Masq,
    /// Direct routing on the same L2 segment.
    Route,
}

/// As a rules file names it: `tunnel ipip`, `tunnel gue port 6080`, `tunnel gre`, `masq`,
/// `route` (flags only when set).
impl fmt::Display for Forwarding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Forwarding::Tunnel(Tunnel::Ipip) => f.write_str("tunnel ipip"),
            Forwarding::Tunnel(Tunnel::Gue { port, flags }) => {
                write!(f, "tunnel gue port {port}")?;
                if *flags != 0 {
                    write!(f, " flags {flags:#x}")?;
                }
                Ok(())
            }
            Forwarding::Tunnel(Tunnel::Gre { flags }) => {
                f.write_str("tunnel gre")?;
                if *flags != 0 {
                    write!(f, " flags {flags:#x}")?;
                }
                Ok(())
            }
            Forwarding::Masq => f.write_str("masq"),
            Forwarding::Route => f.write_str("route"),
        }
    }
}

/// Scheduler flags carried in IPVS's `flags` attribute: the kernel's two scheduler flags,
/// which the hashing schedulers read (`mh-port`/`mh-fallback` for mh, `sh-port`/`sh-fallback`
/// for sh: the same bits) and the others ignore.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct SchedFlags {
    /// `IP_VS_SVC_F_SCHED2`, `mh-port` / `sh-port`: hash the source port as well as the
    /// source address.
    #[serde(alias = "mh_port")]
    pub port: bool,
    /// `IP_VS_SVC_F_SCHED1`, `mh-fallback` / `sh-fallback`: skip destinations with weight 0
    /// (drained) or over their threshold.
    #[serde(alias = "mh_fallback")]
    pub fallback: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Destination {
    pub addr: IpAddr,
    pub port: u16,
    pub forwarding: Forwarding,
    pub weight: u32,
    /// Upper connection threshold; 0 means none.
    pub upper_threshold: u32,
    /// Lower connection threshold; 0 means none.
    pub lower_threshold: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Service {
    pub key: ServiceKey,
    /// IPVS scheduler name: `mh`, `rr`, `wrr`, `lc`, `wlc`, `sh`, ...
    pub scheduler: String,
    pub flags: SchedFlags,
    /// Persistence timeout in seconds; 0 means not persistent.
    pub persistence_timeout_s: u32,
    /// Sorted by `(addr, port)`.
    pub destinations: Vec<Destination>,
}

/// Counters the kernel keeps per service or destination.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub connections: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedDestination {
    pub destination: Destination,
    pub active_connections: u32,
    pub inactive_connections: u32,
    pub stats: Stats,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedService {
    pub service: Service,
    pub destinations: Vec<ObservedDestination>,
    pub stats: Stats,
}
