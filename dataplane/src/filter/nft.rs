//! The source-range filter in nftables, over netlink (`netlink-bindings`' nftables family,
//! generated from the kernel's own spec): no `nft` binary involved.
//!
//! Shoal owns one table, `inet shoal`, with one base chain:
//! ```text
//! table inet shoal {
//!     chain source_ranges {
//!         type filter hook prerouting priority raw; policy accept;
//!         meta nfproto ipv4 ip daddr 203.0.113.1 meta l4proto tcp th dport 80 ip saddr 192.0.2.0/24 accept
//!         meta nfproto ipv4 ip daddr 203.0.113.1 meta l4proto tcp th dport 80 drop
//!     }
//! }
//! ```
//! Prerouting at the raw priority (-300) runs before conntrack and before IPVS (which hooks
//! LOCAL_IN): a refused packet costs no connection entry. The chain's policy is accept and an
//! accept here only ends this chain, so other tables (kube-proxy's, the node's firewall) still
//! see every packet. A change rebuilds the table in one batch (add, delete, add, chain, rules),
//! which the kernel applies atomically: there is no moment without the filter.

use super::expr::{self, Expr, Header, MetaKey};
use super::{FilterRule, Firewall, ReadBack, Verdict};
use crate::error::DataplaneError;
use netlink_bindings::nftables::{
    self, CmpOps, ExprOps, IterableExprAttrs, IterableExprListAttrs, Nfgenmsg, PayloadBase,
    PushExprListAttrs, Registers, VerdictCode,
};
use netlink_bindings::traits::Pusher;
use netlink_socket2::{NetlinkSocket, ReplyError};
use std::ffi::CStr;

/// Shoal's table (family inet) and its chain.
pub const TABLE: &CStr = c"shoal";
pub const CHAIN: &CStr = c"source_ranges";
/// `NF_IP_PRI_RAW`: before conntrack (-200) and long before IPVS.
pub const PRIORITY: i32 = -300;

const NFPROTO_INET: u8 = 1;
const NF_INET_PRE_ROUTING: u32 = 0;
const NF_ACCEPT: u32 = 1;
/// `NFNL_SUBSYS_NFTABLES`, the batch messages' resource id.
const NFNL_SUBSYS_NFTABLES: u16 = 10;

/// nftables in this process's network namespace.
pub struct NftFirewall {
    sock: NetlinkSocket,
}

impl NftFirewall {
    /// The socket opens on first use: a node whose table restricts nothing never needs
    /// nftables at all.
    pub fn new() -> Self {
        NftFirewall {
            sock: NetlinkSocket::new(),
        }
    }

    /// Like [`NftFirewall::new`], and checks that nftables answers here.
    pub fn open() -> Result<Self, DataplaneError> {
        let mut fw = Self::new();
        fw.table_exists()?;
        Ok(fw)
    }

    fn table_exists(&mut self) -> Result<bool, DataplaneError> {
        let mut request = nftables::Request::new().op_gettable_do(&family_header());
        request.encode().push_name(TABLE);
        let result = match self.sock.request(&request) {
            Ok(mut reply) => reply.recv_one().map(|_| ()),
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(()) => Ok(true),
            Err(e) if e.as_io_error().raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(reply_error("read", e)),
        }
    }

    fn chains(&mut self) -> Result<Vec<String>, DataplaneError> {
        let mut request = nftables::Request::new().op_getchain_dump(&family_header());
        request.encode().push_table(TABLE);
        let mut reply = self
            .sock
            .request(&request)
            .map_err(|e| reply_error("list chains of", e.into()))?;
        let mut names = Vec::new();
        while let Some(item) = reply.recv() {
            let (_, attrs) = item.map_err(|e| reply_error("list chains of", e))?;
            if attrs.get_table().ok() != Some(TABLE) {
                continue;
            }
            let name = attrs.get_name().map_err(|e| malformed("chain", e))?;
            names.push(name.to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn send_batch(
        &mut self,
        what: &str,
        build: impl FnOnce(&mut nftables::Chained<'static>),
    ) -> Result<(), DataplaneError> {
        let mut c = nftables::Chained::new(self.sock.reserve_seq(4096));
        let mut batch = Nfgenmsg::new();
        batch.set_res_id(NFNL_SUBSYS_NFTABLES);
        c.request().op_batch_begin_do(&batch);
        build(&mut c);
        c.request().op_batch_end_do(&batch);
        let c = c.finalize();
        self.sock
            .request_chained(&c)
            .map_err(|e| reply_error(what, e.into()))?
            .recv_all()
            .map_err(|e| reply_error(what, e))
    }
}

impl Default for NftFirewall {
    fn default() -> Self {
        Self::new()
    }
}

impl Firewall for NftFirewall {
    fn kind(&self) -> &'static str {
        "nftables"
    }

    fn read(&mut self) -> Result<Option<ReadBack>, DataplaneError> {
        if !self.table_exists()? {
            return Ok(None);
        }
        let mut back = ReadBack {
            foreign: self
                .chains()?
                .iter()
                .filter(|c| c.as_bytes() != CHAIN.to_bytes())
                .count(),
            ..ReadBack::default()
        };
        let mut request = nftables::Request::new().op_getrule_dump(&family_header());
        request.encode().push_table(TABLE);
        let mut reply = self
            .sock
            .request(&request)
            .map_err(|e| reply_error("list rules of", e.into()))?;
        while let Some(item) = reply.recv() {
            let (_, attrs) = item.map_err(|e| reply_error("list rules of", e))?;
            if attrs.get_table().ok() != Some(TABLE) {
                continue;
            }
            if attrs.get_chain().ok() != Some(CHAIN) {
                back.foreign += 1;
                continue;
            }
            let rule = attrs
                .get_expressions()
                .ok()
                .and_then(|list| parse_exprs(&list))
                .and_then(|exprs| expr::decode(&exprs));
            match rule {
                Some(rule) => back.rules.push(rule),
                None => back.foreign += 1,
            }
        }
        Ok(Some(back))
    }

    fn replace(&mut self, rules: &[FilterRule]) -> Result<(), DataplaneError> {
        self.send_batch("replace", |c| {
            push_delete_table(c);
            push_new_table(c);
            c.request()
                .set_create()
                .op_newchain_do(&family_header())
                .encode()
                .push_table(TABLE)
                .push_name(CHAIN)
                .nested_hook()
                .push_num(NF_INET_PRE_ROUTING)
                .push_priority(PRIORITY)
                .end_nested()
                .push_policy(NF_ACCEPT)
                .push_type(c"filter");
            for rule in rules {
                let mut list = c
                    .request()
                    .set_create()
                    .set_append()
                    .op_newrule_do(&family_header())
                    .into_encoder()
                    .push_table(TABLE)
                    .push_chain(CHAIN)
                    .nested_expressions();
                for e in expr::encode(rule) {
                    list = push_expr(list, &e);
                }
                list.end_nested();
            }
        })
    }

    fn remove(&mut self) -> Result<(), DataplaneError> {
        self.send_batch("remove", |c| {
            push_delete_table(c);
        })
    }
}

/// Adds Shoal's table (create without exclusive: an existing one is left as it is).
fn push_new_table(c: &mut nftables::Chained<'static>) {
    c.request()
        .set_create()
        .op_newtable_do(&family_header())
        .encode()
        .push_name(TABLE);
}

/// Deletes Shoal's table whether or not it exists: adding it first makes the delete succeed.
fn push_delete_table(c: &mut nftables::Chained<'static>) {
    push_new_table(c);
    c.request()
        .op_deltable_do(&family_header())
        .encode()
        .push_name(TABLE);
}

fn family_header() -> Nfgenmsg {
    Nfgenmsg {
        nfgen_family: NFPROTO_INET,
        ..Nfgenmsg::new()
    }
}

fn reply_error(what: &str, e: ReplyError) -> DataplaneError {
    let errno = e.as_io_error().raw_os_error();
    let needs_probe = matches!(errno, Some(libc::EPERM) | Some(libc::EACCES));
    let net_admin = if needs_probe { has_net_admin() } else { None };
    error_for(what, errno, &e.to_string(), net_admin)
}

/// What a failed nftables request means, worded for the operator (pure). `net_admin`: whether
/// this process holds CAP_NET_ADMIN (`None`: unknown), asked only for EPERM/EACCES.
///
/// The kernel's answers when nftables is missing are misleading (audit finding C): with
/// nfnetlink loaded but not nf_tables, every request gets EINVAL (nfnetlink finds no nftables
/// subsystem); with neither loaded, a netlink socket of that protocol can be refused with EPERM
/// even to root. So EINVAL to a read, and EPERM to a process that holds CAP_NET_ADMIN, name the
/// missing module; only a process without the capability is told about permissions.
pub fn error_for(
    what: &str,
    errno: Option<i32>,
    text: &str,
    net_admin: Option<bool>,
) -> DataplaneError {
    let op = format!("{what} nftables table inet shoal");
    const MODULE: &str = "load the nf_tables module (modprobe nf_tables; nfnetlink comes with it) \
                          to enforce source ranges; only services with source_ranges need it";
    let unsupported = |why: &str| DataplaneError::Unsupported {
        what: format!("nftables ({op}: {why})"),
        hint: MODULE.into(),
    };
    let is_read = !matches!(what, "replace" | "remove");
    match errno {
        Some(libc::EPROTONOSUPPORT) | Some(libc::EAFNOSUPPORT) => {
            unsupported("the kernel has no nfnetlink protocol")
        }
        Some(libc::EINVAL) if is_read => {
            unsupported("EINVAL, what the kernel answers when nf_tables is not loaded")
        }
        Some(errno) if errno == libc::EPERM || errno == libc::EACCES => match net_admin {
            Some(true) => unsupported(
                "permission denied although this process holds CAP_NET_ADMIN, what the kernel \
                 answers when nfnetlink and nf_tables are not loaded",
            ),
            Some(false) => DataplaneError::Permission { action: op },
            None => DataplaneError::Permission {
                action: format!("{op} (or the nf_tables module is not loaded)"),
            },
        },
        Some(libc::EINVAL) => DataplaneError::Netlink {
            op,
            entry: String::new(),
            errno: libc::EINVAL,
            message: format!("{text} (is the nf_tables module loaded? modprobe nf_tables)"),
        },
        Some(errno) => DataplaneError::Netlink {
            op,
            entry: String::new(),
            errno,
            message: text.to_string(),
        },
        None => DataplaneError::Io {
            context: op,
            source: std::io::Error::other(text.to_string()),
        },
    }
}

/// Whether this process holds CAP_NET_ADMIN in its effective set, from `/proc/self/status`
/// (`None` when that cannot be read).
fn has_net_admin() -> Option<bool> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    net_admin_in_status(&status)
}

/// `CAP_NET_ADMIN` (bit 12) of the `CapEff:` line of a `/proc/<pid>/status` text (pure).
pub fn net_admin_in_status(status: &str) -> Option<bool> {
    const CAP_NET_ADMIN: u32 = 12;
    let line = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    let bits = u64::from_str_radix(line.trim(), 16).ok()?;
    Some(bits & (1 << CAP_NET_ADMIN) != 0)
}

fn malformed(what: &str, e: impl std::fmt::Display) -> DataplaneError {
    DataplaneError::Malformed {
        op: format!("list {what}s of nftables table inet shoal"),
        detail: e.to_string(),
    }
}

fn push_expr<P: Pusher>(list: PushExprListAttrs<P>, e: &Expr) -> PushExprListAttrs<P> {
    const R1: u32 = Registers::Reg1 as u32;
    let elem = list.nested_elem();
    match e {
        Expr::Meta { key } => elem
            .nested_data_meta()
            .push_key(match key {
                MetaKey::Nfproto => nftables::MetaKeys::Nfproto as u32,
                MetaKey::L4proto => nftables::MetaKeys::L4Proto as u32,
            })
            .push_dreg(R1)
            .end_nested()
            .end_nested(),
        Expr::Payload { base, offset, len } => elem
            .nested_data_payload()
            .push_dreg(R1)
            .push_base(match base {
                Header::Network => PayloadBase::NetworkHeader as u32,
                Header::Transport => PayloadBase::TransportHeader as u32,
            })
            .push_offset(*offset)
            .push_len(*len)
            .end_nested()
            .end_nested(),
        Expr::Mask { mask } => elem
            .nested_data_bitwise()
            .push_sreg(R1)
            .push_dreg(R1)
            .push_len(mask.len() as u32)
            .nested_mask()
            .push_value(mask)
            .end_nested()
            .nested_xor()
            .push_value(&vec![0u8; mask.len()])
            .end_nested()
            .end_nested()
            .end_nested(),
        Expr::CmpEq { value } => elem
            .nested_data_cmp()
            .push_sreg(R1)
            .push_op(CmpOps::Eq as u32)
            .nested_data()
            .push_value(value)
            .end_nested()
            .end_nested()
            .end_nested(),
        Expr::Verdict(v) => elem
            .nested_data_immediate()
            .push_dreg(Registers::RegVerdict as u32)
            .nested_data()
            .nested_verdict()
            .push_code(match v {
                Verdict::Accept => VerdictCode::Accept as u32,
                Verdict::Drop => VerdictCode::Drop as u32,
            })
            .end_nested()
            .end_nested()
            .end_nested()
            .end_nested(),
    }
}

/// The expressions of one rule, or `None` when one is not of a kind and shape Shoal writes.
fn parse_exprs(list: &IterableExprListAttrs<'_>) -> Option<Vec<Expr>> {
    list.get_elem().map(|e| parse_expr(&e)).collect()
}

fn parse_expr(e: &IterableExprAttrs<'_>) -> Option<Expr> {
    const R1: u32 = Registers::Reg1 as u32;
    Some(match e.get_data().ok()? {
        ExprOps::Meta(m) => {
            if m.get_dreg().ok()? != R1 {
                return None;
            }
            let key = m.get_key().ok()?;
            Expr::Meta {
                key: if key == nftables::MetaKeys::Nfproto as u32 {
                    MetaKey::Nfproto
                } else if key == nftables::MetaKeys::L4Proto as u32 {
                    MetaKey::L4proto
                } else {
                    return None;
                },
            }
        }
        ExprOps::Payload(p) => {
            if p.get_dreg().ok()? != R1 {
                return None;
            }
            let base = p.get_base().ok()?;
            Expr::Payload {
                base: if base == PayloadBase::NetworkHeader as u32 {
                    Header::Network
                } else if base == PayloadBase::TransportHeader as u32 {
                    Header::Transport
                } else {
                    return None;
                },
                offset: p.get_offset().ok()?,
                len: p.get_len().ok()?,
            }
        }
        ExprOps::Bitwise(b) => {
            if b.get_sreg().ok()? != R1 || b.get_dreg().ok()? != R1 {
                return None;
            }
            if b.get_op()
                .is_ok_and(|op| op != nftables::BitwiseOps::MaskXor as u32)
            {
                return None;
            }
            let mask = b.get_mask().ok()?.get_value().ok()?.to_vec();
            let xor = b.get_xor().ok()?.get_value().ok()?;
            if xor.iter().any(|&x| x != 0) || b.get_len().ok()? as usize != mask.len() {
                return None;
            }
            Expr::Mask { mask }
        }
        ExprOps::Cmp(c) => {
            if c.get_sreg().ok()? != R1 || c.get_op().ok()? != CmpOps::Eq as u32 {
                return None;
            }
            Expr::CmpEq {
                value: c.get_data().ok()?.get_value().ok()?.to_vec(),
            }
        }
        ExprOps::Immediate(i) => {
            if i.get_dreg().ok()? != Registers::RegVerdict as u32 {
                return None;
            }
            let code = i.get_data().ok()?.get_verdict().ok()?.get_code().ok()?;
            Expr::Verdict(if code == VerdictCode::Accept as u32 {
                Verdict::Accept
            } else if code == VerdictCode::Drop as u32 {
                Verdict::Drop
            } else {
                return None;
            })
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Audit finding C(1): `read nftables table inet shoal failed: Invalid argument (os error
    /// 22)` named no cause, and EPERM as root blamed permissions; both mean a missing module.
    #[test]
    fn a_missing_nf_tables_module_is_named_and_permissions_only_blamed_without_the_capability() {
        let text = "Invalid argument (os error 22)";
        let e = error_for("read", Some(libc::EINVAL), text, None).to_string();
        assert!(e.contains("nf_tables") && e.contains("modprobe"), "{e}");
        assert!(!e.contains("permission"), "{e}");

        let root = error_for("read", Some(libc::EPERM), "x", Some(true));
        assert!(matches!(root, DataplaneError::Unsupported { .. }), "{root}");
        let root_text = root.to_string();
        assert!(root_text.contains("modprobe nf_tables"), "{root_text}");
        assert!(!root_text.contains("run as root"), "{root_text}");

        let user = error_for("read", Some(libc::EPERM), "x", Some(false));
        assert!(matches!(user, DataplaneError::Permission { .. }), "{user}");
        assert!(user.to_string().contains("CAP_NET_ADMIN"), "{user}");
        let unknown = error_for("read", Some(libc::EACCES), "y", None).to_string();
        assert!(unknown.contains("CAP_NET_ADMIN") && unknown.contains("nf_tables"));

        for errno in [libc::EPROTONOSUPPORT, libc::EAFNOSUPPORT] {
            let e = error_for("read", Some(errno), "x", None).to_string();
            assert!(e.contains("modprobe nf_tables"), "{e}");
        }
        // In a write, EINVAL can also be a refused value: said as both.
        let e = error_for("replace", Some(libc::EINVAL), text, None).to_string();
        assert!(
            e.contains("Invalid argument") && e.contains("nf_tables"),
            "{e}"
        );
        let e = error_for("read", Some(libc::ENOBUFS), "No buffer space", None);
        assert_eq!(e.errno(), Some(libc::ENOBUFS));
    }

    #[test]
    fn cap_net_admin_is_read_from_the_status_file() {
        let root = "Name:\tshoal\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(net_admin_in_status(root), Some(true));
        let user = "CapEff:\t0000000000000000\n";
        assert_eq!(net_admin_in_status(user), Some(false));
        // CAP_NET_ADMIN alone (what the manifests grant).
        assert_eq!(net_admin_in_status("CapEff:\t0000000000001000"), Some(true));
        assert_eq!(net_admin_in_status("CapEff:\tzz"), None);
        assert_eq!(net_admin_in_status("Name: x"), None);
    }
}
