//! The last hour of the relay's figures, sampled every [`SAMPLE_EVERY`] for the
//! dashboard's chart and the ETA: connections open and allowed, the rate, delivered /
//! deferred / failed so far, throttling replies so far.
//!
//! It must never keep more than [`KEEP`] samples, and never read the spool (sampling
//! must stay cheap however long the queue is).

use crate::relay::RelayHandle;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a sample is taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// One hour of samples.
pub const KEEP: usize = 360;

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Sample {
    /// Unix milliseconds.
    pub at: u64,
    pub connections_open: usize,
    pub connection_limit: usize,
    /// Messages per second allowed now; `None` = unlimited.
    pub rate: Option<f64>,
    pub delivered: u64,
    pub deferred: u64,
    pub failed: u64,
    /// Provider replies that throttled (connections or rate) so far.
    pub throttles: u64,
}

#[derive(Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    /// Takes one sample now.
    pub fn sample(&self, handle: &RelayHandle) {
        let s = take(handle);
        if let Ok(mut v) = self.samples.lock() {
            if v.len() == KEEP {
                v.pop_front();
            }
            v.push_back(s);
        }
    }

    /// Oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .map(|v| v.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Recipients delivered per second over the sampled window (at most the last 10
    /// minutes); `None` before two samples or with nothing delivered.
    pub fn pace(&self, now: &Sample) -> Option<f64> {
        let samples = self.samples.lock().ok()?;
        let since = now.at.saturating_sub(600_000);
        let first = samples.iter().find(|s| s.at >= since)?;
        let secs = now.at.saturating_sub(first.at) as f64 / 1000.0;
        let done = now.delivered.saturating_sub(first.delivered) as f64;
        (secs >= 1.0 && done > 0.0).then(|| done / secs)
    }

    /// Samples every [`SAMPLE_EVERY`] until `shutdown`.
    pub async fn run(self: std::sync::Arc<Self>, handle: RelayHandle, shutdown: CancellationToken) {
        loop {
            self.sample(&handle);
            tokio::select! {
                _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                _ = shutdown.cancelled() => break,
            }
        }
    }
}

/// The figures now (also the last point of the chart).
pub fn take(handle: &RelayHandle) -> Sample {
    let limits = handle.limits();
    let d = handle.delivery_stats().unwrap_or_default();
    let throttles = handle.metrics().throttles.get();
    Sample {
        at: crate::policy::clock::wall_ms(),
        connections_open: limits.connections_in_use,
        connection_limit: limits.controller.concurrency_limit,
        rate: limits.controller.rate,
        delivered: d.delivered,
        deferred: d.deferred,
        failed: d.failed,
        throttles,
    }
}
