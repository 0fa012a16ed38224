//! One change to a dataplane: the unit the planner emits and the backends apply.

use crate::error::DataplaneError;
use crate::model::{Destination, Service, ServiceKey};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

/// A single kernel operation. `AddService` carries the service without destinations: each
/// destination is its own `AddDest`, so an op count is also a netlink message count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    AddService(Service),
    UpdateService(Service),
    DelService(ServiceKey),
    /// Delete every IPVS service in the kernel (Shoal's and any other), in one message
    /// (`IPVS_CMD_FLUSH`, as `ipvsadm -C`). The planner emits it only when every service is
    /// Shoal's and none is desired.
    Flush,
    AddDest(ServiceKey, Destination),
    UpdateDest(ServiceKey, Destination),
    DelDest(ServiceKey, IpAddr, u16),
    AddVip(IpAddr),
    DelVip(IpAddr),
}

impl Op {
    /// Short verb used in logs and error messages ("add service", ...).
    pub fn verb(&self) -> &'static str {
        match self {
            Op::AddService(_) => "add service",
            Op::UpdateService(_) => "update service",
            Op::DelService(_) => "delete service",
            Op::Flush => "flush",
            Op::AddDest(..) => "add destination",
            Op::UpdateDest(..) => "update destination",
            Op::DelDest(..) => "delete destination",
            Op::AddVip(_) => "add VIP",
            Op::DelVip(_) => "delete VIP",
        }
    }

    /// The service the op changes, if it changes one (not a flush, not a VIP).
    pub fn service(&self) -> Option<&ServiceKey> {
        match self {
            Op::AddService(s) | Op::UpdateService(s) => Some(&s.key),
            Op::DelService(k) | Op::AddDest(k, _) | Op::UpdateDest(k, _) | Op::DelDest(k, ..) => {
                Some(k)
            }
            Op::Flush | Op::AddVip(_) | Op::DelVip(_) => None,
        }
    }

    /// The kernel's refusal of this op as an error that says what it means here: ENOENT to an
    /// add or update of a service is a scheduler the kernel does not have (no module), not a
    /// missing entry.
    pub fn refused(&self, errno: i32) -> DataplaneError {
        match self {
            Op::AddService(s) | Op::UpdateService(s) if errno == libc::ENOENT => {
                DataplaneError::Netlink {
                    op: self.verb().to_string(),
                    entry: self.entry(),
                    errno,
                    message: format!(
                        "this kernel has no IPVS scheduler {:?} (module ip_vs_{} missing or not \
                         loadable here: `modprobe ip_vs_{}` on the host, or choose another \
                         scheduler)",
                        s.scheduler, s.scheduler, s.scheduler
                    ),
                }
            }
            Op::AddVip(ip) if ip.is_ipv6() && errno == libc::EACCES => {
                DataplaneError::ipv6_disabled(*ip)
            }
            _ => DataplaneError::from_errno(self.verb(), &self.entry(), errno),
        }
    }

    /// Whether the kernel's `errno` to this op is about what the service asks for (a
    /// scheduler the kernel lacks, a value it rejects, a family or tunnel it does not serve,
    /// an IPv6 VIP where IPv6 is disabled), so that leaving that service (or every service on
    /// that VIP) out is the answer; not an entry changed behind Shoal's back (a destination
    /// deleted by hand: the next read repairs it) nor the node's problem.
    pub fn refused_for_what_it_asks(&self, errno: i32) -> bool {
        let rejected = [libc::EINVAL, libc::EOPNOTSUPP, libc::EAFNOSUPPORT].contains(&errno);
        match self {
            Op::AddService(_) | Op::UpdateService(_) => rejected || errno == libc::ENOENT,
            Op::AddDest(..) | Op::UpdateDest(..) => rejected,
            Op::AddVip(ip) => ip.is_ipv6() && [libc::EACCES, libc::EAFNOSUPPORT].contains(&errno),
            _ => false,
        }
    }

    /// The entry the op is about, written the way an operator would look for it.
    pub fn entry(&self) -> String {
        match self {
            Op::AddService(s) | Op::UpdateService(s) => s.key.to_string(),
            Op::DelService(k) => k.to_string(),
            Op::Flush => "every IPVS service".into(),
            Op::AddDest(k, d) | Op::UpdateDest(k, d) => {
                format!("{} -> {}", k, socket_text(d.addr, d.port))
            }
            Op::DelDest(k, addr, port) => format!("{} -> {}", k, socket_text(*addr, *port)),
            Op::AddVip(a) | Op::DelVip(a) => a.to_string(),
        }
    }
}

fn socket_text(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.verb(), self.entry())?;
        match self {
            Op::AddDest(_, d) | Op::UpdateDest(_, d) => write!(f, " weight {}", d.weight),
            _ => Ok(()),
        }
    }
}
