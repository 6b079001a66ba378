//! The controller: one per upstream, it turns every verdict, latency sample and connect
//! outcome into limits — connections, rate, pause, retry timing. It must never touch a
//! socket, sleep, or read the time except through its injected [`Clock`]; given the same
//! inputs, clock readings and seed it makes the same decisions (that is what the
//! simulation tests rely on).
//!
//! The parts live in their own modules: [`super::concurrency`] (connection limit),
//! [`super::rate`] (rate and GCRA), [`super::backoff`], [`super::pause`],
//! [`super::latency`], [`super::connect_pace`] (how fast new connections may be opened). The connection limit is the controller's alone: it publishes every
//! change on a watch channel ([`Controller::watch_limit`]), and the admission layer that
//! enforces it (`upstream::concurrency`) observes that channel — there is no second copy
//! to keep in step.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use tokio::sync::watch;

use super::backoff::{self, Backoff, ConnectBackoff};
use super::clock::{Clock, SystemClock};
use super::concurrency::{ConcurrencyState, Refusal};
use super::connect_pace::PaceParams;
use super::latency::{LatencyKind, LatencyParams, LatencyTracker};
use super::memory::{self, LearnedState, PauseMemory};
use super::pause::{PauseGate, PauseState};
use super::rate::{Pacer, RateLimiter, RateParams, RateState};
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
    // rate learning (see `policy::rate`)
    /// Where the message rate starts, in messages/s: `None` = unknown — start at
    /// [`super::rate::UNKNOWN_START`] and double per ramp window until the first throttle;
    /// `Some(f64::INFINITY)` = unlimited until the provider throttles (a local sink).
    /// Probing may raise the rate above it; only `rate_cap` is a ceiling.
    pub rate_per_second: Option<f64>,
    /// Hard ceiling of the message rate (messages/s), never exceeded: published figures,
    /// the user's `[upstream.rate]`. `None` = none.
    pub rate_cap: Option<f64>,
    /// Where the recipient rate starts (recipients/s); `None` = unlimited until the
    /// provider throttles recipients (`450 4.7.1 ... too many recipients from`).
    pub recipient_rate_per_second: Option<f64>,
    /// Hard ceiling of the recipient rate (recipients/s); `None` = none.
    pub recipient_rate_cap: Option<f64>,
    /// The rate never goes below this (messages or recipients per second).
    pub rate_floor: f64,
    /// Upward probe: + this fraction of the learned estimate per ramp window (0.1 = 10%).
    pub ramp_step: f64,
    /// Length of a ramp window (slow start doubles per window, probes add per window).
    pub ramp_window: Duration,
    /// The first probe after a rate throttle waits at least this long (it waits about
    /// a message's time at the pace the provider accepted anyway).
    pub rate_holdoff: Duration,
    /// Pace this fraction below what the provider accepted (0.05 = 5%).
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

    // connection learning
    /// An unverified figure for the provider's connection limit (a profile's guess):
    /// growth reaches it quickly and holds there like a learned ceiling, then probes
    /// above it after `probe_interval`, up to `max_connections`. `None` = no figure:
    /// grow from `initial_connections` until the provider objects.
    pub unverified_connections: Option<usize>,
    /// Open new connections this fraction slower than the learned connection rate
    /// (0.05 = 5%).
    pub open_margin: f64,
    /// While a connection-rate limit is in force, idle pooled connections are kept at
    /// least this long (instead of the configured idle timeout), so fewer new ones are
    /// needed.
    pub paced_keepalive: Duration,
}

impl Default for ControllerParams {
    fn default() -> Self {
        Self {
            initial_connections: 2,
            max_connections: 10,
            probe_interval: Duration::from_secs(600),
            rate_per_second: None,
            rate_cap: None,
            recipient_rate_per_second: None,
            recipient_rate_cap: None,
            rate_floor: 1.0 / 60.0,
            ramp_step: 0.10,
            ramp_window: Duration::from_secs(10),
            rate_holdoff: Duration::ZERO,
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
            unverified_connections: None,
            open_margin: 0.05,
            paced_keepalive: Duration::from_secs(240),
        }
    }
}

/// Whether `phase` belongs to setting up a connection (before MAIL): a refusal there is
/// about the new connection (or session), not about a transaction.
fn is_setup(phase: Phase) -> bool {
    matches!(
        phase,
        Phase::Greeting | Phase::Ehlo | Phase::StartTls | Phase::Auth
    )
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
    /// Blocked after a rate throttle (only single probes go).
    pub rate_blocked: bool,
    /// The provider's window as inferred from the last rate estimate.
    pub rate_window: Option<Duration>,
    /// Upward probes above the learned rate, and throttle episodes.
    pub rate_probes: u64,
    pub rate_blocks: u64,
    /// The recipient rate (recipients/s; `None` = unlimited) and what was learned.
    pub recipient_rate: Option<f64>,
    pub recipient_rate_ceiling: Option<f64>,
    pub recipient_rate_blocks: u64,
    pub pauses: u64,
    pub latency_step_downs: u64,
    pub connect_failures: u32,
    /// When the connection and rate ceilings were learned (clock time).
    pub concurrency_ceiling_at: Option<Duration>,
    pub rate_ceiling_at: Option<Duration>,
    /// New connections refused for the rate of opens (the count was left alone).
    pub open_rate_refusals: u64,
    /// The learned least gap between opening new connections, if pacing.
    pub open_gap: Option<Duration>,
    /// New connections the provider accepted (greeting 2xx), as the pacer counted them.
    pub opens_accepted: u64,
    /// Connections lost without a reply (faults, not limits).
    pub connections_lost: u64,
    /// Timeouts waiting for 354 or the final reply that stepped concurrency down.
    pub reply_timeouts: u64,
}

#[derive(Debug)]
struct State {
    conc: ConcurrencyState,
    rate: RateState,
    /// The recipient rate: learned like the message rate, enforced by `rcpt_pacer`.
    rcpt: RateState,
    rcpt_pacer: Pacer,
    pause: PauseGate,
    latency: LatencyTracker,
    connect: ConnectBackoff,
    rng: StdRng,
    policy_blocks: u32,
    latency_step_downs: u64,
    connections_lost: u64,
    reply_timeouts: u64,
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
        )
        .with_pacing(PaceParams {
            margin: params.open_margin.clamp(0.0, 1.0),
            probe_interval: params.probe_interval,
            step: params.ramp_step.clamp(0.0, 0.9),
        })
        .with_unverified_ceiling(params.unverified_connections, clock.now());
        let rate_params = RateParams {
            start: params.rate_per_second,
            cap: params.rate_cap,
            floor: params.rate_floor,
            step: params.ramp_step.clamp(0.0, 1.0),
            window: params.ramp_window,
            holdoff: params.rate_holdoff,
            margin: params.rate_margin.clamp(0.0, 0.5),
            probe_interval: params.probe_interval,
        };
        let rate = RateState::new(rate_params.clone());
        let rcpt = RateState::new(RateParams {
            start: Some(params.recipient_rate_per_second.unwrap_or(f64::INFINITY)),
            cap: params.recipient_rate_cap,
            ..rate_params
        });
        let rcpt_pacer = Pacer::new(rcpt.rate());
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
            rcpt,
            rcpt_pacer,
            pause: PauseGate::new(),
            latency: LatencyTracker::new(params.latency.clone()),
            connect,
            rng: backoff::rng(params.seed),
            policy_blocks: 0,
            latency_step_downs: 0,
            connections_lost: 0,
            reply_timeouts: 0,
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
        if phase == Phase::Greeting
            && !matches!(
                verdict,
                Verdict::Accept | Verdict::Throttle(ThrottleKind::Connections)
            )
        {
            // Any other refused greeting: the next connection waits too.
            self.refused_open_backoff(&mut self.lock(), ctx, now);
        }
        match verdict {
            Verdict::Accept => {
                match phase {
                    Phase::Greeting => self.on_connect_success(),
                    Phase::Rcpt => {
                        let mut st = self.lock();
                        if st.rcpt.on_accept(now, 1) {
                            let r = st.rcpt.rate();
                            st.rcpt_pacer.set_rate(r, now);
                            log_learned("recipient rate", &st.rcpt);
                        }
                    }
                    Phase::DataEnd => {
                        {
                            let mut st = self.lock();
                            if st.rate.on_accept(now, 1) {
                                self.limiter.set_rate(st.rate.rate());
                                log_learned("message rate", &st.rate);
                            }
                        }
                        self.on_transaction_success(ctx);
                    }
                    _ => {}
                }
                Disposition::Proceed
            }
            Verdict::Throttle(ThrottleKind::Connections) if is_setup(phase) => {
                // A new connection (or a new TLS session, or a login) refused: the count
                // or the rate of opens, by what was working; never retried at once.
                let mut st = self.lock();
                let before = st.conc.limit();
                let kind = st.conc.on_refused_open(ctx.working_connections, now);
                if kind == Refusal::Count {
                    self.refused_open_backoff(&mut st, ctx, now);
                }
                // A refusal for the rate of opens: the pacer's single probes at growing
                // gaps are the upstream-wide wait (`wait_locked` takes it for every open);
                // the connect backoff's doubling with jitter would blur where the
                // provider's window ended, and the provider is not unreachable.
                if st.conc.limit() != before {
                    self.publish_limit(&st);
                }
                if kind == Refusal::Rate {
                    tracing::debug!(
                        working = ctx.working_connections,
                        "new connection refused while fewer were open than have worked: a limit on the rate of new connections"
                    );
                }
                Disposition::Retry {
                    hint: None,
                    counts_as_attempt: false,
                }
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
                // A block begins (admission asks `rate.wait`); the GCRA keeps its rate
                // until the block's estimate replaces it.
                self.lock().rate.on_throttle(now);
                Disposition::Retry {
                    hint: None,
                    counts_as_attempt: false,
                }
            }
            Verdict::Throttle(ThrottleKind::Recipients) => {
                self.lock().rcpt.on_throttle(now);
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

    /// The connect backoff after a refused new connection: the provider is unreachable
    /// for us when nothing else is open, merely refusing this one when others are (or
    /// are being set up).
    fn refused_open_backoff(&self, st: &mut State, ctx: FeedbackCtx, now: Duration) {
        let st = &mut *st;
        if ctx.working_connections == 0 && ctx.in_flight_connections <= 1 {
            st.connect.on_failure(now, &mut st.rng);
        } else {
            st.connect.on_refused(now, &mut st.rng);
        }
    }

    /// A new connection broke off during its setup (closed, timed out, garbled) while
    /// other connections work: no limit is learned, but the next open waits (the connect
    /// backoff, without marking the provider unreachable).
    pub fn on_connect_refused(&self, ctx: FeedbackCtx) {
        let now = self.clock.now();
        self.refused_open_backoff(&mut self.lock(), ctx, now);
    }

    /// A connection was lost without a reply (closed or reset by the provider) in
    /// `phase`: a fault, not a limit. The message is retried; no limit changes — the
    /// next connection's greeting says whether the provider is back (a refusal there
    /// is what lowers the count). Counted for the stats.
    pub fn on_connection_lost(&self, phase: Option<Phase>) {
        let mut st = self.lock();
        st.connections_lost += 1;
        tracing::debug!(
            ?phase,
            "provider connection lost without a reply; not a limit"
        );
    }

    /// No reply in time in `phase`. Waiting for the 354 or the final reply (the "354:
    /// too many threads" case: the provider is overloaded by our sessions) steps the
    /// connection limit down by one and holds it there until the next probe; other
    /// phases change no limit. Returns true if the limit went down.
    pub fn on_reply_timeout(&self, phase: Phase) -> bool {
        if !matches!(phase, Phase::Data | Phase::DataEnd) {
            return false;
        }
        let now = self.clock.now();
        let mut st = self.lock();
        st.reply_timeouts += 1;
        st.latency.disarm(match phase {
            Phase::Data => LatencyKind::To354,
            _ => LatencyKind::ToFinal,
        });
        if st.conc.step_down(now) {
            self.publish_limit(&st);
            return true;
        }
        false
    }

    /// A transaction was accepted at the end of DATA. `on_reply(DataEnd, Accept)` calls
    /// this; call it directly only when not routing that reply through `on_reply`.
    pub fn on_transaction_success(&self, ctx: FeedbackCtx) {
        let now = self.clock.now();
        let mut st = self.lock();
        st.policy_blocks = 0;
        st.conc.note_working(ctx.working_connections, now);
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
        let now = self.clock.now();
        let mut st = self.lock();
        st.connect.on_success();
        st.conc.pace_mut().on_opened(now);
    }

    /// A connection's setup ended (`ok` = ready for MAIL FROM). The open itself was
    /// counted when its greeting was accepted ([`Controller::on_reply`]); counting it
    /// here again would halve every gap the connection pacer learns. An attempt that
    /// ended otherwise is no longer the pacer's probe.
    pub fn on_connect_finished(&self, ok: bool) {
        let mut st = self.lock();
        if ok {
            st.connect.on_success();
        }
        st.conc.pace_mut().on_attempt_ended();
    }

    /// How long until a new connection may be attempted; `None` = now: the connect
    /// backoff after failures or refusals, and the learned gap between opens.
    pub fn connect_wait(&self) -> Option<Duration> {
        let now = self.clock.now();
        let st = self.lock();
        Self::wait_locked(&st, now)
    }

    fn wait_locked(st: &State, now: Duration) -> Option<Duration> {
        match (st.connect.wait(now), st.conc.pace().wait(now)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// The provider's own "come back in" with a rate or recipient-rate throttle (the
    /// reply's retry hint): the learner's next probe waits at least that long. Feed the
    /// reply through [`Controller::on_reply`] first. Other kinds ignore it (a refused
    /// connection already waits for the upstream-wide connect backoff).
    pub fn on_throttle_hint(&self, kind: ThrottleKind, wait: Duration) {
        let now = self.clock.now();
        let mut st = self.lock();
        match kind {
            ThrottleKind::Rate => {
                st.rate.on_hint(now, wait);
            }
            ThrottleKind::Recipients => {
                st.rcpt.on_hint(now, wait);
            }
            ThrottleKind::Connections => {}
        }
    }

    /// Takes the right to open one new connection now, or says how long to wait: what
    /// [`Controller::connect_wait`] says, and when it says "now", the attempt is counted
    /// at once (the gap to the next one starts here), so callers that ask together do
    /// not all open one.
    pub fn begin_connect(&self) -> Result<(), Duration> {
        let now = self.clock.now();
        let mut st = self.lock();
        if let Some(w) = Self::wait_locked(&st, now) {
            return Err(w);
        }
        st.conc.pace_mut().on_attempt(now);
        Ok(())
    }

    /// A new connection is being attempted now (whoever opens it: the pool after
    /// [`Controller::begin_connect`], or a reachability check): the gap to the next open
    /// counts from here, and an open accepted after a refusal ends the pacer's block only
    /// if it was attempted after it.
    pub fn on_connect_attempt(&self) {
        let now = self.clock.now();
        self.lock().conc.pace_mut().on_attempt(now);
    }

    /// How long an idle pooled connection is kept when `configured` is the configured
    /// idle timeout: longer while new connections are paced (each one saved is an open
    /// the provider does not count).
    pub fn idle_keepalive(&self, configured: Duration) -> Duration {
        if self.lock().conc.pace().is_pacing() {
            configured.max(self.params.paced_keepalive)
        } else {
            configured
        }
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

    /// The message rate now in messages/s; `None` = unlimited. (While blocked after a
    /// throttle only probes go; see [`ControllerStats::rate_blocked`].)
    pub fn rate(&self) -> Option<f64> {
        let now = self.clock.now();
        let mut st = self.lock();
        self.tick(&mut st, now);
        st.rate.rate()
    }

    /// The recipient rate now in recipients/s; `None` = unlimited.
    pub fn recipient_rate(&self) -> Option<f64> {
        let now = self.clock.now();
        let mut st = self.lock();
        self.tick(&mut st, now);
        st.rcpt.rate()
    }

    fn tick(&self, st: &mut State, now: Duration) {
        if st.rate.tick(now) {
            self.limiter.set_rate(st.rate.rate());
        }
        if st.rcpt.tick(now) {
            let r = st.rcpt.rate();
            st.rcpt_pacer.set_rate(r, now);
        }
    }

    /// Takes one message of `recipients` from the rate limiters (messages and
    /// recipients), or says how long to wait. While a learner is blocked after a
    /// throttle only its single probe goes; every admission — first attempts and retries
    /// alike — comes through here, so retries count against the provider's window too.
    pub fn check_rate_n(&self, recipients: u32) -> Result<(), Duration> {
        let now = self.clock.now();
        let mut st = self.lock();
        self.tick(&mut st, now);
        let st = &mut *st;
        // Blocks and holds first, without taking anything.
        if let Some(w) = [st.rate.wait(now), st.rcpt.wait(now)]
            .into_iter()
            .flatten()
            .max()
        {
            return Err(w);
        }
        let rcpt_probe = st.rcpt.probe_due(now);
        if !rcpt_probe {
            if let Some(w) = st.rcpt_pacer.wait(now) {
                st.rcpt.pressed();
                return Err(w);
            }
        }
        if !st.rate.probe_due(now) {
            if let Err(w) = self.limiter.check() {
                st.rate.pressed();
                return Err(w);
            }
        }
        if !rcpt_probe {
            st.rcpt_pacer.take(now, recipients);
        }
        st.rate.on_admit(now, 1);
        st.rcpt.on_admit(now, u64::from(recipients));
        Ok(())
    }

    /// [`Controller::check_rate_n`] for a message of one recipient.
    pub fn check_rate(&self) -> Result<(), Duration> {
        self.check_rate_n(1)
    }

    /// Admission for one message of `recipients` recipients: the pause gate, then the
    /// message and recipient rates.
    pub fn admit_n(&self, recipients: u32) -> Result<(), Wait> {
        let now = self.clock.now();
        if let PauseState::Paused { scope, until } = self.lock().pause.state(now) {
            return Err(Wait::Paused {
                scope,
                remaining: until.map(|u| u.saturating_sub(now)),
            });
        }
        self.check_rate_n(recipients).map_err(Wait::Rate)
    }

    /// Admission for one message of one recipient ([`Controller::admit_n`]).
    pub fn admit(&self) -> Result<(), Wait> {
        self.admit_n(1)
    }

    /// The pause state now.
    pub fn pause_state(&self) -> PauseState {
        self.lock().pause.state(self.clock.now())
    }

    pub fn is_paused(&self) -> bool {
        self.pause_state().is_paused()
    }

    /// New configured limits (configuration reload), for the next transaction: the most
    /// connections and where the message rate starts (messages/s, `None` = unknown; the
    /// rate's cap stays — [`Controller::set_rate_limits`] sets both). What was
    /// learned is kept where its limit did not change and dropped where it did. Returns
    /// which of the two changed. ([`Controller::params`] keeps the values it started with.)
    pub fn set_limits(&self, max_connections: usize, rate_per_second: Option<f64>) -> (bool, bool) {
        let mut st = self.lock();
        let conc = st.conc.max() != max_connections.max(1);
        if conc {
            st.conc.set_max(max_connections);
        }
        let cap = st.rate.cap();
        let rate = self.set_rate_limits_locked(&mut st, rate_per_second, cap);
        self.publish_limit(&st);
        (conc, rate)
    }

    /// New message-rate limits (configuration reload): where the rate starts and its
    /// hard cap (see [`ControllerParams::rate_per_second`] and `rate_cap`). What was
    /// learned is kept when neither changed and dropped when one did (it was learned
    /// against the old limits). Returns whether they changed.
    pub fn set_rate_limits(&self, start: Option<f64>, cap: Option<f64>) -> bool {
        let mut st = self.lock();
        self.set_rate_limits_locked(&mut st, start, cap)
    }

    fn set_rate_limits_locked(&self, st: &mut State, start: Option<f64>, cap: Option<f64>) -> bool {
        let next = st.rate.with_limits(start, cap);
        let changed = next.cap() != st.rate.cap() || next.start() != st.rate.start();
        if changed {
            st.rate = next;
            self.limiter.set_rate(st.rate.rate());
        }
        changed
    }

    /// New recipient-rate limits (configuration reload), like
    /// [`Controller::set_rate_limits`]. `start: None` = unlimited until throttled.
    pub fn set_recipient_rate_limits(&self, start: Option<f64>, cap: Option<f64>) -> bool {
        let now = self.clock.now();
        let mut st = self.lock();
        let start = Some(start.unwrap_or(f64::INFINITY));
        let next = st.rcpt.with_limits(start, cap);
        let changed = next.cap() != st.rcpt.cap() || next.start() != st.rcpt.start();
        if changed {
            st.rcpt = next;
            let r = st.rcpt.rate();
            st.rcpt_pacer.set_rate(r, now);
        }
        changed
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
            recipient_rate: Some(st.rcpt.remember(now)),
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
        if let Some(r) = &saved.recipient_rate {
            if st.rcpt.restore(r, since_save, now) {
                let r = st.rcpt.rate();
                st.rcpt_pacer.set_rate(r, now);
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
            rate_blocked: st.rate.is_blocked(),
            rate_window: st.rate.learned().map(|l| l.window),
            rate_probes: st.rate.probes(),
            rate_blocks: st.rate.blocks(),
            recipient_rate: st.rcpt.rate(),
            recipient_rate_ceiling: st.rcpt.ceiling(),
            recipient_rate_blocks: st.rcpt.blocks(),
            pauses: st.pause.pauses(),
            latency_step_downs: st.latency_step_downs,
            connect_failures: st.connect.failures(),
            concurrency_ceiling_at: st.conc.ceiling_learned_at(),
            rate_ceiling_at: st.rate.ceiling_learned_at(),
            open_rate_refusals: st.conc.pace().refusals(),
            open_gap: st.conc.pace().gap(),
            opens_accepted: st.conc.pace().opens(),
            connections_lost: st.connections_lost,
            reply_timeouts: st.reply_timeouts,
        }
    }
}

/// A block ended with an estimate: what the provider was seen to accept, and the pace
/// that follows (per second; the operator's view of what was learned).
fn log_learned(what: &'static str, r: &RateState) {
    if let Some(l) = r.learned() {
        tracing::info!(
            what,
            accepted_per_second = l.estimate,
            over = ?l.window,
            pace_per_second = r.rate().unwrap_or(f64::INFINITY),
            "learned the provider's rate from the messages it accepted"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::clock::ManualClock;
    use crate::policy::rate;

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
        learn_a_rate(&c, &clock);
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
        // Unknown: a cautious start.
        assert_eq!(c.set_limits(1, None), (false, true));
        assert_eq!(c.rate(), Some(rate::UNKNOWN_START));
        // A cap is a cap, whatever the start.
        assert!(c.set_rate_limits(Some(50.0), Some(3.0)));
        assert_eq!(c.rate(), Some(3.0));
        assert!(!c.set_rate_limits(Some(50.0), Some(3.0)));
    }

    /// A message accepted, a rate throttle, the probe accepted: a learned rate.
    fn learn_a_rate(c: &Controller<ManualClock>, clock: &ManualClock) {
        assert!(c.admit().is_ok());
        c.on_reply(Phase::DataEnd, &Verdict::Accept, ctx(1, 1));
        let slow = Verdict::Throttle(ThrottleKind::Rate);
        c.on_reply(Phase::Mail, &slow, ctx(1, 1));
        let Err(Wait::Rate(w)) = c.admit() else {
            panic!("blocked after a throttle");
        };
        clock.advance(w);
        assert!(c.admit().is_ok(), "the probe");
        c.on_reply(Phase::DataEnd, &Verdict::Accept, ctx(1, 1));
        assert!(!c.stats().rate_blocked);
    }

    /// Today's bug (issue 10): against a fixed window the rate halved and then crawled
    /// at about a message a minute. The rate after a throttle is what the provider
    /// accepted over its window, just below it, not half of the pace before.
    #[test]
    fn a_throttles_come_back_hint_holds_the_next_probe() {
        let (c, clock) = ctl(ControllerParams {
            rate_per_second: Some(f64::INFINITY),
            seed: Some(1),
            ..ControllerParams::default()
        });
        for _ in 0..10 {
            assert!(c.admit().is_ok());
            c.on_reply(Phase::DataEnd, &Verdict::Accept, ctx(1, 1));
            clock.advance(Duration::from_millis(100));
        }
        let slow = Verdict::Throttle(ThrottleKind::Rate);
        c.on_reply(Phase::Mail, &slow, ctx(1, 1));
        // Without a hint the first probe would go within a second or so.
        c.on_throttle_hint(ThrottleKind::Rate, Duration::from_secs(45));
        match c.admit() {
            Err(Wait::Rate(w)) => assert_eq!(w, Duration::from_secs(45)),
            other => panic!("{other:?}"),
        }
        clock.advance(Duration::from_secs(45));
        assert!(c.admit().is_ok(), "the probe goes when the provider said");
        // A hint for connections changes nothing here.
        c.on_throttle_hint(ThrottleKind::Connections, Duration::from_secs(999));
    }

    #[test]
    fn a_rate_throttle_paces_just_below_what_the_window_accepted() {
        let (c, clock) = ctl(ControllerParams {
            rate_per_second: Some(f64::INFINITY),
            seed: Some(1),
            ..ControllerParams::default()
        });
        // 30 accepted in the first 3 s of a 60 s window, then refusals.
        for _ in 0..30 {
            assert!(c.admit().is_ok());
            c.on_reply(Phase::DataEnd, &Verdict::Accept, ctx(1, 1));
            clock.advance(Duration::from_millis(100));
        }
        let slow = Verdict::Throttle(ThrottleKind::Rate);
        c.on_reply(Phase::Mail, &slow, ctx(1, 1));
        // Blocked: single probes, refused until the window ends at 60 s.
        let mut probes = 0;
        let mut guard = 0;
        loop {
            guard += 1;
            assert!(guard < 1000);
            match c.admit() {
                Err(Wait::Rate(w)) => clock.advance(w),
                Err(other) => panic!("{other:?}"),
                Ok(()) => {
                    probes += 1;
                    assert!(c.admit().is_err(), "one probe at a time");
                    if clock.now() < Duration::from_secs(60) {
                        c.on_reply(Phase::Mail, &slow, ctx(1, 1));
                    } else {
                        c.on_reply(Phase::DataEnd, &Verdict::Accept, ctx(1, 1));
                        break;
                    }
                }
            }
        }
        let s = c.stats();
        let learned = s.rate_ceiling.unwrap_or(0.0);
        // 30 per 60 s = 0.5/s, low by at most the probes' overrun (3/4 of the block).
        assert!((0.5 / 1.75..=0.5 + 1e-9).contains(&learned), "{learned}");
        assert!((c.rate().unwrap_or(0.0) - learned * 0.95).abs() < 1e-9);
        // From 0.1 s (a message at the 10/s accepted) to 57 s, ×1.75 each.
        assert!(probes <= 16, "{probes} probes");
        assert!(s.rate_window.is_some());
    }

    #[test]
    fn recipients_are_paced_by_their_own_learned_rate() {
        let (c, clock) = ctl(ControllerParams {
            rate_per_second: Some(f64::INFINITY),
            ..ControllerParams::default()
        });
        // Unlimited until the provider says "too many recipients".
        for _ in 0..10 {
            assert!(c.admit_n(50).is_ok());
        }
        assert_eq!(c.recipient_rate(), None);
        for _ in 0..20 {
            c.on_reply(Phase::Rcpt, &Verdict::Accept, ctx(1, 1));
        }
        clock.advance(Duration::from_secs(10));
        let v = Verdict::Throttle(ThrottleKind::Recipients);
        assert_eq!(
            c.on_reply(Phase::Rcpt, &v, ctx(1, 1)),
            Disposition::Retry {
                hint: None,
                counts_as_attempt: false
            }
        );
        let Err(Wait::Rate(w)) = c.admit_n(5) else {
            panic!("blocked");
        };
        clock.advance(w);
        assert!(c.admit_n(5).is_ok(), "the probe");
        c.on_reply(Phase::Rcpt, &Verdict::Accept, ctx(1, 1));
        let r = c.recipient_rate().unwrap_or(0.0);
        // 20 recipients over the 10 s before the throttle and the block.
        assert!(r > 0.0 && r < 2.0, "{r}");
        // A transaction of 5 recipients waits 5 recipients' time.
        let Err(Wait::Rate(w)) = c.admit_n(5) else {
            panic!("paced");
        };
        clock.advance(w);
        assert!(c.admit_n(5).is_ok());
        let Err(Wait::Rate(w)) = c.admit_n(1) else {
            panic!("paced");
        };
        assert!((w.as_secs_f64() - 5.0 / r).abs() < 1e-3, "{w:?} vs 5 / {r}");
        // The message rate is untouched.
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

    fn refused() -> Verdict {
        Verdict::Throttle(ThrottleKind::Connections)
    }

    /// Issue 10 point 3: a refused greeting is never followed at once by the next
    /// attempt, whether others work (a wait, the provider stays reachable) or not (the
    /// provider refuses us altogether: unreachable until a connection works).
    #[test]
    fn a_refused_greeting_always_waits_before_the_next_open() {
        let (c, clock) = ctl(ControllerParams {
            initial_connections: 3,
            max_connections: 3,
            seed: Some(1),
            ..ControllerParams::default()
        });
        c.on_reply(Phase::Greeting, &refused(), ctx(2, 2));
        assert!(c.connect_wait().is_some(), "others working: still a wait");
        assert!(c.begin_connect().is_err());
        assert_eq!(c.reachability(), Reachability::Reachable);
        clock.advance(Duration::from_secs(2));
        assert_eq!(c.begin_connect(), Ok(()));
        c.on_reply(Phase::Greeting, &refused(), ctx(0, 0));
        assert!(c.connect_wait().is_some());
        assert!(matches!(c.reachability(), Reachability::Unreachable { .. }));
        // Any refused greeting, not only "too many connections".
        let (d, _) = ctl(ControllerParams {
            seed: Some(2),
            ..ControllerParams::default()
        });
        d.on_reply(Phase::Greeting, &Verdict::Defer { hint: None }, ctx(1, 1));
        assert!(d.connect_wait().is_some());
    }

    /// Issue 10 point 3: Postfix's connection-rate limit answers like its concurrency
    /// limit. Refused with fewer open than have worked: the count stays, opens are paced
    /// at what the provider accepted per cycle.
    #[test]
    fn a_connection_rate_limit_paces_opens_and_keeps_the_count() {
        let (c, clock) = ctl(ControllerParams {
            initial_connections: 3,
            max_connections: 3,
            open_margin: 0.0,
            seed: Some(3),
            ..ControllerParams::default()
        });
        // Three connections opened and working: 3 opens accepted at t = 0.
        for _ in 0..3 {
            assert_eq!(c.begin_connect(), Ok(()));
            c.on_reply(Phase::Greeting, &Verdict::Accept, ctx(0, 0));
        }
        for _ in 0..6 {
            c.on_reply(Phase::DataEnd, &Verdict::Accept, ctx(3, 3));
        }
        // One closed (messages per connection); its replacement is refused at t = 1.
        clock.advance(Duration::from_secs(1));
        assert_eq!(c.begin_connect(), Ok(()));
        c.on_reply(Phase::Greeting, &refused(), ctx(2, 2));
        let s = c.stats();
        assert_eq!((s.concurrency_limit, s.concurrency_ceiling), (3, None));
        assert_eq!(s.open_rate_refusals, 1);
        // Single probes at growing gaps (1 s, then 3/4 of the time blocked) until the
        // window ends at t = 30; the first one after that is accepted.
        let mut last_refused = clock.now();
        let mut probes = 0;
        loop {
            let w = c.connect_wait().expect("blocked: every probe waits");
            assert!(w >= Duration::from_secs(1) || probes > 0, "{w:?}");
            clock.advance(w);
            assert_eq!(c.begin_connect(), Ok(()));
            assert!(c.begin_connect().is_err(), "one probe at a time");
            probes += 1;
            if clock.now() < Duration::from_secs(30) {
                c.on_reply(Phase::Greeting, &refused(), ctx(2, 2));
                last_refused = clock.now();
                continue;
            }
            c.on_reply(Phase::Greeting, &Verdict::Accept, ctx(2, 2));
            break;
        }
        let accepted = clock.now();
        assert!(probes <= 8, "{probes} probes");
        assert!(
            accepted <= Duration::from_secs(30) + (last_refused - Duration::from_secs(1)),
            "accepted at {accepted:?}"
        );
        assert_eq!(c.stats().open_rate_refusals, probes);
        // The window ended between the last refusal and the accepted open: 3 opens over
        // the span from t = 0 to half-way between them.
        let end = last_refused + (accepted - last_refused) / 2;
        let gap = Duration::from_secs_f64(end.as_secs_f64() / 3.0);
        assert_eq!(c.stats().open_gap, Some(gap));
        assert_eq!(c.connect_wait(), Some(gap));
        assert_eq!(
            c.idle_keepalive(Duration::from_secs(60)),
            c.params().paced_keepalive
        );
        clock.advance(gap);
        assert_eq!(c.begin_connect(), Ok(()));
        assert!(c.begin_connect().is_err(), "one open per gap");
    }

    /// Issue 10 point 8: a connection closed without a reply is a fault, not a limit; a
    /// timeout waiting for 354 or the final reply steps the limit down by one.
    #[test]
    fn a_lost_connection_lowers_nothing_a_reply_timeout_steps_down_once() {
        let (c, _) = ctl(ControllerParams {
            initial_connections: 6,
            max_connections: 6,
            ..ControllerParams::default()
        });
        for p in [Phase::Mail, Phase::Data, Phase::DataEnd] {
            for _ in 0..6 {
                c.on_connection_lost(Some(p));
            }
        }
        let s = c.stats();
        assert_eq!((s.concurrency_limit, s.concurrency_ceiling), (6, None));
        assert_eq!(s.connections_lost, 18);
        assert!(!c.on_reply_timeout(Phase::Rcpt));
        assert!(c.on_reply_timeout(Phase::DataEnd));
        assert_eq!(c.concurrency_limit(), 5);
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
