//! The rate-control loop: every provider reply is classified (`classify`, driven by the
//! ordered rule table in `rules`) into a `verdict`, and the `controller` turns verdicts
//! into limits — connections (`concurrency`), rate (`rate`, governor GCRA),
//! retry timing (`backoff`), account pauses (`pause`) and latency step-downs (`latency`).
//! The `suppression` list remembers addresses the provider rejected for good.
//!
//! Pure: no sockets and no files (storage goes through `suppression::SuppressionStore`),
//! time only through `clock`, so every behaviour is tested in simulated time. The one
//! async piece is the watch channel on which the controller publishes its connection
//! limit for admission to enforce. This module imports nothing of the crate but `smtp`.
//! It must never touch a socket or a file, nor read the time but through `clock`.

pub mod acceptance;
pub mod backoff;
pub mod classify;
pub mod clock;
pub mod concurrency;
pub mod connect_pace;
pub mod controller;
pub mod latency;
mod literals;
pub mod memory;
pub mod pause;
pub mod rate;
pub mod rules;
pub mod suppression;
pub mod verdict;
