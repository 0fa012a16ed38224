//! Shoal's fuzz targets: every decoder that takes bytes from the network or from disk.
//!
//! Each target is a plain function `fn(&[u8])` that must never panic on any input and checks
//! the decoder's promises on what it accepts (round trips, canonical output). Three drivers run
//! the same functions:
//! - `tests/replay.rs` (stable, part of `cargo test`, so CI): the seeds, every file kept in
//!   `fuzz/regressions/<target>/`, and a fixed number of seeded random mutations of the seeds;
//! - `fuzz/libfuzzer/` (cargo-fuzz on nightly, coverage-guided): `scripts/fuzz.sh`;
//! - `shoal-fuzz-seeds` writes the seeds as files, the starting corpus of libFuzzer.
//!
//! Adding a target: a module with `run` and `seeds`, one line in [`TARGETS`], and a
//! three-line file in `fuzz/libfuzzer/fuzz_targets/` (plus its `[[bin]]` entry).

#![forbid(unsafe_code)]

pub mod announce_report;
pub mod bird_reply;
pub mod cert_pem;
pub mod document;
pub mod epoch_file;
pub mod gossip_payload;
pub mod gossip_session;
pub mod health_wire;
pub mod ipvs_reply;
pub mod member_keys;
pub mod rules_file;
pub mod transfer_frame;

/// One fuzz target.
pub struct Target {
    /// Also the cargo-fuzz binary's name and the corpus folder's.
    pub name: &'static str,
    /// Must not panic, whatever the bytes.
    pub run: fn(&[u8]),
    /// Valid inputs to start from.
    pub seeds: fn() -> Vec<Vec<u8>>,
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "rules_file",
        run: rules_file::run,
        seeds: rules_file::seeds,
    },
    Target {
        name: "health_wire",
        run: health_wire::run,
        seeds: health_wire::seeds,
    },
    Target {
        name: "ipvs_reply",
        run: ipvs_reply::run,
        seeds: ipvs_reply::seeds,
    },
    Target {
        name: "gossip_payload",
        run: gossip_payload::run,
        seeds: gossip_payload::seeds,
    },
    Target {
        name: "gossip_session",
        run: gossip_session::run,
        seeds: gossip_session::seeds,
    },
    Target {
        name: "transfer_frame",
        run: transfer_frame::run,
        seeds: transfer_frame::seeds,
    },
    Target {
        name: "member_keys",
        run: member_keys::run,
        seeds: member_keys::seeds,
    },
    Target {
        name: "epoch_file",
        run: epoch_file::run,
        seeds: epoch_file::seeds,
    },
    Target {
        name: "cert_pem",
        run: cert_pem::run,
        seeds: cert_pem::seeds,
    },
    Target {
        name: "document",
        run: document::run,
        seeds: document::seeds,
    },
    Target {
        name: "bird_reply",
        run: bird_reply::run,
        seeds: bird_reply::seeds,
    },
    Target {
        name: "announce_report",
        run: announce_report::run,
        seeds: announce_report::seeds,
    },
];
