//! A replica whose rules file differs from the table the cluster runs, said before a takeover
//! publishes it.
//!
//! Only the publisher reads its rules file, so a replica given another file (an older copy, a
//! different weight) was silent until it took over and replaced the cluster's table with its
//! own, with no more than a "rules loaded" line (an operator's probe). A follower now compares
//! its file with the head now and then and warns when they differ. A difference must hold for
//! [`PERSIST`] first: while an edit rolls out (a ConfigMap reaches each pod a minute or two
//! apart) files and head differ for a while without anything being wrong.

use crate::table::RuleTable;
use sha2::Digest;
use shoal_gossip::{Mesh, Role, Version};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often a follower compares its file with the head.
pub const EVERY: Duration = Duration::from_secs(30);
/// How long a difference must hold before it is said.
pub const PERSIST: Duration = Duration::from_secs(180);

/// One difference: this content of the file against this head.
pub type Difference = ([u8; 32], Version);

/// When a difference has held long enough to be said, once. Pure; time is an argument.
#[derive(Debug, Default)]
pub struct Drift {
    since: Option<(Difference, Instant)>,
    said: Option<Difference>,
}

impl Drift {
    /// One comparison at `now`: `Some` when the file differs from the head. True when this
    /// difference has held for [`PERSIST`] and was not said yet.
    pub fn observe(&mut self, now: Instant, seen: Option<Difference>) -> bool {
        let Some(seen) = seen else {
            self.since = None;
            return false;
        };
        let since = match &self.since {
            Some((d, at)) if *d == seen => *at,
            _ => {
                self.since = Some((seen.clone(), now));
                now
            }
        };
        if now.saturating_duration_since(since) >= PERSIST && self.said.as_ref() != Some(&seen) {
            self.said = Some(seen);
            return true;
        }
        false
    }
}

/// Compares `rules` with the head every [`EVERY`] while this node follows, and warns about a
/// lasting difference. A file that cannot be read or fails the checks is left to the start's
/// warning and to the source. The file is parsed and compared only when its bytes or the head
/// changed since the last comparison (a 32 MiB file takes about a second to parse).
pub async fn watch(mesh: Mesh<RuleTable>, rules: PathBuf, cancel: CancellationToken) {
    let mut drift = Drift::default();
    let mut last: Option<(Difference, bool)> = None;
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let seen = match mesh.current() {
            Some(head) if mesh.role() != Role::Publisher => {
                let path = rules.clone();
                let known = last.clone();
                let compared = tokio::task::spawn_blocking(move || {
                    let text = shoal_gossip::small_file::read_to_string(
                        &path,
                        crate::rules::MAX_FILE_BYTES,
                    )
                    .ok()?;
                    let key: Difference = (
                        sha2::Sha256::digest(text.as_bytes()).into(),
                        head.version.clone(),
                    );
                    let differs = match known {
                        Some((k, differs)) if k == key => differs,
                        _ => crate::rules::parse(&text).is_ok_and(|table| table != head.doc),
                    };
                    Some((key, differs))
                })
                .await
                .ok()
                .flatten();
                last = compared.clone();
                compared.and_then(|(key, differs)| differs.then_some(key))
            }
            _ => None,
        };
        let said = drift.observe(Instant::now(), seen.clone());
        if let (true, Some((_, version))) = (said, seen) {
            tracing::warn!(
                path = %rules.display(),
                head = %version,
                "this node's rules file differs from the table the cluster runs, and has for 3 minutes: if this node became the publisher it would publish its own file in place of the cluster's; give every replica the same file"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(seq: u64) -> Version {
        Version::parse(&format!("1.{seq}@n1")).unwrap()
    }

    #[test]
    fn a_difference_is_said_once_it_has_held_and_only_once() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut d = Drift::default();
        let a = ([1; 32], v(1));
        assert!(!d.observe(at(0), Some(a.clone())));
        assert!(!d.observe(at(179), Some(a.clone())));
        assert!(d.observe(at(180), Some(a.clone())));
        assert!(!d.observe(at(400), Some(a.clone())), "said twice");
        // A new head (the file still differs) starts its own wait.
        let b = ([1; 32], v(2));
        assert!(!d.observe(at(410), Some(b.clone())));
        assert!(d.observe(at(590), Some(b)));
    }

    /// An edit rolling out: the file differs, then the head catches up, then another edit.
    #[test]
    fn a_difference_that_goes_away_in_time_is_never_said() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut d = Drift::default();
        let a = ([1; 32], v(1));
        assert!(!d.observe(at(0), Some(a.clone())));
        assert!(!d.observe(at(90), None));
        assert!(!d.observe(at(120), Some(a.clone())));
        assert!(!d.observe(at(240), Some(a.clone())));
        assert!(d.observe(at(300), Some(a)));
    }
}
