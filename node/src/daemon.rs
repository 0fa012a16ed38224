//! `shoal run`: wires the mesh, the publisher's source, health, the reconcile loop and the
//! admin API together, and shuts them down in order.
//!
//! Start: dataplane (fails early without IPVS support), mesh, health, reconcile loop,
//! publisher duty, admin API. Stop (SIGTERM/SIGINT): stop publishing, leave the mesh so peers
//! see this node gone at once, optionally clean the dataplane, stop the admin API.

use crate::admin::{self, AdminState};
use crate::cli::{DataplaneKind, SourceFilterKind};
use crate::config::{NodeConfig, Source};
use crate::health::{self, HealthConfig};
use crate::metrics::NodeMetrics;
use crate::reconcile::{self, LoopSettings, ReconcileStatus, SharedProgrammer};
use crate::source::{self, SourceStatus};
use crate::state_dir::StateDir;
use crate::stop_signals::{Hangup, StopSignals};
use crate::table::RuleTable;
use anyhow::Context;
use prometheus_client::registry::Registry;
use shoal_dataplane::{Dataplane, IpvsDataplane, IpvsOptions, MemoryDataplane};
use shoal_gossip::{Mesh, MeshConfig, NodeId, Security, Timing, TlsMaterial};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub async fn run(config: NodeConfig) -> anyhow::Result<()> {
    let security = match &config.tls_dir {
        Some(dir) => {
            let material = TlsMaterial::load_dir(dir)
                .with_context(|| format!("loading TLS material from {}", dir.display()))?;
            // Peers check `gossip.<cluster>`: a certificate of another cluster would start
            // and then only say that no seed answers.
            material.check_cluster(&config.cluster, &dir.join("node.pem"))?;
            if config.cluster_identity_only {
                tracing::warn!(
                    "CLUSTER IDENTITY ONLY: any holder of a cluster certificate can speak for any node id (see docs/security.md)"
                );
                Security::ClusterIdentityOnly(material)
            } else {
                Security::MutualTls(material)
            }
        }
        None => {
            tracing::warn!(
                "RUNNING INSECURE: peers are not authenticated; anyone who reaches {} can join the mesh and rewrite the rules",
                config.listen
            );
            Security::Insecure
        }
    };

    // Before anything else that lasts: a second node on the same folder is refused here.
    let state = state_dir(&config)?;

    // Only the publisher reads the rules file, so a follower given a wrong path started
    // quietly and the mistake showed only at a failover (an audit). Not fatal: the file may
    // be written after the start (a config management run), as a first node's may.
    // A file that does not pass the checks was as quiet (an operator's probe).
    if let Source::Static { rules } = &config.source {
        match crate::rules::load_file(rules) {
            Ok(_) => {}
            Err(crate::rules::LoadError::Read(e)) => tracing::warn!(
                path = %rules.display(),
                error = %e,
                "cannot read the rules file: this node would publish nothing if it became the publisher"
            ),
            Err(crate::rules::LoadError::Rules(e)) => tracing::warn!(
                path = %rules.display(),
                error = %e,
                "the rules file does not pass the checks (`shoal check` says why): if this node became the publisher it would keep the cluster's last table and publish no change until the file is fixed"
            ),
        }
    }

    let bird_lock = crate::announce::lock_bird_folder(&config.announce)?;
    crate::announce::preflight_at(&config.announce, Some(config.listen))?;
    let admin_listener = admin::bind(config.admin)?;
    if let Some(warning) = admin::exposure_warning(config.admin, config.admin_token.is_some()) {
        tracing::warn!("{warning}");
    }
    let dataplane = open_dataplane(&config).await?;
    let firewall: Box<dyn shoal_dataplane::filter::Firewall> = match config.source_filter {
        SourceFilterKind::Nftables => Box::new(shoal_dataplane::filter::nft::NftFirewall::new()),
        SourceFilterKind::Memory => {
            Box::new(shoal_dataplane::filter::memory::MemoryFirewall::default())
        }
    };
    match source_filter_warning(config.dataplane, config.source_filter) {
        Some(warning) => tracing::warn!(source_filter = firewall.kind(), "{warning}"),
        None => tracing::info!(
            source_filter = firewall.kind(),
            "source ranges are kept here"
        ),
    }
    let programmer = SharedProgrammer::new(dataplane, firewall, config.drain);
    programmer.set_ownership(config.ipvs_table);
    let drains_file = state.as_ref().map(StateDir::drains_file);
    if let Some(path) = &drains_file {
        resume_drains(&programmer, path);
    }

    let mut metadata = BTreeMap::new();
    metadata.insert("admin".to_string(), config.admin.to_string());
    let mesh: Mesh<RuleTable> = Mesh::start(MeshConfig {
        node_id: NodeId::new(config.node_id.clone()),
        cluster_id: config.cluster.clone(),
        listen: config.listen,
        seeds: config.seeds.clone(),
        security,
        metadata,
        timing: Timing {
            single_node: config.single_node,
            ..Timing::default()
        },
        epoch_file: state.as_ref().map(StateDir::epoch_file),
        generation_file: state.as_ref().map(StateDir::generation_file),
    })
    .await
    .context("starting the mesh")?;
    tracing::info!(node = %config.node_id, listen = %config.listen, admin = %config.admin, "joined the mesh");

    let cancel = CancellationToken::new();
    let mut registry = Registry::default();
    let metrics = NodeMetrics::new();
    metrics.register(&mut registry);
    let tls_reloads = crate::tls_reload::ReloadMetrics::default();
    tls_reloads.register(&mut registry);
    if let Some(dir) = &config.tls_dir {
        tls_reloads.register_expiry(&mut registry);
        let watcher =
            crate::tls_reload::Watcher::new(dir, &config.cluster, mesh.clone(), tls_reloads);
        tokio::spawn(watcher.run(crate::tls_reload::POLL_INTERVAL, cancel.child_token()));
    }

    let health = health::spawn(
        HealthConfig {
            checkers_per_backend: config.health_checkers,
        },
        Arc::new(health::MeshBoard::new(mesh.clone())),
        mesh.subscribe(),
        &mut registry,
        cancel.child_token(),
    )
    .context("starting the health checker's thread")?;

    let reconcile_status = ReconcileStatus::default();
    let reconcile_task = tokio::spawn(reconcile::run(
        mesh.clone(),
        programmer.clone(),
        health.verdicts(),
        LoopSettings {
            resync_interval: config.resync_interval,
            fault: reconcile::Fault::from_env(),
            drains_file,
        },
        metrics.clone(),
        reconcile_status.clone(),
        cancel.child_token(),
    ));

    let announce_metrics = crate::announce::metrics::AnnounceMetrics::default();
    announce_metrics.register(
        &mut registry,
        matches!(
            config.announce.mode,
            Some(crate::announce::decide::Mode::Bgp)
        ),
    );
    let mut announcer = crate::announce::start(
        &config.announce,
        bird_lock,
        mesh.clone(),
        health.verdicts(),
        reconcile_status.clone(),
        announce_metrics,
    )
    .await
    .context("starting announcements")?;

    let source_status = SourceStatus::default();
    let source_metrics = source::kubernetes::KubernetesMetrics::register(&mut registry);
    registry.register(
        "shoal_source_errors",
        "Distinct problems with the rule source's input (bad, oversized or unreadable file)",
        source_status.errors.clone(),
    );
    if let Source::Static { rules } = &config.source {
        tokio::spawn(crate::rules_drift::watch(
            mesh.clone(),
            rules.clone(),
            cancel.child_token(),
        ));
    }
    let publisher_task = tokio::spawn(crate::publisher_duty::publisher_duty(
        mesh.clone(),
        config.source.clone(),
        source_status.clone(),
        (metrics.clone(), source_metrics),
        cancel.child_token(),
    ));

    let admin_cancel = CancellationToken::new();
    let admin_thread = admin::spawn(
        admin_listener,
        AdminState {
            mesh: mesh.clone(),
            programmer: programmer.clone(),
            health: health.clone(),
            source: source_status,
            reconcile: reconcile_status,
            metrics,
            registry: Arc::new(registry),
            announce: announcer
                .as_ref()
                .map(|a| a.handle.clone())
                .unwrap_or_default(),
            token: config
                .admin_token
                .as_deref()
                .map(|t| match &config.admin_token_file {
                    Some(file) => Arc::new(admin::TokenCheck::from_file(t, file.clone())),
                    None => Arc::new(admin::TokenCheck::new(t)),
                }),
            snapshots: admin::dataplane_snapshots(),
        },
        admin_cancel.clone(),
    )?;

    let mut signals = StopSignals::install(Hangup::Ignored)?;
    let signal = signals.next().await;
    tracing::info!(signal, "stopping");
    // The role goes on at once: the successor starts its source while this node withdraws,
    // drains and leaves (it said it was the publisher until it had left).
    mesh.stand_down(SHUTDOWN_STAND_DOWN, Some("shutting down"));
    if let Some(a) = announcer.as_mut() {
        // Withdraw first, then keep the rules while flows in flight finish.
        a.withdraw().await;
        let drain = config.announce.shutdown_drain;
        tracing::info!(
            drain_s = drain.as_secs_f64(),
            "announcements withdrawn; draining"
        );
        tokio::select! {
            _ = tokio::time::sleep(drain) => {}
            // A second stop signal ends the drain: Ctrl-C a second time, or an operator who
            // cannot wait (with a drain of up to an hour only SIGKILL stopped the node, which
            // leaves the mesh without a word: a probe).
            signal = signals.next() => tracing::warn!(signal, "a second stop signal: ending the drain now"),
        }
    }
    tracing::info!("shutting down: leaving the mesh");
    cancel.cancel();
    if let Some(a) = announcer {
        a.stop().await;
    }
    let _ = publisher_task.await;
    let _ = reconcile_task.await;
    mesh.shutdown().await;
    if config.cleanup_on_exit {
        match programmer.clear().await {
            Ok(n) => tracing::info!(ops = n, "dataplane cleaned up"),
            Err(e) => tracing::error!(error = %e, "dataplane cleanup failed"),
        }
    } else {
        tracing::info!("dataplane rules left in place (use --cleanup-on-exit to remove them)");
    }
    admin_cancel.cancel();
    let _ = tokio::task::spawn_blocking(move || admin_thread.join()).await;
    tracing::info!("stopped");
    // Held until here: the state folder is this process's for its whole life.
    drop(state);
    Ok(())
}

async fn open_dataplane(config: &NodeConfig) -> anyhow::Result<Box<dyn Dataplane>> {
    Ok(match config.dataplane {
        DataplaneKind::Memory => Box::new(MemoryDataplane::new()),
        DataplaneKind::Ipvs => {
            let options = IpvsOptions {
                interface: config.vip_interface.clone(),
                ..IpvsOptions::default()
            };
            let dp = tokio::task::spawn_blocking(move || IpvsDataplane::open(&options))
                .await?
                .context("opening the IPVS dataplane")?;
            Box::new(dp)
        }
    })
}

/// The cause of standing down once a signal asks this node to stop.
const SHUTDOWN_STAND_DOWN: &str = "shutdown";

/// `--state-dir` (created if needed), locked by this process for its whole life; or `None`
/// with a warning.
/// Takes up the drains the previous process kept in the state folder; a file that cannot be
/// read costs only the full drains (the entries at weight 0 drain again), said once.
fn resume_drains(programmer: &SharedProgrammer, path: &std::path::Path) {
    match crate::drains_file::load(path) {
        Ok(saved) if saved.is_empty() => {}
        Ok(saved) => {
            let n = saved.len();
            let now = std::time::Instant::now();
            programmer.resume_drains(crate::drains_file::from_saved(saved, now, crate::unix_ms()));
            tracing::info!(drains = n, file = %path.display(), "resuming the drains of the previous run");
        }
        Err(e) => tracing::warn!(
            error = format!("{e:#}"),
            "cannot read the drains of the previous run; entries at weight 0 drain again in full"
        ),
    }
}

fn state_dir(config: &NodeConfig) -> anyhow::Result<Option<StateDir>> {
    let Some(dir) = &config.state_dir else {
        tracing::warn!("no --state-dir: a publisher that restarts cut off from every peer may stamp a version it stamped before (peers still settle on one copy), and a node restarted with its clock behind, whose seeds do not answer within the join grace, stays invisible until the clock passes its previous start; drains in progress start over after a restart");
        return Ok(None);
    };
    let state = StateDir::lock(dir)?;
    tracing::info!(state_dir = %state.path().display(), "locked the state folder");
    Ok(Some(state))
}

/// The warning owed when services' source ranges reach real clients unenforced: the ipvs
/// dataplane with `--source-filter memory`, accepted without a word while the start's log said
/// "source ranges are enforced here" (an operator's probe). With the memory dataplane nothing
/// reaches clients, so there is nothing to warn about.
fn source_filter_warning(
    dataplane: DataplaneKind,
    filter: SourceFilterKind,
) -> Option<&'static str> {
    (dataplane == DataplaneKind::Ipvs && filter == SourceFilterKind::Memory).then_some(
        "source ranges are NOT enforced: --source-filter memory with the ipvs dataplane keeps them in memory only, so a service with source_ranges (loadBalancerSourceRanges) accepts every client; use --source-filter nftables (the default with ipvs)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unenforced_source_ranges_are_warned_of_only_where_clients_reach() {
        use DataplaneKind::{Ipvs, Memory as MemoryDp};
        use SourceFilterKind::{Memory, Nftables};
        let warning = source_filter_warning(Ipvs, Memory).expect("ipvs without a filter");
        assert!(warning.contains("NOT enforced") && warning.contains("nftables"));
        assert_eq!(source_filter_warning(Ipvs, Nftables), None);
        assert_eq!(source_filter_warning(MemoryDp, Memory), None);
        assert_eq!(source_filter_warning(MemoryDp, Nftables), None);
    }
}
