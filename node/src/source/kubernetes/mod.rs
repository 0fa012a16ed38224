//! The Kubernetes source: Services of our loadBalancerClass and their EndpointSlices -> rule table.
//!
//! Runs only on the publisher: the daemon calls [`run`] when this node gains the role and
//! cancels it when the role moves, and the kube client is created inside, so other replicas
//! never open a connection to the API server. Pure parts: [`annotations`] (the `shoal.io/...`
//! settings), [`pools`] (the `ShoalPool` resource), [`vip`] (assignment, sharing, families,
//! conflicts), [`translate`] (objects -> table and problems), [`slice`] (what of an EndpointSlice is
//! cached), [`cache`] (watch events ->
//! objects), [`api_health`] (when to give the role up). Shell: [`watch`] (the loop),
//! [`heard`] (what the client hears per watched kind), [`status`] (status write-back and
//! Events) and [`metrics`]. See docs/kubernetes.md.

pub mod annotations;
pub mod api_health;
pub mod cache;
pub mod heard;
pub mod metrics;
pub mod pools;
pub mod slice;
pub mod status;
pub mod translate;
pub mod vip;
pub mod watch;

use crate::table::RuleTable;
use anyhow::Context;
use std::path::PathBuf;
use tokio::sync::watch as channel;
use tokio_util::sync::CancellationToken;

pub use metrics::KubernetesMetrics;

pub const DEFAULT_LOAD_BALANCER_CLASS: &str = "shoal.io/lb";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// Only Services with this `spec.loadBalancerClass` are served.
    pub load_balancer_class: String,
    /// Watch only this namespace (an install with a namespaced Role); `None`: the whole cluster.
    pub namespace: Option<String>,
    /// The CIDRs of a namespaced install's pool. A cluster-wide install reads `ShoalPool`
    /// objects instead and must leave this empty.
    pub vip_pools: Vec<String>,
    /// A kubeconfig file; without it the in-cluster config (or `KUBECONFIG`) is used.
    pub kubeconfig: Option<PathBuf>,
    /// When the publisher gives the role up (API server refusing or out of reach, per watched
    /// kind) and when a watch it hears nothing on is restarted.
    pub bounds: api_health::Bounds,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            load_balancer_class: DEFAULT_LOAD_BALANCER_CLASS.to_string(),
            namespace: None,
            vip_pools: Vec::new(),
            kubeconfig: None,
            bounds: api_health::Bounds::default(),
        }
    }
}

impl KubernetesConfig {
    /// Checks the settings before anything runs (called when the config loads); the error
    /// names the setting.
    pub fn check(&self) -> Result<(), SettingProblem> {
        let problem = |setting, message: String| Err(SettingProblem { setting, message });
        match &self.namespace {
            None if !self.vip_pools.is_empty() => problem(
                "vip_pools",
                "a cluster-wide install reads its pools from ShoalPool objects \
                 (kubectl apply a ShoalPool, see docs/kubernetes.md); vip_pools is only for \
                 an install limited to one namespace (namespace / --namespace)"
                    .into(),
            ),
            None => Ok(()),
            Some(ns) => {
                let label_ok = !ns.is_empty()
                    && ns.len() <= 63
                    && ns
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !ns.starts_with('-')
                    && !ns.ends_with('-');
                if !label_ok {
                    return problem(
                        "namespace",
                        format!("{ns:?} is not a namespace name (lower-case letters, digits, '-', at most 63)"),
                    );
                }
                if self.vip_pools.is_empty() {
                    return problem(
                        "vip_pools",
                        format!(
                            "an install limited to namespace {ns} cannot read ShoalPool \
                             objects (its Role is namespaced): give the CIDRs of its VIPs"
                        ),
                    );
                }
                // The setting's pool has no name of its own and a bad one stops the start:
                // the problem's detail alone, not the ShoalPool wording ("pool ignored").
                match pools::from_cidrs(&self.vip_pools, ns) {
                    Ok(_) => Ok(()),
                    Err(p) => problem("vip_pools", p.detail()),
                }
            }
        }
    }
}

/// A Kubernetes source setting that cannot work: which one and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct SettingProblem {
    /// The setting's name (config key; the flag is the same with `-` for `_`).
    pub setting: &'static str,
    pub message: String,
}

/// Why the source stopped.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The API server refused this node or stayed out of reach: another node should try.
    #[error("gave up the publisher role: {0}")]
    GaveUp(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Builds a client from `cfg.kubeconfig` (or the environment) and runs until `cancel`,
/// saying in `status` what the API server's answers were like.
pub async fn run(
    cfg: KubernetesConfig,
    out: channel::Sender<Option<RuleTable>>,
    cancel: CancellationToken,
    metrics: KubernetesMetrics,
    status: crate::source::SourceStatus,
) -> Result<(), SourceError> {
    // Fail on bad settings before touching the network.
    cfg.check().map_err(|e| anyhow::anyhow!(e))?;
    // kube's rustls needs a process-wide provider; a second install is a harmless no-op error.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = match &cfg.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no in-cluster config and no usable KUBECONFIG")?,
    };
    let client = kube::Client::try_from(config).context("building the Kubernetes client")?;
    watch::run_loop(client, cfg, out, cancel, metrics, status).await
}

/// Same as [`run`] with a ready client (tests point it at a fake API server).
pub async fn run_with_client(
    client: kube::Client,
    cfg: KubernetesConfig,
    out: channel::Sender<Option<RuleTable>>,
    cancel: CancellationToken,
    metrics: KubernetesMetrics,
) -> Result<(), SourceError> {
    cfg.check().map_err(|e| anyhow::anyhow!(e))?;
    let status = crate::source::SourceStatus::default();
    watch::run_loop(client, cfg, out, cancel, metrics, status).await
}
