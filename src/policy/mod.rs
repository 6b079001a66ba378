//! The rate-control loop (issue 3). Pure: no sockets, no files.
pub mod backoff;
pub mod clock;
pub mod concurrency;
pub mod controller;
pub mod latency;
pub mod pause;
pub mod rate;
pub mod semaphore;
pub mod verdict;
