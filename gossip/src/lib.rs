//! Shoal's peer mesh: membership, publisher election and version-stamped replication of one
//! document, over QUIC with mutual TLS.
//!
//! Owns: the chitchat gossip membership (tuned failure detector, graceful leave, restarts with
//! a higher generation), one QUIC endpoint per node carrying gossip and document transfers, the
//! cluster CA and node certificates, the pure decisions (election, head, catch-up, stamping) and
//! the cluster view.
//!
//! Does not own: what the document means (it is generic over [`Document`] and knows nothing of
//! IPVS), where documents come from (the node reads the source and calls [`Mesh::publish`]),
//! programming the dataplane (the node calls [`Mesh::set_applied`] once it has), the CLI.
//!
//! Reading order: `version.rs`, `election.rs`, `head.rs`, `liveness.rs`, `rendezvous.rs`,
//! `spread.rs`, `hedge.rs`, `delta.rs` (pure rules), `view.rs`, `replica/` (the sans-IO state machine that
//! applies them; the chaos simulation drives it too),
//! `mesh.rs` (the async shell), `transport/`, `transfer.rs` and `patches.rs` (bytes on the wire). See
//! docs/internals/gossip.md.
//!
//! Feature `fault-injection` (tests, benchmarks, the chaos build; never the release binary):
//! `Mesh::fault_hook` to cut traffic, and `replica::Bug`, deliberate defects of the core.

#![forbid(unsafe_code)]

pub mod certs;
mod config;
pub mod delta;
pub mod election;
mod epoch_file;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod generation_file;
pub mod head;
pub mod hedge;
mod identity;
pub mod incarnation;
mod keys;
pub mod liveness;
mod mesh;
mod patches;
pub mod rendezvous;
pub mod replica;
pub mod reservation;
mod security;
pub mod small_file;
pub mod spread;
mod transfer;
pub mod transport;
pub mod version;
pub mod view;

pub use certs::TlsMaterial;
pub use config::{MeshConfig, Security, Timing, DEFAULT_CLUSTER_ID};
pub use election::{Role, RoleReason};
pub use error::{CertError, MeshError, PublishError, TransferError};
pub use head::HeadInfo;
pub use mesh::{DocumentsServed, Mesh, Stamped};
pub use transfer::digest_hex;
#[cfg(feature = "fault-injection")]
pub use transport::FaultHook;
pub use transport::{Refusal, Traffic};
pub use version::{NodeId, Version};
pub use view::{ClusterView, MemberView};

/// The replicated document: anything serde can carry (moved between nodes as bincode 2).
pub trait Document:
    serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static
{
}
impl<T: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static> Document
    for T
{
}
