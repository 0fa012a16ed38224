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
//! The certificate in use is also checked against this node's clock: once it has expired,
//! peers refuse this node's handshakes, and a node cut off that way would elect itself
//! publisher of its own table and call itself ready (an audit). A clock stepped back before
//! the certificate's start cuts the node off the same way (it refuses its peers' certificates,
//! issued as recently, as not valid yet). Either way it stands down instead
//! (`Mesh::stand_down`: never the publisher, not caught up, so not ready and announcing
//! nothing), says why, naming its clock's reading, and takes the role up again once valid
//! material is reloaded or the clock is right again.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sha2::{Digest, Sha256};
use shoal_gossip::{Document, Mesh, TlsMaterial};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// This watcher's cause of standing down (`Mesh::stand_down`); `/readyz` and the announce
/// gate read it ([`out_of_validity`]): a node cut off from its peers is not ready.
const VALIDITY_STAND_DOWN: &str = "certificate";

/// Why this node stands down because its certificate is not valid by its clock (expired, or
/// the clock before its start), if it does: what `/readyz` and the announce gate ask.
pub fn out_of_validity<D: Document>(mesh: &Mesh<D>) -> Option<String> {
    mesh.stand_down_reason(VALIDITY_STAND_DOWN)
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
    /// When the node certificate in use is valid, not before and not after (`None`: unknown).
    validity: Option<(SystemTime, SystemTime)>,
    /// Why it stands down for that, if it does.
    invalid: Option<Invalid>,
}

/// How the certificate in use is out of its validity by this node's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Invalid {
    Expired,
    /// The clock reads before the certificate's start: most likely the clock is wrong.
    NotYetValid,
}

impl<D: Document> Watcher<D> {
    /// `dir` holds the material the mesh started with.
    pub fn new(dir: &Path, cluster: &str, mesh: Mesh<D>, metrics: ReloadMetrics) -> Self {
        let validity = TlsMaterial::load_dir(dir)
            .ok()
            .and_then(|m| m.node_validity());
        let mut w = Watcher {
            dir: dir.to_path_buf(),
            cluster: cluster.to_string(),
            seen: fingerprint(dir),
            mesh,
            metrics,
            validity: None,
            invalid: None,
        };
        w.set_validity(validity);
        w
    }

    fn set_validity(&mut self, validity: Option<(SystemTime, SystemTime)>) {
        self.validity = validity;
        let secs = validity
            .and_then(|(_, not_after)| not_after.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.metrics.cert_expiry.set(secs);
    }

    /// Whether the certificate in use cuts this node off at `now` by its clock, and why.
    fn invalid_at(&self, now: SystemTime) -> Option<(Invalid, String)> {
        let (not_before, not_after) = self.validity?;
        let node_pem = self.dir.join("node.pem");
        let clock = crate::rfc3339(now);
        if now > not_after {
            let reason = format!(
                "this node's certificate expired at {} (this node's clock reads {clock}): \
                 peers refuse it; renew {} (shoal certs issue), or set this node's clock right \
                 if the peers' clocks disagree",
                crate::rfc3339(not_after),
                node_pem.display()
            );
            Some((Invalid::Expired, reason))
        } else if now < not_before {
            let reason = format!(
                "this node's clock reads {clock}, before its certificate's start {}: its clock \
                 is likely wrong (check NTP), and it refuses its peers' certificates, issued as \
                 recently, as not valid yet",
                crate::rfc3339(not_before)
            );
            Some((Invalid::NotYetValid, reason))
        } else {
            None
        }
    }

    /// Stands the node down once the certificate in use is not valid at `now` (expired, or a
    /// clock before its start), and up again when it is (valid material was reloaded, or the
    /// clock is right again). Returns whether it stands down.
    pub fn check_validity(&mut self, now: SystemTime) -> bool {
        let invalid = self.invalid_at(now);
        // Said again only when the kind changes: the reason names the clock, which moves.
        let kind = invalid.as_ref().map(|(kind, _)| *kind);
        if kind != self.invalid {
            match &invalid {
                Some((_, reason)) => {
                    tracing::error!(%reason, "standing down from the publisher role");
                    self.mesh.stand_down(VALIDITY_STAND_DOWN, Some(reason));
                }
                None => {
                    tracing::info!(
                        "the certificate in use is valid again: no longer standing down"
                    );
                    self.mesh.stand_down(VALIDITY_STAND_DOWN, None);
                }
            }
            self.invalid = kind;
        }
        kind.is_some()
    }

    /// Checks the folder once; reloads when its contents changed since the last check.
    pub fn check(&mut self) -> Outcome {
        let outcome = self.check_files();
        self.check_validity(SystemTime::now());
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
                Ok(m.node_validity())
            });
        match result {
            Ok(validity) => {
                self.set_validity(validity);
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
    async fn a_certificate_out_of_validity_by_the_clock_stands_the_node_down_until_valid() {
        let dir = tempfile::tempdir().unwrap();
        let ca = create_ca("test").unwrap();
        write(dir.path(), &issue_node_cert(&ca, "n0").unwrap());
        let mesh = start_mesh(dir.path()).await;
        let metrics = ReloadMetrics::default();
        let mut w = Watcher::new(dir.path(), "test", mesh.clone(), metrics.clone());
        let (_, expires) = w.validity.expect("the certificate's validity");
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
        let stood_down = |mesh: Mesh<Vec<u8>>, with: &'static str| async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                match standing_down(&mesh) {
                    Some(r) if r.contains(with) => break r,
                    _ => {}
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "never stood down: {with}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let lifted = |mesh: Mesh<Vec<u8>>| async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while standing_down(&mesh).is_some() {
                assert!(std::time::Instant::now() < deadline, "still standing down");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        assert!(!w.check_validity(SystemTime::now()));
        let past_expiry = expires + Duration::from_secs(1);
        assert!(w.check_validity(past_expiry));
        let reason = stood_down(mesh.clone(), "certificate expired at").await;
        assert!(reason.contains("node.pem"), "{reason}");
        assert!(
            reason.contains(&crate::rfc3339(past_expiry)),
            "names the clock: {reason}"
        );
        // Said once: the next checks with the same cause change nothing.
        assert!(w.check_validity(past_expiry + POLL_INTERVAL));
        assert_eq!(standing_down(&mesh), Some(reason));
        // Renewed: reloaded, and the node may be elected again.
        write(dir.path(), &issue_node_cert(&ca, "n0").unwrap());
        assert_eq!(w.check_files(), Outcome::Reloaded);
        assert!(!w.check_validity(SystemTime::now()));
        lifted(mesh.clone()).await;
        // A clock stepped back before the certificate's start cuts the node off as surely (it
        // refuses its peers' certificates as not valid yet; an audit): it stands down too, and
        // a clock set right lifts that.
        let (not_before, _) = w.validity.expect("the renewed certificate's validity");
        assert!(w.check_validity(not_before - Duration::from_secs(60)));
        let reason = stood_down(mesh.clone(), "before its certificate's start").await;
        assert!(reason.contains("check NTP"), "{reason}");
        assert!(!w.check_validity(SystemTime::now()));
        lifted(mesh.clone()).await;
        mesh.shutdown().await;
    }
}
