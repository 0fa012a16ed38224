//! The real dataplane: IPVS over generic netlink, VIPs on a dummy interface, IPVS sysctls.

pub mod wire;

use crate::backend::{Applied, Dataplane};
use crate::error::DataplaneError;
use crate::link::Rtnl;
use crate::model::{
    AddressFamily, ObservedDestination, ObservedService, Service, ServiceKey, Stats,
};
use crate::netlink::NlConn;
use crate::op::Op;
use crate::plan::{Actual, View};
use crate::sysctl::Sysctl;
use neli::consts::nl::NlmF;
use neli::consts::socket::NlFamily;
use neli::genl::{AttrTypeBuilder, GenlmsghdrBuilder, NlattrBuilder};
use neli::types::{Buffer, GenlBuffer};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

/// How the node's IPVS is set up at start.
#[derive(Debug, Clone)]
pub struct IpvsOptions {
    /// Dummy interface holding the VIPs (created if missing).
    pub interface: String,
    /// `net.ipv4.vs.sloppy_tcp`: accept a mid-flow TCP packet, so a replica can carry a flow
    /// that began on another one.
    pub sloppy_tcp: bool,
    /// `net.ipv4.vs.expire_nodest_conn`: drop connections of a deleted destination at once.
    pub expire_nodest_conn: bool,
    /// `net.ipv4.vs.conn_reuse_mode` (0, 1 or 2; see the kernel's ipvs-sysctl docs).
    pub conn_reuse_mode: u8,
    /// Where sysctls live (tests point this elsewhere).
    pub sysctl_root: PathBuf,
}

impl Default for IpvsOptions {
    fn default() -> Self {
        IpvsOptions {
            interface: "shoal0".into(),
            sloppy_tcp: true,
            expire_nodest_conn: true,
            conn_reuse_mode: 1,
            sysctl_root: PathBuf::from("/proc/sys"),
        }
    }
}

impl IpvsOptions {
    /// The sysctls this node's IPVS needs, as `(key, value)`: what `open` sets, and what
    /// `shoal sysctls` (the privileged init container) writes ahead of an unprivileged start.
    pub fn sysctls(&self) -> Vec<(&'static str, String)> {
        let b = |v: bool| if v { "1" } else { "0" }.to_string();
        vec![
            ("net.ipv4.vs.sloppy_tcp", b(self.sloppy_tcp)),
            ("net.ipv4.vs.expire_nodest_conn", b(self.expire_nodest_conn)),
            (
                "net.ipv4.vs.conn_reuse_mode",
                self.conn_reuse_mode.to_string(),
            ),
        ]
    }
}

/// How `IpvsDataplane::probe_service_list` decodes each reply of a GET_SERVICE dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListDecode {
    /// Count only: the kernel's and the socket's share of a list.
    Nothing,
    /// The key, in place: what `service_keys` (the check before a flush) does.
    KeysOnly,
    /// Every attribute with neli, counters included: what a full read does.
    Full,
}

pub struct IpvsDataplane {
    genl: NlConn,
    family: u16,
    rtnl: Rtnl,
    ifindex: i32,
    interface: String,
    /// The prefix length of each address on the interface at the last read, to delete one
    /// added by hand with another prefix than a VIP's.
    read_prefixes: BTreeMap<IpAddr, u8>,
    /// The IPVS sysctls set at start, kept set (see [`IpvsDataplane::keep_sysctls`]).
    sysctl: Sysctl,
    sysctls: Vec<(&'static str, String)>,
    messages_sent: u64,
}

const CTRL_ID: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

fn unsupported(hint: &str) -> DataplaneError {
    DataplaneError::Unsupported {
        what: "IPVS".into(),
        hint: hint.into(),
    }
}

fn resolve_family(conn: &mut NlConn) -> Result<u16, DataplaneError> {
    let name = NlattrBuilder::default()
        .nla_type(
            AttrTypeBuilder::default()
                .nla_type(CTRL_ATTR_FAMILY_NAME)
                .build()
                .map_err(|e| wire_bad(e.to_string()))?,
        )
        .nla_payload(Buffer::from(b"IPVS\0".to_vec()))
        .build()
        .map_err(|e| wire_bad(e.to_string()))?;
    let genl = GenlmsghdrBuilder::<u8, u16>::default()
        .cmd(CTRL_CMD_GETFAMILY)
        .version(2)
        .attrs(std::iter::once(name).collect::<GenlBuffer<u16, Buffer>>())
        .build()
        .map_err(|e| wire_bad(e.to_string()))?;
    let seq = conn.next_seq();
    let bytes = crate::netlink::encode(CTRL_ID, NlmF::REQUEST | NlmF::ACK, seq, conn.pid(), genl)?;
    let replies = match conn.dump(seq, &bytes)? {
        Ok(r) => r,
        Err(libc::ENOENT) => {
            return Err(unsupported(
                "the kernel has no IPVS generic netlink family: load the ip_vs module \
                 (modprobe ip_vs) on the node, or use a kernel built with CONFIG_IP_VS",
            ))
        }
        Err(errno) => return Err(DataplaneError::from_errno("resolve", "IPVS family", errno)),
    };
    for r in replies {
        let attrs = wire::genl_attrs(&r)?;
        if let Some(a) = attrs
            .iter()
            .find(|a| *a.nla_type().nla_type() == CTRL_ATTR_FAMILY_ID)
        {
            let b = a.nla_payload().as_ref();
            if b.len() >= 2 {
                return Ok(u16::from_ne_bytes([b[0], b[1]]));
            }
        }
    }
    Err(wire_bad("family reply without an id".into()))
}

fn wire_bad(detail: String) -> DataplaneError {
    DataplaneError::Malformed {
        op: "resolve IPVS family".into(),
        detail,
    }
}

fn family_of(key: &ServiceKey) -> AddressFamily {
    match key {
        ServiceKey::Addr { addr, .. } => AddressFamily::of(addr),
        ServiceKey::Fwmark { family, .. } => *family,
    }
}

impl IpvsDataplane {
    /// Resolve IPVS, check we may use it, set the sysctls and make sure the VIP interface is
    /// up. Missing IPVS or missing privileges come back as `Unsupported` / `Permission`.
    pub fn open(opts: &IpvsOptions) -> Result<Self, DataplaneError> {
        let mut genl = NlConn::open(NlFamily::Generic, "IPVS")?;
        let family = resolve_family(&mut genl)?;
        let mut rtnl = Rtnl::open()?;
        let mut dp = IpvsDataplane {
            genl,
            family,
            rtnl: Rtnl::open()?,
            ifindex: 0,
            interface: opts.interface.clone(),
            read_prefixes: BTreeMap::new(),
            sysctl: Sysctl::at(&opts.sysctl_root),
            sysctls: opts.sysctls(),
            messages_sent: 0,
        };
        // A first dump proves we hold CAP_NET_ADMIN before anything else is touched.
        dp.dump_services()?;

        if !dp.sysctl.path("net.ipv4.vs").exists() {
            return Err(unsupported(
                "/proc/sys/net/ipv4/vs is missing (ip_vs module not loaded in this network namespace?)",
            ));
        }
        for change in dp.sysctl.set_all(&dp.sysctl_pairs())? {
            tracing::info!(%change, "sysctl set");
        }

        rtnl.ensure_dummy(&opts.interface)?;
        rtnl.set_up(&opts.interface)?;
        let link = rtnl.link(&opts.interface)?.ok_or_else(|| {
            DataplaneError::from_errno("find interface", &opts.interface, libc::ENODEV)
        })?;
        dp.ifindex = link.index;
        dp.rtnl = rtnl;
        tracing::info!(family, interface = %opts.interface, "IPVS dataplane ready");
        Ok(dp)
    }

    /// The dummy interface holding the VIPs.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Netlink messages sent for changes (not reads) since open: the figure the benchmark
    /// checks ("one destination change = one message").
    pub fn messages_sent(&self) -> u64 {
        self.messages_sent
    }

    /// The undecoded reply of every service: a whole read decodes them one at a time, so that
    /// it can stop between two (decoding is most of a list's cost, the kernel's dump the rest).
    fn dump_services(&mut self) -> Result<Vec<Vec<u8>>, DataplaneError> {
        let seq = self.genl.next_seq();
        let bytes = wire::get_services().to_bytes(self.family, seq, self.genl.pid())?;
        self.genl
            .dump(seq, &bytes)?
            .map_err(|errno| DataplaneError::from_errno("list", "IPVS services", errno))
    }

    fn dump_services_each(
        &mut self,
        each: impl FnMut(&[u8]) -> Result<(), DataplaneError>,
    ) -> Result<(), DataplaneError> {
        let seq = self.genl.next_seq();
        let bytes = wire::get_services().to_bytes(self.family, seq, self.genl.pid())?;
        self.genl
            .dump_each(seq, &bytes, each)?
            .map_err(|errno| DataplaneError::from_errno("list", "IPVS services", errno))
    }

    /// What a list of services costs, decoded as `how` says (the benchmark's probe of the
    /// check before a flush). Returns the number of services.
    pub fn probe_service_list(&mut self, how: ListDecode) -> Result<usize, DataplaneError> {
        let mut n = 0;
        self.dump_services_each(|p| {
            match how {
                ListDecode::Full => {
                    std::hint::black_box(wire::parse_service(p)?);
                }
                ListDecode::KeysOnly => {
                    std::hint::black_box(wire::parse_service_key(p)?);
                }
                ListDecode::Nothing => {}
            }
            n += 1;
            Ok(())
        })?;
        Ok(n)
    }

    fn encode(&mut self, op: &Op) -> Result<(u32, Vec<u8>), DataplaneError> {
        let req = match op {
            Op::AddService(s) => wire::new_service(s)?,
            Op::UpdateService(s) => wire::set_service(s)?,
            Op::DelService(k) => wire::del_service(k)?,
            Op::Flush => wire::flush(),
            Op::AddDest(k, d) => wire::new_dest(k, d)?,
            Op::UpdateDest(k, d) => wire::set_dest(k, d)?,
            Op::DelDest(k, a, p) => wire::del_dest(k, *a, *p)?,
            Op::AddVip(_) | Op::DelVip(_) => {
                return Err(DataplaneError::Invalid {
                    entry: op.entry(),
                    field: "op".into(),
                    detail: "VIP ops go over rtnetlink".into(),
                })
            }
        };
        let seq = self.genl.next_seq();
        Ok((seq, req.to_bytes(self.family, seq, self.genl.pid())?))
    }

    /// Send a run of VIP ops over rtnetlink in one batch; success count and each refusal (by
    /// index in the run). When the interface is gone (deleted, or replaced by one of the same
    /// name, behind Shoal's back), it is made again and the run sent once more: the index
    /// read at start pointed nowhere for the process's life, every pass failed, and the VIPs
    /// never came back (a probe).
    fn apply_vip_run(&mut self, ops: &[&Op]) -> Applied {
        let applied = self.send_vip_run(ops);
        let gone = |(_, e): &(Option<usize>, DataplaneError)| e.errno() == Some(libc::ENODEV);
        if !applied.refused.iter().any(gone) {
            return applied;
        }
        match self.relink() {
            // Those that went in before are there again: counted done, not refused.
            Ok(()) => self.send_vip_run(ops),
            Err(e) => {
                tracing::error!(interface = %self.interface, error = %e, "the VIP interface is gone and cannot be made again");
                applied
            }
        }
    }

    /// Writes again any IPVS sysctl set at start that changed since (kube-proxy shares them on
    /// hostNetwork; a probe set `sloppy_tcp` to 0 by hand and the node never noticed, while
    /// flows moved between replicas were reset). A failure is logged, not returned: the table
    /// can still be programmed, and the start already refused a node that could not set them.
    fn keep_sysctls(&mut self) {
        match self.sysctl.set_all(&self.sysctl_pairs()) {
            Ok(changes) => {
                for change in changes {
                    tracing::warn!(%change, "IPVS sysctl changed behind Shoal's back; set again");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "IPVS sysctls changed behind Shoal's back cannot be set again")
            }
        }
    }

    fn sysctl_pairs(&self) -> Vec<(&str, &str)> {
        self.sysctls.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    /// Finds the VIP interface again, making it (a dummy, up) if it is missing.
    fn relink(&mut self) -> Result<(), DataplaneError> {
        let created = self.rtnl.ensure_dummy(&self.interface)?;
        self.rtnl.set_up(&self.interface)?;
        let link = self.rtnl.link(&self.interface)?.ok_or_else(|| {
            DataplaneError::from_errno("find interface", &self.interface, libc::ENODEV)
        })?;
        tracing::warn!(
            interface = %self.interface,
            created,
            index = link.index,
            before = self.ifindex,
            "the VIP interface was deleted or replaced behind Shoal's back; using it again"
        );
        self.ifindex = link.index;
        self.read_prefixes.clear();
        Ok(())
    }

    fn send_vip_run(&mut self, ops: &[&Op]) -> Applied {
        let changes: Vec<(std::net::IpAddr, bool)> = ops
            .iter()
            .filter_map(|op| match op {
                Op::AddVip(ip) => Some((*ip, true)),
                Op::DelVip(ip) => Some((*ip, false)),
                _ => None,
            })
            .collect();
        let mut applied = Applied::default();
        let read = &self.read_prefixes;
        let results = match self.rtnl.set_addresses_read(self.ifindex, &changes, read) {
            Ok(r) => r,
            Err(e) => {
                applied.refused.push((None, e));
                return applied;
            }
        };
        for (i, (op, result)) in ops.iter().zip(results).enumerate() {
            match result {
                Ok(_) => applied.ok += 1,
                Err(e) => {
                    tracing::warn!(op = %op, error = %e, "VIP op failed");
                    applied.refused.push((Some(i), e));
                }
            }
        }
        applied
    }

    /// Send a run of IPVS ops in batches; success count and each refusal (by index in the
    /// run), naming its op.
    fn apply_ipvs_run(&mut self, ops: &[&Op]) -> Applied {
        let mut applied = Applied::default();
        let mut reqs = Vec::with_capacity(ops.len());
        let mut sent = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter().enumerate() {
            match self.encode(op) {
                Ok(r) => {
                    reqs.push(r);
                    sent.push(i);
                }
                Err(e) => applied.refused.push((Some(i), e)),
            }
        }
        let codes = match self.genl.transact(&reqs) {
            Ok(c) => c,
            Err(e) => {
                applied.refused.push((None, e));
                return applied;
            }
        };
        self.messages_sent += reqs.len() as u64;
        for (i, code) in sent.into_iter().zip(codes) {
            if code == 0 {
                applied.ok += 1;
            } else {
                let e = ops[i].refused(code);
                tracing::warn!(op = %ops[i], error = %e, "IPVS refused op");
                applied.refused.push((Some(i), e));
            }
        }
        applied.refused.sort_by_key(|(i, _)| *i);
        applied
    }
}

impl IpvsDataplane {
    /// Every service with its destinations (sorted by address and port), one service at a
    /// time, then the VIPs on Shoal's interface; `None` when `stop` said so between two
    /// services.
    fn read_each(
        &mut self,
        stop: &dyn Fn() -> bool,
        mut each: impl FnMut(Service, Vec<ObservedDestination>, Stats),
    ) -> Result<Option<BTreeSet<IpAddr>>, DataplaneError> {
        if stop() {
            return Ok(None);
        }
        for payload in self.dump_services()? {
            if stop() {
                return Ok(None);
            }
            let (svc, stats) = wire::parse_service(&payload)?;
            let seq = self.genl.next_seq();
            let bytes = wire::get_dests(&svc.key)?.to_bytes(self.family, seq, self.genl.pid())?;
            let payloads = self.genl.dump(seq, &bytes)?.map_err(|errno| {
                DataplaneError::from_errno("list destinations of", &svc.key.to_string(), errno)
            })?;
            let af = family_of(&svc.key);
            let mut dests = payloads
                .iter()
                .map(|p| wire::parse_dest(p, af))
                .collect::<Result<Vec<_>, _>>()?;
            dests.sort_by(|a, b| {
                (a.destination.addr, a.destination.port)
                    .cmp(&(b.destination.addr, b.destination.port))
            });
            each(svc, dests, stats);
        }
        self.read_prefixes = self.rtnl.prefixed_addresses(self.ifindex)?;
        Ok(Some(self.read_prefixes.keys().copied().collect()))
    }
}

impl Dataplane for IpvsDataplane {
    fn kind(&self) -> &'static str {
        "ipvs"
    }

    fn read(&mut self) -> Result<Actual, DataplaneError> {
        Ok(self.read_until(&|| false)?.unwrap_or_default())
    }

    fn read_until(&mut self, stop: &dyn Fn() -> bool) -> Result<Option<Actual>, DataplaneError> {
        let mut out = Vec::new();
        let vips = self.read_each(stop, |svc, dests, stats| {
            out.push(ObservedService {
                service: Service {
                    destinations: dests.iter().map(|d| d.destination.clone()).collect(),
                    ..svc
                },
                destinations: dests,
                stats,
            })
        })?;
        Ok(vips.map(|vips| Actual {
            services: out,
            vips,
        }))
    }

    fn read_view(&mut self) -> Result<View, DataplaneError> {
        let mut services = BTreeMap::new();
        let vips = self
            .read_each_until(&|| false, &mut |s| {
                services.insert(s.key.clone(), s);
            })?
            .unwrap_or_default();
        Ok(View { services, vips })
    }

    fn read_each_until(
        &mut self,
        stop: &dyn Fn() -> bool,
        each: &mut dyn FnMut(Service),
    ) -> Result<Option<BTreeSet<IpAddr>>, DataplaneError> {
        // The reads of a reconcile pass (a drift check, or after an error), not the admin
        // API's: a read-back for a user does not write.
        self.keep_sysctls();
        self.read_each(stop, |svc, dests, _| {
            each(Service {
                destinations: dests.into_iter().map(|d| d.destination).collect(),
                ..svc
            })
        })
    }

    /// One GET_SERVICE dump, each reply decoded in place down to its key: the check before a
    /// flush, at 10,000 services, without the 30-odd allocations per service of a full decode.
    fn service_keys(&mut self) -> Result<Vec<ServiceKey>, DataplaneError> {
        let mut keys = Vec::new();
        self.dump_services_each(|p| {
            keys.push(wire::parse_service_key(p)?);
            Ok(())
        })?;
        Ok(keys)
    }

    fn apply(&mut self, op: &Op) -> Result<(), DataplaneError> {
        match self.apply_all(std::slice::from_ref(op)).first_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Sends `ops` in order, as runs: consecutive IPVS ops in generic-netlink batches,
    /// consecutive VIP ops in rtnetlink batches (removing 100 VIPs is one send, not 100 round
    /// trips).
    fn apply_all(&mut self, ops: &[Op]) -> Applied {
        let mut applied = Applied::default();
        let is_vip = |op: &Op| matches!(op, Op::AddVip(_) | Op::DelVip(_));
        let mut start = 0;
        for run in ops.chunk_by(|a, b| is_vip(a) == is_vip(b)) {
            let run_ops: Vec<&Op> = run.iter().collect();
            let done = if is_vip(run_ops[0]) {
                self.apply_vip_run(&run_ops)
            } else {
                self.apply_ipvs_run(&run_ops)
            };
            applied.ok += done.ok;
            let refused = done.refused.into_iter();
            applied
                .refused
                .extend(refused.map(|(i, e)| (i.map(|i| start + i), e)));
            start += run.len();
        }
        applied
    }
}
