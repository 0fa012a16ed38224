//! Certificate reload: watches the TLS folder (`--tls-dir`: `ca.pem`, `node.pem`, `node.key`)
//! and hands changed material to the mesh (`Mesh::reload_tls`), so renewed certificates
//! (cert-manager's csi-driver rewrites them before they expire) and CA bundles during a
//! rotation take effect without a restart. New handshakes use the new files; established
//! connections go on.
//!
//! A change is noticed by the files' contents, polled every [`POLL_INTERVAL`]. Material that
//! would be refused at start (bad PEM, key not matching, expired, issued for another cluster,
//! naming another node id) is refused with an error naming the reason, the material in use is
//! kept, and it is tried again only when the files change again (a writer caught half-way is
//! retried on its next change).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use sha2::{Digest, Sha256};
use shoal_gossip::{Document, Mesh, TlsMaterial};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the folder is checked.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);
const FILES: [&str; 3] = ["ca.pem", "node.pem", "node.key"];

/// Reloads done and refused.
#[derive(Clone, Debug, Default)]
pub struct ReloadMetrics {
    pub reloads: Counter,
    pub refusals: Counter,
}

impl ReloadMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "shoal_tls_reloads",
            "TLS material (certificate, key, trusted CAs) reloaded from --tls-dir",
            self.reloads.clone(),
        );
        registry.register(
            "shoal_tls_reload_refusals",
            "Changed TLS material refused (the material in use was kept): see the error log",
            self.refusals.clone(),
        );
    }
}

/// The folder's contents, hashed: what a change is judged by. Unreadable files (missing, not a
/// regular file, above the settings cap) count as a distinct state (their error text), so a file
/// that comes back is noticed.
pub fn fingerprint(dir: &Path) -> [u8; 32] {
    use shoal_gossip::small_file::{read_to_string, SETTINGS_FILE_CAP_BYTES};
    let mut hash = Sha256::new();
    for name in FILES {
        match read_to_string(&dir.join(name), SETTINGS_FILE_CAP_BYTES) {
            Ok(bytes) => {
                hash.update((bytes.len() as u64).to_le_bytes());
                hash.update(&bytes);
            }
            Err(e) => hash.update(format!("unreadable {name}: {e}")),
        }
    }
    hash.finalize().into()
}

/// What one check of the folder did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Reloaded,
    Refused(String),
}

/// Watches `dir` until `cancel`: the state at start is the material already in use.
pub struct Watcher<D: Document> {
    dir: PathBuf,
    /// `--cluster`: a certificate must be valid for its DNS name (`gossip.<cluster>`).
    cluster: String,
    mesh: Mesh<D>,
    seen: [u8; 32],
    metrics: ReloadMetrics,
}

impl<D: Document> Watcher<D> {
    pub fn new(dir: &Path, cluster: &str, mesh: Mesh<D>, metrics: ReloadMetrics) -> Self {
        Watcher {
            dir: dir.to_path_buf(),
            cluster: cluster.to_string(),
            seen: fingerprint(dir),
            mesh,
            metrics,
        }
    }

    /// Checks the folder once; reloads when its contents changed since the last check.
    pub fn check(&mut self) -> Outcome {
        let now = fingerprint(&self.dir);
        if now == self.seen {
            return Outcome::Unchanged;
        }
        self.seen = now;
        let result = TlsMaterial::load_dir(&self.dir)
            .and_then(|m| {
                m.check_cluster(&self.cluster, &self.dir.join("node.pem"))?;
                Ok(m)
            })
            .map_err(|e| e.to_string())
            .and_then(|m| self.mesh.reload_tls(&m).map_err(|e| e.to_string()));
        match result {
            Ok(()) => {
                self.metrics.reloads.inc();
                tracing::info!(dir = %self.dir.display(), "reloaded the TLS material: new handshakes use it, established connections go on");
                Outcome::Reloaded
            }
            Err(e) => {
                self.metrics.refusals.inc();
                tracing::error!(dir = %self.dir.display(), error = %e, "refused the changed TLS material; keeping the one in use");
                Outcome::Refused(e)
            }
        }
    }

    /// Checks every `interval` until `cancel`.
    pub async fn run(mut self, interval: Duration, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            // Reading three small files and building TLS configurations: keep it off the
            // async workers' hot path.
            self = match tokio::task::spawn_blocking(move || {
                self.check();
                self
            })
            .await
            {
                Ok(watcher) => watcher,
                Err(_) => return,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_gossip::certs::{create_ca, issue_node_cert};
    use shoal_gossip::{MeshConfig, NodeId, Security, Timing};

    fn write(dir: &Path, m: &TlsMaterial) {
        std::fs::write(dir.join("ca.pem"), &m.ca_pem).unwrap();
        std::fs::write(dir.join("node.pem"), &m.cert_pem).unwrap();
        std::fs::write(dir.join("node.key"), &m.key_pem).unwrap();
    }

    #[tokio::test]
    async fn changed_files_reload_bad_ones_are_refused_and_retried_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let ca = create_ca("test").unwrap();
        let first = issue_node_cert(&ca, "n0").unwrap();
        write(dir.path(), &first);
        let mesh: Mesh<Vec<u8>> = Mesh::start(MeshConfig {
            node_id: NodeId::new("n0"),
            cluster_id: "test".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            seeds: vec![],
            security: Security::MutualTls(TlsMaterial::load_dir(dir.path()).unwrap()),
            metadata: Default::default(),
            timing: Timing::default(),
            epoch_file: None,
            generation_file: None,
        })
        .await
        .unwrap();
        let metrics = ReloadMetrics::default();
        let mut w = Watcher::new(dir.path(), "test", mesh.clone(), metrics.clone());
        assert_eq!(w.check(), Outcome::Unchanged);

        // A renewed certificate.
        write(dir.path(), &issue_node_cert(&ca, "n0").unwrap());
        assert_eq!(w.check(), Outcome::Reloaded);
        assert_eq!(w.check(), Outcome::Unchanged);

        // Half-written: the new certificate without its key.
        let next = issue_node_cert(&ca, "n0").unwrap();
        std::fs::write(dir.path().join("node.pem"), &next.cert_pem).unwrap();
        match w.check() {
            Outcome::Refused(e) => assert!(e.contains("node.key"), "{e}"),
            other => panic!("a mismatched key was {other:?}"),
        }
        assert_eq!(w.check(), Outcome::Unchanged, "retried without a change");
        std::fs::write(dir.path().join("node.key"), &next.key_pem).unwrap();
        assert_eq!(w.check(), Outcome::Reloaded);

        // Another node's certificate, and an empty file.
        write(dir.path(), &issue_node_cert(&ca, "n1").unwrap());
        assert!(matches!(w.check(), Outcome::Refused(e) if e.contains("n1")));
        std::fs::write(dir.path().join("node.pem"), "").unwrap();
        assert!(matches!(w.check(), Outcome::Refused(e) if e.contains("node.pem")));

        // A whole folder (CA included) issued for another cluster: every peer would refuse it.
        write(
            dir.path(),
            &issue_node_cert(&create_ca("other").unwrap(), "n0").unwrap(),
        );
        match w.check() {
            Outcome::Refused(e) => assert!(
                e.contains(&dir.path().join("node.pem").display().to_string())
                    && e.contains("cluster \"other\"")
                    && e.contains("\"test\" (--cluster)"),
                "{e}"
            ),
            other => panic!("a certificate of another cluster was {other:?}"),
        }
        assert_eq!(metrics.reloads.get(), 2);
        assert_eq!(metrics.refusals.get(), 4);
        mesh.shutdown().await;
    }
}
