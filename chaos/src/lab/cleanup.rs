//! Removing labs: one namespace at a time, and everything earlier runs left behind.
//!
//! A namespace with a process inside survives `ip netns del`, so its processes are killed first
//! (never this process itself, which lives in the control namespace).

use super::sys::ip;

/// The harness pid a lab namespace name carries (`sc<pid>-...`), if it is one of ours.
pub fn owner_pid(ns: &str) -> Option<u32> {
    let rest = ns.strip_prefix("sc")?;
    let (pid, tail) = rest.split_once('-')?;
    if tail.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// The lab namespaces among `names` whose harness is gone (or all of ours when `all`).
pub fn stale(names: &[String], alive: impl Fn(u32) -> bool, all: bool) -> Vec<&str> {
    names
        .iter()
        .filter_map(|n| owner_pid(n).map(|pid| (n.as_str(), pid)))
        .filter(|(_, pid)| all || !alive(*pid))
        .map(|(n, _)| n)
        .collect()
}

/// Kills every process in `ns` but this one, then deletes `ns`. Errors are ignored: the point
/// is to remove whatever exists.
pub fn remove_namespace(ns: &str) {
    let me = std::process::id();
    if let Ok(pids) = ip(&["netns", "pids", ns]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            if pid != me {
                let _ = super::sys::signal(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
        // Give the kernel a moment to reap them, so the delete frees the namespace.
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = ip(&["netns", "del", ns]);
}

/// Names of all network namespaces (`ip netns list`, first word of each line).
pub fn list_namespaces() -> Vec<String> {
    ip(&["netns", "list"])
        .map(|out| {
            out.lines()
                .filter_map(|l| l.split_whitespace().next().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes the namespaces (and work folders) of labs whose harness is no longer running, or of
/// every lab when `all`. Returns what was removed.
pub fn cleanup_leftovers(all: bool) -> Vec<String> {
    let names = list_namespaces();
    let me = std::process::id();
    let removed: Vec<String> = stale(&names, |pid| pid == me || pid_alive(pid), all)
        .into_iter()
        .map(String::from)
        .collect();
    for ns in &removed {
        remove_namespace(ns);
    }
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(pid) = name
                .strip_prefix("shoal-chaos-")
                .and_then(|p| p.parse::<u32>().ok())
            {
                if pid != me && (all || !pid_alive(pid)) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_names_count() {
        assert_eq!(owner_pid("sc123-n1"), Some(123));
        assert_eq!(owner_pid("sc123-sw"), Some(123));
        for other in ["sc-n1", "scx1-n1", "sc12", "sc12-", "lab-n1", "docker"] {
            assert_eq!(owner_pid(other), None, "{other}");
        }
    }

    #[test]
    fn stale_skips_running_harnesses_unless_all() {
        let names: Vec<String> = ["sc1-n1", "sc1-sw", "sc2-n1", "other"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            stale(&names, |pid| pid == 2, false),
            vec!["sc1-n1", "sc1-sw"]
        );
        assert_eq!(
            stale(&names, |pid| pid == 2, true),
            vec!["sc1-n1", "sc1-sw", "sc2-n1"]
        );
    }
}
