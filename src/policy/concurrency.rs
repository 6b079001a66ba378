//! The connection limit: how many upstream connections may be open at once (AIMD with a
//! learned ceiling). It must never return 0, never exceed the profile maximum, and never
//! look at a socket: it only sees the outcomes the controller feeds it, with a time.
//!
//! - Start at `initial`.
//! - Additive increase, Postfix style (1/N per success): after a run of successful
//!   transactions as long as the current limit, *while the limit was actually in use*,
//!   grow by one.
//! - On "too many connections", drop at once to the connections that were working (at
//!   least 1), remember that as the ceiling and do not grow past it before
//!   `probe_interval` has passed. After that one probe (limit + 1) is allowed; if it
//!   works, growth continues; if it is refused, the ceiling is re-learned.

use std::time::Duration;

use super::memory::{self, ConnectionMemory};

/// The connection-limit state machine. All times are [`crate::policy::clock::Clock`] times.
#[derive(Debug, Clone)]
pub struct ConcurrencyState {
    limit: usize,
    max: usize,
    probe_interval: Duration,
    /// Learned ceiling and when it was learned.
    ceiling: Option<(usize, Duration)>,
    /// Successes since the last change of the limit.
    run: usize,
    /// Whether the limit was fully used during the current run.
    saturated: bool,
    decreases: u64,
    probes: u64,
}

impl ConcurrencyState {
    /// `initial` and `max` are clamped so that `1 <= initial <= max`.
    pub fn new(initial: usize, max: usize, probe_interval: Duration) -> Self {
        let max = max.max(1);
        Self {
            limit: initial.clamp(1, max),
            max,
            probe_interval,
            ceiling: None,
            run: 0,
            saturated: false,
            decreases: 0,
            probes: 0,
        }
    }

    /// The current limit: always in `1..=max`.
    /// The most connections allowed.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A new maximum (configuration reload). The limit shrinks to it at once; the learned
    /// ceiling is dropped, as it was learned against the old maximum.
    pub fn set_max(&mut self, max: usize) {
        let max = max.max(1);
        if max == self.max {
            return;
        }
        self.max = max;
        self.limit = self.limit.clamp(1, max);
        self.ceiling = None;
        self.run = 0;
        self.saturated = false;
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The learned ceiling, if one is in force.
    pub fn ceiling(&self) -> Option<usize> {
        self.ceiling.map(|(c, _)| c)
    }

    /// When the ceiling was learned (clock time).
    pub fn ceiling_learned_at(&self) -> Option<Duration> {
        self.ceiling.map(|(_, at)| at)
    }

    /// How many times the limit went down.
    pub fn decreases(&self) -> u64 {
        self.decreases
    }

    /// How many times the limit went above a learned ceiling.
    pub fn probes(&self) -> u64 {
        self.probes
    }

    /// What was learned, for saving ([`super::memory`]).
    pub fn remember(&self, now: Duration) -> ConnectionMemory {
        ConnectionMemory {
            limit: self.limit,
            ceiling: self.ceiling.map(|(c, _)| c),
            ceiling_age_ms: self
                .ceiling
                .map(|(_, at)| memory::ms(now.saturating_sub(at))),
            open_interval_ms: None,
        }
    }

    /// Takes back what [`ConcurrencyState::remember`] saved `since_save` ago, within
    /// today's maximum. A ceiling older than the probe interval is not restored (its
    /// probe is due). Returns true if the limit changed.
    pub fn restore(&mut self, m: &ConnectionMemory, since_save: Duration, now: Duration) -> bool {
        let before = self.limit;
        if m.limit > 0 {
            self.limit = m.limit.clamp(1, self.max);
        }
        self.ceiling = match (m.ceiling, m.ceiling_age_ms) {
            (Some(c), Some(age)) if c > 0 => {
                memory::learned_at(age, since_save, now, self.probe_interval)
                    .map(|at| (c.min(self.max), at))
            }
            _ => None,
        };
        self.run = 0;
        self.saturated = false;
        self.limit != before
    }

    /// A transaction succeeded while `busy` connections carried transactions (this one
    /// included). Returns true if the limit grew.
    pub fn on_success(&mut self, busy: usize, now: Duration) -> bool {
        if busy >= self.limit {
            self.saturated = true;
        }
        self.run = self.run.saturating_add(1);
        if self.run < self.limit || !self.saturated || self.limit >= self.max {
            return false;
        }
        let next = self.limit + 1;
        match self.ceiling {
            Some((c, _)) if next <= c => {}
            Some((_, at)) => {
                if now < at.saturating_add(self.probe_interval) {
                    // Held at the ceiling: start a fresh run so the probe needs a full
                    // run of evidence once it is allowed.
                    self.run = 0;
                    self.saturated = false;
                    return false;
                }
                // Probe: the ceiling is forgotten; a refusal will set a new one.
                self.ceiling = None;
                self.probes += 1;
            }
            None => {}
        }
        self.limit = next;
        self.run = 0;
        self.saturated = false;
        true
    }

    /// The provider refused a connection or said "too many connections" while `working`
    /// other connections were fine. Drops at once; returns true if the limit went down.
    pub fn on_throttle(&mut self, working: usize, now: Duration) -> bool {
        let target = working.clamp(1, self.limit);
        self.ceiling = Some((target, now));
        self.run = 0;
        self.saturated = false;
        if target < self.limit {
            self.limit = target;
            self.decreases += 1;
            true
        } else {
            false
        }
    }

    /// Steps down by one (latency signal) and holds there until the next probe.
    pub fn step_down(&mut self, now: Duration) -> bool {
        let target = self.limit.saturating_sub(1).max(1);
        self.on_throttle(target, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Duration = Duration::from_secs(600);

    #[test]
    fn what_was_learned_round_trips_within_todays_maximum() {
        let mut s = ConcurrencyState::new(4, 10, P);
        s.on_throttle(3, Duration::from_secs(10));
        let saved = s.remember(Duration::from_secs(70));
        assert_eq!((saved.limit, saved.ceiling), (3, Some(3)));
        let mut fresh = ConcurrencyState::new(1, 10, P);
        assert!(fresh.restore(&saved, Duration::from_secs(5), Duration::from_secs(1)));
        assert_eq!((fresh.limit(), fresh.ceiling()), (3, Some(3)));
        let mut smaller = ConcurrencyState::new(1, 2, P);
        smaller.restore(&saved, Duration::ZERO, Duration::ZERO);
        assert_eq!((smaller.limit(), smaller.ceiling()), (2, Some(2)));
        let mut late = ConcurrencyState::new(1, 10, P);
        late.restore(&saved, P, Duration::ZERO);
        assert_eq!((late.limit(), late.ceiling()), (3, None));
    }

    fn grow(s: &mut ConcurrencyState, n: usize, now: Duration) {
        for _ in 0..n {
            let busy = s.limit();
            s.on_success(busy, now);
        }
    }

    #[test]
    fn grows_by_one_per_run_as_long_as_the_limit() {
        let mut s = ConcurrencyState::new(2, 10, P);
        grow(&mut s, 1, Duration::ZERO);
        assert_eq!(s.limit(), 2);
        grow(&mut s, 1, Duration::ZERO);
        assert_eq!(s.limit(), 3);
        grow(&mut s, 3, Duration::ZERO);
        assert_eq!(s.limit(), 4);
    }

    #[test]
    fn does_not_grow_when_the_limit_is_not_used() {
        let mut s = ConcurrencyState::new(2, 10, P);
        for _ in 0..100 {
            s.on_success(1, Duration::ZERO);
        }
        assert_eq!(s.limit(), 2);
    }

    #[test]
    fn never_above_max_never_zero() {
        let mut s = ConcurrencyState::new(0, 3, P);
        assert_eq!(s.limit(), 1);
        grow(&mut s, 100, Duration::ZERO);
        assert_eq!(s.limit(), 3);
        s.on_throttle(0, Duration::ZERO);
        assert_eq!(s.limit(), 1);
        s.step_down(Duration::ZERO);
        assert_eq!(s.limit(), 1);
        let s = ConcurrencyState::new(5, 0, P);
        assert_eq!(s.limit(), 1);
    }

    #[test]
    fn throttle_drops_at_once_and_holds_until_probe_interval() {
        let mut s = ConcurrencyState::new(5, 20, P);
        assert!(s.on_throttle(2, Duration::from_secs(10)));
        assert_eq!(s.limit(), 2);
        assert_eq!(s.ceiling(), Some(2));
        grow(&mut s, 100, Duration::from_secs(11));
        assert_eq!(s.limit(), 2, "no probe before the interval");
        grow(&mut s, 2, Duration::from_secs(610));
        assert_eq!(s.limit(), 3, "one probe after the interval");
        assert_eq!(s.probes(), 1);
        grow(&mut s, 3, Duration::from_secs(611));
        assert_eq!(s.limit(), 4, "a successful probe lets growth continue");
    }
}
