//! Test hook: drop traffic between this node and chosen peers, in either or both directions.
//!
//! Compiled only with the `fault-injection` feature (tests, benchmarks, chaos builds). Without
//! it, [`FaultHook`] is an empty type whose checks are constant `false`: the release binary
//! carries no test switch on its send and receive paths.

#[cfg(not(feature = "fault-injection"))]
mod off {
    use std::net::SocketAddr;

    /// The fault hook of a production build: drops nothing.
    #[derive(Clone, Copy, Default, Debug)]
    pub struct FaultHook {
        _nothing: (),
    }

    impl FaultHook {
        #[inline(always)]
        pub(crate) fn drops_inbound(&self, _peer: &SocketAddr) -> bool {
            false
        }
        #[inline(always)]
        pub(crate) fn drops_outbound(&self, _peer: &SocketAddr) -> bool {
            false
        }
    }
}
#[cfg(not(feature = "fault-injection"))]
pub use off::FaultHook;

#[cfg(feature = "fault-injection")]
pub use on::FaultHook;

#[cfg(feature = "fault-injection")]
mod on {

    use std::collections::HashSet;
    use std::net::SocketAddr;
    use std::sync::{Arc, RwLock};

    #[derive(Default, Debug)]
    struct Blocks {
        inbound: HashSet<SocketAddr>,
        outbound: HashSet<SocketAddr>,
        isolated: bool,
    }

    /// Drops gossip and transfers between this node and the given peer addresses.
    /// Shared by clones; consulted by the transport on every send and receive.
    #[derive(Clone, Default, Debug)]
    pub struct FaultHook {
        blocks: Arc<RwLock<Blocks>>,
    }

    impl FaultHook {
        fn with(&self, f: impl FnOnce(&mut Blocks)) {
            // A poisoned lock only means a panicking test thread; the sets are still usable.
            let mut guard = self.blocks.write().unwrap_or_else(|e| e.into_inner());
            f(&mut guard);
        }

        /// Drops all traffic to and from `peer`.
        pub fn block(&self, peer: SocketAddr) {
            self.with(|b| {
                b.inbound.insert(peer);
                b.outbound.insert(peer);
            });
        }
        /// Drops only what `peer` sends to this node.
        pub fn block_inbound(&self, peer: SocketAddr) {
            self.with(|b| {
                b.inbound.insert(peer);
            });
        }
        /// Drops only what this node sends to `peer`.
        pub fn block_outbound(&self, peer: SocketAddr) {
            self.with(|b| {
                b.outbound.insert(peer);
            });
        }
        pub fn unblock(&self, peer: SocketAddr) {
            self.with(|b| {
                b.inbound.remove(&peer);
                b.outbound.remove(&peer);
            });
        }
        /// Drops all traffic with every peer: the node looks frozen to the others.
        pub fn isolate(&self) {
            self.with(|b| b.isolated = true);
        }
        /// Removes every block.
        pub fn heal(&self) {
            self.with(|b| *b = Blocks::default());
        }

        pub(crate) fn drops_inbound(&self, peer: &SocketAddr) -> bool {
            let b = self.blocks.read().unwrap_or_else(|e| e.into_inner());
            b.isolated || b.inbound.contains(peer)
        }
        pub(crate) fn drops_outbound(&self, peer: &SocketAddr) -> bool {
            let b = self.blocks.read().unwrap_or_else(|e| e.into_inner());
            b.isolated || b.outbound.contains(peer)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn block_unblock_heal() {
            let hook = FaultHook::default();
            let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
            let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
            hook.block(a);
            hook.block_outbound(b);
            assert!(hook.drops_inbound(&a) && hook.drops_outbound(&a));
            assert!(!hook.drops_inbound(&b) && hook.drops_outbound(&b));
            hook.clone().unblock(a);
            assert!(!hook.drops_inbound(&a));
            hook.isolate();
            assert!(hook.drops_inbound(&a));
            hook.heal();
            assert!(!hook.drops_outbound(&b) && !hook.drops_inbound(&a));
        }
    }
}
