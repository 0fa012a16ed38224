//! The static source: a TOML rules file, re-read when its content changes.
//!
//! The file is polled rather than watched with inotify: editors replace files by rename and
//! Kubernetes swaps ConfigMap mounts through symlinks, both of which break file watches, while
//! reading a small file twice a second costs nothing.

use super::SourceStatus;
use crate::rules;
use crate::table::RuleTable;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

pub async fn run(
    path: PathBuf,
    out: watch::Sender<Option<RuleTable>>,
    status: SourceStatus,
    cancel: CancellationToken,
) {
    status.set_running(true);
    let mut last_seen: Option<Vec<u8>> = None;
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) => {
                let message = format!("cannot read rules file {}: {e}", path.display());
                if status.get().last_error.as_deref() != Some(message.as_str()) {
                    tracing::error!(%message, "rules file unreadable; keeping the last good table");
                }
                status.record_error(message);
                last_seen = None;
                continue;
            }
        };
        if last_seen.as_deref() == Some(bytes.as_slice()) {
            continue;
        }
        last_seen = Some(bytes.clone());
        let parsed = std::str::from_utf8(&bytes)
            .map_err(|e| format!("not UTF-8 text: {e}"))
            .and_then(|text| rules::parse(text).map_err(|e| e.to_string()));
        match parsed {
            Ok(table) => {
                tracing::info!(path = %path.display(), services = table.services.len(), "rules loaded");
                status.record_table();
                out.send_replace(Some(table));
            }
            Err(e) => {
                let message = format!("{}: {e}", path.display());
                tracing::error!(%message, "rules file rejected; keeping the last good table");
                status.record_error(message);
            }
        }
    }
    status.set_running(false);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn publishes_good_tables_and_keeps_them_over_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, "[[service]]\nname='a'\nvip='203.0.113.1'\nport=80\n").unwrap();
        let (tx, mut rx) = watch::channel(None);
        let status = SourceStatus::default();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(path.clone(), tx, status.clone(), cancel.clone()));
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow().as_ref().unwrap().services[0].name, "a");

        std::fs::write(&path, "[[service]]\nname=\n").unwrap();
        tokio::time::sleep(POLL_INTERVAL * 3).await;
        let err = status.get().last_error.expect("error recorded");
        assert!(err.contains("line 2"), "{err}");
        assert_eq!(rx.borrow().as_ref().unwrap().services[0].name, "a");
        assert!(!rx.has_changed().unwrap());

        std::fs::write(&path, "[[service]]\nname='b'\nvip='203.0.113.1'\nport=80\n").unwrap();
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow().as_ref().unwrap().services[0].name, "b");
        assert!(status.get().last_error.is_none());
        cancel.cancel();
        task.await.unwrap();
        assert!(!status.get().running);
    }
}
