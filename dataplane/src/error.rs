//! The one error type of the dataplane, with kernel errnos turned into messages that name the entry.

use std::io;

/// Everything that can go wrong talking to the kernel (or to the in-memory twin, which mimics it).
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The kernel lacks what Shoal needs (IPVS module not loaded, generic netlink family absent, ...).
    #[error("{what} is not available on this node: {hint}")]
    Unsupported { what: String, hint: String },
    /// The process may not change networking (needs CAP_NET_ADMIN, usually root).
    #[error("permission denied while {action}: run as root or grant CAP_NET_ADMIN")]
    Permission { action: String },
    /// The kernel refused one operation.
    #[error("{op} {entry} failed: {message} (errno {errno})")]
    Netlink {
        op: String,
        entry: String,
        errno: i32,
        message: String,
    },
    /// A reply from the kernel that we could not make sense of.
    #[error("malformed netlink reply to {op}: {detail}")]
    Malformed { op: String, detail: String },
    /// A value the caller asked for cannot be expressed (e.g. a scheduler name that is too long).
    #[error("invalid {field} for {entry}: {detail}")]
    Invalid {
        entry: String,
        field: String,
        detail: String,
    },
    /// Kernel settings that could not be written (read-only /proc/sys in a container, no
    /// permission, missing module), each named, with what to do about them.
    #[error("could not set {}: {advice}", failures.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("; "))]
    Sysctls {
        failures: Vec<crate::sysctl::SysctlFailure>,
        advice: String,
    },
    /// The kernel refused some ops of a pass (each was still tried): the first refusal, and
    /// per service refused for what it asks (`Op::refused_for_what_it_asks`), its first.
    #[error("{first}{}", more_refused(*refused))]
    OpsRefused {
        first: Box<DataplaneError>,
        /// How many ops were refused in all.
        refused: usize,
        services: std::collections::BTreeMap<crate::model::ServiceKey, String>,
        /// Per VIP this node's kernel cannot hold (IPv6 disabled on the interface or the host:
        /// `Op::refused_for_what_it_asks`), its refusal: every service on it is refused.
        vips: std::collections::BTreeMap<std::net::IpAddr, String>,
        /// Some other refusal: of a VIP or a flush, of an entry changed behind Shoal's back,
        /// the node's (permission, a shortage), or of a whole batch.
        other: bool,
    },
    /// A local file or socket operation failed (sysctl files, netlink socket).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl DataplaneError {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        let context = context.into();
        if source.kind() == io::ErrorKind::PermissionDenied {
            return DataplaneError::Permission { action: context };
        }
        DataplaneError::Io { context, source }
    }

    /// Map a kernel errno (positive) for `op` on `entry` to an error with a message that says
    /// what it means for IPVS, not just the generic strerror.
    pub fn from_errno(op: &str, entry: &str, errno: i32) -> Self {
        if errno == libc::EPERM || errno == libc::EACCES {
            return DataplaneError::Permission {
                action: format!("{op} {entry}"),
            };
        }
        let message = match errno {
            libc::EEXIST => "it already exists".to_string(),
            libc::ENOENT => "no such entry (deleted outside Shoal?)".to_string(),
            libc::ESRCH => "no such service".to_string(),
            libc::EINVAL => {
                "the kernel rejected a value (unroutable or non-unicast real server, bad flags, \
                 or a tunnel type this kernel lacks)"
                    .to_string()
            }
            libc::EAFNOSUPPORT => "address family not supported (IPv6 IPVS disabled?)".to_string(),
            libc::ENOMEM => "out of kernel memory".to_string(),
            libc::EOPNOTSUPP => "operation not supported by this kernel".to_string(),
            libc::ENODEV => "no such device".to_string(),
            libc::EADDRNOTAVAIL => "address not available".to_string(),
            _ => io::Error::from_raw_os_error(errno).to_string(),
        };
        DataplaneError::Netlink {
            op: op.to_string(),
            entry: entry.to_string(),
            errno,
            message,
        }
    }

    /// The kernel's EACCES to adding an IPv6 VIP: not a permission (a missing capability is
    /// EPERM) but IPv6 disabled on the interface (`disable_ipv6`); "permission denied" sent an
    /// operator looking at capabilities.
    pub fn ipv6_disabled(ip: std::net::IpAddr) -> Self {
        DataplaneError::Netlink {
            op: "add VIP".into(),
            entry: ip.to_string(),
            errno: libc::EACCES,
            message: "IPv6 is disabled on the VIP interface (sysctl net.ipv6.conf.<interface>.\
                      disable_ipv6 = 1, or net.ipv6.conf.all / default when it was made): the \
                      services on this VIP cannot be served by this node"
                .into(),
        }
    }

    /// The errno if this is a kernel refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            DataplaneError::OpsRefused { first, .. } => first.errno(),
            DataplaneError::Netlink { errno, .. } => Some(*errno),
            DataplaneError::Permission { .. } => Some(libc::EPERM),
            _ => None,
        }
    }
}

fn more_refused(refused: usize) -> String {
    match refused {
        0 | 1 => String::new(),
        n => format!(" (and {} more refused ops)", n - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_messages_name_the_entry() {
        let e = DataplaneError::from_errno("add service", "tcp 203.0.113.1:80", libc::EEXIST);
        let text = e.to_string();
        assert!(text.contains("add service"), "{text}");
        assert!(text.contains("203.0.113.1:80"), "{text}");
        assert!(text.contains("already exists"), "{text}");
        assert_eq!(e.errno(), Some(libc::EEXIST));
    }

    #[test]
    fn eperm_is_a_permission_error() {
        let e = DataplaneError::from_errno("add service", "x", libc::EPERM);
        assert!(matches!(e, DataplaneError::Permission { .. }));
        let e = DataplaneError::io(
            "write sysctl",
            io::Error::from(io::ErrorKind::PermissionDenied),
        );
        assert!(matches!(e, DataplaneError::Permission { .. }));
    }
}
