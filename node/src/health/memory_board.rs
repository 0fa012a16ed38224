//! The in-memory twin of the mesh: one shared store, one board per node, nodes can be killed.
//!
//! Every board sees the same store at once (no propagation delay), so tests measure the health
//! logic, not gossip. A killed node drops out of every live list and its keys vanish, as with a
//! restart under a new generation; reviving it starts it with an empty key space.

use super::board::HealthBoard;
use shoal_gossip::version::NodeId;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Default)]
struct Store {
    /// Live nodes and their keys.
    nodes: BTreeMap<NodeId, BTreeMap<String, String>>,
}

/// The shared store: hands out boards and kills or revives nodes.
#[derive(Clone, Default)]
pub struct MemoryCluster {
    store: Arc<Mutex<Store>>,
}

impl MemoryCluster {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `id` as a live member and returns its board.
    pub fn join(&self, id: &str) -> Arc<MemoryBoard> {
        let id = NodeId::new(id);
        self.lock().nodes.entry(id.clone()).or_default();
        Arc::new(MemoryBoard {
            id,
            cluster: self.clone(),
        })
    }

    /// Marks `id` dead: it leaves every live list and its keys are dropped.
    pub fn kill(&self, id: &str) {
        self.lock().nodes.remove(&NodeId::new(id));
    }

    /// Brings `id` back with an empty key space (its old board works again).
    pub fn revive(&self, id: &str) {
        self.lock().nodes.entry(NodeId::new(id)).or_default();
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        // A test that panicked while holding the lock already failed; keep the data usable.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One node's view of the shared store.
pub struct MemoryBoard {
    id: NodeId,
    cluster: MemoryCluster,
}

impl HealthBoard for MemoryBoard {
    fn node_id(&self) -> NodeId {
        self.id.clone()
    }

    fn live_members(&self) -> Vec<NodeId> {
        self.cluster.lock().nodes.keys().cloned().collect()
    }

    fn set_key(&self, key: &str, value: &str) {
        // A dead node's writes go nowhere, like gossip from a node the others consider dead.
        if let Some(keys) = self.cluster.lock().nodes.get_mut(&self.id) {
            keys.insert(key.to_string(), value.to_string());
        }
    }

    fn delete_key(&self, key: &str) {
        if let Some(keys) = self.cluster.lock().nodes.get_mut(&self.id) {
            keys.remove(key);
        }
    }

    fn keys(&self, prefix: &str) -> Vec<(NodeId, String, String)> {
        let store = self.cluster.lock();
        store
            .nodes
            .iter()
            .flat_map(|(node, keys)| {
                keys.range(prefix.to_string()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(k, v)| (node.clone(), k.clone(), v.clone()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_hides_node_and_keys() {
        let cluster = MemoryCluster::new();
        let a = cluster.join("a");
        let b = cluster.join("b");
        a.set_key("health/x", "1");
        a.set_key("other", "2");
        b.set_key("health/y", "3");
        assert_eq!(b.live_members(), vec![NodeId::new("a"), NodeId::new("b")]);
        assert_eq!(b.keys("health/").len(), 2);
        cluster.kill("a");
        assert_eq!(b.live_members(), vec![NodeId::new("b")]);
        a.set_key("health/z", "4");
        assert_eq!(
            b.keys("health/"),
            vec![(NodeId::new("b"), "health/y".into(), "3".into())]
        );
        cluster.revive("a");
        assert_eq!(b.keys("health/").len(), 1);
        b.delete_key("health/y");
        assert!(a.keys("health/").is_empty());
    }
}
