//! The controller: one per upstream, it turns every verdict, latency sample and connect
//! outcome into limits — connections, rate, pause, retry timing. It must never touch a
//! socket, sleep, or read the time except through its injected [`Clock`]; given the same
//! inputs, clock readings and seed it makes the same decisions (that is what the
//! simulation tests rely on).
//!
//! The parts live in their own modules: [`super::concurrency`] (connection limit),
//! [`super::rate`] (rate and GCRA), [`super::backoff`], [`super::pause`],
//! [`super::latency`]. The connection limit is the controller's alone: it publishes every
//! change on a watch channel ([`Controller::watch_limit`]), and the admission layer that
//! enforces it (`upstream::concurrency`) observes that channel — there is no second copy
//! to keep in step.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use tokio::sync::watch;

use super::backoff::{self, Backoff, ConnectBackoff};
use super::clock::{Clock, SystemClock};
use super::concurrency::ConcurrencyState;
use super::latency::{LatencyKind, LatencyParams, LatencyTracker};
use super::memory::{self, LearnedState, PauseMemory};
use super::pause::{PauseGate, PauseState};
use super::rate::{RateLimiter, RateParams, RateState};
use super::verdict::{PauseScope, Phase, ThrottleKind, Verdict};

/// Controller settings, normally taken from the provider profile.
#[derive(Debug, Clone)]
pub struct ControllerParams {
    /// Connections to start with (clamped to `1..=max_connections`).
    pub initial_connections: usize,
    /// Never more connections than this (at least 1).
    pub max_connections: usize,
    /// How long a learned ceiling (connections or rate) holds before one probe above it.
    pub probe_interval: Duration,
    /// The profile's rate ceiling in messages/s; `None` = unknown, unlimited until the
    /// provider throttles.
    pub rate_per_second: Option<f64>,
    /// The rate never goes below this (messages/s).
    pub rate_floor: f64,
    /// Rate increase per clean window (0.1 = +10%).
    pub ramp_step: f64,
    /// Length of a ramp window.
    pub ramp_window: Duration,
    /// Rate throttles this soon after a decrease answer messages sent at the old rate:
    /// ignored.
    pub rate_holdoff: Duration,
    /// Stay this fraction below a learned rate ceiling (0.05 = 5%).
    pub rate_margin: f64,
    /// GCRA burst (1 = strictly paced).
    pub rate_burst: u32,
    /// Deferred messages: backoff base (attempt 0), maximum and minimum delay.
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub retry_min: Duration,
    /// Connection failures: upstream-wide backoff base, maximum and minimum.
    pub connect_backoff_base: Duration,
    pub connect_backoff_max: Duration,
    pub connect_backoff_min: Duration,
    /// Quota pause length when the reply does not say when the window resets.
    pub quota_pause: Duration,
    /// Consecutive 5.7.x policy blocks that pause the account ...
    pub policy_block_threshold: u32,
    /// ... for this long (unless the verdict says otherwise).
    pub policy_pause: Duration,
    /// Latency baselines ("354: too many threads").
    pub latency: LatencyParams,
    /// RNG seed for jitter; `None` = from the operating system.
    pub seed: Option<u64>,
}

impl Default for ControllerParams {
    fn default() -> Self {
        Self {
            initial_connections: 2,
            max_connections: 10,
            probe_interval: Duration::from_secs(600),
            rate_per_second: None,
            rate_floor: 1.0 / 60.0,
            ramp_step: 0.10,
            ramp_window: Duration::from_secs(10),
            rate_holdoff: Duration::from_secs(2),
            rate_margin: 0.05,
            rate_burst: 1,
            retry_base: Duration::from_secs(30),
            retry_max: Duration::from_secs(4 * 3600),
            retry_min: Duration::from_secs(1),
            connect_backoff_base: Duration::from_secs(1),
            connect_backoff_max: Duration::from_secs(300),
            connect_backoff_min: Duration::from_millis(100),
            quota_pause: Duration::from_secs(3600),
            policy_block_threshold: 3,
            policy_pause: Duration::from_secs(3600),
            latency: LatencyParams::default(),
            seed: None,
        }
    }
}

/// What the caller knew about its connections when a reply arrived.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedbackCtx {
    /// Connections carrying a transaction right now, this one included (is the limit in
    /// use?).
    pub in_flight_connections: usize,
    /// Other connections that are open and working; on a refusal, the refused one is not
    /// counted. This is where the limit drops to on "too many connections".
    pub working_connections: usize,
}

/// What to do with the message after a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Positive reply: carry on (or the message is delivered, at `DataEnd`).
    Proceed,
    /// Try the message again later, after [`Controller::retry_delay`].
    /// `counts_as_attempt` is false for throttles: our pacing, not the message.
    Retry {
        hint: Option<Duration>,
        counts_as_attempt: bool,
    },
    /// Keep the message untouched: the account is paused. No attempt is used up,
    /// nothing is bounced or suppressed.
    Hold,
    /// The address is permanently bad.
    Suppress,
    /// Mailbox-full style: suppress only after repeated occurrences.
    SoftBounce,
    /// This message is permanently refused; the address is fine.
    Reject,
}

/// Why admission must wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Paused; `None` = until resumed.
    Paused {
        scope: PauseScope,
        remaining: Option<Duration>,
    },
    /// The rate limiter: try again after this.
    Rate(Duration),
}

/// Counters for logs, `queue` status and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ControllerStats {
    pub concurrency_limit: usize,
    pub concurrency_ceiling: Option<usize>,
    pub connection_decreases: u64,
    pub connection_probes: u64,
    pub rate: Option<f64>,
    pub rate_ceiling: Option<f64>,
    pub rate_decreases: u64,
    pub pauses: u64,
    pub latency_step_downs: u64,
    pub connect_failures: u32,
    /// When the connection and rate ceilings were learned (clock time).
    pub concurrency_ceiling_at: Option<Duration>,
    pub rate_ceiling_at: Option<Duration>,
}

#[derive(Debug)]
struct State {
    conc: ConcurrencyState,
    rate: RateState,
    pause: PauseGate,
    latency: LatencyTracker,
    connect: ConnectBackoff,
    rng: StdRng,
    policy_blocks: u32,
    latency_step_downs: u64,
}

/// Whether the provider can be reached, as the connect outcomes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reachability {
    Reachable,
    /// Connections have failed since `since_ms` (Unix ms), `failures` times in a row; the
    /// next check is due in `next_check`.
    Unreachable {
        since_ms: u64,
        next_check: Duration,
        failures: u32,
    },
}

/// The per-upstream controller. `&self` everywhere; share it with `Arc`.
#[derive(Debug)]
pub struct Controller<C: Clock = SystemClock> {
    clock: C,
    params: ControllerParams,
    retry: Backoff,
    state: Mutex<State>,
    limiter: RateLimiter<C>,
    /// The connection limit as published to admission (changed under `state`'s lock).
    limit: watch::Sender<usize>,
}

impl<C: Clock> Controller<C> {
    pub fn new(params: ControllerParams, clock: C) -> Self {
        let conc = ConcurrencyState::new(
            params.initial_connections,
            params.max_connections,
            params.probe_interval,
        );
        let rate = RateState::new(RateParams {
            max: params.rate_per_second,
            floor: params.rate_floor,
            step: params.ramp_step.clamp(0.0, 1.0),
            window: params.ramp_window,
            holdoff: params.rate_holdoff,
            margin: params.rate_margin.clamp(0.0, 0.5),
            probe_interval: params.probe_interval,
        });
        let limiter = RateLimiter::new(clock.clone(), rate.rate(), params.rate_burst);
        let connect = ConnectBackoff::new(Backoff::new(
            params.connect_backoff_base,
            params.connect_backoff_max,
            params.connect_backoff_min,
        ));
        let retry = Backoff::new(params.retry_base, params.retry_max, params.retry_min);
        let state = State {
            conc,
            rate,
            pause: PauseGate::new(),
            latency: LatencyTracker::new(params.latency.clone()),
            connect,
            rng: backoff::rng(params.seed),
            policy_blocks: 0,
            latency_step_downs: 0,
        };
        let (limit, _) = watch::channel(state.conc.limit());
        Self {
            clock,
            params,
            retry,
            state: Mutex::new(state),
            limiter,
            limit,
        }
    }

    /// The connection limit, as it changes: admission enforces what this says.
    pub fn watch_limit(&self) -> watch::Receiver<usize> {
        self.limit.subscribe()
    }

    /// Publishes the connection limit after it changed (called with the state locked, so
    /// changes are published in the order they were made).
    fn publish_limit(&self, st: &State) {
        self.limit.send_replace(st.conc.limit());
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The injected clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    pub fn params(&self) -> &ControllerParams {
        &self.params
    }

    /// Feeds one provider reply (already classified). Call it for every reply.
    pub fn on_reply(&self, phase: Phase, verdict: &Verdict, ctx: FeedbackCtx) -> Disposition {
        let now = self.clock.now();
        match verdict {
            Verdict::Accept => {
                match phase {
                    Phase::Greeting => self.on_connect_success(),
                    Phase::DataEnd => self.on_transaction_success(ctx),
                    _ => {}
                }
                Disposition::Proceed
            }
            Verdict::Throttle(ThrottleKind::Connections) => {
                let mut st = self.lock();
                if st.conc.on_throttle(ctx.working_connections, now) {
                    self.publish_limit(&st);
                }
                Disposition::Retry {
                    hint: None,
                    counts_as_attempt: false,
                }
            }
            Verdict::Throttle(ThrottleKind::Rate) => {
                let mut st = self.lock();
                if st.rate.on_throttle(now) {
                    self.limiter.set_rate(st.rate.rate());
                }
                Disposition::Retry {
                    hint: None,
                    counts_as_attempt: false,
                }
            }
            Verdict::Defer { hint } => Disposition::Retry {
                hint: *hint,
                counts_as_attempt: true,
            },
            Verdict::ProtocolError => Disposition::Retry {
                hint: None,
                counts_as_attempt: true,
            },
            Verdict::Suppress => Disposition::Suppress,
            Verdict::SoftBounce => Disposition::SoftBounce,
            Verdict::RejectMessage => Disposition::Reject,
            Verdict::PolicyBlock => {
                let mut st = self.lock();
                st.policy_blocks = st.policy_blocks.saturating_add(1);
                if st.policy_blocks >= self.params.policy_block_threshold.max(1) {
                    let until = now.saturating_add(self.params.policy_pause);
                    st.pause.pause(PauseScope::Policy, Some(until), now);
                    st.policy_blocks = 0;
                    return Disposition::Hold;
                }
                Disposition::Retry {
                    hint: None,
                    counts_as_attempt: true,
                }
            }
            Verdict::Pause { scope, until } => {
                let until = match (scope, until) {
                    (PauseScope::Auth, _) => None,
                    (_, Some(d)) => Some(now.saturating_add(*d)),
                    (PauseScope::Quota, None) => Some(now.saturating_add(self.params.quota_pause)),
                    (PauseScope::Policy, None) => {
                        Some(now.saturating_add(self.params.policy_pause))
                    }
                };
                self.lock().pause.pause(*scope, until, now);
                Disposition::Hold
            }
        }
    }

    /// A transaction was accepted at the end of DATA. `on_reply(DataEnd, Accept)` calls
    /// this; call it directly only when not routing that reply through `on_reply`.
    pub fn on_transaction_success(&self, ctx: FeedbackCtx) {
        let now = self.clock.now();
        let mut st = self.lock();
        st.policy_blocks = 0;
        if st.conc.on_success(ctx.in_flight_connections, now) {
            self.publish_limit(&st);
        }
    }

    /// A connection attempt failed (refused, timeout, TLS error). Returns how long the
    /// whole upstream now waits before the next connection attempt.
    pub fn on_connect_failure(&self) -> Duration {
        let now = self.clock.now();
        let mut st = self.lock();
        let st = &mut *st;
        st.connect.on_failure(now, &mut st.rng)
    }

    /// A connection was established (greeting accepted).
    pub fn on_connect_success(&self) {
        self.lock().connect.on_success();
    }

    /// How long until a new connection may be attempted; `None` = now.
    pub fn connect_wait(&self) -> Option<Duration> {
        self.lock().connect.wait(self.clock.now())
    }

    /// Ends the wait of the connect backoff (the operator's `queue retry --all`): the
    /// next connection is tried at once.
    pub fn try_connect_now(&self) {
        self.lock().connect.try_now();
    }

    /// Whether the provider is reachable; if not, since when (Unix ms) and in how long
    /// the next check is due.
    pub fn reachability(&self) -> Reachability {
        let now = self.clock.now();
        let st = self.lock();
        match st.connect.since() {
            None => Reachability::Reachable,
            Some(since) => {
                let ago = u64::try_from(now.saturating_sub(since).as_millis()).unwrap_or(u64::MAX);
                Reachability::Unreachable {
                    since_ms: self.clock.unix_ms().saturating_sub(ago),
                    next_check: st.connect.wait(now).unwrap_or(Duration::ZERO),
                    failures: st.connect.failures(),
                }
            }
        }
    }

    /// A latency sample. Returns true if it stepped concurrency down.
    pub fn on_latency(&self, kind: LatencyKind, sample: Duration) -> bool {
        let now = self.clock.now();
        let mut st = self.lock();
        if st.latency.observe(kind, sample) && st.conc.step_down(now) {
            st.latency_step_downs += 1;
            self.publish_limit(&st);
            return true;
        }
        false
    }

    /// The most connections allowed now (the configured maximum; a reload may change it).
    pub fn max_connections(&self) -> usize {
        self.lock().conc.max()
    }

    /// The connection limit now (always at least 1).
    pub fn concurrency_limit(&self) -> usize {
        self.lock().conc.limit()
    }

    /// The rate now in messages/s; `None` = unlimited.
    pub fn rate(&self) -> Option<f64> {
        let now = self.clock.now();
        let mut st = self.lock();
        self.tick(&mut st, now);
        st.rate.rate()
    }

    fn tick(&self, st: &mut State, now: Duration) {
        if st.rate.tick(now) {
            self.limiter.set_rate(st.rate.rate());
        }
    }

    /// Takes one message from the rate limiter, or says how long to wait.
    pub fn check_rate(&self) -> Result<(), Duration> {
        let now = self.clock.now();
        let mut st = self.lock();
        self.tick(&mut st, now);
        self.limiter.check()?;
        st.rate.record_admission(now);
        Ok(())
    }

    /// Admission for one message: the pause gate, then the rate limiter.
    pub fn admit(&self) -> Result<(), Wait> {
        let now = self.clock.now();
        if let PauseState::Paused { scope, until } = self.lock().pause.state(now) {
            return Err(Wait::Paused {
                scope,
                remaining: until.map(|u| u.saturating_sub(now)),
            });
        }
        self.check_rate().map_err(Wait::Rate)
    }

    /// The pause state now.
    pub fn pause_state(&self) -> PauseState {
        self.lock().pause.state(self.clock.now())
    }

    pub fn is_paused(&self) -> bool {
        self.pause_state().is_paused()
    }

    /// New configured limits (configuration reload), for the next transaction: the most
    /// connections and the rate ceiling (messages/s, `None` = unlimited). What was
    /// learned is kept where its limit did not change and dropped where it did. Returns
    /// which of the two changed. ([`Controller::params`] keeps the values it started with.)
    pub fn set_limits(&self, max_connections: usize, rate_per_second: Option<f64>) -> (bool, bool) {
        let mut st = self.lock();
        let conc = st.conc.max() != max_connections.max(1);
        if conc {
            st.conc.set_max(max_connections);
        }
        let next = st.rate.with_max(rate_per_second);
        let rate = next.max() != st.rate.max();
        if rate {
            st.rate = next;
            self.limiter.set_rate(st.rate.rate());
        }
        self.publish_limit(&st);
        (conc, rate)
    }

    /// Ends any pause (operator command or config reload).
    pub fn resume(&self) {
        self.lock().pause.resume();
    }

    /// The delay before retry number `attempt` (0-based) of a deferred message; at least
    /// the provider's `hint`.
    pub fn retry_delay(&self, attempt: u32, hint: Option<Duration>) -> Duration {
        let mut st = self.lock();
        self.retry.delay(attempt, hint, &mut st.rng)
    }

    /// Everything learned so far, to be saved and handed back to
    /// [`Controller::restore_memory`] after a restart.
    pub fn memory(&self) -> LearnedState {
        let now = self.clock.now();
        let mut st = self.lock();
        self.tick(&mut st, now);
        let pause = match st.pause.state(now) {
            PauseState::Running => None,
            PauseState::Paused { scope, until } => Some(PauseMemory {
                scope: scope.into(),
                remaining_ms: until.map(|u| memory::ms(u.saturating_sub(now))),
            }),
        };
        LearnedState {
            rate: Some(st.rate.remember(now)),
            recipient_rate: None,
            connections: Some(st.conc.remember(now)),
            pause,
        }
    }

    /// Takes back what [`Controller::memory`] returned `since_save` ago (a restart): each
    /// part ages by that time, within today's configured limits; a timed pause whose end
    /// has passed is not restored. The caller drops an auth pause before calling when the
    /// credentials changed.
    pub fn restore_memory(&self, saved: &LearnedState, since_save: Duration) {
        let now = self.clock.now();
        let mut st = self.lock();
        if let Some(r) = &saved.rate {
            if st.rate.restore(r, since_save, now) {
                self.limiter.set_rate(st.rate.rate());
            }
        }
        if let Some(c) = &saved.connections {
            st.conc.restore(c, since_save, now);
        }
        if let Some(p) = saved.pause {
            let until = match p.remaining_ms {
                None => Some(None),
                Some(left) => Duration::from_millis(left)
                    .checked_sub(since_save)
                    .filter(|d| !d.is_zero())
                    .map(|d| Some(now.saturating_add(d))),
            };
            if let Some(until) = until {
                st.pause.pause(p.scope.into(), until, now);
            }
        }
        self.publish_limit(&st);
    }

    pub fn stats(&self) -> ControllerStats {
        let st = self.lock();
        ControllerStats {
            concurrency_limit: st.conc.limit(),
            concurrency_ceiling: st.conc.ceiling(),
            connection_decreases: st.conc.decreases(),
            connection_probes: st.conc.probes(),
            rate: st.rate.rate(),
            rate_ceiling: st.rate.ceiling(),
            rate_decreases: st.rate.decreases(),
            pauses: st.pause.pauses(),
            latency_step_downs: st.latency_step_downs,
            connect_failures: st.connect.failures(),
            concurrency_ceiling_at: st.conc.ceiling_learned_at(),
            rate_ceiling_at: st.rate.ceiling_learned_at(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::clock::ManualClock;

    fn ctl(p: ControllerParams) -> (Controller<ManualClock>, ManualClock) {
        let c = ManualClock::new();
        (Controller::new(p, c.clone()), c)
    }

    fn ctx(busy: usize, working: usize) -> FeedbackCtx {
        FeedbackCtx {
            in_flight_connections: busy,
            working_connections: working,
        }
    }

    #[test]
    fn quota_pause_holds_and_ends_at_the_window() {
        let (c, clock) = ctl(ControllerParams::default());
        let v = Verdict::Pause {
            scope: PauseScope::Quota,
            until: Some(Duration::from_secs(600)),
        };
        assert_eq!(c.on_reply(Phase::Mail, &v, ctx(1, 1)), Disposition::Hold);
        assert!(matches!(c.admit(), Err(Wait::Paused { .. })));
        clock.advance(Duration::from_secs(600));
        assert!(c.admit().is_ok());
    }

    #[test]
    fn new_limits_keep_what_was_learned_unless_its_limit_changed() {
        let (c, clock) = ctl(ControllerParams {
            initial_connections: 4,
            max_connections: 4,
            rate_per_second: Some(10.0),
            ..ControllerParams::default()
        });
        let mut rx = c.watch_limit();
        clock.advance(Duration::from_secs(5));
        let busy = Verdict::Throttle(ThrottleKind::Connections);
        c.on_reply(Phase::Greeting, &busy, ctx(3, 2));
        let slow = Verdict::Throttle(ThrottleKind::Rate);
        c.on_reply(Phase::Mail, &slow, ctx(1, 1));
        let s = c.stats();
        assert_eq!(s.concurrency_ceiling, Some(2));
        assert_eq!(s.concurrency_ceiling_at, Some(Duration::from_secs(5)));
        assert!(s.rate_ceiling.is_some() && s.rate_ceiling_at.is_some());

        // The same limits: nothing changes, nothing is forgotten.
        assert_eq!(c.set_limits(4, Some(10.0)), (false, false));
        assert_eq!(c.stats().concurrency_ceiling, Some(2));
        assert!(c.stats().rate_ceiling.is_some());

        // A lower maximum: the limit follows at once (admission is told), the
        // connection ceiling learned against 4 is dropped; the rate's is kept.
        assert_eq!(c.set_limits(1, Some(10.0)), (true, false));
        assert_eq!(c.max_connections(), 1);
        assert_eq!(c.concurrency_limit(), 1);
        assert_eq!(*rx.borrow_and_update(), 1);
        assert_eq!(c.stats().concurrency_ceiling, None);
        assert!(c.stats().rate_ceiling.is_some());

        // Another rate: a fresh rate loop at the new ceiling.
        assert_eq!(c.set_limits(1, Some(2.0)), (false, true));
        assert_eq!(c.stats().rate_ceiling, None);
        assert_eq!(c.rate(), Some(2.0));
        assert_eq!(c.set_limits(1, None), (false, true));
        assert_eq!(c.rate(), None);
    }

    #[test]
    fn learned_limits_and_pauses_survive_a_restart() {
        let p = ControllerParams {
            initial_connections: 4,
            max_connections: 10,
            rate_per_second: Some(10.0),
            ..ControllerParams::default()
        };
        let (c, clock) = ctl(p.clone());
        clock.advance(Duration::from_secs(100));
        c.on_reply(
            Phase::Greeting,
            &Verdict::Throttle(ThrottleKind::Connections),
            ctx(0, 2),
        );
        c.on_reply(
            Phase::Mail,
            &Verdict::Throttle(ThrottleKind::Rate),
            ctx(2, 2),
        );
        c.on_reply(
            Phase::Mail,
            &Verdict::Pause {
                scope: PauseScope::Quota,
                until: Some(Duration::from_secs(600)),
            },
            ctx(2, 2),
        );
        let saved = c.memory();
        let text = serde_json::to_string(&saved).unwrap_or_default();
        let back: LearnedState = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(back, saved);

        let (after, _) = ctl(p.clone());
        after.restore_memory(&back, Duration::from_secs(60));
        assert_eq!(after.concurrency_limit(), 2);
        assert_eq!(*after.watch_limit().borrow(), 2);
        assert_eq!(after.rate(), c.rate());
        assert_eq!(after.stats().rate_ceiling, c.stats().rate_ceiling);
        match after.pause_state() {
            PauseState::Paused { scope, until } => {
                assert_eq!(scope, PauseScope::Quota);
                assert_eq!(until, Some(Duration::from_secs(540)));
            }
            other => panic!("pause not restored: {other:?}"),
        }
        // Saved longer ago than the pause lasted: no pause.
        let (late, _) = ctl(p);
        late.restore_memory(&back, Duration::from_secs(601));
        assert!(!late.is_paused());
    }

    #[test]
    fn auth_pause_needs_resume() {
        let (c, clock) = ctl(ControllerParams::default());
        let v = Verdict::Pause {
            scope: PauseScope::Auth,
            until: None,
        };
        c.on_reply(Phase::Auth, &v, ctx(0, 0));
        clock.advance(Duration::from_secs(86_400 * 30));
        assert!(c.is_paused());
        c.resume();
        assert!(!c.is_paused());
    }

    #[test]
    fn repeated_policy_blocks_pause() {
        let (c, _) = ctl(ControllerParams::default());
        let d1 = c.on_reply(Phase::DataEnd, &Verdict::PolicyBlock, ctx(1, 1));
        let d2 = c.on_reply(Phase::DataEnd, &Verdict::PolicyBlock, ctx(1, 1));
        assert!(matches!(d1, Disposition::Retry { .. }) && d1 == d2);
        assert_eq!(
            c.on_reply(Phase::DataEnd, &Verdict::PolicyBlock, ctx(1, 1)),
            Disposition::Hold
        );
        assert!(matches!(
            c.pause_state(),
            PauseState::Paused {
                scope: PauseScope::Policy,
                ..
            }
        ));
    }

    #[test]
    fn throttles_do_not_count_as_attempts_defers_do() {
        let (c, _) = ctl(ControllerParams::default());
        let t = c.on_reply(
            Phase::Rcpt,
            &Verdict::Throttle(ThrottleKind::Rate),
            ctx(1, 1),
        );
        assert_eq!(
            t,
            Disposition::Retry {
                hint: None,
                counts_as_attempt: false
            }
        );
        let hint = Some(Duration::from_secs(120));
        let d = c.on_reply(Phase::Rcpt, &Verdict::Defer { hint }, ctx(1, 1));
        assert_eq!(
            d,
            Disposition::Retry {
                hint,
                counts_as_attempt: true
            }
        );
        assert!(c.retry_delay(0, hint) >= Duration::from_secs(120));
    }

    #[test]
    fn latency_steps_down_once() {
        let (c, _) = ctl(ControllerParams {
            initial_connections: 5,
            ..ControllerParams::default()
        });
        for _ in 0..30 {
            c.on_latency(LatencyKind::To354, Duration::from_millis(200));
        }
        assert!(c.on_latency(LatencyKind::To354, Duration::from_secs(10)));
        for _ in 0..10 {
            c.on_latency(LatencyKind::To354, Duration::from_secs(10));
        }
        assert_eq!(c.concurrency_limit(), 4);
        assert_eq!(c.stats().latency_step_downs, 1);
    }

    #[test]
    fn connect_failures_back_off_the_upstream() {
        let (c, clock) = ctl(ControllerParams {
            seed: Some(5),
            ..ControllerParams::default()
        });
        assert_eq!(c.connect_wait(), None);
        let mut last = Duration::ZERO;
        for _ in 0..12 {
            last = c.on_connect_failure();
        }
        assert!(last <= Duration::from_secs(300));
        assert!(c.connect_wait().is_some());
        clock.advance(Duration::from_secs(301));
        assert_eq!(c.connect_wait(), None);
        c.on_reply(Phase::Greeting, &Verdict::Accept, ctx(0, 0));
        assert_eq!(c.stats().connect_failures, 0);
    }
}
