//! [`AdmissionRequest`]: what travels down the admission stack — when waiting must stop.
//! Its own file because every layer of the stack (policy gate, rate limit, concurrency,
//! pool) takes it, and none of them should import the stack that assembles them.
//!
//! It must never carry anything but the deadline and the configured wait.

use std::time::Duration;
use tokio::time::Instant;

/// What travels down the stack: when waiting must stop.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionRequest {
    pub deadline: Instant,
    /// The configured wait, for the error message.
    pub wait: Duration,
}

impl AdmissionRequest {
    pub fn new(wait: Duration) -> Self {
        Self {
            deadline: Instant::now() + wait,
            wait,
        }
    }
}
