//! Reading a small file the node is given at start-up (config file, certificates, epoch file,
//! admin token) with a type and size check.
//!
//! `std::fs::read_to_string` follows whatever the path names: `--config /dev/zero` grew memory
//! until the kernel killed the node, and a FIFO blocked the start forever. Here anything that
//! is not a regular file (after following symlinks, so Kubernetes' mounted Secrets still work)
//! is refused before it is opened, and no more than `cap_bytes` are ever read, even from a file
//! that grows while it is read. Errors are `std::io::Error`s whose message says what was wrong,
//! so callers keep their own error types, which name the path.

use std::io::{Error, ErrorKind, Read};
use std::path::Path;

/// Files a node reads at start-up: config files, PEM certificates and CA bundles.
pub const SETTINGS_FILE_CAP_BYTES: u64 = 1024 * 1024;

/// Reads `path` as UTF-8 text if it is a regular file of at most `cap_bytes`.
pub fn read_to_string(path: &Path, cap_bytes: u64) -> std::io::Result<String> {
    let meta = std::fs::metadata(path)?;
    check(&meta, cap_bytes)?;
    read_opened(path, cap_bytes)
}

/// Opens `path` and reads it if what was opened is a regular file of at most `cap_bytes`.
fn read_opened(path: &Path, cap_bytes: u64) -> std::io::Result<String> {
    // Non-blocking: the path may be swapped for a FIFO between the check above and the open,
    // whose blocking open waits for a writer forever (a probe swapping a token file held the
    // token reload, and with it the node's exit, until someone wrote into the FIFO). For the
    // regular file read below the flag changes nothing.
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)?
    };
    // The path may have been swapped between the two calls: check what was opened.
    check(&file.metadata()?, cap_bytes)?;
    let mut text = String::new();
    file.take(cap_bytes + 1).read_to_string(&mut text)?;
    if text.len() as u64 > cap_bytes {
        return Err(too_large(text.len() as u64, cap_bytes));
    }
    Ok(text)
}

fn check(meta: &std::fs::Metadata, cap_bytes: u64) -> std::io::Result<()> {
    if !meta.is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("not a regular file ({})", kind(meta)),
        ));
    }
    if meta.len() > cap_bytes {
        return Err(too_large(meta.len(), cap_bytes));
    }
    Ok(())
}

fn too_large(len: u64, cap_bytes: u64) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        format!("{len} bytes is over the {cap_bytes}-byte limit"),
    )
}

/// What a path that is not a regular file is, for errors ("a directory", "a FIFO"...).
pub fn kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a plain file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FIFO named `fifo` in `dir`.
    fn mkfifo(dir: &Path) -> std::path::PathBuf {
        let fifo = dir.join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        fifo
    }

    #[test]
    fn devices_directories_and_fifos_are_refused_without_reading() {
        let err = read_to_string(Path::new("/dev/zero"), 1024).unwrap_err();
        assert!(err.to_string().contains("character device"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let err = read_to_string(dir.path(), 1024).unwrap_err();
        assert!(err.to_string().contains("directory"), "{err}");
        let fifo = mkfifo(dir.path());
        // Opening a FIFO for reading would block until a writer came: it must not be opened.
        let err = read_to_string(&fifo, 1024).unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
    }

    /// A FIFO swapped in after the check on the path: its open does not wait for a writer.
    #[test]
    fn a_fifo_swapped_in_after_the_check_is_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = mkfifo(dir.path());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(read_opened(&fifo, 1024).map_err(|e| e.to_string()));
        });
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the open waited for a writer");
        let err = result.unwrap_err();
        assert!(err.contains("FIFO"), "{err}");
    }

    #[test]
    fn the_cap_is_inclusive_and_symlinks_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "abcd").unwrap();
        assert_eq!(read_to_string(&path, 4).unwrap(), "abcd");
        let err = read_to_string(&path, 3).unwrap_err();
        assert!(err.to_string().contains("over the 3-byte limit"), "{err}");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert_eq!(read_to_string(&link, 4).unwrap(), "abcd");
        let missing = read_to_string(&dir.path().join("none"), 4).unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::NotFound);
    }

    /// The certificates go through here: a `ca.pem` that is a device fails at load, named.
    #[test]
    fn tls_material_in_a_device_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("ca.pem")).unwrap();
        let err = crate::TlsMaterial::load_dir(dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ca.pem") && err.contains("character device"),
            "{err}"
        );
    }
}
