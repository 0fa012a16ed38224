//! The Shoal node: the `shoal` binary's daemon, CLI, admin API and rule sources.
//!
//! It owns everything that touches the outside of one LB replica: flags and config files,
//! the rules file and the Kubernetes API (only on the publisher), the admin HTTP API, signals,
//! and the loop that turns the mesh's head into dataplane state. It does not own membership or
//! replication (`shoal-gossip`) nor the kernel's IPVS tables (`shoal-dataplane`).

#![forbid(unsafe_code)]

/// `println!` that returns the write's error instead of panicking: a command piped into `head`
/// must not die with a backtrace when the reader goes away (`main` ends quietly on that error).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// `print!` as [`outln!`] is `println!`.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)
    }};
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
pub mod reconcile;
pub mod rules;
pub mod source;
pub mod state_dir;
pub mod status;
pub mod table;
pub mod tls_reload;
pub mod validate;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
