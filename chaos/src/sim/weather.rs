//! The chaos phase's faults: a few percent chance per 10 ms step of a crash, a restart, a
//! partition (both ways or one way), new loss and delay, an edit of the source, a backend flap
//! or a freeze. The rates do not grow with N: at 1,000 nodes a seed sees as many faults as at 5.

use super::net::Partition;
use super::World;
use rand::Rng;

impl World {
    /// Random faults during the chaos phase: a few percent chance per step of a change.
    pub(super) fn weather(&mut self, now_ms: u64) {
        let n = self.nodes.len();
        let roll = self.rng.gen_range(0..1000);
        match roll {
            0..=3 => {
                // Crash a node, keeping a majority up.
                let up = self.nodes.iter().filter(|x| x.up).count();
                if up > n / 2 + 1 {
                    let i = self.rng.gen_range(0..n);
                    if self.nodes[i].up {
                        self.nodes[i].crash();
                        self.out.faults += 1;
                    }
                }
            }
            4..=9 => {
                let i = self.rng.gen_range(0..n);
                if !self.nodes[i].up {
                    self.nodes[i].restart(now_ms, &self.cfg.timing);
                }
            }
            10..=12 => {
                // Partition: a random side against the rest, or one direction only.
                let one_way = self.rng.gen_bool(0.3);
                let side: Vec<bool> = (0..n).map(|_| self.rng.gen_bool(0.4)).collect();
                self.net
                    .weather
                    .partitions
                    .push(Partition { side, one_way });
                self.out.faults += 1;
            }
            13..=16 => self.net.weather.partitions.clear(),
            17..=19 => {
                self.net.weather.loss_percent = [0, 10, 30, 60][self.rng.gen_range(0..4)];
                self.net.weather.delay_ms_max = [5, 50, 200, 400][self.rng.gen_range(0..4)];
                self.out.faults += 1;
            }
            20..=39 => self.edit += 1,
            40..=42 => {
                let b = self.rng.gen_range(0..self.backend_up.len());
                self.backend_up[b] = !self.backend_up[b];
            }
            43..=44 => {
                // Freeze a node (SIGSTOP) for a while: it must not act on its stale view when
                // it wakes (the core's stall reset).
                let i = self.rng.gen_range(0..n);
                if self.nodes[i].running(now_ms) {
                    let ms = [300, 600, 1_500][self.rng.gen_range(0..3)];
                    self.nodes[i].frozen_until_ms = Some(now_ms + ms);
                    self.out.faults += 1;
                }
            }
            _ => {}
        }
    }
}
