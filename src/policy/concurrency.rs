//! The connection limit: how many upstream connections may be open at once (AIMD with a
//! learned ceiling), and how fast new ones may be opened ([`ConnectPacer`]). It must never
//! return 0, never exceed the profile maximum, never lower the count for a refusal that
//! was about the *rate* of new connections, and never look at a socket: it only sees the
//! outcomes the controller feeds it, with a time.
//!
//! - Start at `initial`.
//! - Growth, Postfix style (1/N per success): after a run of successful transactions as
//!   long as the current limit, *while the limit was actually in use*, grow — by doubling
//!   until the first "too many connections" (slow start: an unknown provider is learned
//!   quickly), by one after that.
//! - On "too many connections", drop at once to the connections that were working (at
//!   least 1), remember that as the ceiling and do not grow past it before
//!   `probe_interval` has passed. After that one probe (limit + 1) is allowed; if it
//!   works, growth continues; if it is refused, the ceiling is re-learned.
//! - A refused *new* connection while fewer connections work than have already worked at
//!   once (within `probe_interval`) is not about the count: the provider limits how often
//!   connections are opened. The count stays; the pacer learns the gap between opens.
//! - An unverified figure ([`ConcurrencyState::with_unverified_ceiling`]) is held like a
//!   learned ceiling from the start: growth reaches it quickly and probes above it after
//!   `probe_interval`.

use std::time::Duration;

use super::connect_pace::{ConnectPacer, PaceParams};

/// How long a learned gap between opens is kept across a restart.
const GAP_KEPT: Duration = Duration::from_secs(24 * 3600);
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
    /// Doubling growth until the first count throttle or step-down.
    slow_start: bool,
    /// The most connections that carried transactions at once, and when that many last
    /// did: a refused open with fewer working is about the rate of opens.
    worked: (usize, Duration),
    /// How fast new connections may be opened.
    pace: ConnectPacer,
}

/// What a refused new connection was taken for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many connections at once: the limit went down to the working ones.
    Count,
    /// Too many new connections per time: the count stays, opens are paced.
    Rate,
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
            slow_start: true,
            worked: (0, Duration::ZERO),
            pace: ConnectPacer::new(PaceParams {
                margin: 0.05,
                probe_interval,
                step: 0.1,
            }),
        }
    }

    /// The connection pacer with these settings.
    pub fn with_pacing(mut self, params: PaceParams) -> Self {
        self.pace = ConnectPacer::new(params);
        self
    }

    /// An unverified figure for the provider's connection limit: held like a ceiling
    /// learned at `now` (growth reaches it, then probes above it after `probe_interval`).
    /// Ignored when it is not below the maximum.
    pub fn with_unverified_ceiling(mut self, n: Option<usize>, now: Duration) -> Self {
        if let Some(n) = n.filter(|&n| n >= 1 && n < self.max) {
            self.ceiling = Some((n.max(self.limit), now));
        }
        self
    }

    /// The connection pacer.
    pub fn pace(&self) -> &ConnectPacer {
        &self.pace
    }

    /// The connection pacer, to feed it.
    pub fn pace_mut(&mut self) -> &mut ConnectPacer {
        &mut self.pace
    }

    /// Still growing by doubling (no count throttle yet).
    pub fn in_slow_start(&self) -> bool {
        self.slow_start
    }

    /// A transaction succeeded while `working` connections were open and set up (not
    /// counting ones still in their setup): remembered as what has worked at once.
    pub fn note_working(&mut self, working: usize, now: Duration) {
        if working >= self.worked.0 || now.saturating_sub(self.worked.1) > self.probe_interval {
            self.worked = (working, now);
        }
    }

    /// The most connections that worked at once within `probe_interval` before `now`.
    pub fn worked_recently(&self, now: Duration) -> usize {
        let (n, at) = self.worked;
        if now.saturating_sub(at) > self.probe_interval {
            0
        } else {
            n
        }
    }

    /// A new connection (or a new TLS session) was refused with "too many connections"
    /// while `working` other connections carried transactions. Fewer than have already
    /// worked at once recently: a limit on how fast connections are opened — the count
    /// stays, the pacer learns. Otherwise a limit on the count ([`Self::on_throttle`]).
    pub fn on_refused_open(&mut self, working: usize, now: Duration) -> Refusal {
        if working < self.worked_recently(now) {
            self.pace.on_refused(now);
            Refusal::Rate
        } else {
            self.on_throttle(working, now);
            Refusal::Count
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
            open_interval_ms: self.pace.remembered().map(|(gap, _)| memory::ms(gap)),
            open_interval_age_ms: self
                .pace
                .remembered()
                .map(|(_, at)| memory::ms(now.saturating_sub(at))),
            additive: !self.slow_start,
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
        if m.additive || self.ceiling.is_some() {
            self.slow_start = false;
        }
        // A connection-rate limit is the provider's standing policy: its gap is kept for
        // a day; its probe is due `probe_interval` after it was learned (at once when
        // that has passed, as far as this process's clock reaches back).
        if let Some(gap) = m.open_interval_ms.filter(|&g| g > 0) {
            let age = m.open_interval_age_ms.unwrap_or(0);
            if let Some(at) = memory::learned_at(age, since_save, now, GAP_KEPT) {
                self.pace.restore(Duration::from_millis(gap), at);
            }
        }
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
        let step = if self.slow_start { self.limit } else { 1 };
        let mut next = self.limit.saturating_add(step).min(self.max);
        match self.ceiling {
            Some((c, _)) if next <= c => {}
            // Doubling would jump past the ceiling: up to it first.
            Some((c, _)) if self.limit < c => next = c,
            Some((_, at)) => {
                if now < at.saturating_add(self.probe_interval) {
                    // Held at the ceiling: start a fresh run so the probe needs a full
                    // run of evidence once it is allowed.
                    self.run = 0;
                    self.saturated = false;
                    return false;
                }
                // Probe, one connection above: the ceiling is forgotten; a refusal will
                // set a new one. Growth is additive from here.
                next = self.limit + 1;
                self.slow_start = false;
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
        self.slow_start = false;
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
        assert!(
            !late.in_slow_start(),
            "a count limit was met: additive after a restart"
        );
    }

    /// A learned connection-rate limit (the gap between opens) comes back after a restart
    /// and paces the first opens; a fresh state without one does not pace.
    #[test]
    fn the_gap_between_opens_round_trips() {
        let mut s = ConcurrencyState::new(2, 10, P);
        let t = Duration::from_secs;
        s.note_working(2, t(1));
        s.pace_mut().on_attempt(t(0));
        s.pace_mut().on_opened(t(0));
        s.pace_mut().on_attempt(t(1));
        s.pace_mut().on_opened(t(1));
        assert_eq!(s.on_refused_open(1, t(2)), Refusal::Rate);
        s.pace_mut().on_attempt(t(20));
        s.pace_mut().on_opened(t(20));
        let gap = s.pace().gap().expect("learned");
        let saved = s.remember(t(30));
        assert_eq!(saved.open_interval_ms, Some(memory::ms(gap)));
        assert_eq!(saved.open_interval_age_ms, Some(10_000));
        assert_ne!(saved.additive, s.in_slow_start());
        let text = serde_json::to_string(&saved).unwrap();
        let back: ConnectionMemory = serde_json::from_str(&text).unwrap();
        let mut fresh = ConcurrencyState::new(2, 10, P);
        fresh.restore(&back, t(60), t(0));
        assert_eq!(fresh.pace().gap(), Some(gap));
        fresh.pace_mut().on_attempt(t(1));
        assert!(
            fresh.pace().wait(t(1)).is_some(),
            "the first opens are paced"
        );
        // Saved before pacing existed: nothing to pace.
        let old: ConnectionMemory = serde_json::from_str(r#"{"limit":2}"#).unwrap();
        let mut fresh = ConcurrencyState::new(2, 10, P);
        fresh.restore(&old, t(60), t(0));
        assert_eq!(fresh.pace().gap(), None);
    }

    fn grow(s: &mut ConcurrencyState, n: usize, now: Duration) {
        for _ in 0..n {
            let busy = s.limit();
            s.on_success(busy, now);
        }
    }

    #[test]
    fn grows_by_one_per_run_as_long_as_the_limit_once_throttled() {
        let mut s = ConcurrencyState::new(2, 10, P);
        s.on_throttle(2, Duration::ZERO);
        let later = P + Duration::from_secs(1);
        grow(&mut s, 1, later);
        assert_eq!(s.limit(), 2);
        grow(&mut s, 1, later);
        assert_eq!(s.limit(), 3, "the probe");
        grow(&mut s, 3, later);
        assert_eq!(s.limit(), 4);
        grow(&mut s, 4, later);
        assert_eq!(s.limit(), 5, "additive");
    }

    #[test]
    fn an_unknown_provider_is_learned_by_doubling_until_the_first_throttle() {
        let mut s = ConcurrencyState::new(1, 50, P);
        let mut seen = vec![s.limit()];
        for _ in 0..5 {
            let n = s.limit();
            grow(&mut s, n, Duration::ZERO);
            seen.push(s.limit());
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 32]);
        grow(&mut s, 32, Duration::ZERO);
        assert_eq!(s.limit(), 50, "never above the maximum");
        // A count throttle ends slow start: from there, one at a time.
        s.on_throttle(20, Duration::from_secs(1));
        assert!(!s.in_slow_start());
        grow(&mut s, 200, P + Duration::from_secs(2));
        assert!(s.limit() <= 30, "{}", s.limit());
    }

    #[test]
    fn an_unverified_figure_is_reached_fast_and_probed_above() {
        let mut s =
            ConcurrencyState::new(1, 20, P).with_unverified_ceiling(Some(3), Duration::ZERO);
        assert_eq!(s.ceiling(), Some(3));
        grow(&mut s, 1, Duration::ZERO);
        grow(&mut s, 2, Duration::ZERO);
        assert_eq!(s.limit(), 3, "doubling stops at the figure");
        grow(&mut s, 50, Duration::from_secs(1));
        assert_eq!(s.limit(), 3, "held until probe_interval");
        grow(&mut s, 3, P);
        assert_eq!((s.limit(), s.probes()), (4, 1), "then probed above");
        // Not below the maximum: no ceiling at all.
        let s = ConcurrencyState::new(1, 3, P).with_unverified_ceiling(Some(3), Duration::ZERO);
        assert_eq!(s.ceiling(), None);
    }

    /// Postfix answers a concurrency limit and a connection-rate limit with the same
    /// `421 4.7.0 <host> Error: too many connections from <ip>`: what was working tells
    /// them apart.
    #[test]
    fn a_refused_open_with_fewer_working_than_worked_is_a_rate() {
        let mut s = ConcurrencyState::new(4, 10, P);
        s.on_throttle(4, Duration::ZERO); // additive from here, ceiling 4
        for _ in 0..8 {
            s.on_success(4, Duration::from_secs(1));
            s.note_working(4, Duration::from_secs(1));
        }
        // Two of the four closed (messages_per_connection) and a reopen was refused.
        assert_eq!(s.on_refused_open(2, Duration::from_secs(2)), Refusal::Rate);
        assert_eq!(s.limit(), 4, "the count stays");
        assert!(s.pace().is_pacing());
        // As many working as ever worked: the count.
        assert_eq!(s.on_refused_open(4, Duration::from_secs(3)), Refusal::Count);
        assert_eq!(s.ceiling(), Some(4));
        // What worked long ago does not count: the provider may have lowered its limit.
        assert_eq!(
            s.on_refused_open(2, P + Duration::from_secs(10)),
            Refusal::Count
        );
        assert_eq!(s.limit(), 2);
        // Nothing ever worked: a refusal is the count (a provider that answers 421 to all).
        let mut fresh = ConcurrencyState::new(2, 10, P);
        assert_eq!(fresh.on_refused_open(0, Duration::ZERO), Refusal::Count);
        assert_eq!(fresh.limit(), 1);
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
