//! Percentile summaries of measured durations (nearest-rank, so every figure was measured).

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub count: usize,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

/// Nearest-rank percentile `p` (0-100] of `sorted` (ascending, non-empty).
fn rank(sorted: &[u64], p: u64) -> u64 {
    let n = sorted.len() as u64;
    let idx = (p * n).div_ceil(100).clamp(1, n) - 1;
    sorted[idx as usize]
}

pub fn summarize(samples_ms: &[u64]) -> Summary {
    if samples_ms.is_empty() {
        return Summary::default();
    }
    let mut s = samples_ms.to_vec();
    s.sort_unstable();
    Summary {
        count: s.len(),
        p50_ms: rank(&s, 50),
        p99_ms: rank(&s, 99),
        max_ms: s[s.len() - 1],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nearest_rank() {
        let s = summarize(&[5, 1, 3, 2, 4]);
        assert_eq!((s.count, s.p50_ms, s.p99_ms, s.max_ms), (5, 3, 5, 5));
        let hundred: Vec<u64> = (1..=100).collect();
        let s = summarize(&hundred);
        assert_eq!((s.p50_ms, s.p99_ms, s.max_ms), (50, 99, 100));
        assert_eq!(summarize(&[]), Summary::default());
    }

    proptest! {
        #[test]
        fn ordered_and_measured(v in proptest::collection::vec(0u64..10_000, 1..200)) {
            let s = summarize(&v);
            prop_assert!(s.p50_ms <= s.p99_ms && s.p99_ms <= s.max_ms);
            prop_assert!(v.contains(&s.p50_ms) && v.contains(&s.p99_ms));
            prop_assert_eq!(s.max_ms, *v.iter().max().unwrap());
        }
    }
}
