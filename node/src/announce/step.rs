//! The announce loop: every step (and at once on a new head, new health verdicts or the
//! draining flag) it reads this node's readiness from the mesh, decides ([`super::decide`]),
//! brings the kernel side to the decision, beats the watchdog and gossips its report.

use super::*;

pub(super) struct Loop {
    pub(super) mode: Mode,
    pub(super) withdraw_when_no_backends: bool,
    pub(super) interface: Option<String>,
    pub(super) mesh: Mesh<RuleTable>,
    pub(super) reconcile: ReconcileStatus,
    pub(super) metrics: metrics::AnnounceMetrics,
    pub(super) handle: AnnounceHandle,
    pub(super) target: Target,
    pub(super) bird_status: Arc<Mutex<BirdStatus>>,
    pub(super) guard: tokio::process::Child,
    /// What a restarted watchdog is started with.
    pub(super) guard_targets: guard::GuardTargets,
    pub(super) guard_deadline: Duration,
    /// "does not read its beats" at most every 10 s (it was 10 lines a second).
    pub(super) beat_errors: crate::log_gate::LogGate,
    /// "cannot change announcements" at most every 10 s (a probe: 174 lines in 18 s while
    /// IPv6 was disabled on the L2 interface).
    pub(super) apply_errors: crate::log_gate::LogGate,
    pub(super) withdrawn: watch::Sender<bool>,
}

impl Loop {
    pub(super) async fn run(
        mut self,
        mut verdicts: watch::Receiver<Arc<Verdicts>>,
        mut draining: watch::Receiver<bool>,
        cancel: CancellationToken,
    ) {
        let mut heads = self.mesh.subscribe();
        let mut tick = tokio::time::interval(STEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_step = Instant::now();
        let stall_after = super::stall_after(self.guard_deadline);
        let mut hold_until: Option<Instant> = None;
        let mut current: BTreeSet<IpAddr> = BTreeSet::new();
        let mut gossiped = String::new();
        let mut ready_before = false;
        let mut lagging_since: Option<Instant> = None;
        let mut last_repair: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
                r = heads.changed() => if r.is_err() { break },
                r = verdicts.changed() => if r.is_err() { break },
                r = draining.changed() => if r.is_err() { break },
            }
            let now = Instant::now();
            if now.duration_since(last_step) > stall_after {
                tracing::warn!(
                    late_ms = now.duration_since(last_step).as_millis() as u64,
                    "announce loop stalled; holding announcements back until the mesh re-checks"
                );
                hold_until = Some(now + STALL_HOLD);
            }
            last_step = now;
            let stalled = hold_until.is_some_and(|t| now < t);
            let head = self.mesh.current();
            let reconciled = self.reconcile.get();
            let applied_is_head = match (&head, &reconciled.applied) {
                (Some(h), Some(a)) => VersionRef::from(&h.version) == *a,
                _ => false,
            };
            let lag_start = *lagging_since.get_or_insert(now);
            if applied_is_head {
                lagging_since = None;
            }
            let facts = NodeFacts {
                draining: *draining.borrow_and_update(),
                stalled,
                bird_answering: self.mode != Mode::Bgp
                    || self
                        .bird_status
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .answering(now),
                has_head: head.is_some(),
                duplicate_id: matches!(
                    self.mesh.role_reason(),
                    shoal_gossip::RoleReason::DuplicateId { .. }
                ),
                // A node whose certificate is not valid by its clock is cut off from its peers' new
                // tables.
                mesh_caught_up: self.mesh.role() != Role::CatchingUp
                    && crate::tls_reload::out_of_validity(&self.mesh).is_none(),
                applied_is_head: decide::follows_head(
                    applied_is_head,
                    ready_before,
                    now.duration_since(lag_start),
                    APPLY_GRACE,
                ),
                dataplane_failing: reconciled.failing(now).is_some(),
            };
            let readiness = decide::readiness(facts);
            // Grace is only for a node that stays ready: any other reason resets it.
            ready_before = readiness == Readiness::Ready;
            let vips = match &head {
                Some(h) => decide::vip_health(&h.doc, &verdicts.borrow_and_update()),
                None => BTreeMap::new(),
            };
            let unprogrammed = match &head {
                Some(h) => decide::unprogrammed_vips(&h.doc, &reconciled.unprogrammed),
                None => BTreeSet::new(),
            };
            let candidates = self.l2_candidates(readiness);
            let mut states = decide::decide(&Inputs {
                mode: self.mode,
                me: &self.mesh.node_id().to_string(),
                readiness,
                vips: &vips,
                draining: &reconciled.draining_vips,
                applied_is_head,
                announced_now: &current,
                unprogrammed: &unprogrammed,
                withdraw_when_no_backends: self.withdraw_when_no_backends,
                l2_candidates: &candidates,
            });
            let want = decide::announced(&states);
            // The kernel is read back and repaired when the decision changes, and every
            // REPAIR_INTERVAL otherwise (routes or addresses removed behind Shoal's back).
            let due = want != current
                || last_repair.is_none_or(|t| now.duration_since(t) >= REPAIR_INTERVAL);
            let applied = if due {
                self.apply(&want, states.keys().copied().collect()).await
            } else {
                Ok(())
            };
            match applied {
                Ok(()) => {
                    if due {
                        last_repair = Some(now);
                    }
                    let changes = current.symmetric_difference(&want).count();
                    if changes > 0 {
                        tracing::info!(announced = ?want, ?readiness, "announcements changed");
                        self.metrics.changes.inc_by(changes as u64);
                    }
                    current = want;
                    self.metrics.vips.set(current.len() as i64);
                    if facts.draining && current.is_empty() {
                        self.withdrawn.send_replace(true);
                    }
                }
                Err(NotApplied { held, error }) => {
                    if let Some(suppressed) = self.apply_errors.allow(now) {
                        tracing::error!(error = %error, suppressed, held = ?held, "cannot change announcements; retrying");
                    }
                    if let Some(held) = held {
                        current = held;
                        self.metrics.vips.set(current.len() as i64);
                    }
                }
            }
            // The report says what is held: a VIP decided on that the kernel refused is not.
            for (ip, state) in states.iter_mut() {
                let announced = matches!(state, VipState::Announced | VipState::Draining);
                if announced && !current.contains(ip) {
                    *state = VipState::Withheld(Withheld::NotHeld);
                }
            }
            self.beat(&current).await;
            let report = self.report(readiness, &states);
            if let Ok(json) = serde_json::to_string(&report) {
                if json != gossiped {
                    self.mesh.set_app_key(REPORT_KEY, &json);
                    gossiped = json;
                }
            }
            self.handle.set(report);
        }
        // Shutdown: withdraw what is left; closing the watchdog's stdin makes it check too.
        let _ = self.apply(&BTreeSet::new(), BTreeSet::new()).await;
        self.metrics.vips.set(0);
        drop(self.guard.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(2), self.guard.wait()).await;
    }

    /// L2: the members ready to own VIPs, by their gossiped reports (this node by its own
    /// readiness now).
    fn l2_candidates(&self, readiness: Readiness) -> Vec<String> {
        if self.mode != Mode::L2 {
            return vec![];
        }
        let me = self.mesh.node_id().to_string();
        let mut out: Vec<String> = self
            .mesh
            .app_keys(REPORT_KEY)
            .into_iter()
            .filter(|(id, k, _)| k == REPORT_KEY && id.to_string() != me)
            .filter_map(|(id, _, v)| {
                let r: Report = serde_json::from_str(&v).ok()?;
                (r.mode == Mode::L2 && r.readiness == Readiness::Ready).then(|| id.to_string())
            })
            .collect();
        if readiness == Readiness::Ready {
            out.push(me);
        }
        out
    }

    /// Brings the kernel side to `want`; in L2 mode only the addresses in `scope` (the VIPs
    /// decided on) or announced before are touched. In L2 mode every address is tried even
    /// when one is refused, and a failure says what the interface holds after it: the
    /// watchdog must be told of every address there (a probe: IPv6 disabled on the interface
    /// made the IPv6 add fail after the IPv4 ones went in, the watchdog never heard of them,
    /// and a `kill -9` left them on the interface, answering ARP).
    async fn apply(
        &mut self,
        want: &BTreeSet<IpAddr>,
        mut scope: BTreeSet<IpAddr>,
    ) -> Result<(), NotApplied> {
        match &self.target {
            Target::Bgp { routes, .. } => {
                let routes = routes.clone();
                let want = want.clone();
                tokio::task::spawn_blocking(move || {
                    routes.lock().unwrap_or_else(|p| p.into_inner()).sync(&want)
                })
                .await
                .map_err(|e| NotApplied::unknown(e.into()))?
                .map_err(|e| NotApplied::unknown(e.into()))?;
            }
            Target::L2 { iface } => {
                let iface = iface.clone();
                let want = want.clone();
                // Only VIPs of the table (or draining, or held before) are touched: other
                // addresses of the interface are not Shoal's.
                scope.extend(self.handle.get().iter().flat_map(|r| r.announced.clone()));
                tokio::task::spawn_blocking(move || {
                    let mut i = iface.lock().unwrap_or_else(|p| p.into_inner());
                    let have = i.held(&scope).map_err(|e| NotApplied::unknown(e.into()))?;
                    let mut first: Option<l2::L2Error> = None;
                    for ip in have.difference(&want) {
                        if let Err(e) = i.set(*ip, false) {
                            first.get_or_insert(e);
                        }
                    }
                    for ip in want.difference(&have) {
                        match i.set(*ip, true) {
                            Ok(_) => i.advertise(*ip),
                            Err(e) => {
                                first.get_or_insert(e);
                            }
                        }
                    }
                    match first {
                        None => Ok(()),
                        Some(e) => Err(NotApplied {
                            held: i.held(&scope).ok(),
                            error: e.into(),
                        }),
                    }
                })
                .await
                .map_err(|e| NotApplied::unknown(e.into()))??;
            }
        }
        Ok(())
    }

    async fn beat(&mut self, current: &BTreeSet<IpAddr>) {
        let line = match self.mode {
            Mode::L2 => guard::line(current),
            Mode::Bgp => "beat\n".to_string(),
        };
        // A watchdog that exited (killed, crashed) is started again: without it a frozen
        // shoal would stay announced for good (an audit killed it: nothing noticed, and a
        // SIGSTOPped node kept its routes).
        if let Ok(Some(status)) = self.guard.try_wait() {
            tracing::error!(%status, "the announce watchdog exited; starting it again");
            match spawn_guard(&self.guard_targets, self.guard_deadline) {
                Ok(guard) => {
                    self.guard = guard;
                    self.metrics.watchdog_restarts.inc();
                }
                Err(e) => tracing::error!(error = %e, "cannot start the announce watchdog"),
            }
        }
        if let Some(stdin) = self.guard.stdin.as_mut() {
            let sent = tokio::time::timeout(STEP, stdin.write_all(line.as_bytes())).await;
            if !matches!(sent, Ok(Ok(()))) {
                if let Some(suppressed) = self.beat_errors.allow(std::time::Instant::now()) {
                    tracing::error!(suppressed, "the announce watchdog does not read its beats");
                }
            }
        }
    }

    fn report(&self, readiness: Readiness, states: &BTreeMap<IpAddr, VipState>) -> Report {
        let mut r = Report::new(self.mode, self.interface.clone());
        r.readiness = readiness;
        for (ip, s) in states {
            match s {
                VipState::Announced => r.announced.push(*ip),
                VipState::Draining => {
                    r.announced.push(*ip);
                    r.draining.push(*ip);
                }
                VipState::Withheld(w) => {
                    r.withheld.insert(*ip, w.to_string());
                }
                VipState::OwnedBy(o) => {
                    r.owned_elsewhere.insert(*ip, o.clone());
                }
            }
        }
        if matches!(self.target, Target::Bgp { .. }) {
            let bird = self.bird_status.lock().unwrap_or_else(|p| p.into_inner());
            r.bgp = bird.sessions.clone();
            r.bird = bird.note();
        }
        r
    }
}

/// Announcements that could not be brought to the decision.
pub(super) struct NotApplied {
    /// What the interface holds after the failure (L2), when it could be read: the VIPs the
    /// watchdog must remove if the node dies; `None` when unknown.
    held: Option<BTreeSet<IpAddr>>,
    error: anyhow::Error,
}

impl NotApplied {
    fn unknown(error: anyhow::Error) -> NotApplied {
        NotApplied { held: None, error }
    }
}
