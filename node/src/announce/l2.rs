//! L2 mode's kernel side: the owner of a VIP holds it as a host address on the node's
//! interface, so the kernel answers ARP (IPv4) and NDP (IPv6) for it there; on takeover the new
//! owner tells the segment at once with a gratuitous ARP (iputils `arping -U`) or an unsolicited
//! neighbour advertisement (a raw ICMPv6 socket).
//!
//! Every replica may also hold every VIP on the dummy `shoal0` (IPVS needs the VIP local), so
//! the interface gets `arp_ignore=1` (answer only for addresses on the interface the request came
//! in on) and `arp_announce=2`; IPv6 answers neighbour solicitations only for addresses on the
//! receiving interface anyway. So only the owner answers.

use shoal_dataplane::link::Rtnl;
use shoal_dataplane::DataplaneError;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};

#[derive(Debug, thiserror::Error)]
pub enum L2Error {
    #[error("L2 mode: interface `{0}` does not exist")]
    NoInterface(String),
    #[error("L2 mode: {0}")]
    Kernel(#[from] DataplaneError),
}

/// The interface and the VIPs this node holds on it.
pub struct L2Interface {
    rtnl: Rtnl,
    pub name: String,
    index: i32,
}

impl L2Interface {
    /// Opens the interface and makes the kernel answer ARP only for addresses on it.
    pub fn open(name: &str) -> Result<Self, L2Error> {
        let mut rtnl = Rtnl::open()?;
        let link = rtnl
            .link(name)?
            .ok_or_else(|| L2Error::NoInterface(name.to_string()))?;
        // Written only when they differ, so that an unprivileged container (read-only
        // /proc/sys) starts when the `shoal sysctls --interface` init container set them.
        let wanted = shoal_dataplane::sysctl::arp_owner_only(name);
        let pairs: Vec<(&str, &str)> = wanted
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        shoal_dataplane::sysctl::Sysctl::default().set_all(&pairs)?;
        Ok(L2Interface {
            rtnl,
            name: name.to_string(),
            index: link.index,
        })
    }

    /// The host addresses (/32, /128) on the interface that are among `vips`.
    pub fn held(&mut self, vips: &BTreeSet<IpAddr>) -> Result<BTreeSet<IpAddr>, L2Error> {
        Ok(self
            .rtnl
            .addresses(self.index)?
            .intersection(vips)
            .copied()
            .collect())
    }

    /// Adds or removes one VIP; returns whether it changed.
    pub fn set(&mut self, vip: IpAddr, present: bool) -> Result<bool, L2Error> {
        Ok(self.rtnl.set_address(self.index, vip, present)?)
    }

    /// Tells the segment that this node now answers for `vip` (best effort, logged).
    pub fn advertise(&self, vip: IpAddr) {
        let result = match vip {
            IpAddr::V4(_) => gratuitous_arp(&self.name, vip),
            IpAddr::V6(v6) => unsolicited_na(&self.name, self.index as u32, v6),
        };
        if let Err(e) = result {
            tracing::warn!(%vip, interface = %self.name, error = %e, "could not advertise the takeover");
        }
    }
}

/// Removes the VIPs a dead or frozen node left on the interface (the watchdog's job).
pub fn remove_all(interface: &str, vips: &BTreeSet<IpAddr>) -> Result<usize, L2Error> {
    let mut rtnl = Rtnl::open()?;
    let Some(link) = rtnl.link(interface)? else {
        return Ok(0);
    };
    let mut n = 0;
    for vip in vips {
        n += usize::from(rtnl.set_address(link.index, *vip, false)?);
    }
    Ok(n)
}

/// `arping -U`: an ARP request for the VIP from the VIP, which updates every neighbour entry
/// for it on the segment. Runs in the background.
fn gratuitous_arp(interface: &str, vip: IpAddr) -> std::io::Result<()> {
    let mut child = std::process::Command::new("arping")
        .args(["-U", "-c", "2", "-w", "1", "-I", interface, "-s"])
        .arg(vip.to_string())
        .arg(vip.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| std::io::Error::new(e.kind(), format!("arping (iputils-arping): {e}")))?;
    std::thread::spawn(move || child.wait());
    Ok(())
}

/// An unsolicited neighbour advertisement (RFC 4861 7.2.6) for `vip` to all nodes, with the
/// override flag and the interface's MAC (the kernel picks the link-local source address).
fn unsolicited_na(interface: &str, index: u32, vip: Ipv6Addr) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mac = read_mac(interface)?;
    let sock = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    sock.set_multicast_hops_v6(255)?;
    sock.set_unicast_hops_v6(255)?;
    sock.set_multicast_if_v6(index)?;
    let mut msg = vec![136u8, 0, 0, 0, 0x20, 0, 0, 0];
    msg.extend_from_slice(&vip.octets());
    msg.extend_from_slice(&[2, 1]);
    msg.extend_from_slice(&mac);
    let all_nodes = SocketAddrV6::new(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), 0, 0, index);
    for _ in 0..2 {
        sock.send_to(&msg, &SocketAddr::V6(all_nodes).into())?;
    }
    Ok(())
}

fn read_mac(interface: &str) -> std::io::Result<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{interface}/address"))?;
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.trim().split(':').collect();
    if parts.len() != 6 {
        return Err(std::io::Error::other(format!(
            "{interface} has no MAC address"
        )));
    }
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).map_err(std::io::Error::other)?;
    }
    Ok(mac)
}
