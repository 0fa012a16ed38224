//! The mesh as the health runner sees it: a membership list and per-node gossiped keys.
//!
//! `mesh_board.rs` adapts the real gossip mesh; `memory_board.rs` is the in-memory twin used by
//! tests and the benchmark.

use shoal_gossip::version::NodeId;

pub trait HealthBoard: Send + Sync + 'static {
    fn node_id(&self) -> NodeId;
    /// Live members, sorted, including this node.
    fn live_members(&self) -> Vec<NodeId>;
    /// Sets a key in this node's own gossiped key space.
    fn set_key(&self, key: &str, value: &str);
    fn delete_key(&self, key: &str);
    /// `(node, key, value)` for every key starting with `prefix`, from live members incl. self.
    fn keys(&self, prefix: &str) -> Vec<(NodeId, String, String)>;
}
