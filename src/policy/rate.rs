//! The sending rate (messages per second) and the GCRA limiter that enforces it. It must
//! never go below the floor or above the profile's ceiling, never sleep, and never read
//! the time itself: every decision takes `now` from the controller's clock.
//!
//! [`RateState`] is the arithmetic:
//! - start at the profile rate (`None` = unlimited until the provider says otherwise);
//! - on `Throttle(Rate)`: if we were probing above a rate that held for a whole probe
//!   interval, go straight back to that rate (the probe failed, the limit did not move);
//!   otherwise halve, down to the floor. Either way remember the throttled rate as the
//!   learned ceiling. Throttles within `holdoff` of a decrease are answers to messages
//!   sent at the old rate and are ignored;
//! - every `window` without a throttle: +`step` (10%), capped just below the learned
//!   ceiling (`margin`) while it is fresh; once it is `probe_interval` old, the cap is
//!   lifted and the ramp goes on (the probe).
//!
//! [`RateLimiter`] is governor's GCRA at that rate. Governor quotas are fixed per
//! limiter, so a rate change swaps in a new limiter.

use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::Quota;

use super::clock::{Clock, GovernorClock};
use super::memory::{self, RateMemory};

/// No rate is ever set above this (messages/s); keeps the ramp finite when unbounded.
const RATE_MAX: f64 = 1_000_000.0;
/// Admissions remembered to measure the actual sending rate.
const RECENT: usize = 32;

/// Parameters of the rate loop (a subset of `ControllerParams`).
#[derive(Debug, Clone)]
pub struct RateParams {
    pub max: Option<f64>,
    pub floor: f64,
    pub step: f64,
    pub window: Duration,
    pub holdoff: Duration,
    pub margin: f64,
    pub probe_interval: Duration,
}

/// The adaptive rate, pure arithmetic. `rate() == None` means unlimited.
#[derive(Debug, Clone)]
pub struct RateState {
    p: RateParams,
    rate: Option<f64>,
    /// Learned ceiling (rate at which we were throttled) and when.
    ceiling: Option<(f64, Duration)>,
    /// The rate that held for a whole probe interval before a probe started.
    stable: Option<f64>,
    window_start: Duration,
    last_decrease: Option<Duration>,
    recent: [Duration; RECENT],
    recent_len: usize,
    recent_pos: usize,
    decreases: u64,
}

impl RateState {
    pub fn new(p: RateParams) -> Self {
        let floor = if p.floor.is_finite() && p.floor > 0.0 {
            p.floor
        } else {
            0.001
        };
        let max = p
            .max
            .filter(|m| m.is_finite() && *m > 0.0)
            .map(|m| m.max(floor));
        let p = RateParams { max, floor, ..p };
        Self {
            rate: max,
            p,
            ceiling: None,
            stable: None,
            window_start: Duration::ZERO,
            last_decrease: None,
            recent: [Duration::ZERO; RECENT],
            recent_len: 0,
            recent_pos: 0,
            decreases: 0,
        }
    }

    /// The configured ceiling (messages/s), `None` = unlimited.
    pub fn max(&self) -> Option<f64> {
        self.p.max
    }

    /// The same loop with another configured ceiling (configuration reload): a fresh
    /// state, since what was learned was learned against the old one. Counters stay.
    pub fn with_max(&self, max: Option<f64>) -> Self {
        let mut next = Self::new(RateParams {
            max,
            ..self.p.clone()
        });
        next.decreases = self.decreases;
        next
    }

    /// Current rate in messages/s, `None` = unlimited.
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// The learned ceiling, if one is in force.
    pub fn ceiling(&self) -> Option<f64> {
        self.ceiling.map(|(c, _)| c)
    }

    /// When the ceiling was learned (clock time).
    pub fn ceiling_learned_at(&self) -> Option<Duration> {
        self.ceiling.map(|(_, at)| at)
    }

    pub fn decreases(&self) -> u64 {
        self.decreases
    }

    /// Records one admitted message (to measure the real sending rate).
    pub fn record_admission(&mut self, now: Duration) {
        self.recent[self.recent_pos] = now;
        self.recent_pos = (self.recent_pos + 1) % RECENT;
        self.recent_len = (self.recent_len + 1).min(RECENT);
    }

    /// Measured admissions/s over the last few admissions, if there are enough of them.
    pub fn measured(&self) -> Option<f64> {
        if self.recent_len < 4 {
            return None;
        }
        let newest = self.recent[(self.recent_pos + RECENT - 1) % RECENT];
        let oldest = self.recent[(self.recent_pos + RECENT - self.recent_len) % RECENT];
        let span = newest.saturating_sub(oldest).as_secs_f64();
        if span <= 0.0 {
            return None;
        }
        Some((self.recent_len - 1) as f64 / span)
    }

    /// What was learned, for saving ([`super::memory`]).
    pub fn remember(&self, now: Duration) -> RateMemory {
        RateMemory {
            rate: self.rate,
            ceiling: self.ceiling.map(|(c, _)| c),
            ceiling_age_ms: self
                .ceiling
                .map(|(_, at)| memory::ms(now.saturating_sub(at))),
            window_ms: None,
        }
    }

    /// Takes back what [`RateState::remember`] saved `since_save` ago, within today's
    /// floor and ceiling (the configuration may have changed since). A ceiling older than
    /// the probe interval is not restored: its probe is due. Returns true if the rate changed.
    pub fn restore(&mut self, m: &RateMemory, since_save: Duration, now: Duration) -> bool {
        let before = self.rate;
        if let Some(r) = m.rate.filter(|r| r.is_finite() && *r > 0.0) {
            let r = r.max(self.p.floor);
            self.rate = Some(self.p.max.map_or(r, |max| r.min(max)));
        }
        self.ceiling = match (m.ceiling, m.ceiling_age_ms) {
            (Some(c), Some(age)) if c.is_finite() && c > 0.0 => {
                memory::learned_at(age, since_save, now, self.p.probe_interval).map(|at| (c, at))
            }
            _ => None,
        };
        self.stable = None;
        self.window_start = now;
        self.rate != before
    }

    /// `Throttle(Rate)` at `now`. Returns true if the rate changed.
    pub fn on_throttle(&mut self, now: Duration) -> bool {
        if let Some(at) = self.last_decrease {
            if now < at.saturating_add(self.p.holdoff) {
                return false;
            }
        }
        let base = match (self.rate, self.measured()) {
            (Some(r), Some(m)) => r.min(m),
            (Some(r), None) => r,
            (None, Some(m)) => m,
            // Unlimited and nothing measured: start from the floor's far side.
            (None, None) => self.p.max.unwrap_or(self.p.floor * 64.0),
        };
        let next = match self.stable {
            Some(s) if base > s => s,
            _ => {
                self.stable = None;
                (base / 2.0).max(self.p.floor)
            }
        };
        self.ceiling = Some((base, now));
        self.last_decrease = Some(now);
        self.window_start = now;
        self.decreases += 1;
        let changed = self.rate != Some(next);
        self.rate = Some(next);
        changed
    }

    /// Applies the windows that passed without a throttle up to `now`. Returns true if the
    /// rate changed.
    pub fn tick(&mut self, now: Duration) -> bool {
        let Some(mut rate) = self.rate else {
            return false;
        };
        let window = self.p.window.max(Duration::from_millis(1));
        let elapsed = now.saturating_sub(self.window_start);
        let windows = (elapsed.as_nanos() / window.as_nanos()).min(64) as u32;
        if windows == 0 {
            return false;
        }
        let start = self.window_start;
        self.window_start = if windows == 64 {
            now
        } else {
            start.saturating_add(window * windows)
        };
        let before = rate;
        for i in 1..=windows {
            let end = start.saturating_add(window * i);
            let mut cap = self.p.max.unwrap_or(RATE_MAX);
            if let Some((c, at)) = self.ceiling {
                if end >= at.saturating_add(self.p.probe_interval) {
                    // The ceiling is old: probe above it, remembering what held.
                    self.ceiling = None;
                    self.stable = Some(rate);
                } else {
                    cap = cap.min(c * (1.0 - self.p.margin));
                }
            }
            if rate < cap {
                rate = (rate * (1.0 + self.p.step)).min(cap);
            }
        }
        rate = rate.max(self.p.floor);
        self.rate = Some(rate);
        rate != before
    }
}

type Gcra<C> =
    governor::RateLimiter<NotKeyed, InMemoryState, GovernorClock<C>, NoOpMiddleware<Nanos>>;

/// governor's GCRA at a rate that can be replaced. `None` = unlimited (always admits).
pub struct RateLimiter<C: Clock> {
    clock: C,
    burst: NonZeroU32,
    inner: RwLock<Option<Arc<Gcra<C>>>>,
}

impl<C: Clock> RateLimiter<C> {
    pub fn new(clock: C, rate: Option<f64>, burst: u32) -> Self {
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let l = Self {
            clock,
            burst,
            inner: RwLock::new(None),
        };
        l.set_rate(rate);
        l
    }

    /// Replaces the limiter with one at `rate` messages/s (fresh GCRA state).
    pub fn set_rate(&self, rate: Option<f64>) {
        let gcra = rate.and_then(|r| {
            if !(r.is_finite() && r > 0.0) {
                return None;
            }
            let period = Duration::from_secs_f64((1.0 / r).min(86_400.0));
            let q = Quota::with_period(period)?.allow_burst(self.burst);
            Some(Arc::new(Gcra::direct_with_clock(
                q,
                GovernorClock(self.clock.clone()),
            )))
        });
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        *g = gcra;
    }

    /// Takes one cell if allowed now; otherwise how long until one is.
    pub fn check(&self) -> Result<(), Duration> {
        let gcra = {
            let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
            g.clone()
        };
        match gcra {
            None => Ok(()),
            Some(l) => l.check().map_err(|nu| {
                let now = governor::clock::Clock::now(&GovernorClock(self.clock.clone()));
                nu.wait_time_from(now)
            }),
        }
    }
}

impl<C: Clock> std::fmt::Debug for RateLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::clock::ManualClock;

    fn params(max: Option<f64>) -> RateParams {
        RateParams {
            max,
            floor: 0.1,
            step: 0.1,
            window: Duration::from_secs(10),
            holdoff: Duration::from_secs(1),
            margin: 0.05,
            probe_interval: Duration::from_secs(600),
        }
    }

    fn s(x: u64) -> Duration {
        Duration::from_secs(x)
    }

    #[test]
    fn halves_down_to_the_floor_with_holdoff() {
        let mut r = RateState::new(params(Some(8.0)));
        assert_eq!(r.rate(), Some(8.0));
        assert!(r.on_throttle(s(1)));
        assert_eq!(r.rate(), Some(4.0));
        assert!(!r.on_throttle(s(1)), "inside holdoff");
        for i in 0..20 {
            r.on_throttle(s(2 + i));
        }
        assert_eq!(r.rate(), Some(0.1));
    }

    #[test]
    fn ramps_ten_percent_per_window_to_just_below_the_ceiling_then_probes() {
        let mut r = RateState::new(params(None));
        assert_eq!(r.rate(), None);
        for i in 0..8 {
            r.record_admission(Duration::from_millis(100 * i));
        }
        r.on_throttle(Duration::from_millis(800)); // measured 10/s → 5/s
        assert!((r.rate().unwrap_or(0.0) - 5.0).abs() < 1e-9);
        r.tick(s(11));
        assert!((r.rate().unwrap_or(0.0) - 5.5).abs() < 1e-9);
        r.tick(s(300));
        assert!(
            (r.rate().unwrap_or(0.0) - 9.5).abs() < 1e-9,
            "capped at 95% of 10"
        );
        r.tick(s(620));
        assert!(r.rate().unwrap_or(0.0) > 10.0, "probing after the interval");
        // Failed probe: straight back to what held, not half.
        r.on_throttle(s(625));
        assert!((r.rate().unwrap_or(0.0) - 9.5).abs() < 1e-9);
    }

    #[test]
    fn what_was_learned_round_trips_and_ages() {
        let mut r = RateState::new(params(None));
        for i in 0..8 {
            r.record_admission(Duration::from_millis(100 * i));
        }
        r.on_throttle(s(1));
        let saved = r.remember(s(61));
        assert_eq!(saved.ceiling_age_ms, Some(60_000));
        let mut fresh = RateState::new(params(Some(50.0)));
        assert!(fresh.restore(&saved, s(30), s(2)));
        assert_eq!(fresh.rate(), r.rate());
        assert_eq!(fresh.ceiling(), r.ceiling());
        // Saved long ago: the rate comes back, the ceiling's probe is due.
        let mut late = RateState::new(params(None));
        late.restore(&saved, s(3600), s(2));
        assert_eq!(late.rate(), r.rate());
        assert_eq!(late.ceiling(), None);
        // Within today's configured ceiling.
        let mut capped = RateState::new(params(Some(1.0)));
        capped.restore(&saved, s(0), s(0));
        assert_eq!(capped.rate(), Some(1.0));
    }

    #[test]
    fn limiter_paces_and_can_be_swapped() {
        let c = ManualClock::new();
        let l = RateLimiter::new(c.clone(), Some(2.0), 1);
        assert!(l.check().is_ok());
        let wait = l.check().err().unwrap_or_default();
        assert_eq!(wait, Duration::from_millis(500));
        c.advance(wait);
        assert!(l.check().is_ok());
        l.set_rate(None);
        for _ in 0..100 {
            assert!(l.check().is_ok());
        }
    }
}
