//! One change to a dataplane: the unit the planner emits and the backends apply.

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
