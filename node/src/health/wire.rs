//! The compact text one checker gossips for one service: its opinion of each backend it checks.
//!
//! One key per (checker, service), `health/<service>`, so a change in one service re-sends only
//! that service's value; a service of more than [`CHUNK_BACKENDS`] backends is split over
//! several keys (see [`chunks`]). Value format, version 1 (about 40 bytes per backend):
//!
//! ```text
//! 1|<addr>,<port>,<state>,<result>,<last_probe_ms>,<since_ms>;<addr>,...
//! state: u up, d down, ? unknown      result: - pending, ok, to timeout, rf refused, s<code>, er
//! times: unix ms in base 36 (8 characters instead of 13 until the year 2059)
//! ```
//!
//! A value from a newer or broken writer decodes to an error value, never a panic; the verdict
//! then treats that checker as not having reported.

use super::hysteresis::CheckState;
use super::result::ProbeResult;
use std::net::IpAddr;
use thiserror::Error;

/// Every health key starts with this, so one prefix scan finds them all.
pub const KEY_PREFIX: &str = "health/";
const VERSION: &str = "1";

/// Backends per value, at most about: a value must fit in one gossip message (128 KiB by
/// default) or it never leaves the checker. One value of a 50,000-endpoint Service was 1.3 MB:
/// every other node saw that checker's opinions as pending, and judged dead backends up.
pub const CHUNK_BACKENDS: usize = 1_000;

/// Between a service's name and a chunk number: names never hold control characters.
const CHUNK_MARK: char = '\u{1f}';

/// The key of one chunk of a service's opinions: chunk 0 is `health/<service>` (all of them
/// while there are at most [`CHUNK_BACKENDS`]), chunk `i` is `health/<service>\u{1f}<i>`.
pub fn key_for(service: &str, chunk: usize) -> String {
    if chunk == 0 {
        format!("{KEY_PREFIX}{service}")
    } else {
        format!("{KEY_PREFIX}{service}{CHUNK_MARK}{chunk}")
    }
}

/// The service a health key is about, or `None` for keys that are not health keys.
pub fn service_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    Some(rest.split(CHUNK_MARK).next().unwrap_or(rest))
}

/// Splits one service's opinions into chunks of about [`CHUNK_BACKENDS`] or fewer. A backend
/// stays in its chunk while the number of chunks stays (a power of two, chosen by a hash of
/// its address): adding one backend re-sends one chunk, not every chunk after it. Readers
/// merge the chunks; which chunk holds a backend is the writer's own business.
pub fn chunks(observations: Vec<Observation>) -> Vec<Vec<Observation>> {
    let n = observations
        .len()
        .div_ceil(CHUNK_BACKENDS)
        .next_power_of_two();
    if n <= 1 {
        return vec![observations];
    }
    let mut out = vec![Vec::new(); n];
    for o in observations {
        let mut h = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&(o.address, o.port), &mut h);
        let i = (std::hash::Hasher::finish(&h) as usize) & (n - 1);
        out[i].push(o);
    }
    out
}

/// One checker's view of one backend, as gossiped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub address: IpAddr,
    pub port: u16,
    pub state: CheckState,
    pub last_result: ProbeResult,
    /// When the last probe finished (unix ms); 0 before the first.
    pub last_probe_ms: u64,
    /// When `state` last changed (unix ms).
    pub since_ms: u64,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("unsupported health value version {0:?} (this node reads version {VERSION})")]
    Version(String),
    #[error("health entry {index}: {field} is invalid: {value:?}")]
    Field {
        index: usize,
        field: &'static str,
        value: String,
    },
    #[error("health entry {index}: expected 6 comma-separated fields, found {found}")]
    Arity { index: usize, found: usize },
}

pub fn encode(observations: &[Observation]) -> String {
    let mut out = String::with_capacity(2 + observations.len() * 48);
    out.push_str(VERSION);
    out.push('|');
    for (i, o) in observations.iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        let state = match o.state {
            CheckState::Up => "u",
            CheckState::Down => "d",
            CheckState::Unknown => "?",
        };
        let result = match o.last_result {
            ProbeResult::Pending => "-".to_string(),
            ProbeResult::Ok => "ok".to_string(),
            ProbeResult::Timeout => "to".to_string(),
            ProbeResult::Refused => "rf".to_string(),
            ProbeResult::Status(code) => format!("s{code}"),
            ProbeResult::Error => "er".to_string(),
        };
        out.push_str(&format!(
            "{},{},{state},{result},{},{}",
            o.address,
            o.port,
            base36(o.last_probe_ms),
            base36(o.since_ms)
        ));
    }
    out
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::with_capacity(13);
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    // Only ASCII digits were pushed.
    String::from_utf8_lossy(&out).into_owned()
}

pub fn decode(value: &str) -> Result<Vec<Observation>, WireError> {
    let (version, body) = value.split_once('|').unwrap_or((value, ""));
    if version != VERSION {
        return Err(WireError::Version(version.chars().take(16).collect()));
    }
    if body.is_empty() {
        return Ok(Vec::new());
    }
    body.split(';')
        .enumerate()
        .map(|(index, entry)| decode_entry(index, entry))
        .collect()
}

fn decode_entry(index: usize, entry: &str) -> Result<Observation, WireError> {
    let fields: Vec<&str> = entry.split(',').collect();
    let [address, port, state, result, last_probe_ms, since_ms] = fields[..] else {
        return Err(WireError::Arity {
            index,
            found: fields.len(),
        });
    };
    let bad = |field: &'static str, value: &str| WireError::Field {
        index,
        field,
        value: value.chars().take(64).collect(),
    };
    let state = match state {
        "u" => CheckState::Up,
        "d" => CheckState::Down,
        "?" => CheckState::Unknown,
        other => return Err(bad("state", other)),
    };
    let last_result = match result {
        "-" => ProbeResult::Pending,
        "ok" => ProbeResult::Ok,
        "to" => ProbeResult::Timeout,
        "rf" => ProbeResult::Refused,
        "er" => ProbeResult::Error,
        other => match other.strip_prefix('s').map(str::parse::<u16>) {
            Some(Ok(code)) => ProbeResult::Status(code),
            _ => return Err(bad("result", other)),
        },
    };
    Ok(Observation {
        address: address.parse().map_err(|_| bad("address", address))?,
        port: port.parse().map_err(|_| bad("port", port))?,
        state,
        last_result,
        last_probe_ms: u64::from_str_radix(last_probe_ms, 36)
            .map_err(|_| bad("last_probe_ms", last_probe_ms))?,
        since_ms: u64::from_str_radix(since_ms, 36).map_err(|_| bad("since_ms", since_ms))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn arb_observation() -> impl Strategy<Value = Observation> {
        let addr = prop_oneof![
            any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
            any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
        ];
        let state = prop_oneof![
            Just(CheckState::Up),
            Just(CheckState::Down),
            Just(CheckState::Unknown)
        ];
        let result = prop_oneof![
            Just(ProbeResult::Pending),
            Just(ProbeResult::Ok),
            Just(ProbeResult::Timeout),
            Just(ProbeResult::Refused),
            Just(ProbeResult::Error),
            any::<u16>().prop_map(ProbeResult::Status),
        ];
        (
            addr,
            any::<u16>(),
            state,
            result,
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(
                |(address, port, state, last_result, last_probe_ms, since_ms)| Observation {
                    address,
                    port,
                    state,
                    last_result,
                    last_probe_ms,
                    since_ms,
                },
            )
    }

    #[test]
    fn value_is_small() {
        let obs = Observation {
            address: "198.18.0.10".parse().unwrap(),
            port: 8080,
            state: CheckState::Up,
            last_result: ProbeResult::Ok,
            last_probe_ms: 1_795_000_000_000,
            since_ms: 1_795_000_000_000,
        };
        let value = encode(&vec![obs; 10]);
        // 40 bytes per entry (separator included) plus the version prefix.
        assert!(value.len() <= 2 + 10 * 40, "{} bytes: {value}", value.len());
        assert!(value.starts_with("1|198.18.0.10,8080,u,ok,"), "{value}");
        assert_eq!(key_for("default/web:http", 0), "health/default/web:http");
        assert_eq!(
            service_of("health/default/web:http"),
            Some("default/web:http")
        );
        assert_eq!(
            service_of(&key_for("default/web:http", 7)),
            Some("default/web:http")
        );
        assert_eq!(service_of("table/x"), None);
    }

    fn observation(i: u32) -> Observation {
        // The longest entries: full IPv6 addresses, five-digit ports, the longest result.
        Observation {
            address: IpAddr::V6(std::net::Ipv6Addr::new(
                0x2001,
                0xdb8,
                0xffff,
                0xffff,
                0xffff,
                0xffff,
                (i >> 16) as u16 | 0xf000,
                i as u16 | 0xf000,
            )),
            port: 65_535,
            state: CheckState::Unknown,
            last_result: ProbeResult::Status(599),
            last_probe_ms: u64::MAX >> 12,
            since_ms: u64::MAX >> 12,
        }
    }

    /// Every chunk of a 50,000-backend service fits in a gossip message (128 KiB) with room to
    /// spare, every backend is in exactly one chunk, and adding a backend leaves the others
    /// where they were while the number of chunks stays.
    #[test]
    fn a_large_service_is_split_into_values_that_fit_a_gossip_message() {
        let all: Vec<Observation> = (0..50_000).map(observation).collect();
        let split = chunks(all.clone());
        assert_eq!(split.len(), 64);
        let mut seen: Vec<Observation> = split.iter().flatten().cloned().collect();
        assert_eq!(seen.len(), all.len());
        seen.sort_by_key(|o| o.address);
        let mut sorted = all.clone();
        sorted.sort_by_key(|o| o.address);
        assert_eq!(seen, sorted);
        let largest = split.iter().map(|c| encode(c).len()).max().unwrap();
        assert!(largest <= 96 << 10, "{largest} bytes");
        for (i, chunk) in split.iter().enumerate() {
            assert_eq!(decode(&encode(chunk)).as_ref(), Ok(chunk), "chunk {i}");
        }

        let mut more = all.clone();
        more.push(observation(50_000));
        let after = chunks(more);
        let moved = split
            .iter()
            .zip(&after)
            .filter(|(before, after)| before != after)
            .count();
        assert_eq!(moved, 1, "only the chunk that took the new backend changes");

        // Up to CHUNK_BACKENDS, one value under the old key.
        assert_eq!(chunks(all[..CHUNK_BACKENDS].to_vec()).len(), 1);
    }

    #[test]
    fn bad_values_are_errors() {
        assert_eq!(decode("2|x"), Err(WireError::Version("2".into())));
        assert_eq!(decode(""), Err(WireError::Version("".into())));
        assert_eq!(decode("1|"), Ok(vec![]));
        assert!(matches!(
            decode("1|1.2.3.4,80,u"),
            Err(WireError::Arity { index: 0, found: 3 })
        ));
        assert!(matches!(
            decode("1|1.2.3.4,80,u,ok,1,2;1.2.3.4,99999,u,ok,1,2"),
            Err(WireError::Field {
                index: 1,
                field: "port",
                ..
            })
        ));
        assert!(matches!(
            decode("1|1.2.3.4,80,x,ok,1,2"),
            Err(WireError::Field { field: "state", .. })
        ));
        assert!(matches!(
            decode("1|1.2.3.4,80,u,s9x,1,2"),
            Err(WireError::Field {
                field: "result",
                ..
            })
        ));
    }

    proptest! {
        #[test]
        fn round_trips(obs in prop::collection::vec(arb_observation(), 0..20)) {
            prop_assert_eq!(decode(&encode(&obs)), Ok(obs));
        }

        #[test]
        fn garbage_never_panics(value in ".{0,200}") {
            let _ = decode(&value);
        }
    }
}
