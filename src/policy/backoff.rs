//! When to try again: per-message retry delays and the upstream-wide connect backoff.
//! It must never produce a synchronised "standing wave" (every delay is jittered), never
//! retry earlier than a provider's own hint, and never read the time or sleep itself.
//!
//! Delays use "full jitter": uniformly random in `[min, min(max, base · 2^attempt)]`.
//! A provider hint is a minimum: the delay is the hint plus up to 10% jitter, or the
//! exponential delay if that is longer. The RNG is seeded, so a simulation is repeatable.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Exponential backoff with full jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    min: Duration,
}

impl Backoff {
    /// `min <= base <= max` is enforced by clamping.
    pub fn new(base: Duration, max: Duration, min: Duration) -> Self {
        let max = max.max(Duration::from_millis(1));
        let base = base.clamp(Duration::from_millis(1), max);
        let min = min.min(base);
        Self { base, max, min }
    }

    /// The upper bound of the delay for `attempt` (0-based): `min(max, base · 2^attempt)`.
    pub fn cap(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// A jittered delay for `attempt`, at least `hint` when the provider gave one.
    pub fn delay(&self, attempt: u32, hint: Option<Duration>, rng: &mut StdRng) -> Duration {
        let cap = self.cap(attempt);
        let jittered = uniform(rng, self.min, cap);
        match hint {
            Some(h) => {
                let spread = h / 10;
                jittered.max(h.saturating_add(uniform(rng, Duration::ZERO, spread)))
            }
            None => jittered,
        }
    }
}

fn uniform(rng: &mut StdRng, lo: Duration, hi: Duration) -> Duration {
    if hi <= lo {
        return lo;
    }
    let span = u64::try_from((hi - lo).as_nanos()).unwrap_or(u64::MAX);
    lo + Duration::from_nanos(rng.random_range(0..=span))
}

/// A seeded RNG; `None` seeds from the operating system.
pub fn rng(seed: Option<u64>) -> StdRng {
    match seed {
        Some(s) => StdRng::seed_from_u64(s),
        None => StdRng::from_os_rng(),
    }
}

/// Upstream-wide backoff after connection failures (refused, timeout, TLS error).
#[derive(Debug, Clone)]
pub struct ConnectBackoff {
    backoff: Backoff,
    failures: u32,
    blocked_until: Duration,
    /// When the first failure of the current run happened (clock time).
    since: Option<Duration>,
}

impl ConnectBackoff {
    pub fn new(backoff: Backoff) -> Self {
        Self {
            backoff,
            failures: 0,
            blocked_until: Duration::ZERO,
            since: None,
        }
    }

    /// A connection attempt failed at `now`: block new connections for a jittered,
    /// exponentially growing time. Returns that time.
    pub fn on_failure(&mut self, now: Duration, rng: &mut StdRng) -> Duration {
        let d = self.backoff.delay(self.failures, None, rng);
        self.failures = self.failures.saturating_add(1);
        self.blocked_until = now.saturating_add(d);
        self.since.get_or_insert(now);
        d
    }

    /// A new connection was refused by a provider that is otherwise working (other
    /// connections carry transactions): the next attempt waits as after a failure, but
    /// the provider is not unreachable (`since` is not started).
    pub fn on_refused(&mut self, now: Duration, rng: &mut StdRng) -> Duration {
        let d = self.backoff.delay(self.failures, None, rng);
        self.failures = self.failures.saturating_add(1);
        self.blocked_until = self.blocked_until.max(now.saturating_add(d));
        d
    }

    /// A connection was established: the upstream is reachable again.
    pub fn on_success(&mut self) {
        self.failures = 0;
        self.blocked_until = Duration::ZERO;
        self.since = None;
    }

    /// The operator asked to try now (`queue retry --all`): the wait ends, the run of
    /// failures (and when it began) is kept until a connection succeeds.
    pub fn try_now(&mut self) {
        self.blocked_until = Duration::ZERO;
    }

    /// When the current run of failures began; `None` while reachable.
    pub fn since(&self) -> Option<Duration> {
        self.since
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// How long until a new connection may be tried, `None` if now.
    pub fn wait(&self, now: Duration) -> Option<Duration> {
        (now < self.blocked_until).then(|| self.blocked_until - now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b() -> Backoff {
        Backoff::new(
            Duration::from_secs(30),
            Duration::from_secs(3600),
            Duration::from_secs(1),
        )
    }

    #[test]
    fn cap_doubles_up_to_max() {
        let b = b();
        assert_eq!(b.cap(0), Duration::from_secs(30));
        assert_eq!(b.cap(3), Duration::from_secs(240));
        assert_eq!(b.cap(10), Duration::from_secs(3600));
        assert_eq!(b.cap(u32::MAX), Duration::from_secs(3600));
    }

    #[test]
    fn full_jitter_spreads_over_the_whole_range() {
        let b = b();
        let mut r = rng(Some(7));
        let cap = b.cap(4).as_secs_f64();
        let mut buckets = [0u32; 10];
        for _ in 0..10_000 {
            let d = b.delay(4, None, &mut r).as_secs_f64();
            assert!((1.0..=cap).contains(&d));
            let i = ((d / cap) * 10.0).min(9.0) as usize;
            buckets[i] += 1;
        }
        // Every tenth of the range gets roughly a tenth of the retries: no standing wave.
        for n in buckets {
            assert!((800..1200).contains(&n), "{buckets:?}");
        }
    }

    #[test]
    fn hint_is_a_minimum_and_still_jittered() {
        let b = b();
        let mut r = rng(Some(1));
        let hint = Duration::from_secs(120);
        let mut distinct = std::collections::BTreeSet::new();
        for _ in 0..100 {
            let d = b.delay(0, Some(hint), &mut r);
            assert!(d >= hint && d <= hint + hint / 10);
            distinct.insert(d);
        }
        assert!(distinct.len() > 90);
    }

    #[test]
    fn same_seed_same_delays() {
        let b = b();
        let (mut x, mut y) = (rng(Some(3)), rng(Some(3)));
        for a in 0..20 {
            assert_eq!(b.delay(a, None, &mut x), b.delay(a, None, &mut y));
        }
    }

    #[test]
    fn connect_backoff_grows_and_resets() {
        let mut c = ConnectBackoff::new(Backoff::new(
            Duration::from_secs(1),
            Duration::from_secs(300),
            Duration::ZERO,
        ));
        let mut r = rng(Some(9));
        let now = Duration::from_secs(100);
        assert_eq!(c.wait(now), None);
        let d = c.on_failure(now, &mut r);
        assert!(d <= Duration::from_secs(1));
        for _ in 0..20 {
            c.on_failure(now, &mut r);
        }
        assert_eq!(c.failures(), 21);
        assert!(c.wait(now).is_some_and(|w| w <= Duration::from_secs(300)));
        c.on_success();
        assert_eq!(c.wait(now), None);
        // Refused while others work: a wait, but not unreachable.
        let d = c.on_refused(now, &mut r);
        assert!(c.wait(now).is_some() || d.is_zero());
        assert_eq!(c.since(), None);
    }
}
