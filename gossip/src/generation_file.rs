//! The generation file: the generation (chitchat's incarnation number) of this node id's last
//! start, kept across restarts so that a restart always gets a higher one.
//!
//! Chitchat's generation is the start time in unix ms, and every node keeps the newest
//! generation of an id (`incarnation.rs`). A node restarted with its wall clock behind (10
//! minutes, say) started with a *lower* generation than its previous process: the cluster kept
//! treating the new process as the old, dead one, so it was invisible for good, while it
//! reported itself ready. With this file the new generation is `max(now, last + 1)`, written
//! (synced, renamed into place) before the node joins.

use crate::epoch_file::{parse, write_number};
use crate::MeshError;
use std::path::Path;

/// One number and a newline; anything longer is not a generation file.
const GENERATION_FILE_CAP_BYTES: u64 = 64;

/// 3000-01-01 in unix ms. A generation is a start time: a file above it is corrupt or
/// hand-edited, and one at `u64::MAX` handed every later start that same generation (the
/// cluster took each new process for the dead one while it called itself ready; the audit of
/// 2026-12-06).
pub(crate) const MAX_STORED_GENERATION: u64 = 32_503_680_000_000;

/// The generation to start with at wall clock `now_ms`, given the last one used (if known):
/// the clock, unless the last start was at or after it (a clock set back, or two starts in
/// one millisecond).
pub fn choose(now_ms: u64, last: Option<u64>) -> u64 {
    match last {
        Some(last) => now_ms.max(last.saturating_add(1)),
        None => now_ms,
    }
}

/// Reads the last generation from `path` (absent: none), chooses this start's with
/// [`choose`] and records it before returning it. A file that does not hold one number is an
/// error naming the path: a guess could hand the cluster a generation it already buried.
pub(crate) fn next(path: &Path, now_ms: u64) -> Result<u64, MeshError> {
    let fail = |detail: String| MeshError::Config {
        field: "generation_file",
        detail: format!("{}: {detail}", path.display()),
    };
    let last = match crate::small_file::read_to_string(path, GENERATION_FILE_CAP_BYTES) {
        Ok(text) => Some(parse(&text).ok_or_else(|| {
            fail(format!(
                "expected one unsigned number (the generation, in unix ms, of this node's \
                 last start), found {:?}; if the file was damaged, delete it and make sure \
                 the clock is right (the node then starts with the clock's time)",
                text.chars().take(40).collect::<String>()
            ))
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(fail(e.to_string())),
    };
    if let Some(last) = last.filter(|&g| g > MAX_STORED_GENERATION) {
        return Err(fail(format!(
            "generation {last} is a start time past the year 3000: the file is corrupt or was \
             edited; delete it and make sure the clock is right (the node then starts with the \
             clock's time)"
        )));
    }
    let generation = choose(now_ms, last);
    if generation > now_ms {
        tracing::warn!(
            path = %path.display(),
            now_ms,
            last_generation = last,
            generation,
            "the wall clock is at or behind this node's previous start: starting with a generation above the previous one, not the clock's"
        );
    }
    write_number(path, generation)
        .map_err(|e| fail(format!("cannot record the generation: {e}")))?;
    Ok(generation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_clock_unless_the_last_start_is_not_behind_it() {
        assert_eq!(choose(1_000, None), 1_000);
        assert_eq!(choose(1_000, Some(400)), 1_000);
        // Clock set back 10 minutes since the last start.
        assert_eq!(choose(1_000, Some(601_000)), 601_001);
        // Two starts in one millisecond.
        assert_eq!(choose(1_000, Some(1_000)), 1_001);
        assert_eq!(choose(0, Some(u64::MAX)), u64::MAX);
    }

    proptest! {
        #[test]
        fn always_above_the_last_and_never_below_the_clock(now in any::<u64>(), last in 0..u64::MAX) {
            let g = choose(now, Some(last));
            prop_assert!(g > last && g >= now);
        }
    }

    #[test]
    fn a_restart_with_a_future_generation_on_file_gets_a_higher_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("generation");
        assert_eq!(next(&path, 5_000).unwrap(), 5_000, "no file: the clock");
        assert_eq!(parse(&std::fs::read_to_string(&path).unwrap()), Some(5_000));
        // The previous process started 10 minutes "later" than the clock now says.
        std::fs::write(&path, "605000\n").unwrap();
        assert_eq!(next(&path, 5_000).unwrap(), 605_001);
        assert_eq!(next(&path, 5_000).unwrap(), 605_002, "and it is recorded");
        assert_eq!(
            next(&path, 900_000).unwrap(),
            900_000,
            "a clock past it wins"
        );
    }

    #[test]
    fn a_corrupt_or_odd_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("generation");
        std::fs::write(&path, "12x4").unwrap();
        let err = next(&path, 5_000).unwrap_err().to_string();
        assert!(
            err.contains(&path.display().to_string())
                && err.contains("12x4")
                && err.contains("delete"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "12x4",
            "left as found"
        );
        std::fs::write(&path, "1".repeat(100)).unwrap();
        let err = next(&path, 5_000).unwrap_err().to_string();
        assert!(err.contains("generation") && err.contains("limit"), "{err}");
        let err = next(dir.path(), 5_000).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        // u64::MAX gave every later start the same generation (saturating + 1).
        for far in [u64::MAX, MAX_STORED_GENERATION + 1] {
            std::fs::write(&path, format!("{far}\n")).unwrap();
            let err = next(&path, 5_000).unwrap_err().to_string();
            assert!(err.contains("year 3000") && err.contains("delete"), "{err}");
        }
        std::fs::write(&path, format!("{MAX_STORED_GENERATION}\n")).unwrap();
        assert_eq!(next(&path, 5_000).unwrap(), MAX_STORED_GENERATION + 1);
    }
}
