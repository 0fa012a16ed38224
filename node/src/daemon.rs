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
use crate::source::{self, SourceExit, SourceStatus};
use crate::state_dir::StateDir;
use crate::table::RuleTable;
use anyhow::Context;
use prometheus_client::registry::Registry;
use shoal_dataplane::{Dataplane, IpvsDataplane, IpvsOptions, MemoryDataplane};
use shoal_gossip::{Mesh, MeshConfig, NodeId, Role, Security, Timing, TlsMaterial};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
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
    let publisher_task = tokio::spawn(publisher_duty(
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

    wait_for_signal().await?;
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
        tokio::time::sleep(drain).await;
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

/// The publisher duty's cause of standing down (`Mesh::stand_down`): its Kubernetes source
/// cannot use the API server, it cannot write its epoch file, or another publisher it cannot
/// see stamps over its tables ([`Contest`]).
const SOURCE_STAND_DOWN: &str = "source";
/// The cause of standing down once a signal asks this node to stop.
const SHUTDOWN_STAND_DOWN: &str = "shutdown";
/// How long a publisher may fail to write its epoch file before it stands down, so another
/// node publishes (an unwritable state folder kept the role and published nothing; an audit).
const PUBLISH_GIVE_UP: Duration = Duration::from_secs(10);

/// Since when the publishes have failed for the epoch file (time as an argument).
#[derive(Debug, Default)]
struct EpochFileFailing {
    since: Option<tokio::time::Instant>,
}

impl EpochFileFailing {
    /// Notes a failed publish; true once the epoch file has failed every publish for
    /// `PUBLISH_GIVE_UP`. Other failures (a document too large, the role moving) are not this
    /// node's storage and would fail on any publisher: they reset nothing and give up nothing.
    fn gives_up(&mut self, error: &shoal_gossip::PublishError, now: tokio::time::Instant) -> bool {
        if !matches!(error, shoal_gossip::PublishError::EpochFile { .. }) {
            return false;
        }
        let since = *self.since.get_or_insert(now);
        now.saturating_duration_since(since) >= PUBLISH_GIVE_UP
    }
}
const PUBLISH_RETRY: Duration = Duration::from_millis(500);

/// At most one republish (the source's table stamped again because the head is not this
/// process's own stamp, `Mesh::needs_republish`) per this interval. The core already makes a
/// republish settle the head (its stamp ranks above it, or it is refused); this bounds what a
/// defect there, or two nodes that each take themselves for the publisher, could cost: the
/// audit's wrapped stamp republished 30,000 times in 20 s.
const MIN_REPUBLISH_INTERVAL: Duration = PUBLISH_RETRY;

/// Spaces republishes at least `MIN_REPUBLISH_INTERVAL` apart (time as an argument).
#[derive(Debug, Default)]
struct RepublishGate {
    last: Option<tokio::time::Instant>,
}

impl RepublishGate {
    /// Whether a republish may go now; if so, counts it.
    fn allow(&mut self, now: tokio::time::Instant) -> bool {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < MIN_REPUBLISH_INTERVAL)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// Republishes over heads another node stamped, this many within [`CONTEST_WINDOW`], mean a
/// publisher this node cannot see stamps too: a partial partition (two nodes cut from each
/// other, both reaching a third) after one of them restarted, so that neither can hear the
/// other's new process first-hand, and each re-stamped the other's heads, about three a second,
/// for as long as the cut lasted (an audit). The node stands down then, held as a source's
/// give-up, so a node both sides can see publishes; a takeover or a healed partition
/// republishes over a foreign head once or twice.
const CONTEST_REPUBLISHES: usize = 4;
const CONTEST_WINDOW: Duration = Duration::from_secs(20);

/// The republishes over other nodes' heads within [`CONTEST_WINDOW`] (time as an argument).
#[derive(Debug, Default)]
struct Contest {
    over_foreign: std::collections::VecDeque<tokio::time::Instant>,
}

impl Contest {
    /// Notes a republish over a head another node stamped; true once that made
    /// [`CONTEST_REPUBLISHES`] within [`CONTEST_WINDOW`].
    fn contested(&mut self, now: tokio::time::Instant) -> bool {
        self.over_foreign
            .retain(|at| now.saturating_duration_since(*at) < CONTEST_WINDOW);
        self.over_foreign.push_back(now);
        self.over_foreign.len() >= CONTEST_REPUBLISHES
    }
}

/// Runs the source while this node is the publisher and publishes every table it produces.
async fn publisher_duty(
    mesh: Mesh<RuleTable>,
    source_config: Source,
    status: SourceStatus,
    (metrics, source_metrics): (NodeMetrics, source::kubernetes::KubernetesMetrics),
    cancel: CancellationToken,
) {
    let mut roles = mesh.role_watch();
    let mut failures = 0u32;
    let mut give_ups = 0u32;
    loop {
        // Wait for the role.
        loop {
            if *roles.borrow_and_update() == Role::Publisher {
                break;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = roles.changed() => if r.is_err() { return },
            }
        }
        tracing::info!("this node is now the publisher; starting the source");
        metrics.takeovers.inc();
        let duty = cancel.child_token();
        let (tx, mut tables) = watch::channel(None);
        let task = source::spawn(
            &source_config,
            tx,
            status.clone(),
            source_metrics.clone(),
            duty.clone(),
        );
        let mut pending: Option<RuleTable> = None;
        let mut shared_error = None;
        let mut retry = tokio::time::interval(PUBLISH_RETRY);
        let mut heads = mesh.subscribe();
        let mut republish = RepublishGate::default();
        let mut contest = Contest::default();
        let mut publish_error: Option<String> = None;
        let mut epoch_file_failing = EpochFileFailing::default();
        let mut gave_up: Option<String> = None;
        loop {
            if gave_up.is_some() {
                break;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                r = roles.changed() => {
                    if r.is_err() || *roles.borrow_and_update() != Role::Publisher {
                        tracing::info!("lost the publisher role; stopping the source");
                        break;
                    }
                }
                r = tables.changed() => {
                    if r.is_err() { break }
                    pending = tables.borrow_and_update().clone();
                }
                r = heads.changed() => {
                    if r.is_err() { break }
                    heads.borrow_and_update();
                }
                _ = retry.tick() => {}
            }
            // The head is not the table this process last stamped: another node's (two
            // publishers during a split, a simultaneous start), or this id's from an earlier
            // process (a stale member back after a restart with a wiped state folder), or an
            // earlier term's. Stamp the source's table again so that it is the head. Checked
            // at every wake (the retry tick included), not only when the held document changes:
            // the head a publisher sees may never be adopted before it is superseded.
            if pending.is_none()
                && tables.borrow().is_some()
                && mesh.needs_republish()
                && republish.allow(tokio::time::Instant::now())
            {
                let view = mesh.view();
                let head = view.head.map(|h| h.version);
                let foreign = head.as_ref().filter(|h| h.origin != view.self_id);
                match foreign {
                    Some(h) if contest.contested(tokio::time::Instant::now()) => {
                        gave_up = Some(format!(
                            "another publisher, {}, stamped over this node's tables {} times \
                             in {} s (last {h}) and this node does not see it as the publisher: \
                             a partial partition? standing down so that a node both can see \
                             publishes",
                            h.origin,
                            CONTEST_REPUBLISHES,
                            CONTEST_WINDOW.as_secs()
                        ));
                        continue;
                    }
                    _ => {}
                }
                pending = tables.borrow().clone();
                tracing::info!(
                    head = ?head.map(|h| h.to_string()),
                    "the head is not this publisher's own stamp; republishing the source's table"
                );
            }
            status.share_error(&mesh, &mut shared_error);
            if let Some(table) = pending.take() {
                // Moved into the mesh, not copied (at 10,000 Services a copy of the table is
                // tens of MiB); a failed publish retries with the source's newest table.
                let services = table.services.len();
                match mesh.publish(table) {
                    Ok(version) => {
                        metrics.publishes.inc();
                        publish_error = None;
                        epoch_file_failing = EpochFileFailing::default();
                        status.record_publish(None);
                        tracing::info!(%version, services, "published");
                    }
                    Err(e) => {
                        let now = tokio::time::Instant::now();
                        if epoch_file_failing.gives_up(&e, now) {
                            gave_up = Some(format!(
                                "this node cannot publish for {} s: {e}",
                                PUBLISH_GIVE_UP.as_secs()
                            ));
                        }
                        // Retried at the next wake (every PUBLISH_RETRY at least); the same
                        // error is logged once, not at every retry.
                        let message = e.to_string();
                        if publish_error.as_deref() != Some(message.as_str()) {
                            tracing::warn!(error = %message, "publish failed; will retry");
                        } else {
                            tracing::debug!(error = %message, "publish failed again; will retry");
                        }
                        // Shown in /v1/node and gossiped as the source's problem, so every
                        // node's status says why the head stands still (an audit found only
                        // this log line).
                        status.record_publish(Some(message.clone()));
                        publish_error = Some(message);
                        pending = tables.borrow().clone();
                    }
                }
            }
        }
        duty.cancel();
        status.record_publish(None);
        // Only the publisher's problem is the cluster's; a later publisher shares its own.
        if shared_error.is_some() {
            mesh.delete_app_key(source::ERROR_KEY);
        }
        let mut exit = task.await.unwrap_or(SourceExit::Stopped);
        if cancel.is_cancelled() {
            return;
        }
        // Standing down for the epoch file or a contested role is not the API server's doing:
        // not counted in `shoal_kubernetes_stand_downs_total`, held as long as a source's
        // give-up.
        let not_the_api = gave_up.is_some();
        if let Some(reason) = gave_up {
            exit = SourceExit::GaveUp(reason);
        }
        // A failing source restarts after a backoff; one that cannot reach its API server
        // passes the role on for a while (longer each time in a row) so the next node tries.
        let pause = match exit {
            SourceExit::Stopped => {
                (failures, give_ups) = (0, 0);
                continue;
            }
            SourceExit::Failed(_) => {
                failures += 1;
                source_metrics.source_restarts.inc();
                source::kubernetes::api_health::restart_backoff(failures)
            }
            SourceExit::GaveUp(reason) => {
                give_ups += 1;
                if !not_the_api {
                    source_metrics.stand_downs.inc();
                }
                let hold = source::kubernetes::api_health::hold_after_give_up(give_ups);
                tracing::warn!(%reason, hold_s = hold.as_secs(), "standing down from the publisher role");
                mesh.stand_down(SOURCE_STAND_DOWN, Some(&reason));
                hold
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        mesh.stand_down(SOURCE_STAND_DOWN, None);
    }
}

/// Waits for SIGTERM or SIGINT. SIGHUP is logged and ignored: its default action ended the
/// process at once, without withdrawing or leaving the mesh (an operator's probe: `kill -HUP`,
/// as `systemctl reload` or logrotate send, or a closed terminal), and there is nothing to
/// reload by signal: the two inputs that change while a node runs, the rules file and the
/// certificates, are reloaded when they change.
async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
            _ = hup.recv() => {
                tracing::info!("SIGHUP ignored: the rules file and the certificates are reloaded when they change; stop with SIGTERM");
                continue;
            }
        }
        return Ok(());
    }
}

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

    /// F1 (audit): a republish loop logged 30,197 times in ~20 s. However often the publisher
    /// is woken with a head that is not its own, republishes stay `MIN_REPUBLISH_INTERVAL`
    /// apart.
    #[test]
    fn republishes_are_spaced_however_often_the_publisher_wakes() {
        let start = tokio::time::Instant::now();
        let mut gate = RepublishGate::default();
        let allowed = (0..20_000u64)
            .filter(|ms| gate.allow(start + Duration::from_millis(ms / 1_000)))
            .count();
        // 20,000 wakes over 20 ms: one republish.
        assert_eq!(allowed, 1);
        let mut gate = RepublishGate::default();
        let allowed = (0..20_000u64)
            .filter(|ms| gate.allow(start + Duration::from_millis(*ms)))
            .count();
        // 20 s of a wake every ms: one per interval.
        assert_eq!(allowed as u128, 20_000 / MIN_REPUBLISH_INTERVAL.as_millis());
    }

    /// Republishes over other nodes' heads as a takeover or a healed partition makes them
    /// (once or twice) never contest the role; the war of a partial partition (one every
    /// 0.3-1 s) does within a few seconds, and republishes spread wider than the window never.
    #[test]
    fn only_repeated_republishes_over_foreign_heads_contest_the_role() {
        let start = tokio::time::Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut contest = Contest::default();
        assert!(!contest.contested(at(0)));
        assert!(!contest.contested(at(600)));
        let mut contest = Contest::default();
        let war: Vec<bool> = (0..6).map(|i| contest.contested(at(i * 500))).collect();
        assert_eq!(war, [false, false, false, true, true, true]);
        let mut contest = Contest::default();
        let spread = CONTEST_WINDOW.as_millis() as u64 / (CONTEST_REPUBLISHES as u64 - 1) + 1;
        assert!((0..50).all(|i| !contest.contested(at(i * spread))));
    }

    /// A publisher whose epoch file fails every publish for `PUBLISH_GIVE_UP` stands down (an
    /// audit: it kept the role and published nothing); other failures never make it give up.
    #[test]
    fn only_a_lasting_epoch_file_failure_gives_the_role_up() {
        let start = tokio::time::Instant::now();
        let epoch_file = shoal_gossip::PublishError::EpochFile {
            path: "/state/epoch".into(),
            detail: "Not a directory (os error 20)".into(),
        };
        let too_large = shoal_gossip::PublishError::TooLarge {
            size_bytes: 2,
            max_bytes: 1,
        };
        let mut failing = EpochFileFailing::default();
        assert!(!failing.gives_up(&too_large, start + PUBLISH_GIVE_UP * 5));
        assert!(!failing.gives_up(&epoch_file, start));
        assert!(!failing.gives_up(&epoch_file, start + PUBLISH_GIVE_UP / 2));
        assert!(!failing.gives_up(&too_large, start + PUBLISH_GIVE_UP * 2));
        assert!(failing.gives_up(&epoch_file, start + PUBLISH_GIVE_UP));
    }
}
