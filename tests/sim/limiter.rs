//! Simulated provider limiters, the kinds real providers use: a fixed window with burst
//! (Postfix's anvil: the unit starts at the first event after the previous one ended,
//! refused attempts are counted too, everything above the limit is refused until the unit
//! ends), a sliding window (accepted events in the trailing window), and a token bucket.
//! Pure: time comes in as an argument. Used by the simulated provider and the property
//! test.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Fixed,
    Sliding,
    Bucket,
}

#[derive(Debug, Clone)]
pub struct Limiter {
    pub kind: Kind,
    /// Events per window (bucket: refill per window).
    pub limit: f64,
    pub window: Duration,
    /// Bucket depth (bucket only).
    pub burst: f64,
    unit_start: Option<Duration>,
    unit_count: f64,
    accepted: VecDeque<Duration>,
    tokens: f64,
    refilled_at: Duration,
}

impl Limiter {
    pub fn new(kind: Kind, limit: f64, window: Duration, burst: Option<f64>) -> Self {
        let burst = burst.unwrap_or(limit).max(1.0);
        Self {
            kind,
            limit,
            window,
            burst,
            unit_start: None,
            unit_count: 0.0,
            accepted: VecDeque::new(),
            tokens: burst,
            refilled_at: Duration::ZERO,
        }
    }

    /// The limit as a rate per second.
    pub fn per_sec(&self) -> f64 {
        self.limit / self.window.as_secs_f64()
    }

    pub fn set_limit(&mut self, limit: f64) {
        if self.kind == Kind::Bucket && (self.burst - self.limit).abs() < 1e-9 {
            self.burst = limit.max(1.0);
        }
        self.limit = limit;
    }

    /// One event at `now`: accepted or refused.
    pub fn attempt(&mut self, now: Duration) -> bool {
        match self.kind {
            Kind::Fixed => {
                if self.unit_start.is_none_or(|s| now >= s + self.window) {
                    self.unit_start = Some(now);
                    self.unit_count = 0.0;
                }
                // anvil counts the attempt before comparing.
                self.unit_count += 1.0;
                self.unit_count <= self.limit
            }
            Kind::Sliding => {
                while self
                    .accepted
                    .front()
                    .is_some_and(|t| *t + self.window <= now)
                {
                    self.accepted.pop_front();
                }
                if (self.accepted.len() as f64) < self.limit {
                    self.accepted.push_back(now);
                    true
                } else {
                    false
                }
            }
            Kind::Bucket => {
                let dt = now.saturating_sub(self.refilled_at).as_secs_f64();
                self.tokens = (self.tokens + dt * self.per_sec()).min(self.burst);
                self.refilled_at = now;
                if self.tokens >= 1.0 {
                    self.tokens -= 1.0;
                    true
                } else {
                    false
                }
            }
        }
    }
}
