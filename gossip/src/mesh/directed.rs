//! Directed gossip: an exchange the mesh asks for with given peers at once (a new head's
//! children in the spread tree, `Action::Announce`; death reports; contacts; the leave), never
//! held back by the pacing of this node's own rounds (`transport/pace.rs`).

use super::{lock, Inner};
use crate::Document;
use std::net::SocketAddr;
use tracing::debug;

impl<D: Document> Inner<D> {
    /// Starts a gossip exchange with each of `to` at once (chitchat's directed gossip).
    pub(super) fn gossip_now(&self, to: &[SocketAddr]) {
        debug!(node = %self.node_id, peers = ?to, "gossiping to these peers now");
        if let Some(handle) = lock(&self.handle).as_ref() {
            for addr in to {
                self.transport.grant_gossip(*addr);
                let _ = handle.gossip(*addr);
            }
        }
    }
}
