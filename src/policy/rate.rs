//! The sending rate (messages or recipients per second): the learner that finds it and
//! the GCRA limiter that enforces it. It must never exceed the hard cap, never sleep, and
//! never read the time itself: every decision takes `now` from the controller's clock.
//!
//! Real limiters count in windows: fixed ones with a burst (Postfix's anvil: up to L per
//! unit pass, then everything is refused until the unit ends), sliding ones, token
//! buckets. A throttle therefore says little about the rate at that instant; what the
//! provider *accepted* over its last window says what it allows. [`RateState`] works in
//! *cycles*:
//! - **slow start** (nothing learned yet): start at the configured rate, or cautiously
//!   ([`UNKNOWN_START`]) when the rate is unknown, and double per ramp window in which
//!   the limiter held messages back, up to the cap;
//! - **blocked** (a throttle came): no ordinary admissions; single probes at growing
//!   gaps (the first after about a message's time at the pace the provider accepted,
//!   each next one 3/4 of the time blocked so far later — so the block overruns the
//!   provider's window by at most 3/4 of it, with about log1.75(window / first gap)
//!   refused probes). Throttles that arrive while no probe is out answer messages sent
//!   before the block and change nothing;
//! - **unblocked** by the first accepted probe: the provider's window ended between the
//!   last refused probe and this one, taken as half-way; the estimate is the best
//!   acceptance rate over a span ending there that contains the whole block
//!   ([`AcceptanceLog::best_rate`]),
//!   reaching back over the cycle, the window learned before, the last 16 accepted, and
//!   — for the blocks that end slow start — everything since the first admission (for
//!   one window after slow start overshoots, a sliding window lets through only what
//!   slides out, i.e. replays slow start's own history). For a fixed or sliding window
//!   of L per W that is L/W (at most the overrun low, and later probes correct it); for
//!   a token bucket the first cycle overshoots and later ones converge on the refill
//!   rate. Over a span that contains the block, an evenly pacing sender cannot show
//!   much more than the window allows: while it sent faster than L/W, every sub-span of
//!   the window holds a smaller share of L than of W. The pace is then the estimate ×
//!   (1 − margin), evenly (the first paced message waits one interval after the probe,
//!   so the probe and the paced messages never add up to more than L in the provider's
//!   next unit);
//! - **paced**: after max(`probe_interval`, the learned window) without a throttle,
//!   probe upward: +`step` × estimate per window (the ramp window, at least the learned
//!   window) in which the limiter held messages back, each further increase twice the
//!   last (gently first, so an unchanged limit costs one short block; quickly then, so a
//!   raised one is reached within a few windows). A throttle starts the next cycle,
//!   whose estimate is again what was accepted — so a failed probe lands just below the
//!   limit, not at half, and never below the estimate that held for the whole probe
//!   interval before it (until pacing below that is refused: the limit was lowered).
//!
//! [`RateLimiter`] is governor's GCRA at the message rate; [`Pacer`] spaces transactions
//! by their recipient count (governor cannot take more cells at once than its burst).

use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::Quota;

use super::acceptance::AcceptanceLog;
use super::clock::{Clock, GovernorClock};
use super::memory::{self, RateMemory};

/// No rate is ever set above this (per second); keeps the ramp finite when unbounded.
const RATE_MAX: f64 = 1_000_000.0;
/// Where an unknown message rate starts (per second). One message a second is below
/// every published per-second or per-minute figure of the profiles (SES sandbox: 1/s,
/// Microsoft 365: 0.5/s is the only lower one, and it is published, so it is a cap) and
/// doubles to 64/s within six ramp windows (a minute at the defaults) while the provider
/// keeps accepting.
pub const UNKNOWN_START: f64 = 1.0;
/// The longest gap between two probes while blocked (a daily window is a quota, paused
/// by the quota rules, not probed).
const MAX_GAP: Duration = Duration::from_secs(3600);
/// The shortest gap between two probes.
const MIN_GAP: Duration = Duration::from_millis(10);
/// A probe whose answer has not come after this (and at least one gap) is taken as lost:
/// the next probe may go.
const PROBE_LOST: Duration = Duration::from_secs(60);
/// An estimate looks back over at least this many accepted (if the log has them).
const ESTIMATE_EVENTS: u64 = 16;
/// The longest span an estimate looks back over.
const MAX_SPAN: Duration = Duration::from_secs(86_400);

/// Parameters of the rate loop (a subset of `ControllerParams`).
#[derive(Debug, Clone)]
pub struct RateParams {
    /// Where the rate starts: `None` = unknown ([`UNKNOWN_START`]); infinite = unlimited
    /// until the provider throttles.
    pub start: Option<f64>,
    /// Hard ceiling, never exceeded; `None` = none.
    pub cap: Option<f64>,
    pub floor: f64,
    /// Additive probe step, as a fraction of the learned estimate, per ramp window.
    pub step: f64,
    /// Ramp window.
    pub window: Duration,
    /// The first probe after a throttle waits at least this long.
    pub holdoff: Duration,
    pub margin: f64,
    pub probe_interval: Duration,
}

/// What was learned from the last cycle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Learned {
    /// What the provider accepted per second over its window (the learned ceiling).
    pub estimate: f64,
    /// When (clock time).
    pub at: Duration,
    /// The span the estimate was measured over (the provider's window, as inferred).
    pub window: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    SlowStart,
    Blocked {
        since: Duration,
        gap: Duration,
        next_probe: Duration,
        probe_sent: Option<Duration>,
        /// When the provider last refused a probe of this block.
        last_refused: Option<Duration>,
    },
    Paced,
}

/// After a block, where the provider's window ended is known only to lie between the
/// last refused probe and the accepted one; the estimate reads it half-way, which may be
/// up to half a probe gap late (and the pace that much low). Refinement searches the
/// pace between the one that holds (`lo`) and the one the earliest end would give
/// (`hi`): each window a step two thirds of the way up; a step that holds becomes `lo`,
/// one that is throttled becomes `hi` (the pace goes back to `lo`). It ends within 3%,
/// or at the first throttled step (each costs a short block).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Refine {
    lo: f64,
    hi: f64,
    /// One step per this (the longest window the block allows, at least a second).
    period: Duration,
    next: Duration,
    /// The pace of the step in force, if one is.
    step: Option<f64>,
    failures: u32,
}

impl Refine {
    const DONE_WITHIN: f64 = 0.03;
    const MAX_FAILURES: u32 = 1;

    fn done(&self) -> bool {
        self.hi - self.lo < Self::DONE_WITHIN * self.hi || self.failures >= Self::MAX_FAILURES
    }
}

/// The learned rate, pure arithmetic. `rate() == None` means unlimited.
#[derive(Debug, Clone)]
pub struct RateState {
    p: RateParams,
    /// The pace when not blocked; `None` = unlimited.
    rate: Option<f64>,
    stage: Stage,
    learned: Option<Learned>,
    /// Start of the current cycle: the first admission of the episode, or the last unblock.
    cycle_start: Option<Duration>,
    /// Nothing ordinary is admitted before this (one interval after an accepted probe).
    hold_until: Option<Duration>,
    window_start: Duration,
    /// The limiter held something back during the current ramp window.
    pressed: bool,
    /// Probing upward in the current episode (counted once per episode).
    probing: bool,
    /// The best estimate that held for a whole probe interval: later estimates never
    /// land below it (a failed probe, or the short cycle after an estimate that was too
    /// high, reads low), until pacing below it is refused (the provider lowered its
    /// limit).
    held: Option<f64>,
    /// Where the series of blocks that ended slow start (blocks less than a probe
    /// interval apart) began: the first admission. For a window after slow start's
    /// overshoot, the provider's acceptance replays slow start's own history (a sliding
    /// window lets through what slides out), so the corrections read the whole stretch
    /// since the start, not only their own short cycles. `None` for later series.
    series_start: Option<Duration>,
    last_unblock: Option<Duration>,
    /// Admissions and the units (messages or recipients) they carried, to know how long
    /// one admission takes at a rate in units.
    admissions: u64,
    admitted_units: u64,
    /// Windows of the current upward probe so far.
    probe_steps: u32,
    /// Refinement of the last block's estimate, while it lasts ([`Refine`]).
    refine: Option<Refine>,
    /// The current block began with a throttle of a refinement step.
    refine_failed: bool,
    log: AcceptanceLog,
    decreases: u64,
    probes: u64,
    blocks: u64,
    refused_probes: u64,
}

fn positive(x: Option<f64>) -> Option<f64> {
    x.filter(|v| !v.is_nan() && *v > 0.0)
}

impl RateState {
    pub fn new(p: RateParams) -> Self {
        let floor = if p.floor.is_finite() && p.floor > 0.0 {
            p.floor
        } else {
            0.001
        };
        let cap = positive(p.cap)
            .filter(|c| c.is_finite())
            .map(|c| c.max(floor));
        let start = match positive(p.start) {
            None => Some(UNKNOWN_START),
            Some(s) if s.is_infinite() => None,
            Some(s) => Some(s),
        };
        let rate = match (start, cap) {
            (Some(s), Some(c)) => Some(s.max(floor).min(c)),
            (Some(s), None) => Some(s.max(floor).min(RATE_MAX)),
            (None, c) => c,
        };
        let p = RateParams { cap, floor, ..p };
        Self {
            rate,
            p,
            stage: Stage::SlowStart,
            learned: None,
            cycle_start: None,
            hold_until: None,
            window_start: Duration::ZERO,
            pressed: false,
            probing: false,
            held: None,
            series_start: None,
            last_unblock: None,
            admissions: 0,
            admitted_units: 0,
            probe_steps: 0,
            refine: None,
            refine_failed: false,
            log: AcceptanceLog::new(),
            decreases: 0,
            probes: 0,
            blocks: 0,
            refused_probes: 0,
        }
    }

    /// The hard ceiling, `None` = none.
    pub fn cap(&self) -> Option<f64> {
        self.p.cap
    }

    /// The configured start (`None` = unknown, infinite = unlimited).
    pub fn start(&self) -> Option<f64> {
        self.p.start
    }

    /// The same loop with another start and cap (configuration reload): a fresh state,
    /// since what was learned was learned against the old limits. Counters stay.
    pub fn with_limits(&self, start: Option<f64>, cap: Option<f64>) -> Self {
        let mut next = Self::new(RateParams {
            start,
            cap,
            ..self.p.clone()
        });
        next.decreases = self.decreases;
        next.probes = self.probes;
        next.blocks = self.blocks;
        next.refused_probes = self.refused_probes;
        next
    }

    /// What was learned, for saving ([`super::memory`]).
    pub fn remember(&self, now: Duration) -> RateMemory {
        RateMemory {
            rate: self.rate,
            ceiling: self.learned.map(|l| l.estimate),
            ceiling_age_ms: self.learned.map(|l| memory::ms(now.saturating_sub(l.at))),
            window_ms: self.learned.map(|l| memory::ms(l.window)),
        }
    }

    /// Takes back what [`RateState::remember`] saved `since_save` ago, within today's
    /// floor and cap (the configuration may have changed since). A learned estimate
    /// comes back as learned (paced, no slow start), dated by its age — at most as old
    /// as this process, so its next upward probe comes no sooner than it would have.
    /// Returns true if the pace changed.
    pub fn restore(&mut self, m: &RateMemory, since_save: Duration, now: Duration) -> bool {
        let before = self.rate;
        if let Some(r) = positive(m.rate).filter(|r| r.is_finite()) {
            let r = r.max(self.p.floor).min(RATE_MAX);
            self.rate = Some(self.p.cap.map_or(r, |c| r.min(c)));
        }
        if let Some(estimate) = positive(m.ceiling).filter(|c| c.is_finite()) {
            let age =
                Duration::from_millis(m.ceiling_age_ms.unwrap_or(0)).saturating_add(since_save);
            self.learned = Some(Learned {
                estimate,
                at: now.saturating_sub(age),
                window: Duration::from_millis(m.window_ms.unwrap_or(0)),
            });
            self.stage = Stage::Paced;
        }
        self.cycle_start = None;
        self.hold_until = None;
        self.window_start = now;
        self.rate != before
    }

    /// The pace in force when not blocked, per second; `None` = unlimited.
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// The learned ceiling (what the provider accepted over its window), if any.
    pub fn ceiling(&self) -> Option<f64> {
        self.learned.map(|l| l.estimate)
    }

    /// When the ceiling was learned (clock time).
    pub fn ceiling_learned_at(&self) -> Option<Duration> {
        self.learned.map(|l| l.at)
    }

    /// Everything about the last estimate.
    pub fn learned(&self) -> Option<Learned> {
        self.learned
    }

    /// Blocked after a throttle (only probes go).
    pub fn is_blocked(&self) -> bool {
        matches!(self.stage, Stage::Blocked { .. })
    }

    /// Still in slow start (never throttled).
    pub fn in_slow_start(&self) -> bool {
        self.stage == Stage::SlowStart
    }

    /// Times the pace went down (an estimate below the pace before the throttle).
    pub fn decreases(&self) -> u64 {
        self.decreases
    }

    /// Upward probes started (at most one per probe interval).
    pub fn probes(&self) -> u64 {
        self.probes
    }

    /// Throttle episodes (blocks).
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Probes the provider refused while blocked.
    pub fn refused_probes(&self) -> u64 {
        self.refused_probes
    }

    /// Accepted so far (messages or recipients), in the log's trailing day.
    pub fn accepted_since(&self, from: Duration, now: Duration) -> u64 {
        self.log
            .count(from, now.saturating_add(Duration::from_nanos(1)))
    }

    /// How long admission must wait because of a block or the hold after a probe;
    /// `None` = ask the limiter (or, blocked, send the probe now). Pure.
    pub fn wait(&self, now: Duration) -> Option<Duration> {
        match self.stage {
            Stage::Blocked {
                gap,
                next_probe,
                probe_sent,
                ..
            } => match probe_sent {
                Some(t) => {
                    let lost = t.saturating_add(gap.max(PROBE_LOST));
                    (now < lost).then(|| lost - now)
                }
                None => (now < next_probe).then(|| next_probe - now),
            },
            _ => self.hold_until.filter(|h| now < *h).map(|h| h - now),
        }
    }

    /// Whether the next admission is a probe (blocked, and its time has come): it
    /// bypasses the limiter.
    pub fn probe_due(&self, now: Duration) -> bool {
        self.is_blocked() && self.wait(now).is_none()
    }

    /// The limiter held a message back (the provider's rate, not demand, is what limits).
    pub fn pressed(&mut self) {
        self.pressed = true;
    }

    /// One admission of `units` (messages or recipients) at `now` (after
    /// [`RateState::wait`] said go).
    pub fn on_admit(&mut self, now: Duration, units: u64) {
        self.admissions = self.admissions.saturating_add(1);
        self.admitted_units = self.admitted_units.saturating_add(units.max(1));
        if self.cycle_start.is_none() {
            self.cycle_start = Some(now);
            self.window_start = now;
        }
        if let Stage::Blocked { probe_sent, .. } = &mut self.stage {
            if probe_sent.is_none() {
                *probe_sent = Some(now);
            }
        }
    }

    /// The provider accepted `n` (messages at the end of DATA, or recipients at RCPT).
    /// Returns true if the pace changed (an accepted probe ends the block).
    pub fn on_accept(&mut self, now: Duration, n: u64) -> bool {
        let changed = match self.stage {
            Stage::Blocked {
                probe_sent: Some(_),
                since,
                last_refused,
                ..
            } => {
                self.unblock(now, since, last_refused);
                true
            }
            _ => false,
        };
        self.log.record(now, n);
        changed
    }

    fn unblock(&mut self, now: Duration, since: Duration, last_refused: Option<Duration>) {
        // The provider's window ended between the last refused probe and this accepted
        // one: read it as ending half-way (the probes' overrun costs the estimate half
        // as much, on average nothing).
        let end = last_refused.map_or(now, |r| r + (now.saturating_sub(r)) / 2);
        let block = end.saturating_sub(since);
        let start = self.cycle_start.unwrap_or(since);
        // A cycle shorter than the window learned before (a throttle soon after the
        // last estimate: it was too high) is read over that window, not its few
        // seconds, where the block would weigh too much.
        // Likewise a span with only a few accepted in it (a small limit, a token
        // bucket's refill) says little: look back over at least the last
        // `ESTIMATE_EVENTS` accepted.
        let before = self.learned.map_or(Duration::ZERO, |l| l.window);
        let few = self
            .log
            .span_of_last(ESTIMATE_EVENTS, now)
            .unwrap_or(Duration::ZERO);
        let series = self
            .series_start
            .map_or(Duration::ZERO, |s| end.saturating_sub(s));
        let cycle = end
            .saturating_sub(start)
            .max(before)
            .max(few)
            .max(series)
            .max(block)
            .min(MAX_SPAN);
        let (estimate, window) = self
            .log
            .best_rate(end, block, cycle)
            // Nothing accepted before the block: one message per block is all we know.
            .unwrap_or((1.0 / block.as_secs_f64().max(1e-3), block));
        // A failed upward probe: what held for a whole probe interval still holds.
        let estimate = self.held.map_or(estimate, |h| estimate.max(h));
        let before = self.rate;
        let mut pace = (estimate * (1.0 - self.p.margin)).max(self.p.floor);
        if let Some(c) = self.p.cap {
            pace = pace.min(c);
        }
        let (estimate, window, pace) = match self.refine {
            // A refinement step was throttled: the pace below it held for a window.
            // Back to it; this block's own reading (one short window) says less.
            Some(mut r) if std::mem::take(&mut self.refine_failed) => {
                r.hi = r.step.take().unwrap_or(r.hi);
                r.failures += 1;
                r.next = now.saturating_add(r.period);
                self.refine = (!r.done()).then_some(r);
                let w = self.learned.map_or(window, |l| l.window);
                (r.lo / (1.0 - self.p.margin), w, r.lo)
            }
            _ => {
                // The window ended no earlier than the last refused probe: the pace that
                // end would give bounds the search from above.
                let early = last_refused.filter(|r| *r < end).and_then(|r| {
                    self.log
                        .best_rate(r, r.saturating_sub(since), cycle)
                        .map(|(e, w)| (e * (1.0 - self.p.margin), w))
                });
                // A step holds only if it holds for the longest window the block allows
                // (from the estimate's span start to the accepted probe): over a shorter
                // one a fixed window's count may not have run out yet.
                let period = window
                    .saturating_add(now.saturating_sub(end))
                    .max(Duration::from_secs(1));
                self.refine = early
                    .map(|(hi, _)| Refine {
                        lo: pace,
                        hi: self.p.cap.map_or(hi, |c| hi.min(c)),
                        period,
                        next: now.saturating_add(period),
                        step: None,
                        failures: 0,
                    })
                    .filter(|r| !r.done());
                // Paced close to the limit, every span reads about the same rate and the
                // best one may be short: an estimate near the last one keeps its window
                // (the provider's window did not shrink because we paced well).
                let window = match self.learned {
                    Some(l) if (estimate - l.estimate).abs() <= 0.1 * l.estimate => {
                        window.max(l.window)
                    }
                    _ => window,
                };
                (estimate, window, pace)
            }
        };
        self.rate = Some(pace.min(RATE_MAX));
        self.learned = Some(Learned {
            estimate,
            at: now,
            window,
        });
        if before.is_none_or(|b| pace < b) {
            self.decreases += 1;
        }
        self.stage = Stage::Paced;
        self.last_unblock = Some(now);
        self.cycle_start = Some(now);
        self.hold_until = Some(now.saturating_add(Duration::from_secs_f64(1.0 / pace)));
        self.window_start = now;
        self.pressed = false;
        self.probing = false;
    }

    /// The provider said when to come back with its throttle ("try again in 60 seconds"):
    /// the next probe of the block waits at least that long (capped like any gap). Call
    /// it after [`RateState::on_throttle`] for the same reply. Returns true if the next
    /// probe moved.
    pub fn on_hint(&mut self, now: Duration, wait: Duration) -> bool {
        match &mut self.stage {
            Stage::Blocked {
                next_probe,
                probe_sent: None,
                ..
            } => {
                let at = now.saturating_add(wait.min(MAX_GAP));
                if at > *next_probe {
                    *next_probe = at;
                    return true;
                }
                false
            }
            _ => false,
        }
    }

    /// A rate throttle at `now`. Returns true if admission changed (a block began).
    pub fn on_throttle(&mut self, now: Duration) -> bool {
        match &mut self.stage {
            Stage::Blocked {
                since,
                gap,
                next_probe,
                probe_sent,
                last_refused,
            } => {
                if probe_sent.take().is_some() {
                    *last_refused = Some(now);
                    // The probe was refused: the next one 3/4 of the block later.
                    self.refused_probes += 1;
                    let elapsed = now.saturating_sub(*since);
                    *gap = (elapsed * 3 / 4).clamp(MIN_GAP, MAX_GAP).max(*gap);
                    *next_probe = now.saturating_add(*gap);
                }
                false
            }
            Stage::SlowStart | Stage::Paced => {
                let was_slow_start = self.stage == Stage::SlowStart;
                // Throttled while a refinement step is in force: the step was too far.
                // Throttled at the pace that held: the search is over.
                self.refine_failed = self.refine.is_some_and(|r| r.step.is_some());
                if !self.refine_failed {
                    self.refine = None;
                }
                // About a message's time at the pace the provider accepted in this
                // cycle (a sliding or short window frees up that soon), at least the
                // holdoff; later blocks, whose window is known, start at a 64th of it
                // (the block's overrun is what the estimate loses).
                let start = self.cycle_start.unwrap_or(now);
                let span = now.saturating_sub(start).as_secs_f64();
                let accepted = self.log.count(start, now.saturating_add(MIN_GAP));
                let seen = (span > 0.0 && accepted > 0).then(|| accepted as f64 / span);
                let pace = match (self.rate, seen) {
                    (Some(r), Some(a)) => Some(r.min(a)),
                    (r, a) => r.or(a),
                };
                // One admission's time (a recipient-rate probe is a whole message).
                let per_admission = self.admitted_units as f64 / self.admissions.max(1) as f64;
                let per = pace.map_or(MIN_GAP, |r| {
                    Duration::from_secs_f64(
                        (per_admission.max(1.0) / r.max(1e-6)).min(MAX_GAP.as_secs_f64()),
                    )
                });
                // Pacing at (or below) the held estimate was refused: the provider
                // lowered its limit, what held no longer does.
                if !self.probing {
                    let floor = self.held.map(|h| h * (1.0 - self.p.margin) * 1.001);
                    if floor.is_some_and(|f| self.rate.is_some_and(|r| r <= f)) {
                        self.held = None;
                    }
                }
                let known = self.learned.map_or(Duration::ZERO, |l| l.window / 64);
                let gap = per.max(known).max(self.p.holdoff).clamp(MIN_GAP, MAX_GAP);
                self.stage = Stage::Blocked {
                    since: now,
                    gap,
                    next_probe: now.saturating_add(gap),
                    probe_sent: None,
                    last_refused: None,
                };
                if self.cycle_start.is_none() {
                    self.cycle_start = Some(now);
                }
                let apart = self
                    .last_unblock
                    .is_none_or(|u| now.saturating_sub(u) >= self.p.probe_interval);
                if apart {
                    // Only a series that ends slow start reaches back: a later one would
                    // remember a limit the provider may just have lowered.
                    self.series_start = if was_slow_start {
                        self.cycle_start.or(Some(now))
                    } else {
                        None
                    };
                }
                self.blocks += 1;
                self.hold_until = None;
                true
            }
        }
    }

    /// Applies the ramp windows that passed up to `now`. Returns true if the pace changed.
    pub fn tick(&mut self, now: Duration) -> bool {
        if self.stage == Stage::Paced {
            if let Some(r) = self.refine {
                return self.refine_tick(r, now);
            }
        }
        let window = self.p.window.max(Duration::from_millis(1));
        let window = match self.learned {
            // A window limiter answers a probe only when its window overflows: one step
            // per provider window, so the overflow comes early in a step and the block
            // (and its refused probes) is short.
            Some(l) => window.max(l.window),
            None => window,
        };
        let elapsed = now.saturating_sub(self.window_start);
        if elapsed < window {
            return false;
        }
        let windows = u32::try_from(elapsed.as_nanos() / window.as_nanos()).unwrap_or(u32::MAX);
        self.window_start = self
            .window_start
            .saturating_add(window.saturating_mul(windows));
        let pressed = std::mem::take(&mut self.pressed);
        let Some(rate) = self.rate else {
            return false;
        };
        if !pressed {
            return false;
        }
        let cap = self.p.cap.unwrap_or(RATE_MAX);
        let next = match (self.stage, self.learned) {
            (Stage::SlowStart, _) => rate * 2.0,
            (Stage::Paced, Some(l)) => {
                let due = l.at.saturating_add(self.p.probe_interval.max(l.window));
                if now < due {
                    return false;
                }
                if !self.probing {
                    self.probing = true;
                    self.probes += 1;
                    self.probe_steps = 0;
                    self.held = Some(self.held.map_or(l.estimate, |h| h.max(l.estimate)));
                }
                // Gently first (+step), then each further clean window twice the last
                // increase: a raised limit is found within a few windows, an unchanged
                // one costs one window barely above it.
                let inc = self.p.step * l.estimate * f64::from(1u32 << self.probe_steps.min(10));
                self.probe_steps = self.probe_steps.saturating_add(1);
                rate + inc
            }
            (Stage::Paced, None) => rate * (1.0 + self.p.step),
            (Stage::Blocked { .. }, _) => return false,
        };
        let next = next.min(cap).max(self.p.floor);
        self.rate = Some(next);
        next != rate
    }
}

impl RateState {
    /// One refinement window passed (see [`Refine`]): a step that held raises `lo`; the
    /// next step goes two thirds of the way to `hi` while the limiter holds messages back.
    fn refine_tick(&mut self, mut r: Refine, now: Duration) -> bool {
        if now < r.next {
            return false;
        }
        r.next = now.saturating_add(r.period);
        if let Some(step) = r.step.take() {
            r.lo = step;
        }
        let before = self.rate;
        if r.done() {
            self.refine = None;
            self.rate = Some(r.lo);
        } else if std::mem::take(&mut self.pressed) {
            let step = r.lo + (r.hi - r.lo) * 2.0 / 3.0;
            r.step = Some(step);
            self.rate = Some(step);
            self.refine = Some(r);
        } else {
            self.refine = Some(r);
        }
        // The ramp windows start afresh when refinement ends.
        self.window_start = now;
        self.rate != before
    }
}

/// Spaces transactions by their size in recipients at a rate per second (a virtual
/// scheduling GCRA with burst 1 that lets one transaction of n take n cells: governor
/// refuses more cells at once than its burst, and a 50-recipient message must not wait
/// for a burst of 50 to be allowed). `None` = unlimited.
#[derive(Debug, Clone, Default)]
pub struct Pacer {
    rate: Option<f64>,
    /// When the next transaction may start.
    next: Duration,
}

impl Pacer {
    pub fn new(rate: Option<f64>) -> Self {
        Self {
            rate: positive(rate).filter(|r| r.is_finite()),
            next: Duration::ZERO,
        }
    }

    /// A new rate; the spacing already owed is kept, scaled to the new rate.
    pub fn set_rate(&mut self, rate: Option<f64>, now: Duration) {
        let rate = positive(rate).filter(|r| r.is_finite());
        if let (Some(old), Some(new)) = (self.rate, rate) {
            let owed = self.next.saturating_sub(now).as_secs_f64() * old / new;
            self.next = now.saturating_add(Duration::from_secs_f64(owed.min(86_400.0)));
        } else {
            self.next = now;
        }
        self.rate = rate;
    }

    /// Whether `n` may go now; otherwise how long until they may. Pure.
    pub fn wait(&self, now: Duration) -> Option<Duration> {
        self.rate?;
        (now < self.next).then(|| self.next - now)
    }

    /// Takes `n` cells at `now` (after [`Pacer::wait`] said go).
    pub fn take(&mut self, now: Duration, n: u32) {
        if let Some(r) = self.rate {
            let cost = Duration::from_secs_f64((f64::from(n.max(1)) / r).min(86_400.0));
            self.next = self.next.max(now).saturating_add(cost);
        }
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
mod tests;
