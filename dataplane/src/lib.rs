//! Shoal's dataplane: it owns the kernel's load-balancing rules on one node.
//!
//! What it owns: the value types of a rule table (`model`), the pure diff from actual to
//! desired state (`plan`), draining and the reconcile pass (`reconcile`), the `Dataplane`
//! trait with an IPVS backend over generic netlink (`ipvs`) and an in-memory twin (`memory`),
//! node plumbing (VIPs on the `shoal0` dummy interface, IPVS sysctls) and backend-pod setup
//! (`backend_init`: a VIP on `tunl0`, or whole pools through local routes, `local_route`).
//!
//! What it does not own: where the desired table comes from (the node reads it from gossip),
//! health checking, the gossip mesh, and any Kubernetes type. It never touches an IPVS service
//! it does not manage (see `plan` for the ownership rule), except that a table declared Shoal's
//! alone (`TableOwnership::Exclusive`) is flushed without first listing what appeared since the
//! last full read.

#![forbid(unsafe_code)]

pub mod backend;
pub mod backend_init;
pub mod error;
pub mod filter;
pub mod ipvs;
pub mod link;
pub mod local_route;
pub mod memory;
pub mod model;
pub mod netlink;
pub mod op;
pub mod plan;
pub mod reconcile;
pub mod route;
pub mod sysctl;
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod testing;

pub use backend::{Applied, Dataplane};
pub use error::DataplaneError;
pub use ipvs::{IpvsDataplane, IpvsOptions};
pub use memory::MemoryDataplane;
pub use model::*;
pub use op::Op;
pub use plan::{plan, plan_view, Actual, Desired, View};
pub use reconcile::{
    list_before_sending, reconcile, reconcile_until, Draining, Pending, ReadBefore,
    ReconcileReport, Reconciler, TableOwnership, DEFAULT_DRIFT_CHECK, MAX_DRIFT_GIVE_WAYS,
};
