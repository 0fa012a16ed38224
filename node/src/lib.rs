//! The Shoal node: the `shoal` binary's daemon, CLI, admin API and rule sources.
//!
//! It owns everything that touches the outside of one LB replica: flags and config files,
//! the rules file and the Kubernetes API (only on the publisher), the admin HTTP API, signals,
//! and the loop that turns the mesh's head into dataplane state. It does not own membership or
//! replication (`shoal-gossip`) nor the kernel's IPVS tables (`shoal-dataplane`).

#![forbid(unsafe_code)]

/// `println!` that returns the write's error instead of panicking: a command piped into `head`
/// must not die with a backtrace when the reader goes away (`main` ends quietly on that error).
/// Control characters other than newline and tab are written escaped ([`terminal_safe`]): much
/// of what the CLI prints comes from a node or a file (names, errors), and an escape sequence
/// in it must not drive the operator's terminal.
macro_rules! outln {
    () => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock())
    }};
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let text = format!($($arg)*);
        writeln!(std::io::stdout().lock(), "{}", $crate::terminal_safe(&text))
    }};
}

/// `print!` as [`outln!`] is `println!`.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let text = format!($($arg)*);
        write!(std::io::stdout().lock(), "{}", $crate::terminal_safe(&text))
    }};
}

/// `text` with every control character but newline and tab written as `\uXXXX` (which is
/// also how JSON escapes them, so JSON output stays JSON): an ESC from a hostile node or a
/// rules file's key prints as `\u001b`, not as a command to the terminal.
pub fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

pub mod admin;
pub mod announce;
pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod desired;
pub mod drains_file;
pub mod health;
pub mod log_gate;
pub mod mesh_metrics;
pub mod metrics;
pub mod publisher_duty;
pub mod reconcile;
pub mod rules;
pub mod rules_drift;
pub mod source;
pub mod state_dir;
pub mod status;
mod stop_signals;
pub mod table;
pub mod tls_reload;
pub mod validate;

/// A wall-clock instant as people read it in logs and reasons (RFC 3339, UTC).
pub fn rfc3339(t: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "an unknown time".into())
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_escaped_and_text_is_left_alone() {
        assert_eq!(super::terminal_safe("a\tb\nc é ✓"), "a\tb\nc é ✓");
        assert_eq!(
            super::terminal_safe("\u{1b}[2J\r\u{7}\u{9b}31m"),
            "\\u001b[2J\\u000d\\u0007\\u009b31m"
        );
    }
}
