//! The Kubernetes source: Services of our loadBalancerClass and their EndpointSlices -> rule table.
//!
//! Runs only on the publisher: the daemon calls [`run`] when this node gains the role and
//! cancels it when the role moves, and the kube client is created inside, so other replicas
//! never open a connection to the API server. Pure parts: [`annotations`] (the `shoal.io/...`
//! settings), [`vip`] (assignment and conflicts), [`translate`] (objects -> table and
//! problems), [`cache`] (watch events -> objects). Shell: [`watch`] (the loop) and [`status`]
//! (status write-back and Events). See docs/kubernetes.md.

pub mod annotations;
pub mod cache;
pub mod status;
pub mod translate;
pub mod vip;
pub mod watch;

use crate::table::RuleTable;
use anyhow::Context;
use std::path::PathBuf;
use tokio::sync::watch as channel;
use tokio_util::sync::CancellationToken;

pub const DEFAULT_LOAD_BALANCER_CLASS: &str = "shoal.io/lb";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// Only Services with this `spec.loadBalancerClass` are served.
    pub load_balancer_class: String,
    /// CIDRs VIPs are allocated from when a Service does not ask for one.
    pub vip_pools: Vec<String>,
    /// A kubeconfig file; without it the in-cluster config (or `KUBECONFIG`) is used.
    pub kubeconfig: Option<PathBuf>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            load_balancer_class: DEFAULT_LOAD_BALANCER_CLASS.to_string(),
            vip_pools: Vec::new(),
            kubeconfig: None,
        }
    }
}

/// Builds a client from `cfg.kubeconfig` (or the environment) and runs until `cancel`.
pub async fn run(
    cfg: KubernetesConfig,
    out: channel::Sender<Option<RuleTable>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    // Fail on bad pools before touching the network.
    vip::parse_pools(&cfg.vip_pools)?;
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
    run_with_client(client, cfg, out, cancel).await
}

/// Same as [`run`] with a ready client (tests point it at a fake API server).
pub async fn run_with_client(
    client: kube::Client,
    cfg: KubernetesConfig,
    out: channel::Sender<Option<RuleTable>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    watch::run_loop(client, cfg, out, cancel).await
}
