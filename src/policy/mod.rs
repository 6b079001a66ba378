//! The rate-control loop (issue 3). Pure: no sockets, no files.
pub mod classify;
pub mod rules;
pub mod suppression;
pub mod verdict;
