//! Joining again above a later incarnation of this node's own id, before the node starts.
//!
//! A generation is a start time, and peers count an id's newest generation (`incarnation.rs`
//! rule 3). A process started with its wall clock behind its previous process's start, with no
//! generation file to remember that start (no `--state-dir`, or a state folder restored from an
//! older copy), got a lower generation: peers kept counting the previous, dead incarnation and
//! ignored the new process for `dead_node_grace_ms` (an hour) while it called itself ready.
//! Only the peers remember the previous start, so `Mesh::start` asks them: chitchat runs alone
//! for a moment, until a seed has answered and [`SETTLE_ROUNDS`] more gossip rounds have passed
//! (or the join grace is over), and when the answers hold a later generation of this id the
//! node starts chitchat again above it. So it does when its own record holds keys it never
//! wrote: a generation file restored from an older copy handed it exactly its previous
//! process's generation, and chitchat merged the peers' copy of that process's record into its
//! own. Nothing else runs by then (no control loop, no key but the metadata), so to the peers
//! the moment it was heard is one more restart, and the newer incarnation counts at once. A
//! later incarnation first heard after that (no seed answered in time) is only logged
//! (`shell::warn_if_shadowed`).

use crate::generation_file::MAX_STORED_GENERATION;
use chitchat::{Chitchat, ChitchatId};
use std::time::{Duration, Instant};

/// Gossip rounds to wait after the first answer: the rest of a large cluster's state, which
/// does not fit one message, comes in the next rounds.
pub(super) const SETTLE_ROUNDS: u32 = 2;
/// Joins again at most this many times per start: each one goes above every generation heard,
/// so a second one means a record first heard late; more would be a peer making them up.
pub(super) const MAX_REJOINS: usize = 2;
const POLL: Duration = Duration::from_millis(10);

/// The newest generation of node `id` above `generation` among `records` (node id,
/// generation), if any: what this start joins again above, and what the control loop warns
/// about when it is first heard later (`shell::warn_if_shadowed`).
pub(super) fn newest_above<'a>(
    records: impl IntoIterator<Item = (&'a str, u64)>,
    id: &str,
    generation: u64,
) -> Option<u64> {
    records
        .into_iter()
        .filter(|(r, g)| *r == id && *g > generation)
        .map(|(_, g)| g)
        .max()
}

/// [`newest_above`] `me` among chitchat's records. A generation from the year 3000 on is not
/// a start time (the generation file refuses one past it): following it would hand every later
/// start of this id a generation near the end of time.
pub(super) fn later_incarnation<'a>(
    records: impl IntoIterator<Item = &'a ChitchatId>,
    me: &ChitchatId,
) -> Option<u64> {
    let starts = records
        .into_iter()
        .filter(|r| r.generation_id < MAX_STORED_GENERATION)
        .map(|r| (&*r.node_id, r.generation_id));
    newest_above(starts, &me.node_id, me.generation_id)
}

/// Whether this node's own record holds a key this process did not write (`written`, the keys
/// it started with), deleted ones included: the record of a previous process with this very
/// generation (a generation file restored from an older copy, the clock behind), which chitchat
/// merged into this one's from a peer's copy, so that the old process's keys (its health
/// opinions, say) would be gossiped as this one's.
pub(super) fn holds_a_previous_record<'a>(
    own: impl IntoIterator<Item = (&'a str, &'a str, bool)>,
    written: &[(String, String)],
) -> bool {
    own.into_iter().any(|(key, value, deleted)| {
        deleted || !written.iter().any(|(k, v)| k == key && v == value)
    })
}

/// Watches what chitchat hears for at most `budget`. Returns the generation to go above as
/// soon as it hears of a later incarnation of this node's id, or finds a previous process's
/// record merged into its own ([`holds_a_previous_record`]: its own generation then), and
/// `None` once a peer has answered and `settle` has passed since without either, or at the
/// end of the budget.
pub(super) async fn listen_for_later_incarnation(
    chitchat: &tokio::sync::Mutex<Chitchat>,
    written: &[(String, String)],
    budget: Duration,
    settle: Duration,
) -> Option<u64> {
    let start = Instant::now();
    let mut answered: Option<Instant> = None;
    loop {
        {
            let chitchat = chitchat.lock().await;
            let me = chitchat.self_chitchat_id();
            let states = chitchat.node_states();
            if let Some(later) = later_incarnation(states.keys(), me) {
                return Some(later);
            }
            let own = states.get(me).into_iter().flat_map(|s| {
                s.key_values_including_deleted()
                    .map(|(k, v)| (k, v.value.as_str(), v.is_deleted()))
            });
            if holds_a_previous_record(own, written) {
                return Some(me.generation_id);
            }
            if answered.is_none() && states.len() > 1 {
                answered = Some(Instant::now());
            }
        }
        let now = Instant::now();
        if answered.is_some_and(|a| now.duration_since(a) >= settle)
            || now.duration_since(start) >= budget
        {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn id(name: &str, generation: u64, port: u16) -> ChitchatId {
        ChitchatId::new(
            name.to_string(),
            generation,
            SocketAddr::from(([127, 0, 0, 1], port)),
        )
    }

    #[test]
    fn only_a_later_generation_of_this_id_counts() {
        let me = id("n2", 1_000, 1);
        let others = [id("n1", 9_000, 2), id("n2", 500, 1), me.clone()];
        assert_eq!(later_incarnation(&others, &me), None);
        // At this address (the previous process) or at another (a pod with a new IP).
        let records = [id("n2", 2_000, 1), id("n2", 3_000, 7), id("n1", 9_000, 2)];
        assert_eq!(later_incarnation(&records, &me), Some(3_000));
    }

    #[test]
    fn a_key_this_process_did_not_write_is_a_previous_record() {
        let written = [("meta:admin".to_string(), "127.0.0.1:9100".to_string())];
        assert!(!holds_a_previous_record([], &written));
        assert!(!holds_a_previous_record(
            [("meta:admin", "127.0.0.1:9100", false)],
            &written
        ));
        // Another key, the same key with another value, or a deleted one.
        for own in [
            ("app:health/web", "down", false),
            ("meta:admin", "127.0.0.1:9200", false),
            ("meta:admin", "127.0.0.1:9100", true),
        ] {
            assert!(holds_a_previous_record([own], &written), "{own:?}");
        }
    }

    #[test]
    fn a_generation_from_the_year_3000_on_is_not_followed() {
        let me = id("n2", 1_000, 1);
        let records = [id("n2", u64::MAX, 1), id("n2", MAX_STORED_GENERATION, 1)];
        assert_eq!(later_incarnation(&records, &me), None);
        let records = [id("n2", u64::MAX, 1), id("n2", 2_000, 1)];
        assert_eq!(later_incarnation(&records, &me), Some(2_000));
    }
}
