//! The state folder (`--state-dir`): what must survive a restart (the epoch file, the last
//! generation, the drains in progress), owned by one process at a time.
//!
//! Two nodes started with the same `--state-dir` shared its epoch file with no warning: each
//! could overwrite the other's reservation. Now a process holds an exclusive `flock` on the
//! folder's `lock` file for its whole life (the kernel drops it when the process ends, however
//! it ends) and writes its pid there; a second process is refused at start, naming the folder
//! and that pid.

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file's name in the state folder.
pub const LOCK_FILE: &str = "lock";
/// The epoch file's name in the state folder (see `shoal_gossip::MeshConfig::epoch_file`).
pub const EPOCH_FILE: &str = "epoch";
/// The last generation's file (see `shoal_gossip::MeshConfig::generation_file`).
pub const GENERATION_FILE: &str = "generation";

/// The state folder, locked by this process until the value is dropped.
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    _lock: Flock<std::fs::File>,
}

impl StateDir {
    /// Creates the folder if needed and takes its lock, or fails naming the folder and, when
    /// the lock file says, the pid of the process that holds it.
    pub fn lock(dir: &Path) -> anyhow::Result<StateDir> {
        let lock = lock_folder(
            dir,
            Owner {
                lock_file: LOCK_FILE,
                what: "state folder",
                setting: "--state-dir",
                advice: "two nodes must not share a state folder (they would share its epoch \
                         file); give each node its own --state-dir",
            },
        )?;
        Ok(StateDir {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn epoch_file(&self) -> PathBuf {
        self.dir.join(EPOCH_FILE)
    }

    pub fn generation_file(&self) -> PathBuf {
        self.dir.join(GENERATION_FILE)
    }

    /// The drains in progress (see `crate::drains_file`).
    pub fn drains_file(&self) -> PathBuf {
        self.dir.join(crate::drains_file::DRAINS_FILE)
    }
}

/// How a folder's refusal names it: its kind, its setting, and what to do instead.
pub struct Owner {
    /// The lock file's name in the folder (two owners may share a folder under two names).
    pub lock_file: &'static str,
    pub what: &'static str,
    pub setting: &'static str,
    pub advice: &'static str,
}

/// Creates `dir` if needed and takes the exclusive `flock` of its `lock_file` for as long as
/// the value lives (the kernel drops it when the process ends, however it ends), writing this
/// process's pid there; or fails naming the folder and, when the lock file says, the holder.
pub fn lock_folder(dir: &Path, owner: Owner) -> anyhow::Result<Flock<std::fs::File>> {
    let Owner {
        lock_file,
        what,
        setting,
        advice,
    } = owner;
    if let Ok(meta) = std::fs::metadata(dir) {
        anyhow::ensure!(
            meta.is_dir(),
            "the {what} {} ({setting}) is not a folder but a {}",
            dir.display(),
            if meta.file_type().is_file() {
                "file"
            } else {
                "device, socket or FIFO"
            }
        );
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the {what} {} ({setting})", dir.display()))?;
    let path = dir.join(lock_file);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening the lock file {} ({setting})", path.display()))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let holder = holder_pid(&mut file)
                .map(|pid| format!("process {pid}"))
                .unwrap_or_else(|| "another process".to_string());
            anyhow::bail!(
                "the {what} {} ({setting}) is in use by {holder} (it holds {}): {advice}",
                dir.display(),
                path.display()
            );
        }
        Err((_, e)) => {
            return Err(e).with_context(|| {
                format!("locking {} ({setting} {})", path.display(), dir.display())
            })
        }
    };
    // Ours now: say who holds it, for the next process that tries.
    let pid = std::process::id();
    lock.set_len(0)
        .and_then(|()| lock.rewind())
        .and_then(|()| lock.write_all(format!("{pid}\n").as_bytes()))
        .with_context(|| format!("writing this process's pid to {}", path.display()))?;
    Ok(lock)
}

/// The pid the lock file names, if it names one (written by the holder once it had the lock).
fn holder_pid(file: &mut std::fs::File) -> Option<u32> {
    let mut text = String::new();
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file or a device given as the folder said "File exists (os error 17)".
    #[test]
    fn a_path_that_is_not_a_folder_is_named_so() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        for (path, says) in [
            (file.as_path(), "a file"),
            (Path::new("/dev/null"), "device"),
        ] {
            let err = format!("{:#}", StateDir::lock(path).err().unwrap());
            assert!(
                err.contains("is not a folder") && err.contains(says),
                "{err}"
            );
        }
    }

    /// flock belongs to an open file, so a second open in the same process conflicts as a
    /// second process would.
    #[test]
    fn a_second_holder_is_refused_naming_the_folder_and_the_pid_until_the_first_goes() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = StateDir::lock(&state).unwrap();
        assert_eq!(first.epoch_file(), state.join("epoch"));
        let err = format!("{:#}", StateDir::lock(&state).unwrap_err());
        assert!(
            err.contains(&state.display().to_string())
                && err.contains("--state-dir")
                && err.contains(&format!("process {}", std::process::id())),
            "{err}"
        );
        drop(first);
        let again = StateDir::lock(&state).unwrap();
        drop(again);
        // A lock file left with garbage (or empty) by a dead process does not stop a start.
        std::fs::write(state.join(LOCK_FILE), "not a pid").unwrap();
        let _held = StateDir::lock(&state).unwrap();
        std::fs::write(state.join(LOCK_FILE), "").unwrap();
        let err = format!("{:#}", StateDir::lock(&state).unwrap_err());
        assert!(err.contains("another process"), "{err}");
    }

    #[test]
    fn a_state_folder_that_cannot_be_made_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let err = format!("{:#}", StateDir::lock(&file.join("state")).unwrap_err());
        assert!(
            err.contains("--state-dir") && err.contains("file/state"),
            "{err}"
        );
    }
}
