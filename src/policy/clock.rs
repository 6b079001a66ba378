//! The one notion of time of a running relay: a clock that can be real or driven by hand,
//! injected into the controller and, through it, into queue mode's delivery engine. It
//! must never sleep; simulation depends on every time-dependent decision going through
//! one injected [`Clock`].
//!
//! Two readings: [`Clock::now`], a [`Duration`] since the clock's own origin, monotonic,
//! for every decision (the controller, governor through [`GovernorClock`], so rate
//! limiting and the controller agree on "now"); and [`Clock::unix_ms`], wall time in Unix
//! milliseconds, for what outlives the process (retry times and arrival stamps in the
//! spool, the quota ledger). Only [`SystemClock::unix_ms`] reads the system's wall clock
//! ([`wall_ms`]); nothing in the controller's decisions does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::nanos::Nanos;

/// A monotonic time source. `now()` never goes backwards.
pub trait Clock: Clone + Send + Sync + 'static {
    /// Time elapsed since this clock's origin.
    fn now(&self) -> Duration;
    /// Wall time, Unix milliseconds, for records that outlive the process.
    fn unix_ms(&self) -> u64;
}

/// The system's wall clock in Unix milliseconds (0 before 1970). The spool stamps its
/// records with it too, so the spool and the [`SystemClock`] read the same time.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The real clock: `std::time::Instant` measured from when the clock was created.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
    fn unix_ms(&self) -> u64 {
        wall_ms()
    }
}

/// A clock that only moves when told to. Clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves time forward by `by` (saturating at ~584 years).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // fetch_update with a closure that always returns Some cannot fail.
        let _ = self
            .nanos
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(by))
            });
    }

    /// Moves time forward to `t`; does nothing if `t` is in the past (time is monotonic).
    pub fn advance_to(&self, t: Duration) {
        let t = u64::try_from(t.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_max(t, Ordering::AcqRel);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Acquire))
    }
    /// The same time as `now`, its origin taken for the Unix epoch.
    fn unix_ms(&self) -> u64 {
        u64::try_from(self.now().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Adapts any [`Clock`] to governor's clock trait, so a `ManualClock` drives the GCRA too.
#[derive(Debug, Clone)]
pub struct GovernorClock<C>(pub C);

impl<C: Clock> governor::clock::Clock for GovernorClock<C> {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.0.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_is_shared_and_monotonic() {
        let a = ManualClock::new();
        let b = a.clone();
        a.advance(Duration::from_secs(3));
        assert_eq!(b.now(), Duration::from_secs(3));
        b.advance_to(Duration::from_secs(1));
        assert_eq!(a.now(), Duration::from_secs(3));
        b.advance_to(Duration::from_secs(5));
        assert_eq!(a.now(), Duration::from_secs(5));
    }

    #[test]
    fn governor_sees_the_same_time() {
        let c = ManualClock::new();
        c.advance(Duration::from_millis(1500));
        let g = GovernorClock(c.clone());
        let n = governor::clock::Clock::now(&g);
        assert_eq!(Duration::from(n), Duration::from_millis(1500));
    }

    #[test]
    fn system_clock_moves_forward() {
        let c = SystemClock::new();
        let a = c.now();
        let b = c.now();
        assert!(b >= a);
    }
}
