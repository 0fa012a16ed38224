//! The static source: a TOML rules file, re-read when its content changes.
//!
//! The file is polled rather than watched with inotify: editors replace files by rename and
//! Kubernetes swaps ConfigMap mounts through symlinks, both of which break file watches, while
//! reading a small file's metadata four times a second costs nothing.

use super::settle::{Settle, Stamp, Verdict, QUIET_PERIOD};
use super::SourceStatus;
use crate::rules;
use crate::table::RuleTable;
use sha2::{Digest, Sha256};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

pub async fn run(
    path: PathBuf,
    out: watch::Sender<Option<RuleTable>>,
    status: SourceStatus,
    cancel: CancellationToken,
) {
    run_every(POLL_INTERVAL, path, out, status, cancel).await
}

/// [`run`] with another poll interval. A file changed in place is read once it has held still
/// for `settle::QUIET_PERIOD` (or one poll, when a poll is longer); a file replaced (renamed
/// over, a symlink swap) at the second poll that shows it.
pub async fn run_every(
    poll_interval: Duration,
    path: PathBuf,
    out: watch::Sender<Option<RuleTable>>,
    status: SourceStatus,
    cancel: CancellationToken,
) {
    status.set_running(true);
    // A replaced file is read at the second poll that shows it (half a poll: any later poll).
    let mut settle = Settle::new(QUIET_PERIOD.max(poll_interval), poll_interval / 2);
    let mut published: Option<[u8; 32]> = None;
    let mut ticker = tokio::time::interval(poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let stamp = match stamp_of(&path).await {
            Ok(stamp) => stamp,
            Err(message) => {
                settle.forget();
                reject(&status, &path, message);
                continue;
            }
        };
        let (now, wall) = (std::time::Instant::now(), std::time::SystemTime::now());
        if settle.observe(stamp, now, wall) != Verdict::Read {
            continue;
        }
        let bytes = match read_bounded(&path).await {
            Ok(bytes) => bytes,
            Err(message) => {
                settle.forget();
                reject(&status, &path, message);
                continue;
            }
        };
        // A writer that started during the read: wait for the file to hold still again.
        if stamp_of(&path).await != Ok(stamp) {
            continue;
        }
        settle.mark_read(stamp);
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        if published == Some(digest) {
            // Back to the published bytes (a backup restored after a bad edit): the input is
            // good again, though there is nothing new to publish.
            status.clear_error();
            continue;
        }
        // Off the runtime: a 2.4 MB file (8,000 services) parsed on one of the daemon's two
        // workers, on every takeover, held back the mesh's control loop (a probe's profile:
        // 13% of a node's samples while the publisher role moved).
        let parsed = tokio::task::spawn_blocking(move || {
            std::str::from_utf8(&bytes)
                .map_err(|e| format!("not UTF-8 text: {e}"))
                .and_then(|text| rules::parse(text).map_err(|e| e.to_string()))
        })
        .await
        .unwrap_or_else(|e| Err(format!("the parse stopped: {e}")));
        match parsed {
            Ok(table) => {
                tracing::info!(path = %path.display(), services = table.services.len(), "rules loaded");
                status.record_table();
                published = Some(digest);
                out.send_replace(Some(table));
            }
            Err(e) => reject(&status, &path, e),
        }
    }
    status.set_running(false);
}

fn reject(status: &SourceStatus, path: &Path, problem: String) {
    let message = format!("{}: {problem}", path.display());
    // One log line per distinct problem, not one per poll.
    if status.get().last_error.as_deref() != Some(message.as_str()) {
        tracing::warn!(%message, "rules file rejected; keeping the last good table");
    }
    status.record_error(message);
}

async fn stamp_of(path: &Path) -> Result<Stamp, String> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| format!("cannot read the rules file: {e}"))?;
    if !meta.is_file() {
        // Named as `shoal check` names it; a swap from a directory to a FIFO is then a new
        // problem, logged and counted again.
        return Err(format!(
            "not a regular file ({})",
            shoal_gossip::small_file::kind(&meta)
        ));
    }
    if meta.len() > rules::MAX_FILE_BYTES {
        return Err(too_large(meta.len()));
    }
    Ok(Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode: meta.ino(),
    })
}

fn too_large(len: u64) -> String {
    format!(
        "{len} bytes is over the {} byte cap on rules files",
        rules::MAX_FILE_BYTES
    )
}

/// Reads at most [`rules::MAX_FILE_BYTES`]: a file that grows past the cap while being read
/// is refused rather than followed.
async fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("cannot read the rules file: {e}"))?;
    let mut bytes = Vec::new();
    file.take(rules::MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| format!("cannot read the rules file: {e}"))?;
    if bytes.len() as u64 > rules::MAX_FILE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "[[service]]\nname='a'\nvip='203.0.113.1'\nport=80\n";
    const AB: &str = "[[service]]\nname='a'\nvip='203.0.113.1'\nport=80\n[[service]]\nname='b'\nvip='203.0.113.2'\nport=80\n";

    struct Running {
        rx: watch::Receiver<Option<RuleTable>>,
        status: SourceStatus,
        cancel: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    fn start(path: &Path, poll: Duration) -> Running {
        let (tx, rx) = watch::channel(None);
        let status = SourceStatus::default();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run_every(
            poll,
            path.to_path_buf(),
            tx,
            status.clone(),
            cancel.clone(),
        ));
        Running {
            rx,
            status,
            cancel,
            task,
        }
    }

    impl Running {
        /// The next table published has these services.
        async fn expect_next_table(&mut self, names: &[&str]) {
            tokio::time::timeout(Duration::from_secs(30), self.rx.changed())
                .await
                .expect("the edited file is published")
                .unwrap();
            assert_eq!(self.names(), names, "{:?}", self.status.get());
        }
        async fn stop(self) {
            self.cancel.cancel();
            self.task.await.unwrap();
            assert!(!self.status.get().running);
        }
        async fn wait_error(&self, what: &str) -> String {
            for _ in 0..400 {
                if let Some(e) = self.status.get().last_error {
                    if e.contains(what) {
                        return e;
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("no error containing {what:?}: {:?}", self.status.get());
        }
        fn names(&self) -> Vec<String> {
            let t = self.rx.borrow();
            t.as_ref()
                .map(|t| t.services.iter().map(|s| s.name.clone()).collect())
                .unwrap_or_default()
        }
    }

    #[tokio::test]
    async fn publishes_good_tables_and_keeps_them_over_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, A).unwrap();
        let mut r = start(&path, POLL_INTERVAL);
        r.rx.changed().await.unwrap();
        assert_eq!(r.names(), ["a"]);

        std::fs::write(&path, "[[service]]\nname=\n").unwrap();
        let err = r.wait_error("line 2").await;
        assert!(err.contains("line 2"), "{err}");
        assert_eq!(r.names(), ["a"]);
        assert!(!r.rx.has_changed().unwrap());

        std::fs::write(&path, "[[service]]\nname='b'\nvip='203.0.113.1'\nport=80\n").unwrap();
        r.rx.changed().await.unwrap();
        assert_eq!(r.names(), ["b"]);
        assert!(r.status.get().last_error.is_none());
        r.stop().await;
    }

    /// A bad edit undone by restoring the exact bytes last published left the error in place
    /// for good (nothing new to publish, so nothing cleared it).
    #[tokio::test]
    async fn restoring_the_last_good_bytes_clears_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, A).unwrap();
        let mut r = start(&path, POLL_INTERVAL);
        r.rx.changed().await.unwrap();
        std::fs::write(&path, "[[service]]\nname=\n").unwrap();
        r.wait_error("line 2").await;
        std::fs::write(&path, A).unwrap();
        for _ in 0..400 {
            if r.status.get().last_error.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(r.status.get().last_error, None);
        assert!(
            !r.rx.has_changed().unwrap(),
            "the same table is not published twice"
        );
        r.stop().await;
    }

    /// Truncates `path` in place (same inode), then after `after_truncate` writes AB edited
    /// (`b` renamed `c`) as two pieces, the first service and then the second, `between` apart.
    async fn rewrite_in_two_pieces(path: &Path, after_truncate: Duration, between: Duration) {
        use std::io::Write;
        let edited = AB.replace("name='b'", "name='c'");
        let mut f = std::fs::File::create(path).unwrap();
        tokio::time::sleep(after_truncate).await;
        f.write_all(&edited.as_bytes()[..A.len()]).unwrap();
        f.flush().unwrap();
        tokio::time::sleep(between).await;
        f.write_all(&edited.as_bytes()[A.len()..]).unwrap();
    }

    /// Issue #15, broken behaviour 4: an empty file was published, removing every service.
    #[tokio::test]
    async fn an_empty_file_is_refused_unless_it_says_no_services() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, AB).unwrap();
        let mut r = start(&path, POLL_INTERVAL);
        r.rx.changed().await.unwrap();
        std::fs::write(&path, "").unwrap();
        r.wait_error("no_services = true").await;
        assert_eq!(r.names(), ["a", "b"]);
        assert!(!r.rx.has_changed().unwrap());

        std::fs::write(&path, "no_services = true\n").unwrap();
        r.rx.changed().await.unwrap();
        assert!(r.names().is_empty());
        r.stop().await;
    }

    /// Issue #15, broken behaviour 4: a file caught between truncation and the end of the
    /// write was published (a 1-service table everywhere). The writer here truncates, then
    /// writes the two services with pauses far shorter than a poll interval: no table but the
    /// complete one may come out.
    #[tokio::test]
    async fn a_file_being_written_is_not_published() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, AB).unwrap();
        let poll = Duration::from_millis(600);
        let mut r = start(&path, poll);
        r.rx.changed().await.unwrap();
        assert_eq!(r.names(), ["a", "b"]);
        for _ in 0..3 {
            let pause = Duration::from_millis(40);
            rewrite_in_two_pieces(&path, pause, pause).await;
            // The first table published after the truncation must be the complete one.
            r.expect_next_table(&["a", "c"]).await;
            std::fs::write(&path, AB).unwrap();
            r.rx.changed().await.unwrap();
            assert_eq!(r.names(), ["a", "b"]);
        }
        r.stop().await;
    }

    /// The audit of 2026-12-06: a file written in two pieces 0.45 s apart (three services,
    /// then the rest) was published with three, removing the others on every node for a
    /// moment, when two equal polls were enough. A pause shorter than the quiet period is not
    /// the end of the file.
    #[tokio::test]
    async fn a_writer_pausing_between_pieces_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, AB).unwrap();
        let mut r = start(&path, POLL_INTERVAL);
        r.rx.changed().await.unwrap();
        assert_eq!(r.names(), ["a", "b"]);
        // Two polls and more see the first piece hold still (one poll was enough before).
        rewrite_in_two_pieces(&path, Duration::ZERO, Duration::from_millis(600)).await;
        r.expect_next_table(&["a", "c"]).await;
        r.stop().await;
    }

    /// Issue #15: a rules path to /dev/zero grew the publisher to 6.5 GB.
    #[tokio::test]
    async fn a_device_or_an_oversized_file_is_refused_without_reading_it() {
        let r = start(Path::new("/dev/zero"), POLL_INTERVAL);
        let err = r
            .wait_error("not a regular file (a character device)")
            .await;
        assert!(err.starts_with("/dev/zero"), "{err}");
        assert!(r.rx.borrow().is_none());
        r.stop().await;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(rules::MAX_FILE_BYTES + 1).unwrap(); // sparse: no disk used
        let r = start(&path, POLL_INTERVAL);
        let err = r.wait_error("byte cap").await;
        assert!(
            err.contains(&(rules::MAX_FILE_BYTES + 1).to_string()),
            "{err}"
        );
        assert!(r.rx.borrow().is_none());
        r.stop().await;
    }

    #[tokio::test]
    async fn bounded_read_refuses_what_grew_past_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(rules::MAX_FILE_BYTES + 10)
            .unwrap();
        let err = read_bounded(&path).await.unwrap_err();
        assert!(err.contains("byte cap"), "{err}");
    }
}
