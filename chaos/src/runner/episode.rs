//! One episode: inject the faults, hold them (timing a publisher takeover), heal, and tick
//! until the cluster converges or the bound passes.

use super::*;

impl Run<'_> {
    /// Ticks after a heal until the cluster converges and agrees on health, or the bounds pass.
    /// Returns (convergence ms, health ms) when reached.
    pub(super) async fn converge(
        &mut self,
        heal_ms: u64,
        bound_ms: u64,
        health_bound_ms: u64,
    ) -> Result<(Option<u64>, Option<u64>), RunError> {
        let all: Vec<usize> = (0..self.lab.nodes()).collect();
        let live: Vec<String> = all.iter().map(|&i| node_id(i)).collect();
        let mut converged_at: Option<u64> = None;
        loop {
            self.tick().await?;
            let now = self.now_ms();
            let snap = self.snapshot(&all, heal_ms);
            let newest = all
                .iter()
                .filter_map(|&i| self.mono.best(&node_id(i), self.lab.incarnation(i)))
                .max()
                .cloned();
            let expect = Expect {
                live: &live,
                last_marker: self.last_marker(),
                applied_best: newest.as_ref(),
                health: &self.expected_health,
            };
            let verdict = assess(&snap, &expect);
            self.convergence_checks += 1;
            match verdict {
                Assessment::Converged {
                    health_agreed,
                    health_reason,
                    ..
                } => {
                    let c = *converged_at.get_or_insert(now);
                    if health_agreed {
                        return Ok((Some(c - heal_ms), Some(now - heal_ms)));
                    }
                    if now - c > health_bound_ms {
                        self.record(Violation {
                            invariant: Invariant::I5,
                            t_ms: now,
                            episode: self.episode,
                            node: None,
                            detail: format!(
                                "health verdicts not agreed {} ms after convergence: {health_reason}",
                                now - c
                            ),
                        });
                        return Ok((Some(c - heal_ms), None));
                    }
                }
                Assessment::NotYet { invariant, reason } => {
                    converged_at = None;
                    if now - heal_ms > bound_ms {
                        self.record(Violation {
                            invariant,
                            t_ms: now,
                            episode: self.episode,
                            node: None,
                            detail: format!(
                                "not converged {} ms after heal: {}",
                                now - heal_ms,
                                reason
                            ),
                        });
                        return Ok((None, None));
                    }
                }
            }
        }
    }

    pub(super) async fn episode(
        &mut self,
        e: &Episode,
        rec: &mut EpisodeRecord,
    ) -> Result<(), RunError> {
        self.episode = Some(e.index);
        let t_fault = self.now_ms();
        rec.index = e.index;
        rec.t_ms = t_fault;
        rec.hold_ms = e.hold_ms;
        rec.faults = e.faults.iter().map(|f| f.to_string()).collect();
        tracing::info!(episode = e.index, faults = ?rec.faults, hold_ms = e.hold_ms, "inject");
        let old_pub = self.current_publisher();
        let old_idx = old_pub
            .as_deref()
            .and_then(|p| p.strip_prefix('n'))
            .and_then(|d| d.parse::<usize>().ok())
            .and_then(|d| d.checked_sub(1))
            .filter(|i| *i < self.lab.nodes());
        let orphans = old_idx
            .map(|o| effects::orphans(self.lab.nodes(), &e.faults, o))
            .unwrap_or_default();
        for f in &e.faults {
            match f {
                Fault::Kill { node } => self.lab.kill(*node)?,
                Fault::Freeze { node } => self.lab.freeze(*node)?,
                Fault::Restart { node } => {
                    self.lab.kill(*node)?;
                    self.lab.start(*node)?;
                }
                _ => {}
            }
        }
        let addrs: Vec<_> = (0..self.lab.nodes()).map(|i| self.lab.addr(i)).collect();
        let rules = effects::inbound_rules(&addrs, &e.faults);
        for (i, r) in rules.iter().enumerate() {
            if !r.is_empty() {
                self.lab.set_inbound(i, r, self.cfg.mesh_port)?;
            }
        }
        // Hold, timing the takeover when the publisher was cut off.
        let mut takeover_done = orphans.is_empty();
        while self.now_ms() < t_fault + e.hold_ms {
            self.tick().await?;
            if !takeover_done {
                if let Some(old) = &old_pub {
                    let snap = self.snapshot(&orphans, t_fault);
                    if snap.len() == orphans.len() && takeover(&snap, old).is_some() {
                        rec.takeover_ms = Some(self.now_ms() - t_fault);
                        takeover_done = true;
                    }
                }
            }
        }
        // Heal: stopped nodes come back, the network is whole again, the workload pauses.
        for f in &e.faults {
            match f {
                Fault::Kill { node } => self.lab.start(*node)?,
                Fault::Freeze { node } => self.lab.thaw(*node)?,
                _ => {}
            }
        }
        for (i, r) in rules.iter().enumerate() {
            if !r.is_empty() {
                self.lab
                    .set_inbound(i, &Inbound::default(), self.cfg.mesh_port)?;
            }
        }
        self.paused = true;
        let heal_ms = self.now_ms();
        let (c, h) = self
            .converge(
                heal_ms,
                self.cfg.convergence_bound_ms,
                self.cfg.health_bound_ms,
            )
            .await?;
        rec.convergence_ms = c;
        rec.health_ms = h;
        self.paused = false;
        tracing::info!(episode = e.index, convergence_ms = ?c, health_ms = ?h, takeover_ms = ?rec.takeover_ms, "healed");
        let gap_end = self.now_ms() + e.gap_ms;
        while self.now_ms() < gap_end {
            self.tick().await?;
        }
        Ok(())
    }
}
