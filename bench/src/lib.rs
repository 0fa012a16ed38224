//! shoal-bench: the benchmark binaries, in a crate of their own so that the library crates and
//! the release `shoal` binary carry no benchmark code or test-only features.
//!
//! - `gossip-bench`: many real mesh nodes in one process on loopback (detection, spread,
//!   traffic, soak); see docs/benchmarks.md.
//! - `health-bench`: probes per second against cluster size for shared health checks.
//! - `rules-bench`: time to parse and check a rules file against its size, and what each copy
//!   of that table costs a follower as a head of the mesh (size, decode, SHA-256).
