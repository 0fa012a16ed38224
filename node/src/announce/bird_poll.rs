//! What BIRD says: its BGP sessions and whether it answers its control socket at all, read
//! every second on a task of its own (a slow BIRD never delays the announce loop), with the
//! session news an operator should read in the log.

use super::{birdctl, decide, metrics};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;

const BIRD_POLL: Duration = Duration::from_secs(1);

/// What the BIRD poll last saw (shared with the announce loop).
#[derive(Debug, Clone)]
pub(crate) struct BirdStatus {
    pub(crate) sessions: Vec<birdctl::Session>,
    /// The last answer, or the start when BIRD never answered.
    pub(crate) last_answer: Instant,
    /// The same instant on the wall clock, for the report.
    pub(crate) last_answer_wall: SystemTime,
    /// Polls in a row that got no answer.
    pub(crate) failed_polls: u32,
    pub(crate) error: String,
}

impl BirdStatus {
    pub(super) fn new(now: Instant) -> Self {
        BirdStatus {
            sessions: vec![],
            last_answer: now,
            last_answer_wall: SystemTime::now(),
            failed_polls: 0,
            error: String::new(),
        }
    }

    /// [`decide::bird_answering`] for this status.
    pub(crate) fn answering(&self, now: Instant) -> bool {
        decide::bird_answering(now.duration_since(self.last_answer), self.failed_polls)
    }

    /// The report's `bird` field: `None` while the last poll got an answer.
    pub(crate) fn note(&self) -> Option<String> {
        (self.failed_polls > 0).then(|| {
            let since = crate::rfc3339(self.last_answer_wall);
            format!("not answering since {since}: {}", self.error)
        })
    }
}

/// Reads the BGP sessions from BIRD every second (its own task, so a slow BIRD never delays
/// the announce loop), and whether BIRD answers at all: the loop withdraws when it has not
/// answered for a while ([`decide::bird_answering`]).
pub(super) async fn poll_bird(
    control: PathBuf,
    peers: BTreeMap<String, (IpAddr, u32)>,
    status: Arc<Mutex<BirdStatus>>,
    metrics: metrics::AnnounceMetrics,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(BIRD_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_down = false;
    let mut sessions_watch = SessionsWatch::new(Instant::now());
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let answer = birdctl::sessions(&control).await;
        let now = Instant::now();
        let mut st = status.lock().unwrap_or_else(|p| p.into_inner());
        match answer {
            Ok(mut s) => {
                for session in &mut s {
                    if let Some((address, asn)) = peers.get(&session.name) {
                        session.address = Some(*address);
                        session.asn = Some(*asn);
                    }
                    metrics.session_up(&session.name, session.up());
                }
                for news in sessions_watch.observe(&st.sessions, &s, now) {
                    match news {
                        SessionNews::Up(s) => {
                            tracing::info!(peer = %s.peer(), "BGP session established")
                        }
                        SessionNews::Down(s) => tracing::warn!(
                            peer = %s.peer(),
                            state = %s.bgp_state,
                            info = %s.info.trim(),
                            "BGP session is down: this node's VIPs no longer reach that router"
                        ),
                        SessionNews::NoneUp { for_s, sessions } => tracing::warn!(
                            for_s,
                            sessions = %sessions,
                            "no BGP session is established: this node's VIPs reach no router (readiness and `announced` say what it offers, not what a router took)"
                        ),
                    }
                }
                if was_down {
                    tracing::warn!("BIRD answers its control socket again");
                }
                was_down = false;
                metrics.bird_up.set(1);
                st.sessions = s;
                st.last_answer = now;
                st.last_answer_wall = SystemTime::now();
                st.failed_polls = 0;
                st.error.clear();
            }
            Err(e) => {
                metrics.bird_up.set(0);
                // Not known to be up from the first failed poll, as `bird_up` says: a hung BIRD
                // whose router had dropped it kept `shoal_bgp_session_up` 1 for the grace (a
                // probe). The report keeps them until the grace ends (one slow answer).
                for session in &st.sessions {
                    metrics.session_up(&session.name, false);
                }
                st.failed_polls = st.failed_polls.saturating_add(1);
                st.error = e.to_string();
                if st.answering(now) {
                    tracing::debug!(error = %e, failed_polls = st.failed_polls, "BIRD's control socket did not answer");
                } else {
                    // Sessions BIRD reported before it stopped answering are not up any more.
                    st.sessions.clear();
                    if !was_down {
                        tracing::error!(
                            error = %e,
                            control = %control.display(),
                            silent_s = now.duration_since(st.last_answer).as_secs(),
                            "BIRD is not answering its control socket; withdrawing this node's announcements"
                        );
                    }
                    was_down = true;
                }
            }
        }
    }
}

/// How long no BGP session may be established, from the start or from the last one that
/// was, before it is logged: sessions take a few seconds to come up.
const NONE_UP_WARN: Duration = Duration::from_secs(30);

/// What the BGP sessions did between two polls that an operator should read in the log: a
/// session that came up or went down, and no session established for [`NONE_UP_WARN`] (once
/// per such spell). Before, only BIRD's own lines said so: a wrong AS number or a router that
/// never answered left shoal's log silent (a probe).
#[derive(Debug)]
struct SessionsWatch {
    none_up_since: Option<Instant>,
    warned: bool,
}

#[derive(Debug, PartialEq)]
enum SessionNews<'a> {
    Up(&'a birdctl::Session),
    Down(&'a birdctl::Session),
    NoneUp { for_s: u64, sessions: String },
}

impl SessionsWatch {
    fn new(start: Instant) -> Self {
        SessionsWatch {
            none_up_since: Some(start),
            warned: false,
        }
    }

    fn observe<'a>(
        &mut self,
        before: &[birdctl::Session],
        after: &'a [birdctl::Session],
        now: Instant,
    ) -> Vec<SessionNews<'a>> {
        let was_up = |name: &str| before.iter().any(|b| b.name == name && b.up());
        let mut news: Vec<SessionNews> = after
            .iter()
            .filter_map(|s| match (was_up(&s.name), s.up()) {
                (false, true) => Some(SessionNews::Up(s)),
                (true, false) => Some(SessionNews::Down(s)),
                _ => None,
            })
            .collect();
        if after.iter().any(|s| s.up()) {
            self.none_up_since = None;
            self.warned = false;
        } else {
            let since = *self.none_up_since.get_or_insert(now);
            if !self.warned && now.duration_since(since) >= NONE_UP_WARN {
                self.warned = true;
                let sessions = after
                    .iter()
                    .map(|s| match s.info.trim() {
                        "" => format!("{} {}", s.peer(), s.bgp_state),
                        info => format!("{} {} ({info})", s.peer(), s.bgp_state),
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                news.push(SessionNews::NoneUp {
                    for_s: now.duration_since(since).as_secs(),
                    sessions,
                });
            }
        }
        news
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(name: &str, state: &str, info: &str) -> birdctl::Session {
        birdctl::Session {
            name: name.into(),
            state: "start".into(),
            bgp_state: state.into(),
            info: info.into(),
            address: None,
            asn: None,
        }
    }

    /// A session coming up or going down is news once; no session up is news once per spell,
    /// after the wait, naming each session's state.
    #[test]
    fn session_news_is_told_once_per_change() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut w = SessionsWatch::new(t0);
        let idle = [session("peer1", "Active", "Received: Bad peer AS")];
        assert_eq!(w.observe(&[], &idle, at(1)), vec![]);
        assert_eq!(w.observe(&idle, &idle, at(29)), vec![]);
        let news = w.observe(&idle, &idle, at(30));
        assert!(
            matches!(&news[..], [SessionNews::NoneUp { for_s: 30, sessions }]
                if sessions == "peer1 Active (Received: Bad peer AS)"),
            "{news:?}"
        );
        assert_eq!(w.observe(&idle, &idle, at(90)), vec![], "once per spell");
        let up = [session("peer1", "Established", "")];
        assert_eq!(w.observe(&idle, &up, at(91)), vec![SessionNews::Up(&up[0])]);
        assert_eq!(w.observe(&up, &up, at(92)), vec![]);
        assert_eq!(
            w.observe(&up, &idle, at(93)),
            vec![SessionNews::Down(&idle[0])]
        );
        assert_eq!(w.observe(&idle, &idle, at(122)), vec![]);
        assert!(matches!(
            &w.observe(&idle, &idle, at(123))[..],
            [SessionNews::NoneUp { for_s: 30, .. }]
        ));
    }

    #[test]
    fn the_bird_note_names_the_last_answer_and_holds_still_while_bird_is_down() {
        let start = Instant::now();
        let mut st = BirdStatus::new(start);
        assert_eq!(st.note(), None, "no failed poll, no note");
        st.last_answer_wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        st.failed_polls = 1;
        st.error = "Connection refused (os error 111)".into();
        let first = st.note();
        assert_eq!(
            first.as_deref(),
            Some("not answering since 2026-11-30T00:53:20Z: Connection refused (os error 111)")
        );
        // Later failed polls with the same error leave the gossiped field as it was.
        st.failed_polls = 9;
        assert_eq!(st.note(), first);
    }
}
