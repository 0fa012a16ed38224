//! The verdicts a runner keeps: per service, with when each last changed.
//!
//! A service's verdicts depend only on the live set, the opinions about its own backends and
//! the previous verdicts, so a pass judges again only the services whose gossiped values moved
//! and shares the others' as they were; the admin API's report is built from them when asked.
//! Pure: the runner hands in the inputs and the time.

use super::assign::Assignment;
use super::verdict::{evaluate_service, BackendRef, BackendVerdict, Opinions, Verdict, Verdicts};
use crate::table::VirtualService;
use std::collections::HashMap;
use std::sync::Arc;

/// Every health-checked service's verdicts, as the runner's last judging pass left them.
#[derive(Clone, Debug, Default)]
pub struct Judged {
    pub services: Vec<Arc<JudgedService>>,
}

/// One service's verdicts, with when each last changed (`since_ms[i]` for `verdicts[i]`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JudgedService {
    pub verdicts: Vec<BackendVerdict>,
    pub since_ms: Vec<u64>,
}

impl JudgedService {
    /// Judges `service` again (`verdict::evaluate_service`) at `now_ms`. A verdict other than
    /// `previous`'s dates from now, and is listed in the answer's second part (by index); the
    /// others keep their date from `before` (this service's last judgement), or now if new.
    pub fn judge(
        service: &VirtualService,
        assignment: &mut Assignment,
        opinions: &Opinions,
        previous: &Verdicts,
        before: Option<&JudgedService>,
        now_ms: u64,
    ) -> (JudgedService, Vec<usize>) {
        let verdicts = evaluate_service(service, assignment, opinions, previous);
        let kept: HashMap<&BackendRef, u64> = before
            .map(|b| {
                let backends = b.verdicts.iter().map(|v| &v.backend);
                backends.zip(b.since_ms.iter().copied()).collect()
            })
            .unwrap_or_default();
        let mut since_ms = Vec::with_capacity(verdicts.len());
        let mut changed = Vec::new();
        for (i, v) in verdicts.iter().enumerate() {
            let b = &v.backend;
            // By where it listens too: a rename is no change of verdict (it counted one).
            let was_down = previous.is_down(&b.service, b.address, b.port)
                || previous.was_down_at(v.at, b.address, b.port);
            if was_down != (v.verdict == Verdict::Down) {
                changed.push(i);
                since_ms.push(now_ms);
            } else {
                since_ms.push(kept.get(b).copied().unwrap_or(now_ms));
            }
        }
        (JudgedService { verdicts, since_ms }, changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::hysteresis::CheckState;
    use crate::health::verdict::fixtures::{obs, service};
    use crate::health::verdict::{index_opinions, verdicts_of};
    use shoal_gossip::version::NodeId;

    /// Every live member says `state` about backend `i` of `service`.
    fn everyone_says(
        live: &[NodeId],
        service: &VirtualService,
        i: usize,
        state: CheckState,
    ) -> Opinions {
        let o = obs(service.backends[i].address, state);
        index_opinions(
            live,
            live.iter().map(|n| (n.clone(), "web", vec![o.clone()])),
        )
    }

    #[test]
    fn a_verdict_dates_from_its_last_change() {
        let live: Vec<NodeId> = (0..3).map(|i| NodeId::new(format!("lb-{i}"))).collect();
        let mut assignment = Assignment::new(&live, 2);
        let web = service(2);
        let none = Opinions::new();
        let (first, changed) =
            JudgedService::judge(&web, &mut assignment, &none, &Verdicts::default(), None, 10);
        assert_eq!(
            (first.since_ms.as_slice(), changed.len()),
            (&[10, 10][..], 0)
        );

        // Backend 1 goes down at 20: only it is listed, and only its date moves.
        let down = everyone_says(&live, &web, 1, CheckState::Down);
        let previous = verdicts_of(&first.verdicts);
        let (second, changed) =
            JudgedService::judge(&web, &mut assignment, &down, &previous, Some(&first), 20);
        assert_eq!(changed, [1]);
        assert_eq!(second.verdicts[1].verdict, Verdict::Down);
        assert_eq!(second.since_ms, [10, 20]);

        // Judged again at 30 with nothing new: nothing listed, the dates stay.
        let previous = verdicts_of(&second.verdicts);
        let (third, changed) =
            JudgedService::judge(&web, &mut assignment, &down, &previous, Some(&second), 30);
        assert!(changed.is_empty());
        assert_eq!(third.since_ms, [10, 20]);

        // A backend added to the service dates from when it is first judged.
        let grown = service(3);
        let (fourth, changed) =
            JudgedService::judge(&grown, &mut assignment, &down, &previous, Some(&third), 40);
        assert!(changed.is_empty());
        assert_eq!(fourth.since_ms, [10, 20, 40]);
    }
}
