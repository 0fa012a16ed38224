//! shoal-chaos: kills, freezes and cuts Shoal nodes for real, and checks after every fault that
//! the cluster keeps its promises; plus a deterministic simulation of the pure core.
//!
//! Owns: the network-namespace lab (`lab`), seeded fault schedules (`schedule`), the workload
//! that edits the rules file (`workload`), polling the admin API (`observer`, `observation`),
//! the invariant checkers (`check`), the run loop (`runner`), reports (`report`, `stats`) and
//! the simulation (`sim`), which drives `shoal_gossip`'s election/head rules and
//! `shoal_node::health`'s verdict rules without sockets or clocks; and the long-lived checked
//! flows of the VM lab's end-to-end scenarios (`flows`, driven by the `lab-flows` binary); and
//! the glue from the `shoal-chaos` command line to a run (`launch`).
//! Does not own: the node, the mesh or the dataplane; it only drives the `shoal` binary from
//! outside, through its CLI and admin API. Nor the VM lab under `chaos/lab/vm/`.

pub mod check;
pub mod duration;
pub mod effects;
pub mod flows;
pub mod lab;
pub mod launch;
pub mod observation;
pub mod observer;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod sim;
pub mod stats;
pub mod steady;
pub mod workload;
