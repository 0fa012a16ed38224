//! `HealthBoard` over the real gossip mesh: opinions ride in this node's own chitchat keys.

use super::board::HealthBoard;
use crate::table::RuleTable;
use shoal_gossip::version::NodeId;
use shoal_gossip::Mesh;

pub struct MeshBoard {
    mesh: Mesh<RuleTable>,
}

impl MeshBoard {
    pub fn new(mesh: Mesh<RuleTable>) -> Self {
        MeshBoard { mesh }
    }
}

impl HealthBoard for MeshBoard {
    fn node_id(&self) -> NodeId {
        self.mesh.node_id().clone()
    }

    fn live_members(&self) -> Vec<NodeId> {
        let mut live = self.mesh.live_members();
        live.sort();
        live.dedup();
        live
    }

    fn set_key(&self, key: &str, value: &str) {
        self.mesh.set_app_key(key, value);
    }

    fn delete_key(&self, key: &str) {
        self.mesh.delete_app_key(key);
    }

    fn keys(&self, prefix: &str) -> Vec<(NodeId, String, String)> {
        self.mesh.app_keys(prefix)
    }
}
