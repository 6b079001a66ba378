//! The outbound side: everything between "a transaction needs the provider" and the
//! provider's SMTP server.
//!
//! - [`Settings`]: the `[upstream]` config plus the TLS connector, prepared once.
//! - [`Connection`] (`client.rs` and `client/`, `auth.rs`, `tls.rs`, `stream.rs`): one SMTP session —
//!   connect, implicit TLS or STARTTLS (plaintext after the 220 discarded, EHLO again),
//!   AUTH PLAIN/LOGIN, MAIL+RCPT pipelined when offered, DATA with re-dot-stuffing, RSET,
//!   QUIT. Every read is bounded by its RFC 5321 timeout. It reports replies verbatim
//!   and decides nothing; the latency to 354 and to the final reply is recorded. Each
//!   reply comes back as an [`Answer`], with the verdict the observer reached for it.
//! - [`Admission`] (`admission.rs`, `rate_limit.rs`, `concurrency.rs`, `pool.rs`): the one
//!   way to get a connection — a tower stack of rate limit → concurrency limit → pool,
//!   returning a [`Lease`] that holds its permit until released.
//! - [`UpstreamError`]: every failure, and [`UpstreamError::to_reply`], the 4xx the
//!   mailer gets for it.
//!
//! This module must never report a message as accepted unless the provider said so,
//! never log credentials, never send a bare CR or LF, and never exceed
//! `max_connections` leases.

pub mod admission;
pub mod answer;
mod auth;
pub mod client;
pub mod concurrency;
pub mod error;
mod expect;
pub mod lease;
pub mod oauth;
pub mod observer;
pub mod policy_gate;
pub mod pool;
pub mod rate_limit;
pub mod request;
pub mod settings;
mod stream;
pub mod tls;

pub use admission::{Admission, AdmissionRequest};
pub use answer::Answer;
pub use client::Connection;
pub use concurrency::{ConcurrencyLimit, Permit};
pub use error::UpstreamError;
pub use lease::Lease;
pub use settings::Settings;
