//! The one weight function of Shoal's rendezvous (highest-random-weight) hashing: who fetches a
//! new head from whom (`spread`) and which nodes check a backend (the node's `health::assign`).
//!
//! `weight(&[a, b, ...]) = sha256(a || 0 || b || 0 || ...)`: the zero byte between parts keeps
//! `("ab", "c")` and `("a", "bc")` from weighing alike (ids, digests and backend keys hold no
//! zero byte). Callers decide whether the lowest or the highest weight wins.
//!
//! Not used by the L2 VIP owner (`node/src/announce/decide.rs`, `sha256(id + "#" + vip)`): nodes
//! of two releases must agree on a VIP's owner during a rolling upgrade, so that hash stays as
//! it is.

use sha2::{Digest, Sha256};

/// The rendezvous weight of `parts`, joined by zero bytes.
pub fn weight(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hasher.update([0u8]);
        }
        hasher.update(part);
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The same bytes as hashing the parts joined by a zero byte in one piece: the weights
        /// the spread tree and the health assignment used before they shared this function.
        #[test]
        fn equals_sha256_of_the_parts_joined_by_zero(
            parts in proptest::collection::vec("[a-z0-9.|-]{0,12}", 1..4),
        ) {
            let joined = parts.join("\0");
            let want: [u8; 32] = Sha256::digest(joined.as_bytes()).into();
            let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
            prop_assert_eq!(weight(&refs), want);
        }

        /// The separator keeps a moved boundary from giving the same weight.
        #[test]
        fn a_moved_boundary_weighs_differently(a in "[a-z]{1,8}", b in "[a-z]{1,8}") {
            let moved = format!("{a}{}", &b[..1]);
            prop_assert_ne!(
                weight(&[a.as_bytes(), b.as_bytes()]),
                weight(&[moved.as_bytes(), &b.as_bytes()[1..]])
            );
        }
    }
}
