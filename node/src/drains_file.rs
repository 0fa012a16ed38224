//! The drains in progress, kept in the state folder (`drains.json`), so that a restarted node
//! takes them up where they were instead of draining every entry at weight 0 again in full.
//!
//! Deadlines are written in the wall clock (Unix ms: a process's `Instant`s mean nothing to
//! the next one) and read back against the new process's clock. The file is a convenience,
//! not a source of truth: the first pass still checks every entry against the kernel (an entry
//! put back or deleted meanwhile is not drained), and a file that cannot be read only costs
//! the full drains, with a warning that names it.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use shoal_dataplane::{Draining, ServiceKey};
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The file's name in the state folder.
pub const DRAINS_FILE: &str = "drains.json";

/// How often, at most, the file is rewritten while drains keep changing (a rollout): a restart
/// loses at most this much of the newest drains' progress.
pub const WRITE_INTERVAL: Duration = Duration::from_secs(1);

/// One drain as the file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedDrain {
    pub service: ServiceKey,
    /// `None`: the whole service drains.
    pub destination: Option<(IpAddr, u16)>,
    pub due_unix_ms: u64,
}

/// The drains in the wall clock (pure).
pub fn to_saved(
    drains: impl IntoIterator<Item = Draining>,
    now: Instant,
    now_unix_ms: u64,
) -> Vec<SavedDrain> {
    drains
        .into_iter()
        .map(|d| {
            let left = d.due.saturating_duration_since(now).as_millis();
            SavedDrain {
                service: d.service,
                destination: d.destination,
                due_unix_ms: now_unix_ms.saturating_add(u64::try_from(left).unwrap_or(u64::MAX)),
            }
        })
        .collect()
}

/// The saved drains against this process's clock (pure); a deadline already past is due now.
pub fn from_saved(saved: Vec<SavedDrain>, now: Instant, now_unix_ms: u64) -> Vec<Draining> {
    saved
        .into_iter()
        .map(|s| {
            let left = Duration::from_millis(s.due_unix_ms.saturating_sub(now_unix_ms));
            Draining {
                service: s.service,
                destination: s.destination,
                // Beyond what an Instant holds: the reconciler caps it at its own drain.
                due: now.checked_add(left).unwrap_or(now),
            }
        })
        .collect()
}

/// What the file holds, so that it is written only when the drains change, and at most
/// every [`WRITE_INTERVAL`] (pure).
#[derive(Debug)]
pub struct Keeper {
    path: PathBuf,
    /// `None` until the first write: whatever the file held came from the previous process.
    written: Option<Vec<Draining>>,
    last_write: Option<Instant>,
}

/// What [`Keeper::check`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// The file holds these drains.
    Unchanged,
    Now,
    /// Changed, but written less than [`WRITE_INTERVAL`] ago: look again then.
    At(Instant),
}

impl Keeper {
    pub fn new(path: PathBuf) -> Self {
        Keeper {
            path,
            written: None,
            last_write: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn check(&self, drains: &[Draining], now: Instant) -> Write {
        if self.written.as_deref() == Some(drains) {
            return Write::Unchanged;
        }
        match self.last_write.and_then(|t| t.checked_add(WRITE_INTERVAL)) {
            Some(next) if now < next => Write::At(next),
            _ => Write::Now,
        }
    }

    pub fn wrote(&mut self, drains: Vec<Draining>, now: Instant) {
        self.written = Some(drains);
        self.last_write = Some(now);
    }

    /// A write failed: the next try waits for the interval too (no retry on every pass, and
    /// no warning on every pass, while the folder refuses writes).
    pub fn failed(&mut self, now: Instant) {
        self.last_write = Some(now);
    }
}

/// The largest drains file read: 100,000 drains in progress at once (10,000 services of 10
/// destinations) are about 20 MB.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Reads the file; a missing file is no drains. Anything but a regular file under
/// [`MAX_FILE_BYTES`] is refused unread (a symlink to `/dev/zero` grew a starting node by
/// 800 MB a second; a FIFO hung it: the audit of 2026-12-06).
pub fn load(path: &Path) -> anyhow::Result<Vec<SavedDrain>> {
    let text = match shoal_gossip::small_file::read_to_string(path, MAX_FILE_BYTES) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Replaces the file whole (a temporary file renamed over it), so that it holds the old list
/// or the new one whatever happens.
pub fn store(path: &Path, drains: &[SavedDrain]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    serde_json::to_writer(&mut tmp, drains)?;
    tmp.write_all(b"\n")?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_dataplane::model::Protocol;

    fn key(port: u16) -> ServiceKey {
        ServiceKey::Addr {
            addr: IpAddr::from([203, 0, 113, 1]),
            port,
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn deadlines_survive_the_change_of_clock() {
        let t0 = Instant::now();
        let drains = vec![
            Draining {
                service: key(80),
                destination: None,
                due: t0 + Duration::from_secs(30),
            },
            Draining {
                service: key(443),
                destination: Some((IpAddr::from([198, 18, 0, 5]), 8443)),
                due: t0 + Duration::from_millis(1500),
            },
        ];
        let saved = to_saved(drains, t0, 1_000_000);
        assert_eq!(saved[0].due_unix_ms, 1_030_000);
        assert_eq!(saved[1].due_unix_ms, 1_001_500);

        // Read back by a process started 10 s later, whose Instants have another origin.
        let t1 = Instant::now() + Duration::from_secs(5);
        let back = from_saved(saved.clone(), t1, 1_010_000);
        assert_eq!(back[0].due, t1 + Duration::from_secs(20));
        assert_eq!(back[0].destination, None);
        assert_eq!(back[1].due, t1, "a deadline already past is due now");
        assert_eq!(back[1].destination, saved[1].destination);
    }

    #[test]
    fn the_file_is_written_when_the_drains_change_at_most_every_interval() {
        let t0 = Instant::now();
        let mut k = Keeper::new(PathBuf::from("drains.json"));
        assert_eq!(
            k.check(&[], t0),
            Write::Now,
            "the first pass replaces the old file"
        );
        k.wrote(vec![], t0);
        assert_eq!(k.check(&[], t0), Write::Unchanged);
        let one = vec![Draining {
            service: key(80),
            destination: None,
            due: t0 + Duration::from_secs(30),
        }];
        let t1 = t0 + Duration::from_millis(300);
        assert_eq!(k.check(&one, t1), Write::At(t0 + WRITE_INTERVAL));
        assert_eq!(k.check(&one, t0 + WRITE_INTERVAL), Write::Now);
        k.wrote(one.clone(), t0 + WRITE_INTERVAL);
        assert_eq!(k.check(&one, t0 + WRITE_INTERVAL * 5), Write::Unchanged);
        assert_eq!(k.check(&[], t0 + WRITE_INTERVAL * 5), Write::Now);
        let t6 = t0 + WRITE_INTERVAL * 6;
        k.failed(t6);
        assert_eq!(k.check(&[], t6), Write::At(t6 + WRITE_INTERVAL));
        assert_eq!(k.check(&[], t6 + WRITE_INTERVAL), Write::Now);
    }

    #[test]
    fn the_file_round_trips_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DRAINS_FILE);
        assert_eq!(load(&path).unwrap(), vec![], "no file, no drains");
        let saved = vec![SavedDrain {
            service: key(80),
            destination: Some((IpAddr::from([198, 18, 0, 5]), 80)),
            due_unix_ms: 42,
        }];
        store(&path, &saved).unwrap();
        assert_eq!(load(&path).unwrap(), saved);
        store(&path, &[]).unwrap();
        assert_eq!(load(&path).unwrap(), vec![]);

        std::fs::write(&path, "{not json").unwrap();
        let e = format!("{:#}", load(&path).unwrap_err());
        assert!(e.contains(DRAINS_FILE) && e.contains("parsing"), "{e}");
    }

    #[test]
    fn a_device_a_fifo_or_an_oversized_file_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let zero = dir.path().join("zero.json");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let fifo = dir.path().join("fifo.json");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let big = dir.path().join("big.json");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_FILE_BYTES + 1)
            .unwrap();
        for path in [zero, fifo, big] {
            let err = format!("{:#}", load(&path).unwrap_err());
            assert!(err.contains(&path.display().to_string()), "{err}");
        }
        assert!(load(&dir.path().join("missing.json")).unwrap().is_empty());
    }
}
