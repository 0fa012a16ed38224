//! Parses durations like `150s`, `30m`, `1h`, `500ms` (a bare number is seconds).

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad duration {value:?}: expected a number with ms, s, m or h (e.g. 150s, 30m, 1h)")]
pub struct DurationError {
    pub value: String,
}

pub fn parse(value: &str) -> Result<Duration, DurationError> {
    let bad = || DurationError {
        value: value.chars().take(32).collect(),
    };
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1_000),
        "m" | "min" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    }
    .ok_or_else(bad)?;
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("150s"), Ok(Duration::from_secs(150)));
        assert_eq!(parse("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("7"), Ok(Duration::from_secs(7)));
        for bad in ["", "s", "1d", "-1s", "1.5h", "99999999999999999999h"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
