//! Carrying out `Action::Announce` (`replica/announce.rs`): a direct gossip exchange with each
//! child in the new head's spread tree, applied after the key writes queued before it.

use super::{lock, Inner};
use crate::Document;
use std::net::SocketAddr;
use tracing::debug;

impl<D: Document> Inner<D> {
    /// Starts a gossip exchange with each of `to` at once (chitchat's directed gossip).
    pub(super) fn gossip_now(&self, to: &[SocketAddr]) {
        debug!(node = %self.node_id, children = ?to, "new head: announcing it to the spread tree's children");
        if let Some(handle) = lock(&self.handle).as_ref() {
            for addr in to {
                let _ = handle.gossip(*addr);
            }
        }
    }
}
