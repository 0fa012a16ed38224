//! Bringing client traffic to this replica: BGP announcements through BIRD (ECMP at the
//! router) or L2 ownership (ARP/NDP), gated on being caught up.
//!
//! The decision is pure ([`decide`]); this module is the thin loop around it. Every 100 ms, and
//! at once when the head, the health verdicts or the draining flag change, it computes this
//! node's readiness from the mesh's public API (caught up, head, the applied version reported
//! by the reconcile loop), decides, and brings the kernel to the decision: host routes in the
//! BGP table (BIRD exports them), or VIP addresses on the L2 interface. It then beats the
//! watchdog ([`guard`]), and gossips its report (the `announce` app key) so that every member's
//! `/v1/cluster` shows what each member announces, and so that L2 owners are chosen among the
//! members that say they are ready.

pub mod bird;
mod bird_poll;
pub mod birdctl;
pub mod decide;
pub mod guard;
pub mod l2;
pub mod metrics;
pub mod settings;
mod step;

use crate::health::Verdicts;
use crate::reconcile::ReconcileStatus;
use crate::status::VersionRef;
use crate::table::RuleTable;
use anyhow::Context;
use bird_poll::poll_bird;
pub(crate) use bird_poll::BirdStatus;
use decide::{Inputs, Mode, NodeFacts, Readiness, VipState, Withheld};
use serde::{Deserialize, Serialize};
use settings::AnnounceSettings;
use shoal_dataplane::route::RouteTable;
use shoal_gossip::{Mesh, Role};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use step::Loop;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The gossip app key that carries each member's [`Report`].
pub const REPORT_KEY: &str = "announce";
const STEP: Duration = Duration::from_millis(100);
/// A step that comes this late means the loop (the process) was frozen or starved (sooner
/// with a short watchdog deadline: [`stall_after`]).
const STALL: Duration = Duration::from_millis(500);

/// How late a step must come to count as a stall: [`STALL`], or sooner when the watchdog's
/// deadline is shorter, so that every gap after which the watchdog may have withdrawn the
/// routes is a stall here too. With `freeze_withdraw_ms` 200 the watchdog withdrew after a
/// 250 ms stop that the loop took for no stall: the report listed the VIPs as announced and
/// the routes came back only at the next repair (a probe).
fn stall_after(guard_deadline: Duration) -> Duration {
    STALL.min(guard_deadline.saturating_sub(STEP / 2))
}
/// After a stall, announce nothing for this long: the mesh's own stall check (400 ms) has
/// then put the node back to catching up, and the gate waits for it to catch up again.
const STALL_HOLD: Duration = Duration::from_millis(1500);
/// How long a ready node may lag behind a new head before it withdraws ([`decide::follows_head`]).
const APPLY_GRACE: Duration = Duration::from_secs(2);
/// How often the kernel side is read back and repaired when nothing changed.
const REPAIR_INTERVAL: Duration = Duration::from_secs(2);

/// What one member announces and why not the rest (`/v1/cluster`, gossiped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub mode: Mode,
    pub readiness: Readiness,
    /// The VIPs it announces (BGP) or owns and answers for (L2).
    pub announced: Vec<IpAddr>,
    /// Of `announced`, the VIPs announced only while services removed from the table drain
    /// on this member (they go when the drain ends).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub draining: Vec<IpAddr>,
    /// VIPs it does not announce, with the reason.
    #[serde(default)]
    pub withheld: BTreeMap<IpAddr, String>,
    /// L2: VIPs another member owns.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub owned_elsewhere: BTreeMap<IpAddr, String>,
    /// BGP sessions as BIRD reports them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bgp: Vec<birdctl::Session>,
    /// BGP: set while BIRD does not answer its control socket, naming its last answer
    /// (`not answering since 2026-12-05T15:20:03Z: Connection refused (os error 111)`).
    /// A fixed instant rather than a count of seconds, so the gossiped report changes when
    /// BIRD's state does, not every second while it is down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bird: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
}

impl Report {
    fn new(mode: Mode, interface: Option<String>) -> Self {
        Report {
            mode,
            readiness: Readiness::NoTable,
            announced: vec![],
            draining: vec![],
            withheld: BTreeMap::new(),
            owned_elsewhere: BTreeMap::new(),
            bgp: vec![],
            bird: None,
            interface,
        }
    }
}

/// The latest local report, for the admin API.
#[derive(Clone, Default)]
pub struct AnnounceHandle(Arc<Mutex<Option<Report>>>);

impl AnnounceHandle {
    pub fn get(&self) -> Option<Report> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn set(&self, r: Report) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    }
}

/// Every member's report: others' from gossip, this node's own from `local`.
pub fn reports(mesh: &Mesh<RuleTable>, local: &AnnounceHandle) -> BTreeMap<String, Report> {
    let me = mesh.node_id().to_string();
    let mut out: BTreeMap<String, Report> = mesh
        .app_keys(REPORT_KEY)
        .into_iter()
        .filter(|(id, k, _)| k == REPORT_KEY && id.to_string() != me)
        .filter_map(|(id, _, v)| Some((id.to_string(), serde_json::from_str(&v).ok()?)))
        .collect();
    if let Some(r) = local.get() {
        out.insert(me, r);
    }
    out
}

/// Where the kernel side of a mode lives.
enum Target {
    Bgp { routes: Arc<Mutex<RouteTable>> },
    L2 { iface: Arc<Mutex<l2::L2Interface>> },
}

/// The running announcer.
pub struct Announcer {
    draining: watch::Sender<bool>,
    withdrawn: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
    cancel: CancellationToken,
    supervisor: Option<bird::Supervisor>,
    /// The BIRD state folder's lock, held for the node's life (BGP only).
    _bird_lock: Option<BirdLock>,
    control: Option<PathBuf>,
    pub handle: AnnounceHandle,
}

/// The BIRD state folder, owned by one node for its life ([`lock_bird_folder`]).
pub type BirdLock = nix::fcntl::Flock<std::fs::File>;

/// Takes the BIRD state folder's lock (BGP only), before anything touches BIRD, its config or
/// the routes: a second shoal with this node's BGP settings (the same config started twice on
/// one host) killed the first one's BIRD as "left running", emptied its routes and fought it
/// over the socket (a probe). Not part of [`preflight`], which `shoal check` runs beside a node.
pub fn lock_bird_folder(settings: &AnnounceSettings) -> anyhow::Result<Option<BirdLock>> {
    let Some(bgp) = settings
        .bgp
        .as_ref()
        .filter(|_| settings.mode == Some(Mode::Bgp))
    else {
        return Ok(None);
    };
    crate::state_dir::lock_folder(
        &bgp.state_dir,
        crate::state_dir::Owner {
            // Not the node's `lock`: the two folders may be one.
            lock_file: "bird.lock",
            what: "BIRD state folder",
            setting: "[bgp] state_dir",
            advice: "two nodes must not share one BIRD (each would restart it over the other's \
                     and empty the other's routes); give each node its own [bgp] state_dir",
        },
    )
    .map(Some)
}

/// [`preflight_at`] without the node's address: every check but the router id default.
pub fn preflight(settings: &AnnounceSettings) -> anyhow::Result<()> {
    preflight_at(settings, None)
}

/// Start-up checks that need nothing else running (no mesh), so that a broken announce setup
/// stops the daemon before it joins the mesh instead of after (when its peers would see it
/// appear, then vanish). BGP: the control socket path fits a Unix socket, the router id is set
/// or defaults to `listen`'s IPv4 address (checked only when `listen` is given), `bgp.bird` is
/// BIRD 2, and BIRD accepts the generated config (`bird -p`; the config is written to the state
/// dir). L2: the interface exists. Blocking (runs `bird --version` and `bird -p`, a few ms).
pub fn preflight_at(
    settings: &AnnounceSettings,
    listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    match settings.mode {
        Some(Mode::Bgp) => {
            let bgp = settings
                .bgp
                .as_ref()
                .context("`--announce bgp` needs a [bgp] table in the config file")?;
            let bgp = match listen {
                Some(l) => bird::resolved(bgp, Some(l.ip()))?,
                None => bgp.clone(),
            };
            bird::check(&bgp, &bird::Paths::new(&bgp.state_dir))?;
        }
        Some(Mode::L2) => {
            if let Some(name) = &settings.interface {
                let exists = shoal_dataplane::link::Rtnl::open()
                    .and_then(|mut r| r.link(name))
                    .map(|l| l.is_some())
                    .unwrap_or(true);
                if !exists {
                    return Err(l2::L2Error::NoInterface(name.clone()).into());
                }
            }
        }
        None => {}
    }
    Ok(())
}

/// Checks the settings against the machine (BIRD present and happy with its config, the
/// interface exists), starts BIRD and the watchdog, and the loop.
pub async fn start(
    settings: &AnnounceSettings,
    bird_lock: Option<BirdLock>,
    mesh: Mesh<RuleTable>,
    verdicts: watch::Receiver<Arc<Verdicts>>,
    reconcile: ReconcileStatus,
    metrics: metrics::AnnounceMetrics,
) -> anyhow::Result<Option<Announcer>> {
    let Some(mode) = settings.mode else {
        return Ok(None);
    };
    let mut supervisor = None;
    let mut control = None;
    let mut peers = BTreeMap::new();
    // The control socket's poll writes it; the readiness gate and BIRD's supervisor read it.
    let bird_status = Arc::new(Mutex::new(BirdStatus::new(Instant::now())));
    let (target, guard_targets) = match mode {
        Mode::Bgp => {
            let bgp = settings
                .bgp
                .as_ref()
                .context("`--announce bgp` needs a [bgp] table in the config file")?;
            let bgp = bird::resolved(bgp, Some(mesh.listen_addr().ip()))?;
            let paths = bird::Paths::new(&bgp.state_dir);
            let p = paths.clone();
            let b = bgp.clone();
            let bin = tokio::task::spawn_blocking(move || bird::prepare(&b, &p)).await??;
            let table = bgp.table;
            let routes = tokio::task::spawn_blocking(move || {
                let mut t = RouteTable::open(table)?;
                // Start from nothing announced: a restarted node waits until it caught up.
                t.sync(&BTreeSet::new())?;
                Ok::<_, shoal_dataplane::DataplaneError>(t)
            })
            .await?
            .with_context(|| format!("opening kernel routing table {table}"))?;
            supervisor = Some(bird::Supervisor::start(
                bin,
                paths.clone(),
                metrics.bird_restarts.clone(),
                bird_status.clone(),
            )?);
            control = Some(paths.control.clone());
            peers = bgp
                .peers
                .iter()
                .map(|p| (p.name.clone(), (p.address, p.asn)))
                .collect();
            (
                Target::Bgp {
                    routes: Arc::new(Mutex::new(routes)),
                },
                guard::GuardTargets {
                    table: Some(table),
                    interface: None,
                },
            )
        }
        Mode::L2 => {
            let name = settings.interface.clone().context(
                "`--announce l2` needs `--interface IF` (the interface clients reach this node on)",
            )?;
            let n = name.clone();
            let iface = tokio::task::spawn_blocking(move || l2::L2Interface::open(&n)).await??;
            (
                Target::L2 {
                    iface: Arc::new(Mutex::new(iface)),
                },
                guard::GuardTargets {
                    table: None,
                    interface: Some(name),
                },
            )
        }
    };
    let guard = spawn_guard(&guard_targets, settings.freeze_withdraw)?;
    let handle = AnnounceHandle::default();
    let (draining_tx, draining_rx) = watch::channel(false);
    let (withdrawn_tx, withdrawn_rx) = watch::channel(false);
    let cancel = CancellationToken::new();
    if let Some(c) = &control {
        tokio::spawn(poll_bird(
            c.clone(),
            peers,
            bird_status.clone(),
            metrics.clone(),
            cancel.clone(),
        ));
    }
    let lp = Loop {
        mode,
        withdraw_when_no_backends: settings.withdraw_when_no_backends,
        interface: settings.interface.clone(),
        mesh,
        reconcile,
        metrics,
        handle: handle.clone(),
        target,
        bird_status,
        guard,
        guard_targets,
        guard_deadline: settings.freeze_withdraw,
        beat_errors: crate::log_gate::LogGate::new(Duration::from_secs(10)),
        apply_errors: crate::log_gate::LogGate::new(Duration::from_secs(10)),
        withdrawn: withdrawn_tx,
    };
    let task = tokio::spawn(lp.run(verdicts, draining_rx, cancel.clone()));
    Ok(Some(Announcer {
        draining: draining_tx,
        withdrawn: withdrawn_rx,
        task,
        cancel,
        supervisor,
        _bird_lock: bird_lock,
        control,
        handle,
    }))
}

fn spawn_guard(
    targets: &guard::GuardTargets,
    deadline: Duration,
) -> anyhow::Result<tokio::process::Child> {
    let exe = std::env::current_exe().context("finding the shoal binary for the watchdog")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("announce-guard")
        .arg("--deadline-ms")
        .arg(deadline.as_millis().to_string())
        .stdin(std::process::Stdio::piped())
        // As BIRD: a signal to shoal's process group is shoal's to handle; the watchdog ends
        // when shoal's end of its pipe closes.
        .process_group(0)
        .kill_on_drop(false);
    if let Some(t) = targets.table {
        cmd.arg("--table").arg(t.to_string());
    }
    if let Some(i) = &targets.interface {
        cmd.arg("--interface").arg(i);
    }
    cmd.spawn().context("starting the announce watchdog")
}

impl Announcer {
    /// Withdraws everything (SIGTERM's first step) and returns once the kernel side is
    /// withdrawn and, in BGP mode, BIRD exports no route any more (or after 3 s).
    pub async fn withdraw(&mut self) {
        self.draining.send_replace(true);
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while !*self.withdrawn.borrow_and_update() {
                if self.withdrawn.changed().await.is_err() {
                    return;
                }
            }
            if let Some(c) = &self.control {
                while birdctl::exported_routes(c).await.unwrap_or(0) > 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        })
        .await;
    }

    /// Stops the loop, BIRD and the watchdog (which withdraws whatever is left).
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
        if let Some(s) = self.supervisor {
            let _ = tokio::task::spawn_blocking(move || s.stop()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any gap after which the watchdog may have withdrawn counts as a stall in the loop, and
    /// the default deadline keeps the usual rule.
    #[test]
    fn a_stall_is_noticed_before_the_watchdog_can_withdraw() {
        for ms in [200, 250, 400, 550, 600, 1_000, 60_000] {
            let deadline = Duration::from_millis(ms);
            assert!(stall_after(deadline) < deadline, "{ms}");
            assert!(stall_after(deadline) > STEP, "{ms}");
        }
        assert_eq!(stall_after(Duration::from_millis(1_000)), STALL);
        assert_eq!(
            stall_after(Duration::from_millis(200)),
            Duration::from_millis(150)
        );
    }
}
