//! The figures the modes print: nearest-rank percentiles and the process's CPU time.

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// (p50, p99, max, count) of the samples.
pub fn summary(mut samples: Vec<f64>) -> (f64, f64, f64, usize) {
    samples.sort_by(|a, b| a.total_cmp(b));
    (
        percentile(&samples, 50.0),
        percentile(&samples, 99.0),
        samples.last().copied().unwrap_or(f64::NAN),
        samples.len(),
    )
}

/// CPU seconds (user + system) this process has used so far, from /proc/self/stat.
/// The kernel reports them in USER_HZ ticks, which Linux fixes at 100 for user space.
pub fn process_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_nearest_rank() {
        let (p50, p99, max, n) = summary((1..=100).rev().map(f64::from).collect());
        assert_eq!((p50, p99, max, n), (51.0, 99.0, 100.0, 100));
        assert!(summary(vec![]).0.is_nan());
    }
}
