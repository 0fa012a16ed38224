//! Kernel settings written through /proc/sys, with the root injectable so tests use a temp dir.

use crate::error::DataplaneError;
use std::fs;
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

impl Sysctl {
    pub fn at(root: impl AsRef<Path>) -> Self {
        Sysctl {
            root: root.as_ref().to_path_buf(),
        }
    }

    /// `net.ipv4.vs.sloppy_tcp` -> `<root>/net/ipv4/vs/sloppy_tcp`.
    pub fn path(&self, key: &str) -> PathBuf {
        self.root.join(key.replace('.', "/"))
    }

    pub fn get(&self, key: &str) -> Result<String, DataplaneError> {
        fs::read_to_string(self.path(key))
            .map(|s| s.trim().to_string())
            .map_err(|e| DataplaneError::io(format!("read sysctl {key}"), e))
    }

    /// Write `value` unless it is already set; returns whether it changed.
    pub fn set(&self, key: &str, value: &str) -> Result<bool, DataplaneError> {
        if self.get(key)? == value {
            return Ok(false);
        }
        fs::write(self.path(key), value)
            .map_err(|e| DataplaneError::io(format!("write sysctl {key}={value}"), e))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_reports_change_only_once() {
        let dir = std::env::temp_dir().join(format!("shoal-sysctl-{}", std::process::id()));
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
}
