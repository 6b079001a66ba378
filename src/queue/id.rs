//! Queue ids: 64 bits, the upper 44 the unix time in milliseconds, the lower 20 a
//! counter, written as 13 characters of lower-case Crockford base32. Fixed width and an
//! alphabet in ASCII order make the text sort like the number, so `ls msg/` lists the
//! spool oldest first, and the text is safe as a file name on any file system.
//!
//! An id must never repeat within one spool, and never contain a character that is not
//! safe in a file name.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
const LEN: usize = 13;
const COUNTER_BITS: u32 = 20;

/// The id of one spooled message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueId(u64);

impl QueueId {
    pub const fn from_u64(v: u64) -> Self {
        Self(v)
    }
    pub const fn as_u64(self) -> u64 {
        self.0
    }
    /// The unix time in milliseconds at which the id was made (approximately: ids made
    /// faster than 2^20 per millisecond borrow from the next millisecond).
    pub const fn timestamp_ms(self) -> u64 {
        self.0 >> COUNTER_BITS
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; LEN];
        for (i, b) in buf.iter_mut().enumerate() {
            let shift = 5 * (LEN - 1 - i);
            *b = ALPHABET[((self.0 >> shift) & 31) as usize];
        }
        // The alphabet is ASCII, so this cannot fail; fall back to hex rather than panic.
        match std::str::from_utf8(&buf) {
            Ok(s) => f.write_str(s),
            Err(_) => write!(f, "{:016x}", self.0),
        }
    }
}

/// Why a string is not a queue id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a queue id (13 characters of 0-9 a-z without i l o u): {0:?}")]
pub struct BadQueueId(pub String);

impl FromStr for QueueId {
    type Err = BadQueueId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadQueueId(s.to_string());
        if s.len() != LEN {
            return Err(bad());
        }
        let mut v: u64 = 0;
        for (i, c) in s.bytes().enumerate() {
            let d = ALPHABET
                .iter()
                .position(|&a| a == c.to_ascii_lowercase())
                .ok_or_else(bad)? as u64;
            // The first character carries only the top 4 bits (13 * 5 = 65).
            if i == 0 && d > 15 {
                return Err(bad());
            }
            v = (v << 5) | d;
        }
        Ok(Self(v))
    }
}

/// Hands out strictly increasing ids; survives restarts by starting above the largest
/// id found in the spool.
#[derive(Debug, Default)]
pub(crate) struct IdGen {
    last: AtomicU64,
}

impl IdGen {
    /// Ensures every future id is greater than `id`.
    pub(crate) fn observe(&self, id: QueueId) {
        self.last.fetch_max(id.0, Ordering::SeqCst);
    }

    pub(crate) fn next(&self, now_ms: u64) -> QueueId {
        let floor = now_ms.min(u64::MAX >> COUNTER_BITS) << COUNTER_BITS;
        let mut last = self.last.load(Ordering::SeqCst);
        loop {
            let cand = floor.max(last.saturating_add(1));
            match self
                .last
                .compare_exchange_weak(last, cand, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return QueueId(cand),
                Err(actual) => last = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_sort_order() {
        let g = IdGen::default();
        let ids: Vec<QueueId> = (0..1000)
            .map(|i| g.next(1_700_000_000_000 + i / 7))
            .collect();
        for w in ids.windows(2) {
            assert!(w[0] < w[1]);
            assert!(w[0].to_string() < w[1].to_string());
        }
        for id in &ids {
            let s = id.to_string();
            assert_eq!(s.len(), 13);
            assert!(s.bytes().all(|c| c.is_ascii_alphanumeric()));
            assert_eq!(s.parse::<QueueId>().unwrap(), *id);
        }
        for v in [0, 1, u64::MAX, 1 << 63] {
            let id = QueueId(v);
            assert_eq!(id.to_string().parse::<QueueId>().unwrap(), id);
        }
        assert_eq!(ids[0].timestamp_ms(), 1_700_000_000_000);
    }

    #[test]
    fn clock_going_back_or_restart_never_repeats() {
        let g = IdGen::default();
        let a = g.next(2_000_000);
        let b = g.next(1_000_000);
        assert!(b > a);
        let g2 = IdGen::default();
        g2.observe(b);
        assert!(g2.next(5) > b);
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "abc",
            "0000000000000!",
            "g000000000000",
            "000000000000i",
            "../etc/passw",
        ] {
            assert!(s.parse::<QueueId>().is_err(), "{s:?}");
        }
    }
}
