//! The acceptance log: how many messages (or recipients) the provider accepted, when.
//! The rate learner reads a throttle against it ("what did the provider take in the
//! trailing windows before it said no?") instead of against an instantaneous rate. It
//! must never grow without bound (fine buckets for an hour, minute buckets for a day)
//! and never read the time itself: every call takes `now` from the controller's clock.
//!
//! Hand-written rather than a crate: it is two ring-like queues of counters, and the
//! range sums it needs (any span ending at any time) are what the estimator is about.

use std::collections::VecDeque;
use std::time::Duration;

/// Width of a fine bucket.
const FINE: Duration = Duration::from_millis(100);
/// Fine buckets cover this much history; older counts move into minute buckets.
const FINE_SPAN: Duration = Duration::from_secs(3600);
/// Width of a coarse bucket.
const COARSE: Duration = Duration::from_secs(60);
/// A span within this fraction of the best rate counts as showing it (for the window).
const WINDOW_TOLERANCE: f64 = 0.03;
/// Nothing older than this is kept.
const COARSE_SPAN: Duration = Duration::from_secs(86_400);

/// Counts per time bucket, newest at the back. Buckets with no count are not stored.
#[derive(Debug, Clone, Default)]
pub struct AcceptanceLog {
    /// (bucket index in FINE units, count)
    fine: VecDeque<(u64, u64)>,
    /// (bucket index in COARSE units, count)
    coarse: VecDeque<(u64, u64)>,
    total: u64,
}

fn index(t: Duration, width: Duration) -> u64 {
    u64::try_from(t.as_nanos() / width.as_nanos()).unwrap_or(u64::MAX)
}

fn start_of(i: u64, width: Duration) -> Duration {
    let n = u32::try_from(i).unwrap_or(u32::MAX);
    width.saturating_mul(n)
}

impl AcceptanceLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything ever recorded.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// `n` accepted at `now` (times must not go backwards by more than a bucket; an
    /// older time is counted in the newest bucket).
    pub fn record(&mut self, now: Duration, n: u64) {
        if n == 0 {
            return;
        }
        self.total = self.total.saturating_add(n);
        let i = index(now, FINE);
        match self.fine.back_mut() {
            Some((last, c)) if *last >= i => *c = c.saturating_add(n),
            _ => self.fine.push_back((i, n)),
        }
        self.prune(now);
    }

    fn prune(&mut self, now: Duration) {
        let fine_from = index(now.saturating_sub(FINE_SPAN), FINE);
        while let Some(&(i, c)) = self.fine.front() {
            if i >= fine_from {
                break;
            }
            self.fine.pop_front();
            let j = index(start_of(i, FINE), COARSE);
            match self.coarse.back_mut() {
                Some((last, k)) if *last >= j => *k = k.saturating_add(c),
                _ => self.coarse.push_back((j, c)),
            }
        }
        let coarse_from = index(now.saturating_sub(COARSE_SPAN), COARSE);
        while self.coarse.front().is_some_and(|&(j, _)| j < coarse_from) {
            self.coarse.pop_front();
        }
    }

    /// Accepted in `[from, to)`, to the resolution of the buckets (a bucket counts when
    /// it starts inside the span).
    pub fn count(&self, from: Duration, to: Duration) -> u64 {
        let mut sum = 0u64;
        for (t, c) in self.newest_first() {
            if t < from {
                break;
            }
            if t < to {
                sum = sum.saturating_add(c);
            }
        }
        sum
    }

    /// Every bucket as (start, count), newest first: the fine ones, then the minute
    /// ones (all older: a minute bucket holds only fine buckets already pruned).
    fn newest_first(&self) -> impl Iterator<Item = (Duration, u64)> + '_ {
        let fine = self.fine.iter().rev().map(|&(i, c)| (start_of(i, FINE), c));
        let coarse = self
            .coarse
            .iter()
            .rev()
            .map(|&(j, c)| (start_of(j, COARSE), c));
        fine.chain(coarse)
    }

    /// How far back from `end` the last `n` accepted reach (`None`: fewer were
    /// accepted in the log's day).
    pub fn span_of_last(&self, n: u64, end: Duration) -> Option<Duration> {
        let mut cum = 0u64;
        for (t, c) in self.newest_first() {
            if t >= end {
                continue;
            }
            cum = cum.saturating_add(c);
            if cum >= n {
                return Some(end - t);
            }
        }
        None
    }

    /// The highest acceptance rate over a trailing span ending at `end`, for spans from
    /// `min_span` to `max_span`: what the provider took in its best recent window.
    /// Returns (rate per second, span), or `None` when nothing was accepted in
    /// `max_span`. The candidate spans are exactly those that start at a bucket (where
    /// the count changes), so the answer is exact to the bucket width.
    ///
    /// Spans are never shorter than `min_span` (the block the provider imposed): over a
    /// span that includes the whole block, no sender pacing evenly can show more than
    /// the provider's window allows (see `rate.rs` for the argument).
    pub fn best_rate(
        &self,
        end: Duration,
        min_span: Duration,
        max_span: Duration,
    ) -> Option<(f64, Duration)> {
        let min_span = min_span.max(FINE);
        let max_span = max_span.max(min_span).min(COARSE_SPAN);
        let from = end.saturating_sub(max_span);
        let mut cum = 0u64;
        // (rate, span), shortest span first.
        let mut candidates: Vec<(f64, Duration)> = Vec::new();
        for (t, c) in self.newest_first() {
            if t >= end {
                continue;
            }
            if t < from {
                break;
            }
            cum = cum.saturating_add(c);
            let span = (end - t).max(min_span);
            candidates.push((cum as f64 / span.as_secs_f64(), span));
        }
        let best = candidates.iter().map(|(r, _)| *r).fold(0.0, f64::max);
        // The window: the shortest span that shows (nearly) the best rate — a steady
        // pace makes long spans look as good, and the window is what the limiter counts.
        candidates
            .into_iter()
            .find(|(r, _)| *r > 0.0 && *r >= best * (1.0 - WINDOW_TOLERANCE))
            .map(|(_, span)| (best, span))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: f64) -> Duration {
        Duration::from_secs_f64(x)
    }

    #[test]
    fn counts_ranges_across_both_tiers() {
        let mut log = AcceptanceLog::new();
        for i in 0..7200u64 {
            log.record(Duration::from_secs(i), 1);
        }
        assert_eq!(log.total(), 7200);
        // The last hour is fine-grained.
        assert_eq!(log.count(s(7100.0), s(7200.0)), 100);
        // Older than an hour: minute buckets, counted when they start in the span.
        assert_eq!(log.count(s(0.0), s(600.0)), 600);
        assert_eq!(log.count(s(0.0), s(7200.0)), 7200);
    }

    #[test]
    fn span_of_the_last_n() {
        let mut log = AcceptanceLog::new();
        for i in 0..10u64 {
            log.record(Duration::from_secs(10 * i), 1);
        }
        assert_eq!(log.span_of_last(3, s(100.0)), Some(s(30.0)));
        assert_eq!(log.span_of_last(11, s(100.0)), None);
    }

    #[test]
    fn forgets_after_a_day() {
        let mut log = AcceptanceLog::new();
        log.record(s(10.0), 5);
        log.record(s(90_000.0), 1);
        assert_eq!(log.count(s(0.0), s(100_000.0)), 1);
        assert_eq!(log.total(), 6);
    }

    #[test]
    fn best_rate_finds_the_window_a_fixed_limiter_allowed() {
        // 60 accepted in a burst at the start of a 60 s unit, then nothing until the
        // unit ended (a block of 50 s), then the probe at 61 s.
        let mut log = AcceptanceLog::new();
        for i in 0..60 {
            log.record(s(f64::from(i) / 6.0), 1);
        }
        let (r, span) = log
            .best_rate(s(61.0), s(51.0), s(3600.0))
            .unwrap_or_default();
        assert!((r - 60.0 / 61.0).abs() < 0.05, "{r}");
        assert!(span >= s(60.0) && span <= s(80.0), "{span:?}");
        assert_eq!(log.best_rate(s(61.0), s(1.0), s(20.0)), None);
    }
}
