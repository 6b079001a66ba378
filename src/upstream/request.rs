//! [`AdmissionRequest`]: what travels down the admission stack — when waiting must stop.
//! Its own file because every layer of the stack (policy gate, rate limit, concurrency,
//! pool) takes it, and none of them should import the stack that assembles them.
//!
//! It must never carry anything but the deadline, the configured wait and the size of
//! the transaction it admits (its recipients, for limits the provider counts in them).

use std::time::Duration;
use tokio::time::Instant;

/// What travels down the stack: when waiting must stop.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionRequest {
    pub deadline: Instant,
    /// The configured wait, for the error message.
    pub wait: Duration,
    /// Recipients of the transaction being admitted (at least 1): quotas and rates the
    /// provider counts in recipients take this many.
    pub recipients: u32,
}

impl AdmissionRequest {
    pub fn new(wait: Duration) -> Self {
        Self {
            deadline: Instant::now() + wait,
            wait,
            recipients: 1,
        }
    }

    /// The same request for a transaction of `n` recipients (0 counts as 1).
    pub fn with_recipients(mut self, n: usize) -> Self {
        self.recipients = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
        self
    }
}
