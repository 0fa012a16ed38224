//! Kernel settings written through /proc/sys, with the root injectable so tests use a temp dir.
//!
//! Under Kubernetes a write can fail for reasons that have nothing to do with Shoal: the
//! container runtimes (containerd, CRI-O) mount `/proc/sys` read-only in every unprivileged
//! container, and the kubelet sets only allow-listed keys from the pod spec. So a failure is
//! classified ([`SysctlCause`]) and turned into advice that names the key, its wanted value and
//! what to do ([`advice`]); [`Sysctl::set_all`] tries every key and reports all failures at once.

use crate::error::DataplaneError;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Sysctl {
    root: PathBuf,
}

impl Default for Sysctl {
    fn default() -> Self {
        Sysctl {
            root: PathBuf::from("/proc/sys"),
        }
    }
}

/// Why one key could not be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysctlCause {
    /// `/proc/sys` is mounted read-only (EROFS): an unprivileged container.
    ReadOnly,
    /// The process may not write it (EACCES/EPERM): not root, or root of a user namespace
    /// that does not own this network namespace.
    Denied,
    /// The key does not exist (ENOENT): a module is not loaded, or the kernel lacks it.
    Missing,
    /// Anything else (the errno is in the message).
    Other,
}

impl SysctlCause {
    pub fn of(e: &io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::EROFS) => SysctlCause::ReadOnly,
            Some(libc::EACCES) | Some(libc::EPERM) => SysctlCause::Denied,
            Some(libc::ENOENT) => SysctlCause::Missing,
            _ => SysctlCause::Other,
        }
    }
}

/// One key that could not be set: `key=want`, what it is now (if readable), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlFailure {
    pub key: String,
    pub want: String,
    pub have: Option<String>,
    pub cause: SysctlCause,
    /// The operating system's words (strerror).
    pub detail: String,
}

impl fmt::Display for SysctlFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.want)?;
        if let Some(have) = &self.have {
            write!(f, " (is {have})")?;
        }
        let why = match self.cause {
            SysctlCause::ReadOnly => "/proc/sys is read-only here",
            SysctlCause::Denied => "permission denied",
            SysctlCause::Missing => "no such key on this kernel",
            SysctlCause::Other => "write failed",
        };
        write!(f, ": {why} ({})", self.detail)
    }
}

/// The ARP settings that make only an interface's own addresses answered and used as ARP
/// sources (`arp_ignore=1`, `arp_announce=2`): what L2 announcement needs on its interface.
pub fn arp_owner_only(interface: &str) -> Vec<(String, String)> {
    let interface = interface.replace('.', "/");
    vec![
        (format!("net.ipv4.conf.{interface}.arp_ignore"), "1".into()),
        (
            format!("net.ipv4.conf.{interface}.arp_announce"),
            "2".into(),
        ),
    ]
}

/// What to do about `failures`: pure, so the words are tested. Names every key with its value.
pub fn advice(failures: &[SysctlFailure]) -> String {
    let assignments: Vec<String> = failures
        .iter()
        .map(|f| format!("{}={}", f.key, f.want))
        .collect();
    let list = assignments.join(" ");
    let has = |c: SysctlCause| failures.iter().any(|f| f.cause == c);
    let mut out = Vec::new();
    if has(SysctlCause::ReadOnly) || has(SysctlCause::Denied) {
        out.push(format!(
            "Set them before shoal starts, in this network namespace. In Kubernetes (containerd \
             and CRI-O mount /proc/sys read-only in unprivileged containers): run `shoal \
             sysctls` in a privileged init container, as manifests/base/statefulset.yaml does, \
             or list them in the pod's securityContext.sysctls ({}), which the kubelet accepts \
             only with --allowed-unsafe-sysctls for these keys; with hostNetwork they are the \
             node's own settings (`sysctl -w {list}` on the node, or the init container). \
             Outside Kubernetes: run as root, or `sysctl -w {list}` first.",
            failures
                .iter()
                .map(|f| format!("{{name: {}, value: \"{}\"}}", f.key, f.want))
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    if has(SysctlCause::Missing) {
        let ipvs = failures
            .iter()
            .any(|f| f.cause == SysctlCause::Missing && f.key.starts_with("net.ipv4.vs."));
        out.push(if ipvs {
            "net.ipv4.vs.* exists only once the ip_vs module is loaded: run `modprobe ip_vs` on \
             the node (a container cannot load modules)."
                .to_string()
        } else {
            "A missing key means a module is not loaded on the node (modprobe it there) or the \
             kernel is too old for it."
                .to_string()
        });
    }
    if has(SysctlCause::Other) {
        out.push(format!("Check `sysctl {list}` on the node."));
    }
    out.join(" ")
}

impl Sysctl {
    pub fn at(root: impl AsRef<Path>) -> Self {
        Sysctl {
            root: root.as_ref().to_path_buf(),
        }
    }

    /// `net.ipv4.vs.sloppy_tcp` -> `<root>/net/ipv4/vs/sloppy_tcp`. As with sysctl(8), a `/`
    /// in the key stands for a `.` in a name (`net.ipv4.conf.eth0/100.rp_filter`).
    pub fn path(&self, key: &str) -> PathBuf {
        let swapped: String = key
            .chars()
            .map(|c| match c {
                '.' => '/',
                '/' => '.',
                c => c,
            })
            .collect();
        self.root.join(swapped)
    }

    pub fn get(&self, key: &str) -> Result<String, DataplaneError> {
        self.read(key)
            .map_err(|e| DataplaneError::io(format!("read sysctl {key}"), e))
    }

    fn read(&self, key: &str) -> io::Result<String> {
        fs::read_to_string(self.path(key)).map(|s| s.trim().to_string())
    }

    /// Write `value` unless it is already set: `Ok(Some(old))` when it changed, `Ok(None)` when
    /// it already had that value (so a key set beforehand, by an init container or the pod's
    /// securityContext.sysctls, needs no write access at all).
    pub fn try_set(&self, key: &str, value: &str) -> Result<Option<String>, SysctlFailure> {
        let failure = |have: Option<String>, e: io::Error| SysctlFailure {
            key: key.to_string(),
            want: value.to_string(),
            have,
            cause: SysctlCause::of(&e),
            detail: e.to_string(),
        };
        let have = self.read(key).map_err(|e| failure(None, e))?;
        if have == value {
            return Ok(None);
        }
        fs::write(self.path(key), value).map_err(|e| failure(Some(have.clone()), e))?;
        Ok(Some(have))
    }

    /// Write `value` unless it is already set; returns whether it changed.
    pub fn set(&self, key: &str, value: &str) -> Result<bool, DataplaneError> {
        self.set_all(&[(key, value)]).map(|c| !c.is_empty())
    }

    /// Try every `(key, value)`; returns the changes as `key=value (was old)`, or one error that
    /// lists every key that could not be set and what to do about it.
    pub fn set_all(&self, wanted: &[(&str, &str)]) -> Result<Vec<String>, DataplaneError> {
        let mut changed = Vec::new();
        let mut failures = Vec::new();
        for (key, value) in wanted {
            match self.try_set(key, value) {
                Ok(Some(old)) => changed.push(format!("{key}={value} (was {old})")),
                Ok(None) => {}
                Err(f) => failures.push(f),
            }
        }
        if failures.is_empty() {
            Ok(changed)
        } else {
            Err(DataplaneError::Sysctls {
                advice: advice(&failures),
                failures,
            })
        }
    }

    /// The keys of `wanted` whose current value differs (or cannot be read), as
    /// `key=want (is have)`; empty when all are set.
    pub fn differing(&self, wanted: &[(&str, &str)]) -> Vec<String> {
        wanted
            .iter()
            .filter_map(|(key, want)| match self.read(key) {
                Ok(have) if have == *want => None,
                Ok(have) => Some(format!("{key}={want} (is {have})")),
                Err(e) => Some(format!("{key}={want} (unreadable: {e})")),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shoal-sysctl-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn set_reports_change_only_once() {
        let dir = scratch("once");
        let file = dir.join("net/ipv4/vs/sloppy_tcp");
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(&file, "0\n").unwrap();
        let s = Sysctl::at(&dir);
        assert!(s.set("net.ipv4.vs.sloppy_tcp", "1").unwrap());
        assert!(!s.set("net.ipv4.vs.sloppy_tcp", "1").unwrap());
        assert_eq!(s.get("net.ipv4.vs.sloppy_tcp").unwrap(), "1");
        let err = s.set("net.ipv4.vs.missing", "1").unwrap_err();
        assert!(err.to_string().contains("net.ipv4.vs.missing"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn set_all_tries_every_key_and_names_each_failure() {
        let dir = scratch("all");
        let vs = dir.join("net/ipv4/vs");
        fs::create_dir_all(&vs).unwrap();
        fs::write(vs.join("sloppy_tcp"), "0\n").unwrap();
        fs::write(vs.join("expire_nodest_conn"), "1\n").unwrap();
        let s = Sysctl::at(&dir);
        let err = s
            .set_all(&[
                ("net.ipv4.vs.conn_reuse_mode", "1"),
                ("net.ipv4.vs.sloppy_tcp", "1"),
                ("net.ipv4.vs.expire_nodest_conn", "1"),
                ("net.ipv4.vs.nope", "2"),
            ])
            .unwrap_err();
        let DataplaneError::Sysctls { failures, advice } = &err else {
            panic!("{err:?}")
        };
        let keys: Vec<&str> = failures.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(keys, ["net.ipv4.vs.conn_reuse_mode", "net.ipv4.vs.nope"]);
        assert!(failures.iter().all(|f| f.cause == SysctlCause::Missing));
        assert!(advice.contains("modprobe ip_vs"), "{advice}");
        // The keys that could be set were set, despite the failures around them.
        assert_eq!(s.get("net.ipv4.vs.sloppy_tcp").unwrap(), "1");
        let text = err.to_string();
        assert!(text.contains("net.ipv4.vs.conn_reuse_mode=1"), "{text}");
        assert!(text.contains("net.ipv4.vs.nope=2"), "{text}");
        assert!(s
            .differing(&[
                ("net.ipv4.vs.sloppy_tcp", "1"),
                ("net.ipv4.vs.expire_nodest_conn", "0")
            ])
            .eq(&["net.ipv4.vs.expire_nodest_conn=0 (is 1)".to_string()]));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keys_map_to_paths_like_sysctl8() {
        let s = Sysctl::at("/r");
        assert_eq!(
            s.path("net.ipv4.vs.sloppy_tcp"),
            PathBuf::from("/r/net/ipv4/vs/sloppy_tcp")
        );
        let [(ignore, one), (announce, two)] =
            <[_; 2]>::try_from(arp_owner_only("eth0.100")).unwrap();
        assert_eq!((one.as_str(), two.as_str()), ("1", "2"));
        assert_eq!(
            s.path(&ignore),
            PathBuf::from("/r/net/ipv4/conf/eth0.100/arp_ignore")
        );
        assert_eq!(
            s.path(&announce),
            PathBuf::from("/r/net/ipv4/conf/eth0.100/arp_announce")
        );
    }

    #[test]
    fn errnos_are_classified() {
        let c = |errno| SysctlCause::of(&io::Error::from_raw_os_error(errno));
        assert_eq!(c(libc::EROFS), SysctlCause::ReadOnly);
        assert_eq!(c(libc::EACCES), SysctlCause::Denied);
        assert_eq!(c(libc::EPERM), SysctlCause::Denied);
        assert_eq!(c(libc::ENOENT), SysctlCause::Missing);
        assert_eq!(c(libc::EIO), SysctlCause::Other);
    }

    #[test]
    fn read_only_advice_names_the_keys_and_both_kubernetes_ways() {
        let f = |key: &str, want: &str| SysctlFailure {
            key: key.into(),
            want: want.into(),
            have: Some("0".into()),
            cause: SysctlCause::ReadOnly,
            detail: "Read-only file system (os error 30)".into(),
        };
        let failures = [
            f("net.ipv4.vs.sloppy_tcp", "1"),
            f("net.ipv4.vs.conn_reuse_mode", "1"),
        ];
        let a = advice(&failures);
        for want in [
            "shoal sysctls",
            "privileged init container",
            "securityContext.sysctls",
            "{name: net.ipv4.vs.sloppy_tcp, value: \"1\"}",
            "--allowed-unsafe-sysctls",
            "hostNetwork",
            "sysctl -w net.ipv4.vs.sloppy_tcp=1 net.ipv4.vs.conn_reuse_mode=1",
        ] {
            assert!(a.contains(want), "advice lacks {want:?}: {a}");
        }
        assert!(!a.contains("modprobe"), "{a}");
        assert_eq!(
            failures[0].to_string(),
            "net.ipv4.vs.sloppy_tcp=1 (is 0): /proc/sys is read-only here \
             (Read-only file system (os error 30))"
        );
    }
}
