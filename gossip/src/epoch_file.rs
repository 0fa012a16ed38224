//! The epoch file: an epoch at or above every epoch this node id has stamped, kept across
//! restarts.
//!
//! A restarted publisher that is cut off from every holder of its earlier stamps does not know
//! the epochs it used before; without this file it could stamp one version twice with other
//! content. With it, every stamp of a new process is above every stamp of the old one: the
//! file holds an epoch at or above a version's before that version leaves the node. It is
//! written ahead of need, in the background (a reservation, see `reservation.rs`), so that a
//! new publisher's first stamp does not wait for a synced write.

use crate::error::PublishError;
use crate::version::MAX_EPOCH;
use std::io::Write;
use std::path::{Path, PathBuf};

/// One number and a newline; anything longer is not an epoch file.
const EPOCH_FILE_CAP_BYTES: u64 = 64;

/// The room for takeovers and restarts a file must leave below [`MAX_EPOCH`] at start: every
/// new term uses an epoch and a restart up to `reservation::AHEAD`, so 2^32 is more than a
/// cluster can use; a file above `MAX_EPOCH - MIN_ROOM` is corrupt or hand-edited (a value
/// near `u64::MAX` used to wrap the next stamp to epoch 0).
pub(crate) const MIN_ROOM: u64 = 1 << 32;
/// The highest value an epoch file may hold at start.
pub(crate) const MAX_STORED_EPOCH: u64 = MAX_EPOCH - MIN_ROOM;

/// Where the highest stamped epoch is kept, and the value last written.
#[derive(Debug)]
pub(crate) struct EpochFile {
    path: PathBuf,
    persisted: u64,
}

impl EpochFile {
    /// Reads the file (absent = 0). A file that does not parse is an error naming the path:
    /// guessing 0 could let a publisher stamp an old version again. So is one above
    /// [`MAX_STORED_EPOCH`]: it leaves no room for takeovers before epochs run out.
    pub(crate) fn open(path: &Path) -> Result<Self, crate::MeshError> {
        let persisted = match crate::small_file::read_to_string(path, EPOCH_FILE_CAP_BYTES) {
            Ok(text) => parse(&text).ok_or_else(|| crate::MeshError::Config {
                field: "epoch_file",
                detail: format!(
                    "{}: expected one unsigned number (the highest stamped epoch), found {:?}",
                    path.display(),
                    text.chars().take(40).collect::<String>()
                ),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => {
                return Err(crate::MeshError::Config {
                    field: "epoch_file",
                    detail: format!("{}: {e}", path.display()),
                })
            }
        };
        if persisted > MAX_STORED_EPOCH {
            return Err(crate::MeshError::Config {
                field: "epoch_file",
                detail: format!(
                    "{}: holds epoch {persisted}, above the limit {MAX_STORED_EPOCH}: it leaves \
                     fewer than {MIN_ROOM} epochs for takeovers before epochs end at {MAX_EPOCH} \
                     (a corrupt or hand-edited file? write the cluster's current head epoch, \
                     shown by /v1/cluster on any peer, into it)",
                    path.display()
                ),
            });
        }
        Ok(EpochFile {
            path: path.to_path_buf(),
            persisted,
        })
    }

    pub(crate) fn persisted(&self) -> u64 {
        self.persisted
    }

    /// Makes sure the file holds `epoch` or more: writes a temporary file, syncs it and
    /// renames it over the old one (nothing when it already does).
    pub(crate) fn ensure(&mut self, epoch: u64) -> Result<(), PublishError> {
        if epoch <= self.persisted {
            return Ok(());
        }
        let fail = |e: std::io::Error| PublishError::EpochFile {
            path: self.path.display().to_string(),
            detail: e.to_string(),
        };
        write_number(&self.path, epoch).map_err(fail)?;
        self.persisted = epoch;
        Ok(())
    }
}

/// Writes `n` and a newline to a temporary file, syncs it and renames it over `path`, so the
/// file holds the old number or the new one whatever happens (the generation file too).
pub(crate) fn write_number(path: &Path, n: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(format!("{n}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

pub(crate) fn parse(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_is_zero_and_writes_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("epoch");
        let mut f = EpochFile::open(&path).unwrap();
        assert_eq!(f.persisted(), 0);
        f.ensure(3).unwrap();
        f.ensure(2).unwrap();
        assert_eq!(EpochFile::open(&path).unwrap().persisted(), 3);
    }

    #[test]
    fn garbage_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("epoch");
        std::fs::write(&path, "seven").unwrap();
        let err = EpochFile::open(&path).unwrap_err().to_string();
        assert!(err.contains("epoch") && err.contains("seven"), "{err}");
    }

    /// F1: a file near the u64 maximum wrapped the next stamp to epoch 0. Refused at start,
    /// naming the file and the value; the limit itself is still accepted.
    #[test]
    fn an_epoch_leaving_no_room_for_takeovers_is_refused_naming_file_and_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("epoch");
        for value in [u64::MAX, 18_446_744_073_709_551_600, MAX_STORED_EPOCH + 1] {
            std::fs::write(&path, format!("{value}\n")).unwrap();
            let err = EpochFile::open(&path).unwrap_err().to_string();
            assert!(
                err.contains(&path.display().to_string()) && err.contains(&value.to_string()),
                "{err}"
            );
        }
        std::fs::write(&path, format!("{MAX_STORED_EPOCH}\n")).unwrap();
        assert_eq!(
            EpochFile::open(&path).unwrap().persisted(),
            MAX_STORED_EPOCH
        );
    }

    #[test]
    fn a_device_or_an_oversized_file_is_refused_naming_the_path() {
        let err = EpochFile::open(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/dev/zero") && err.contains("not a regular file"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("epoch");
        std::fs::write(&path, "1".repeat(100)).unwrap();
        let err = EpochFile::open(&path).unwrap_err().to_string();
        assert!(err.contains("epoch") && err.contains("limit"), "{err}");
    }
}
