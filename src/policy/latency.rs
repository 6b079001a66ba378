//! Running latency baselines for the time to 354 and the time to the final reply, and the
//! "well above baseline" signal that steps concurrency down once. It must never fire
//! twice for one episode (it re-arms only after latency recovers), never fire before it
//! has a baseline, and never measure time itself: callers pass durations in.

use std::time::Duration;

/// Which latency a sample is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyKind {
    /// From sending DATA to the provider's 354.
    To354,
    /// From the end of DATA to the provider's final reply.
    ToFinal,
}

/// When a sample counts as "well above" the baseline.
#[derive(Debug, Clone)]
pub struct LatencyParams {
    /// Well above = more than `factor` × baseline ...
    pub factor: f64,
    /// ... and more than the baseline plus this absolute margin (ignores jitter on
    /// very fast servers).
    pub floor: Duration,
    /// Samples needed before the baseline is trusted.
    pub min_samples: u32,
    /// EWMA weight of a normal sample.
    pub alpha: f64,
    /// Re-arm once a sample is at most `rearm_factor` × baseline.
    pub rearm_factor: f64,
}

impl Default for LatencyParams {
    fn default() -> Self {
        Self {
            factor: 3.0,
            floor: Duration::from_secs(2),
            min_samples: 20,
            alpha: 0.1,
            rearm_factor: 1.5,
        }
    }
}

/// One baseline (EWMA) with its armed/disarmed trigger.
#[derive(Debug, Clone)]
pub struct Baseline {
    ewma: f64,
    samples: u32,
    armed: bool,
}

impl Default for Baseline {
    fn default() -> Self {
        Self {
            ewma: 0.0,
            samples: 0,
            armed: true,
        }
    }
}

impl Baseline {
    /// The current baseline, once there are enough samples.
    pub fn baseline(&self, p: &LatencyParams) -> Option<Duration> {
        (self.samples >= p.min_samples.max(1)).then(|| Duration::from_secs_f64(self.ewma))
    }

    /// Adds a sample; returns true if concurrency should step down now.
    pub fn observe(&mut self, sample: Duration, p: &LatencyParams) -> bool {
        let x = sample.as_secs_f64();
        if !x.is_finite() {
            return false;
        }
        if self.samples == 0 {
            self.ewma = x;
            self.samples = 1;
            return false;
        }
        let trusted = self.samples >= p.min_samples.max(1);
        let high = trusted && x > self.ewma * p.factor && x > self.ewma + p.floor.as_secs_f64();
        let alpha = p.alpha.clamp(0.0, 1.0);
        // High samples move the baseline only slowly, so an episode does not become the
        // new normal at once, but a lasting change eventually does.
        let w = if high { alpha / 10.0 } else { alpha };
        self.ewma += w * (x - self.ewma);
        self.samples = self.samples.saturating_add(1);
        if high && self.armed {
            self.armed = false;
            return true;
        }
        if !self.armed && x <= self.ewma * p.rearm_factor {
            self.armed = true;
        }
        false
    }
}

/// Both baselines.
#[derive(Debug, Clone, Default)]
pub struct LatencyTracker {
    params: LatencyParams,
    to_354: Baseline,
    to_final: Baseline,
}

impl LatencyTracker {
    pub fn new(params: LatencyParams) -> Self {
        Self {
            params,
            ..Self::default()
        }
    }

    /// Adds a sample; true = step concurrency down once.
    pub fn observe(&mut self, kind: LatencyKind, sample: Duration) -> bool {
        let b = match kind {
            LatencyKind::To354 => &mut self.to_354,
            LatencyKind::ToFinal => &mut self.to_final,
        };
        b.observe(sample, &self.params)
    }

    /// The reply never came in time (a timeout stepped concurrency down already): the
    /// episode is counted, so the next slow sample of it does not step down again; the
    /// trigger re-arms once latency recovers.
    pub fn disarm(&mut self, kind: LatencyKind) {
        match kind {
            LatencyKind::To354 => self.to_354.armed = false,
            LatencyKind::ToFinal => self.to_final.armed = false,
        }
    }

    pub fn baseline(&self, kind: LatencyKind) -> Option<Duration> {
        match kind {
            LatencyKind::To354 => self.to_354.baseline(&self.params),
            LatencyKind::ToFinal => self.to_final.baseline(&self.params),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(x: u64) -> Duration {
        Duration::from_millis(x)
    }

    #[test]
    fn fires_once_per_episode_and_rearms_after_recovery() {
        let mut t = LatencyTracker::new(LatencyParams::default());
        for _ in 0..30 {
            assert!(!t.observe(LatencyKind::To354, ms(300)));
        }
        assert!(
            t.observe(LatencyKind::To354, ms(5000)),
            "well above baseline"
        );
        for _ in 0..50 {
            assert!(!t.observe(LatencyKind::To354, ms(5000)), "once per episode");
        }
        // Recovery re-arms, a new episode fires again.
        for _ in 0..100 {
            t.observe(LatencyKind::To354, ms(300));
        }
        assert!(t.observe(LatencyKind::To354, ms(8000)));
    }

    #[test]
    fn a_timeout_counts_as_the_episode() {
        let mut t = LatencyTracker::new(LatencyParams::default());
        for _ in 0..30 {
            t.observe(LatencyKind::ToFinal, ms(300));
        }
        t.disarm(LatencyKind::ToFinal);
        assert!(
            !t.observe(LatencyKind::ToFinal, ms(9000)),
            "already stepped down"
        );
        for _ in 0..100 {
            t.observe(LatencyKind::ToFinal, ms(300));
        }
        assert!(t.observe(LatencyKind::ToFinal, ms(9000)), "a new episode");
    }

    #[test]
    fn no_signal_without_a_baseline_or_below_the_floor() {
        let mut t = LatencyTracker::new(LatencyParams::default());
        assert!(!t.observe(LatencyKind::ToFinal, ms(10)));
        assert!(
            !t.observe(LatencyKind::ToFinal, ms(10_000)),
            "too few samples"
        );
        let mut t = LatencyTracker::new(LatencyParams::default());
        for _ in 0..30 {
            t.observe(LatencyKind::ToFinal, ms(10));
        }
        // 10× the baseline but only 90 ms more: jitter, not overload.
        assert!(!t.observe(LatencyKind::ToFinal, ms(100)));
        assert!(t.baseline(LatencyKind::ToFinal).is_some());
    }
}
