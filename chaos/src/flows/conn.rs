//! One long-lived connection's checks: the byte sequence it sends and expects back (any lost,
//! duplicated or reordered byte shows as a mismatch), and its stall (the longest time it had
//! bytes in flight and received nothing).

/// Byte `offset` of connection `conn`'s sequence: a keyed hash of (conn, offset / 8), so a lost,
/// duplicated or reordered chunk never lines up with the expected bytes again.
pub fn seq_byte(conn: u64, offset: u64) -> u8 {
    let word = splitmix64(conn.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (offset / 8));
    (word >> ((offset % 8) * 8)) as u8
}

/// Fills `buf` with the sequence of `conn` starting at `offset`.
pub fn fill(conn: u64, offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = seq_byte(conn, offset + i as u64);
    }
}

/// Index (within `got`) of the first byte that differs from the sequence at `offset`.
pub fn first_mismatch(conn: u64, offset: u64, got: &[u8]) -> Option<usize> {
    got.iter()
        .enumerate()
        .find(|(i, b)| **b != seq_byte(conn, offset + *i as u64))
        .map(|(i, _)| i)
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The stall of one connection: the longest time it had bytes in flight and received nothing.
/// A healthy connection's stall is about one round trip; a failover shows as one long stall.
#[derive(Debug, Clone, Default)]
pub struct StallTracker {
    sent: u64,
    received: u64,
    /// Since when bytes have been outstanding without progress (ms).
    waiting_since_ms: Option<u64>,
    max_stall_ms: u64,
    /// When the longest finished stall began (ms).
    max_stall_from_ms: u64,
}

impl StallTracker {
    pub fn on_sent(&mut self, bytes: u64, now_ms: u64) {
        if self.sent == self.received && bytes > 0 {
            self.waiting_since_ms = Some(now_ms);
        }
        self.sent += bytes;
    }

    pub fn on_received(&mut self, bytes: u64, now_ms: u64) {
        if bytes == 0 {
            return;
        }
        if let Some(since) = self.waiting_since_ms {
            let stall = now_ms.saturating_sub(since);
            if stall > self.max_stall_ms {
                self.max_stall_ms = stall;
                self.max_stall_from_ms = since;
            }
        }
        self.received += bytes;
        self.waiting_since_ms = (self.received < self.sent).then_some(now_ms);
    }

    /// The stall going on now (0 when nothing is outstanding).
    pub fn current_stall_ms(&self, now_ms: u64) -> u64 {
        self.waiting_since_ms
            .map(|s| now_ms.saturating_sub(s))
            .unwrap_or(0)
    }

    /// The longest stall so far, counting one still going on.
    pub fn max_stall_ms(&self, now_ms: u64) -> u64 {
        self.max_stall_ms.max(self.current_stall_ms(now_ms))
    }

    /// When the longest stall so far began (0: none yet), counting one still going on.
    pub fn max_stall_from_ms(&self, now_ms: u64) -> u64 {
        match self.waiting_since_ms {
            Some(since) if self.current_stall_ms(now_ms) > self.max_stall_ms => since,
            _ => self.max_stall_from_ms,
        }
    }

    pub fn sent(&self) -> u64 {
        self.sent
    }

    pub fn received(&self) -> u64 {
        self.received
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    #[test]
    fn sequences_differ_per_connection_and_offset() {
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        fill(1, 0, &mut a);
        fill(2, 0, &mut b);
        assert_ne!(a, b);
        fill(1, 8, &mut b);
        assert_ne!(a, b);
        assert_eq!(first_mismatch(1, 0, &a), None);
        // A duplicated chunk (replay of offset 0 at offset 64) is caught.
        assert!(first_mismatch(1, 64, &a).is_some());
    }

    #[test]
    fn stall_is_time_without_progress_while_bytes_are_out() {
        let mut t = StallTracker::default();
        t.on_sent(10, 1000);
        t.on_received(10, 1003);
        assert_eq!(t.max_stall_ms(1003), 3);
        // Idle time with nothing outstanding is no stall.
        assert_eq!(t.max_stall_ms(5000), 3);
        t.on_sent(10, 5000);
        t.on_sent(10, 5050);
        assert_eq!(t.current_stall_ms(5900), 900);
        t.on_received(5, 5900);
        t.on_received(15, 5910);
        assert_eq!(t.max_stall_ms(6000), 900);
        assert_eq!(t.max_stall_from_ms(6000), 5000);
        assert_eq!((t.sent(), t.received()), (30, 30));
    }

    proptest! {
        #[test]
        fn any_corruption_is_found(conn in 0u64..1000, offset in 0u64..100_000, at in 0usize..256, flip in 1u8..=255) {
            let mut buf = vec![0u8; 256];
            fill(conn, offset, &mut buf);
            prop_assert_eq!(first_mismatch(conn, offset, &buf), None);
            buf[at] ^= flip;
            prop_assert_eq!(first_mismatch(conn, offset, &buf), Some(at));
        }
    }
}
