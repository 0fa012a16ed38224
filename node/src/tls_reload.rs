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
//!
//! The certificate in use is also watched for expiry: once it has expired, peers refuse this
//! node's handshakes, and a node cut off that way would elect itself publisher of its own
//! table and call itself ready (an audit). It stands down instead (`Mesh::stand_down`: never
//! the publisher, not caught up, so not ready and announcing nothing), says why, and takes the
//! role up again once renewed material is reloaded.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sha2::{Digest, Sha256};
use shoal_gossip::{Document, Mesh, TlsMaterial};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// This watcher's cause of standing down (`Mesh::stand_down`); `/readyz` and the announce
/// gate read it ([`expired`]): a node its peers refuse is not ready.
const EXPIRED_STAND_DOWN: &str = "certificate";

/// Why this node stands down for its expired certificate, if it does: what `/readyz` and the
/// announce gate ask.
pub fn expired<D: Document>(mesh: &Mesh<D>) -> Option<String> {
    mesh.stand_down_reason(EXPIRED_STAND_DOWN)
}

/// How often the folder is checked.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);
const FILES: [&str; 3] = ["ca.pem", "node.pem", "node.key"];

/// Reloads done and refused.
#[derive(Clone, Debug, Default)]
pub struct ReloadMetrics {
    pub reloads: Counter,
    pub refusals: Counter,
    /// When the node certificate in use expires (Unix seconds).
    pub cert_expiry: Gauge,
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

    /// Only where a certificate is in use (`--tls-dir`): a 0 would read as long expired.
    pub fn register_expiry(&self, registry: &mut Registry) {
        registry.register(
            "shoal_tls_cert_expiry_timestamp_seconds",
            "When this node's certificate in use expires (Unix seconds); past it, peers refuse \
             the node and it stands down",
            self.cert_expiry.clone(),
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
    /// When the node certificate in use expires (`None`: unknown).
    expires: Option<SystemTime>,
}

impl<D: Document> Watcher<D> {
    /// `dir` holds the material the mesh started with.
    pub fn new(dir: &Path, cluster: &str, mesh: Mesh<D>, metrics: ReloadMetrics) -> Self {
        let expires = TlsMaterial::load_dir(dir).ok().and_then(|m| m.not_after());
        let mut w = Watcher {
            dir: dir.to_path_buf(),
            cluster: cluster.to_string(),
            seen: fingerprint(dir),
            mesh,
            metrics,
            expires: None,
        };
        w.set_expiry(expires);
        w
    }

    fn set_expiry(&mut self, expires: Option<SystemTime>) {
        self.expires = expires;
        let secs = expires
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.metrics.cert_expiry.set(secs);
    }

    /// Stands the node down once the certificate in use has expired at `now`, and up again
    /// when it has not (renewed material was reloaded). Returns whether it stands down.
    pub fn check_expiry(&mut self, now: SystemTime) -> bool {
        let expired_at = self.expires.filter(|t| now > *t);
        let standing_down = expired(&self.mesh).is_some();
        match (expired_at, standing_down) {
            (Some(at), false) => {
                let at = time::OffsetDateTime::from(at)
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_else(|_| "an unknown time".into());
                let reason = format!(
                    "this node's certificate expired at {at}: peers refuse it; renew {} \
                     (shoal certs issue)",
                    self.dir.join("node.pem").display()
                );
                tracing::error!(%reason, "standing down from the publisher role");
                self.mesh.stand_down(EXPIRED_STAND_DOWN, Some(&reason));
            }
            (None, true) => {
                tracing::info!("the certificate in use is valid again: no longer standing down");
                self.mesh.stand_down(EXPIRED_STAND_DOWN, None);
            }
            _ => {}
        }
        expired_at.is_some()
    }

    /// Checks the folder once; reloads when its contents changed since the last check.
    pub fn check(&mut self) -> Outcome {
        let outcome = self.check_files();
        self.check_expiry(SystemTime::now());
        outcome
    }

    fn check_files(&mut self) -> Outcome {
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
            .and_then(|m| {
                self.mesh.reload_tls(&m).map_err(|e| e.to_string())?;
                Ok(m.not_after())
            });
        match result {
            Ok(expires) => {
                self.set_expiry(expires);
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

    /// A mesh of one, node `n0` of cluster `test`, with the material in `dir`.
    async fn start_mesh(dir: &Path) -> Mesh<Vec<u8>> {
        Mesh::start(MeshConfig {
            node_id: NodeId::new("n0"),
            cluster_id: "test".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            seeds: vec![],
            security: Security::MutualTls(TlsMaterial::load_dir(dir).unwrap()),
            metadata: Default::default(),
            timing: Timing::default(),
            epoch_file: None,
            generation_file: None,
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn changed_files_reload_bad_ones_are_refused_and_retried_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let ca = create_ca("test").unwrap();
        let first = issue_node_cert(&ca, "n0").unwrap();
        write(dir.path(), &first);
        let mesh = start_mesh(dir.path()).await;
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

    /// A certificate that expires while the node runs stands it down (a node cut off by its
    /// peers' refusals elected itself publisher and said it was ready; an audit), and renewed
    /// material lifts that.
    #[tokio::test]
    async fn an_expired_certificate_in_use_stands_the_node_down_until_renewed() {
        let dir = tempfile::tempdir().unwrap();
        let ca = create_ca("test").unwrap();
        write(dir.path(), &issue_node_cert(&ca, "n0").unwrap());
        let mesh = start_mesh(dir.path()).await;
        let metrics = ReloadMetrics::default();
        let mut w = Watcher::new(dir.path(), "test", mesh.clone(), metrics.clone());
        let expires = w.expires.expect("the certificate's expiry");
        assert_eq!(
            metrics.cert_expiry.get(),
            expires.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
        );
        let standing_down = |mesh: &Mesh<Vec<u8>>| {
            mesh.view()
                .members
                .iter()
                .find(|m| m.id.to_string() == "n0")
                .and_then(|m| m.stand_down.clone())
        };
        assert!(!w.check_expiry(SystemTime::now()));
        assert!(w.check_expiry(expires + Duration::from_secs(1)));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let reason = loop {
            if let Some(r) = standing_down(&mesh) {
                break r;
            }
            assert!(std::time::Instant::now() < deadline, "never stood down");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(reason.contains("certificate expired at"), "{reason}");
        assert!(reason.contains("node.pem"), "{reason}");
        // Renewed: reloaded, and the node may be elected again.
        write(dir.path(), &issue_node_cert(&ca, "n0").unwrap());
        assert_eq!(w.check_files(), Outcome::Reloaded);
        assert!(!w.check_expiry(SystemTime::now()));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while standing_down(&mesh).is_some() {
            assert!(std::time::Instant::now() < deadline, "still standing down");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        mesh.shutdown().await;
    }
}
