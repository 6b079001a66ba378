//! Pacing of new connections: what a provider's limit on connection *attempts* per time
//! (Postfix's `smtpd_client_connection_rate_limit`, a limit on new TLS sessions) allows,
//! learned from the opens it accepted, and how long the next open must wait. It must
//! never look at a socket or read the time itself (callers pass `now`), never pace a
//! provider that has not refused an open for its rate, and never let one refused open
//! shrink the pace below what the provider accepted in its last full cycle.
//!
//! A refused open starts a *block*: no new connection until an open is accepted again
//! (the controller's connect backoff spaces the retries, one attempt out at a time). The
//! first accepted open ends the block and closes a *cycle* — from the end of the previous
//! block (or the first open) to now. What the provider allows is the best rate of opens
//! it accepted over a span from one of the cycle's opens to the block's end: for a fixed
//! window of `L` opens per `W` (anvil) that span is one window and the gap is `W / L`,
//! however slowly the cycle began; for a sliding window or a token bucket it converges
//! to the long-run rate. New
//! connections are then opened at least that far apart (plus a margin). After
//! `probe_interval` without a refusal the gap shrinks by `step` per accepted open, so a
//! lifted limit is found again; a gap below [`MIN_GAP`] ends pacing.

use std::collections::VecDeque;
use std::time::Duration;

/// Below this gap between opens, pacing is not worth keeping: it ends.
pub const MIN_GAP: Duration = Duration::from_millis(10);
/// At most this gap: a cycle stretched by a long outage must not stall new connections.
pub const MAX_GAP: Duration = Duration::from_secs(600);
/// The opens of one cycle kept for its estimate: older ones say nothing a provider's
/// window of this many opens would not.
const CYCLE_OPENS: usize = 512;
/// The least gap between two probes while blocked, and the most the first one waits.
const MIN_PROBE_GAP: Duration = Duration::from_secs(1);
const MAX_FIRST_PROBE_GAP: Duration = Duration::from_secs(30);
/// While blocked, one attempt at a time probes whether the provider's window is over;
/// the others wait for its answer, re-checking this often...
const PROBE_RECHECK: Duration = Duration::from_millis(250);
/// ...and for at most this long, should the answer never be reported.
const PROBE_HOLD: Duration = Duration::from_secs(60);

/// Settings of the pacer (from `ControllerParams`).
#[derive(Debug, Clone)]
pub struct PaceParams {
    /// Open this fraction slower than the cycle estimate (0.05 = 5%).
    pub margin: f64,
    /// How long a learned gap holds before it is probed (shrunk).
    pub probe_interval: Duration,
    /// Shrink per accepted open once probing (0.1 = 10%).
    pub step: f64,
}

/// The connection-open pacer. All times are [`crate::policy::clock::Clock`] times.
#[derive(Debug, Clone)]
pub struct ConnectPacer {
    params: PaceParams,
    /// The learned least gap between opens; `None` = not pacing.
    gap: Option<Duration>,
    /// When it was learned (or last refused): probing waits `probe_interval` from here.
    learned_at: Option<Duration>,
    /// The provider's window as the last cycle showed it, and the last probe step: one
    /// step per window, so a probe costs at most one window's refusals.
    window: Duration,
    last_step: Duration,
    /// The last open attempted (the gap counts from attempts: a refused one counted with
    /// the provider too).
    last_attempt: Option<Duration>,
    /// The opens accepted in the current cycle, oldest first (at most [`CYCLE_OPENS`]).
    cycle: VecDeque<Duration>,
    /// When the current block began (its first refusal), and the first gap between its
    /// probes (about the time one open took in the cycle, at least [`MIN_PROBE_GAP`]).
    block_start: Option<Duration>,
    first_probe_gap: Duration,
    /// The last accepted open: a cycle starts afresh after a quiet spell longer than
    /// [`MAX_GAP`] (opens that far apart say nothing about a window).
    last_opened: Option<Duration>,
    /// A refused open since the last accepted one, and when the last one was refused.
    blocked: bool,
    refused_at: Option<Duration>,
    /// Opens attempted since the block began. An open accepted while blocked that was
    /// attempted before the refusal (set up in parallel) does not end the block.
    attempts_in_block: u32,
    /// Refinement after a block: the least gap its window allows (had the window ended
    /// right after the last refused probe). While set, the gap steps toward it, one step
    /// per window.
    refine_floor: Option<Duration>,
    /// The gap before the last step down (refinement or probe): it held for a window, so
    /// a refusal after the step goes back to it.
    held_gap: Option<Duration>,
    /// The current block began with a refusal after such a step.
    step_refused: bool,
    /// An attempt made while blocked whose answer has not come yet: the one probe out.
    probe_out: Option<Duration>,
    /// Attempts are reported ([`ConnectPacer::on_attempt`]); without that, every
    /// accepted open counts as one attempted after the refusal.
    tracks_attempts: bool,
    refusals: u64,
    opens: u64,
}

impl ConnectPacer {
    pub fn new(params: PaceParams) -> Self {
        Self {
            params,
            gap: None,
            learned_at: None,
            window: Duration::ZERO,
            last_step: Duration::ZERO,
            last_attempt: None,
            cycle: VecDeque::new(),
            block_start: None,
            first_probe_gap: MIN_PROBE_GAP,
            last_opened: None,
            blocked: false,
            refused_at: None,
            attempts_in_block: 0,
            probe_out: None,
            refine_floor: None,
            held_gap: None,
            step_refused: false,
            tracks_attempts: false,
            refusals: 0,
            opens: 0,
        }
    }

    /// The learned gap between opens, if pacing.
    pub fn gap(&self) -> Option<Duration> {
        self.gap
    }

    /// Refused opens counted as a connection-rate limit so far.
    pub fn refusals(&self) -> u64 {
        self.refusals
    }

    /// Opens accepted so far (each counts once in its cycle).
    pub fn opens(&self) -> u64 {
        self.opens
    }

    /// Whether a connection-rate limit is in force (keep connections longer then).
    pub fn is_pacing(&self) -> bool {
        self.gap.is_some() || self.blocked
    }

    /// How long until the next open may be attempted; `None` = now. While blocked, an
    /// attempt already out holds the others until it is answered: each refused attempt
    /// counts with the provider (and stretches the connect backoff), so several at once
    /// would only multiply the refusals.
    pub fn wait(&self, now: Duration) -> Option<Duration> {
        if self.blocked {
            if let Some(until) = self.probe_out.map(|at| at.saturating_add(PROBE_HOLD)) {
                if now < until {
                    return Some((until - now).min(PROBE_RECHECK));
                }
            }
            if let Some(next) = self.next_probe() {
                return (now < next).then(|| next - now);
            }
        }
        let next = self.last_attempt?.checked_add(self.gap?)?;
        (now < next).then(|| next - now)
    }

    /// While blocked, when the next single probe may go: after the last refusal by the
    /// larger of the block's first gap and 3/4 of the time blocked so far. So a block
    /// that outlasts a window of `W` costs about log1.75(W / first gap) refused opens,
    /// and the accepted probe comes at most 3/4 of the time blocked after the window's
    /// end — the half-way estimate of that end is then off by well under a window's
    /// tenth (an exponential connect backoff with jitter could put it several seconds
    /// off in a 10 s window, and every learned gap with it).
    fn next_probe(&self) -> Option<Duration> {
        let refused = self.refused_at?;
        let blocked_for = refused.saturating_sub(self.block_start.unwrap_or(refused));
        let gap = self.first_probe_gap.max(blocked_for.mul_f64(0.75));
        Some(refused.saturating_add(gap.min(MAX_GAP)))
    }

    /// An open is being attempted now.
    pub fn on_attempt(&mut self, now: Duration) {
        self.last_attempt = Some(now);
        self.tracks_attempts = true;
        if self.blocked {
            self.attempts_in_block = self.attempts_in_block.saturating_add(1);
            self.probe_out = Some(now);
        }
    }

    /// An attempt ended without an accepted open or a refusal for the rate (a network
    /// error, a timeout, another refusal): the probe is no longer out.
    pub fn on_attempt_ended(&mut self) {
        self.probe_out = None;
    }

    /// The provider accepted an open (its greeting was 2xx and setup finished).
    pub fn on_opened(&mut self, now: Duration) {
        let quiet = self
            .last_opened
            .is_some_and(|t| now.saturating_sub(t) > MAX_GAP);
        self.last_opened = Some(now);
        self.opens += 1;
        if quiet && !self.blocked {
            self.cycle.clear();
        }
        if self.blocked && self.tracks_attempts && self.attempts_in_block == 0 {
            // Set up before the refusal came: it belongs to the cycle that is ending.
            self.push_open(now);
            return;
        }
        self.probe_out = None;
        if self.blocked {
            // The block ends: the cycle that ends here says what the provider allows.
            self.blocked = false;
            // The provider's window ended somewhere between the last refused attempt
            // and this accepted one: the middle (the connect backoff's retry gaps would
            // otherwise stretch every cycle; a refusal while paced keeps the old gap as
            // the floor, probing is one step per window).
            let end = self
                .refused_at
                .map_or(now, |r| r + now.saturating_sub(r) / 2);
            let block_start = self.block_start.take().unwrap_or(end);
            let margin = 1.0 + self.params.margin.clamp(0.0, 1.0);
            let held = self
                .held_gap
                .take()
                .filter(|_| std::mem::take(&mut self.step_refused));
            if let Some(held) = held {
                // A step down was refused: the gap before it held for a whole window and
                // is within one step of the limit. Back to it; refinement is over.
                self.gap = Some(held);
                self.refine_floor = None;
                self.learned_at = Some(now);
                self.last_step = now;
            } else if let Some((per, span)) = self.best_spacing(block_start, end) {
                let mut gap = Duration::from_secs_f64(per * margin);
                // Refused while already paced: that gap was not too long, whatever a
                // short, noisy cycle says.
                if let Some(old) = self.gap {
                    gap = gap.max(old);
                }
                let gap = gap.clamp(MIN_GAP, MAX_GAP);
                self.gap = Some(gap);
                self.learned_at = Some(now);
                self.last_step = now;
                self.window = span;
                // Where the window ended is known only to lie between the last refused
                // probe and this open; half-way may be up to half a probe gap long.
                // Step toward the earliest end it could have had, one step per window:
                // a step that is refused goes back to the gap before it.
                let early = self
                    .refused_at
                    .map_or(Duration::ZERO, |r| end.saturating_sub(r));
                let floor = Duration::from_secs_f64(
                    per * margin * (span.saturating_sub(early).as_secs_f64() / span.as_secs_f64()),
                )
                .max(MIN_GAP);
                self.refine_floor = (floor < gap).then_some(floor);
            }
            self.cycle.clear();
            self.push_open(now);
            return;
        }
        self.push_open(now);
        let Some(gap) = self.gap else { return };
        if now < self.last_step.saturating_add(self.window) {
            return;
        }
        let next = gap.mul_f64(1.0 - self.params.step.clamp(0.0, 0.9));
        let next = if let Some(floor) = self.refine_floor {
            // Refining the last block's estimate: one step per window toward its floor.
            let next = next.max(floor);
            if next <= floor {
                self.refine_floor = None;
            }
            Some(next)
        } else if self
            .learned_at
            .is_some_and(|at| now >= at.saturating_add(self.params.probe_interval))
        {
            // Probing: a gap that held for probe_interval shrinks a step, at most one
            // step per window; below MIN_GAP pacing ends.
            (next >= MIN_GAP).then_some(next)
        } else {
            return;
        };
        // Either step goes back to the gap before it if it is refused.
        self.held_gap = Some(gap);
        self.gap = next;
        self.last_step = now;
    }

    fn push_open(&mut self, now: Duration) {
        if self.cycle.len() >= CYCLE_OPENS {
            self.cycle.pop_front();
        }
        self.cycle.push_back(now);
    }

    /// What the ending cycle says the provider allows, as the least spacing between
    /// opens (seconds) and the span it was seen over: the best rate of accepted opens
    /// over a span from one of them to `end` that holds the whole block. A limiter's
    /// window (anvil's starts with the first open after the last one ended) is one of
    /// those spans; spans reaching further back take in times the sender did not use
    /// the limit (a slow start, a quiet spell) and read lower, so the best one is the
    /// window.
    fn best_spacing(&self, block_start: Duration, end: Duration) -> Option<(f64, Duration)> {
        let n = self.cycle.len();
        self.cycle
            .iter()
            .enumerate()
            .take_while(|(_, t)| **t <= block_start)
            .filter_map(|(i, t)| {
                let span = end.checked_sub(*t).filter(|d| !d.is_zero())?;
                let opens = (n - i) as f64;
                Some((span.as_secs_f64() / opens, span))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
    }

    /// The provider refused an open for its connection rate. Until an open is accepted
    /// again nothing is learned; the cycle estimate comes with that open.
    pub fn on_refused(&mut self, now: Duration) {
        self.refusals += 1;
        self.probe_out = None;
        if !self.blocked {
            self.attempts_in_block = 0;
            self.block_start = Some(now);
            // Refused after a step down within a window of it: the step was too far.
            self.step_refused = self.held_gap.is_some()
                && self.gap.is_some()
                && now < self.last_step.saturating_add(self.window.saturating_mul(2));
            self.refine_floor = None;
            // About one open's time at the pace the cycle had.
            let per_open = match (self.cycle.front(), self.cycle.len()) {
                (Some(first), n) if n > 0 => now.saturating_sub(*first) / n as u32,
                _ => MIN_PROBE_GAP,
            };
            self.first_probe_gap = per_open.clamp(MIN_PROBE_GAP, MAX_FIRST_PROBE_GAP);
        }
        self.blocked = true;
        self.refused_at = Some(now);
        self.learned_at = Some(now);
        self.last_attempt = Some(self.last_attempt.map_or(now, |t| t.max(now)));
    }

    /// What to save: the learned gap and when it was learned (clock time).
    pub fn remembered(&self) -> Option<(Duration, Duration)> {
        Some((self.gap?, self.learned_at.unwrap_or_default()))
    }

    /// Takes back a saved gap, learned at `at` (clock time).
    pub fn restore(&mut self, gap: Duration, at: Duration) {
        self.gap = (gap >= MIN_GAP).then(|| gap.min(MAX_GAP));
        self.learned_at = Some(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: f64) -> Duration {
        Duration::from_secs_f64(x)
    }

    fn pacer() -> ConnectPacer {
        ConnectPacer::new(PaceParams {
            margin: 0.0,
            probe_interval: Duration::from_secs(600),
            step: 0.1,
        })
    }

    #[test]
    fn no_pacing_until_an_open_is_refused_for_the_rate() {
        let mut p = pacer();
        for i in 0..100 {
            p.on_attempt(s(f64::from(i)));
            p.on_opened(s(f64::from(i)));
            assert_eq!(p.wait(s(f64::from(i))), None);
        }
        assert!(!p.is_pacing());
    }

    /// A fixed window of 10 opens per 60 s (anvil): a burst of 10 goes through, the 11th
    /// is refused, the first accepted open after the window says 10 per 60 s.
    #[test]
    fn a_fixed_window_is_learned_from_one_cycle() {
        let mut p = pacer();
        for i in 0..10 {
            p.on_attempt(s(f64::from(i) * 0.1));
            p.on_opened(s(f64::from(i) * 0.1));
        }
        p.on_attempt(s(1.0));
        p.on_refused(s(1.0));
        assert!(p.is_pacing());
        // Refused retries while the window lasts learn nothing; the window ended between
        // the last refusal and the accepted open (here: at the same instant).
        p.on_refused(s(20.0));
        p.on_attempt(s(60.0));
        p.on_refused(s(60.0));
        p.on_attempt(s(60.0));
        p.on_opened(s(60.0));
        assert_eq!(p.gap(), Some(s(6.0)));
        // The next open waits the gap from the last attempt.
        assert_eq!(p.wait(s(61.0)), Some(s(5.0)));
        assert_eq!(p.wait(s(66.0)), None);
        // Paced opens at that gap fit the window: the next cycle gives the same gap.
        let mut t = 60.0;
        for _ in 0..10 {
            t += 6.0;
            p.on_attempt(s(t));
            p.on_opened(s(t));
        }
        assert_eq!(p.gap(), Some(s(6.0)), "no probe before probe_interval");
    }

    /// Opens set up in parallel with the refused one and accepted after it came are part
    /// of the ending cycle; only an open attempted after the refusal ends the block.
    #[test]
    fn opens_attempted_before_the_refusal_do_not_end_the_block() {
        let mut p = pacer();
        for _ in 0..4 {
            p.on_attempt(s(0.0));
        }
        p.on_opened(s(0.1));
        p.on_opened(s(0.1));
        p.on_refused(s(0.1));
        p.on_opened(s(0.2)); // attempted at 0.0
        assert_eq!(p.gap(), None, "still blocked");
        p.on_attempt(s(1.2));
        p.on_refused(s(1.2));
        p.on_attempt(s(1.2));
        p.on_opened(s(1.2));
        // 3 accepted from 0.1 to 1.2.
        assert_eq!(p.gap(), Some(s(1.1 / 3.0)));
    }

    /// Refused while paced at a gap: the new gap is never shorter than that one.
    /// The window ended between the last refused attempt and the accepted one: the
    /// middle is taken, so the connect backoff's growing retry gaps do not stretch it.
    #[test]
    fn the_cycle_ends_between_the_last_refusal_and_the_accepted_open() {
        let mut p = pacer();
        p.on_opened(s(0.0));
        p.on_opened(s(0.0));
        p.on_refused(s(0.5));
        p.on_refused(s(50.0));
        p.on_opened(s(70.0));
        assert_eq!(p.gap(), Some(s(30.0)), "(50 + 70) / 2 = 60 s for 2 opens");
    }

    #[test]
    fn a_refusal_while_paced_never_shortens_the_gap() {
        let mut p = pacer();
        p.restore(s(2.0), s(0.0));
        for t in [0.0, 0.1, 0.2] {
            p.on_attempt(s(t));
            p.on_opened(s(t));
        }
        p.on_attempt(s(0.3));
        p.on_refused(s(0.3));
        p.on_attempt(s(0.5));
        p.on_opened(s(0.5)); // a short, noisy cycle: 0.5 s for 3 opens
        assert_eq!(p.gap(), Some(s(2.0)));
    }

    #[test]
    fn a_quiet_spell_starts_a_new_cycle() {
        let mut p = pacer();
        p.on_opened(s(0.0));
        p.on_opened(s(1000.0));
        p.on_opened(s(1001.0));
        p.on_refused(s(1010.0));
        p.on_opened(s(1010.0));
        assert_eq!(p.gap(), Some(s(5.0)), "two opens from 1000 to 1010");
    }

    #[test]
    fn the_gap_is_probed_after_the_interval_and_ends_when_tiny() {
        let mut p = pacer();
        p.on_opened(s(0.0));
        p.on_refused(s(1.0));
        p.on_refused(s(10.0));
        p.on_opened(s(10.0));
        assert_eq!(p.gap(), Some(s(10.0)));
        p.on_opened(s(700.0));
        assert_eq!(p.gap(), Some(s(9.0)), "one step after probe_interval");
        p.on_opened(s(701.0));
        assert_eq!(p.gap(), Some(s(9.0)), "one step per window (10 s here)");
        for i in 0..400 {
            p.on_opened(s(711.0 + 10.0 * f64::from(i)));
        }
        assert_eq!(p.gap(), None, "a lifted limit ends pacing");
    }

    #[test]
    fn restored_gap_paces_at_once() {
        let mut p = pacer();
        p.restore(s(3.0), s(0.0));
        p.on_attempt(s(5.0));
        assert_eq!(p.wait(s(6.0)), Some(s(2.0)));
    }

    /// While blocked, one attempt probes the provider's window; the others wait for its
    /// answer (each refused attempt counts with the provider), and a probe whose answer
    /// never comes holds them only for a while.
    #[test]
    fn while_blocked_one_attempt_at_a_time() {
        let mut p = pacer();
        p.on_attempt(s(0.0));
        p.on_opened(s(0.0));
        p.on_attempt(s(1.0));
        p.on_refused(s(1.0));
        assert_eq!(p.wait(s(1.5)), Some(s(0.5)), "the first probe waits a gap");
        assert_eq!(p.wait(s(2.0)), None, "the next probe may go");
        p.on_attempt(s(2.0));
        assert!(p.wait(s(2.0)).is_some(), "one probe out: the others wait");
        p.on_refused(s(2.1));
        assert!(p.wait(s(2.1)).is_some(), "answered: the next waits its gap");
        assert_eq!(p.wait(s(3.1)), None);
        p.on_attempt(s(3.1));
        p.on_attempt_ended();
        assert_eq!(p.wait(s(3.1)), None, "ended without an answer: not out");
        p.on_attempt(s(4.0));
        assert!(p.wait(s(30.0)).is_some());
        assert_eq!(
            p.wait(s(64.0)),
            None,
            "an answer that never comes holds 60 s"
        );
        p.on_attempt(s(64.0));
        p.on_opened(s(64.5));
        assert!(
            p.gap().is_some(),
            "the accepted probe ends the block with a gap"
        );
        assert_eq!(p.wait(s(64.5)).map(|w| w > s(1.0)), Some(true), "paced now");
    }

    /// A cycle that began slowly (a slow start, 1 open then a long pause) reads the
    /// provider's window from its best span, not from its whole length: anvil's window
    /// of 2 opens per 11 s starting at the first open after the last one ended.
    #[test]
    fn a_slow_start_does_not_stretch_the_learned_gap() {
        let mut p = pacer();
        for t in [0.0, 25.0, 33.8, 40.0, 43.2] {
            p.on_attempt(s(t));
            p.on_opened(s(t));
        }
        for t in [46.4, 47.5, 48.8, 49.5] {
            p.on_attempt(s(t));
            p.on_refused(s(t));
        }
        p.on_attempt(s(51.1));
        p.on_opened(s(51.1));
        // The window 40.0..51.0 held 2 opens; it ended between 49.5 and 51.1 (50.3).
        let gap = p.gap().unwrap().as_secs_f64();
        assert!((gap - 10.3 / 2.0).abs() < 1e-9, "{gap}");
    }

    /// While blocked, probes go at growing gaps: the first about one open's time of the
    /// cycle (at least 1 s), then 3/4 of the time blocked so far.
    #[test]
    fn probes_while_blocked_come_at_growing_gaps() {
        let mut p = pacer();
        for t in [0.0, 2.0, 4.0, 6.0] {
            p.on_attempt(s(t));
            p.on_opened(s(t));
        }
        p.on_attempt(s(8.0));
        p.on_refused(s(8.0));
        let mut at = 8.0;
        let mut probes = Vec::new();
        for _ in 0..4 {
            let w = p.wait(s(at)).unwrap().as_secs_f64();
            at += w;
            probes.push(at);
            p.on_attempt(s(at));
            p.on_refused(s(at));
        }
        // 8 s / 4 opens = 2 s first; then 3/4 of 2, 4, 7 s blocked (at least the first).
        let want = [10.0, 12.0, 15.0, 20.25];
        for (got, want) in probes.iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{probes:?}");
        }
    }

    /// Anvil's connection-rate limit: a unit starts with the first attempt after the
    /// last unit ended; attempts past `limit` in it are refused (and still counted).
    struct Anvil {
        start: Option<f64>,
        count: u32,
        limit: u32,
        unit: f64,
    }

    impl Anvil {
        fn attempt(&mut self, t: f64) -> bool {
            if self.start.is_none_or(|st| t > st + self.unit) {
                self.start = Some(t);
                self.count = 0;
            }
            self.count += 1;
            self.count <= self.limit
        }
    }

    /// A sender that wants a new connection `busy` seconds after each accepted one,
    /// against anvil, for `windows` units: (opens per second over the second half,
    /// refused attempts).
    fn against_anvil(limit: u32, unit: f64, busy: f64, windows: u32) -> (f64, u32) {
        let mut p = ConnectPacer::new(PaceParams {
            margin: 0.05,
            probe_interval: Duration::from_secs(600),
            step: 0.1,
        });
        let mut a = Anvil {
            start: None,
            count: 0,
            limit,
            unit,
        };
        let end = unit * f64::from(windows);
        let (mut t, mut refused, mut opens) = (0.0, 0, Vec::new());
        for _ in 0..100_000 {
            if t >= end {
                break;
            }
            if let Some(w) = p.wait(s(t)) {
                t += w.as_secs_f64();
                continue;
            }
            p.on_attempt(s(t));
            if a.attempt(t) {
                p.on_opened(s(t));
                opens.push(t);
                t += busy;
            } else {
                p.on_refused(s(t));
                refused += 1;
            }
        }
        let half = end / 2.0;
        let late = opens.iter().filter(|&&o| o >= half).count();
        (late as f64 / (end - half), refused)
    }

    /// Whatever the unit's length and the limit, the pace settles within a step of what
    /// anvil allows (its unit is one second longer than configured: it resets only
    /// after the unit has passed), and refusals stay a handful, not one per window.
    #[test]
    fn anvil_connection_rates_are_learned_whatever_the_window() {
        for unit in [10.0, 11.0, 20.0, 60.0, 61.0] {
            for limit in [2, 3, 5, 10] {
                for busy in [0.05, 0.5] {
                    let (rate, refused) = against_anvil(limit, unit, busy, 30);
                    let allowed = f64::from(limit) / unit;
                    assert!(
                        rate >= 0.85 * allowed && rate <= allowed * 1.01,
                        "{limit}/{unit}s busy {busy}: {rate:.4}/s of {allowed:.4}/s"
                    );
                    assert!(
                        refused <= 15,
                        "{limit}/{unit}s busy {busy}: {refused} refused"
                    );
                }
            }
        }
    }
}
