//! Pacing of new connections: what a provider's limit on connection *attempts* per time
//! (Postfix's `smtpd_client_connection_rate_limit`, a limit on new TLS sessions) allows,
//! learned from the opens it accepted, and how long the next open must wait. It must
//! never look at a socket or read the time itself (callers pass `now`), never pace a
//! provider that has not refused an open for its rate, and never let one refused open
//! shrink the pace below what the provider accepted in its last full cycle.
//!
//! A refused open starts a *block*: no new connection until an open is accepted again
//! (the controller's connect backoff spaces the retries). The first accepted open ends the
//! block and closes a *cycle* — from the end of the previous block (or the first open) to
//! now. The opens the provider accepted in that cycle over its length is what it allows:
//! for a fixed window of `L` opens per `W` (anvil) the cycle is one window and the gap is
//! `W / L`; for a sliding window or a token bucket it converges to the long-run rate. New
//! connections are then opened at least that far apart (plus a margin). After
//! `probe_interval` without a refusal the gap shrinks by `step` per accepted open, so a
//! lifted limit is found again; a gap below [`MIN_GAP`] ends pacing.

use std::time::Duration;

/// Below this gap between opens, pacing is not worth keeping: it ends.
pub const MIN_GAP: Duration = Duration::from_millis(10);
/// At most this gap: a cycle stretched by a long outage must not stall new connections.
pub const MAX_GAP: Duration = Duration::from_secs(600);

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
    /// The last open attempted (the gap counts from attempts: a refused one counted with
    /// the provider too).
    last_attempt: Option<Duration>,
    /// Start of the current cycle and the opens accepted in it.
    cycle_start: Option<Duration>,
    accepted: u32,
    /// The last accepted open: a cycle starts afresh after a quiet spell longer than
    /// [`MAX_GAP`] (opens that far apart say nothing about a window).
    last_opened: Option<Duration>,
    /// A refused open since the last accepted one.
    blocked: bool,
    /// Opens attempted since the block began. An open accepted while blocked that was
    /// attempted before the refusal (set up in parallel) does not end the block.
    attempts_in_block: u32,
    /// Attempts are reported ([`ConnectPacer::on_attempt`]); without that, every
    /// accepted open counts as one attempted after the refusal.
    tracks_attempts: bool,
    refusals: u64,
}

impl ConnectPacer {
    pub fn new(params: PaceParams) -> Self {
        Self {
            params,
            gap: None,
            learned_at: None,
            last_attempt: None,
            cycle_start: None,
            accepted: 0,
            last_opened: None,
            blocked: false,
            attempts_in_block: 0,
            tracks_attempts: false,
            refusals: 0,
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

    /// Whether a connection-rate limit is in force (keep connections longer then).
    pub fn is_pacing(&self) -> bool {
        self.gap.is_some() || self.blocked
    }

    /// How long until the next open may be attempted; `None` = now.
    pub fn wait(&self, now: Duration) -> Option<Duration> {
        let next = self.last_attempt?.checked_add(self.gap?)?;
        (now < next).then(|| next - now)
    }

    /// An open is being attempted now.
    pub fn on_attempt(&mut self, now: Duration) {
        self.last_attempt = Some(now);
        self.tracks_attempts = true;
        if self.blocked {
            self.attempts_in_block = self.attempts_in_block.saturating_add(1);
        }
    }

    /// The provider accepted an open (its greeting was 2xx and setup finished).
    pub fn on_opened(&mut self, now: Duration) {
        let quiet = self
            .last_opened
            .is_some_and(|t| now.saturating_sub(t) > MAX_GAP);
        self.last_opened = Some(now);
        if quiet && !self.blocked {
            self.cycle_start = Some(now);
            self.accepted = 0;
        }
        let start = *self.cycle_start.get_or_insert(now);
        if self.blocked && self.tracks_attempts && self.attempts_in_block == 0 {
            // Set up before the refusal came: it belongs to the cycle that is ending.
            self.accepted = self.accepted.saturating_add(1);
            return;
        }
        if self.blocked {
            // The block ends: the cycle that ends here says what the provider allows.
            self.blocked = false;
            // The provider's window ended somewhere between the last refused attempt
            // and this accepted one; the cycle is taken to end here, the cautious end
            // (opens a little slower than allowed rather than refused ones).
            let cycle = now.saturating_sub(start);
            if self.accepted > 0 && !cycle.is_zero() {
                let per = cycle.as_secs_f64() / f64::from(self.accepted);
                let margin = 1.0 + self.params.margin.clamp(0.0, 1.0);
                let mut gap = Duration::from_secs_f64(per * margin);
                // Refused while already paced: that gap was not too long, whatever a
                // short, noisy cycle says.
                if let Some(old) = self.gap {
                    gap = gap.max(old);
                }
                let gap = gap.clamp(MIN_GAP, MAX_GAP);
                self.gap = Some(gap);
                self.learned_at = Some(now);
            }
            self.cycle_start = Some(now);
            self.accepted = 1;
            return;
        }
        self.accepted = self.accepted.saturating_add(1);
        // Probing: a gap that held for probe_interval shrinks a little per open.
        if let (Some(gap), Some(at)) = (self.gap, self.learned_at) {
            if now >= at.saturating_add(self.params.probe_interval) {
                let next = gap.mul_f64(1.0 - self.params.step.clamp(0.0, 0.9));
                self.gap = (next >= MIN_GAP).then_some(next);
            }
        }
    }

    /// The provider refused an open for its connection rate. Until an open is accepted
    /// again nothing is learned; the cycle estimate comes with that open.
    pub fn on_refused(&mut self, now: Duration) {
        self.refusals += 1;
        self.cycle_start.get_or_insert(now);
        if !self.blocked {
            self.attempts_in_block = 0;
        }
        self.blocked = true;
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
        // Refused retries while the window lasts learn nothing.
        p.on_refused(s(20.0));
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
        p.on_attempt(s(0.5));
        p.on_refused(s(0.5));
        p.on_attempt(s(1.2));
        p.on_opened(s(1.2));
        // 3 accepted from 0.1 to 1.2.
        assert_eq!(p.gap(), Some(s(1.1 / 3.0)));
    }

    /// Refused while paced at a gap: the new gap is never shorter than that one.
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
        p.on_refused(s(1002.0));
        p.on_opened(s(1010.0));
        assert_eq!(p.gap(), Some(s(5.0)), "two opens from 1000 to 1010");
    }

    #[test]
    fn the_gap_is_probed_after_the_interval_and_ends_when_tiny() {
        let mut p = pacer();
        p.on_opened(s(0.0));
        p.on_refused(s(1.0));
        p.on_opened(s(10.0));
        assert_eq!(p.gap(), Some(s(10.0)));
        p.on_opened(s(700.0));
        assert_eq!(p.gap(), Some(s(9.0)), "one step after probe_interval");
        for i in 0..200 {
            p.on_opened(s(701.0 + f64::from(i)));
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
}
