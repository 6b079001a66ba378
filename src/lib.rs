//! # mailvalve
//!
//! A local SMTP relay between bulk-mail software (SuperMailer, listmonk, phpList, ...)
//! and the submission server of a mail provider. The mailer talks to mailvalve on
//! `127.0.0.1:2525`; mailvalve talks to the provider, reads every reply it sends, and
//! paces the sending so the account is not throttled or blocked.
//!
//! ```text
//! mailer ──SMTP──▶ server (inbound session, STARTTLS, AUTH)
//!                     │ MAIL FROM leases an upstream connection
//!                     ▼
//!          upstream::admission (tower: rate limit → concurrency limit → pool)
//!                     ▼
//!          upstream::client ──SMTP/TLS──▶ provider
//!                     │ every reply, relayed verbatim to the mailer
//! ```
//!
//! Modules, and the one direction their imports point:
//! - [`smtp`]: protocol vocabulary without I/O or policy — replies, commands, line and
//!   DATA framing (the part that makes SMTP smuggling impossible). Imports nothing of ours.
//! - [`net`]: the plain-or-TLS byte stream both sides use. Imports nothing of ours.
//! - [`policy`]: the rate-control loop, pure (no sockets). Imports `smtp` only.
//! - [`config`]: the TOML schema, loading with `MAILVALVE__*` overrides, validation.
//! - [`server`]: the inbound ESMTP listener and session state machine.
//! - [`upstream`]: the outbound client (TLS, AUTH, pipelining), pool and admission stack.
//! - [`cli`]: the subcommands; wires everything. Nothing imports `cli`.

pub mod cli;
pub mod config;
pub mod demo;
pub mod net;
pub mod platform;
pub mod policy;
pub mod queue;
pub mod relay;
pub mod server;
pub mod smtp;
pub mod store;
pub mod upstream;
