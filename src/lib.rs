//! # mailvalve
//!
//! A local SMTP relay between bulk-mail software (SuperMailer, listmonk, phpList, ...)
//! and the submission server of a mail provider. The mailer talks to mailvalve on
//! `127.0.0.1:2525`; mailvalve talks to the provider, reads every reply it sends, and
//! paces the sending so the account is not throttled or blocked.
//!
//! ```text
//! mailer ──SMTP──▶ server (inbound session, STARTTLS, AUTH, suppressed RCPT → 550)
//!                     │
//!          relay ─────┴──────────────┐
//!   passthrough: MAIL leases an      queue: DATA into the spool (durable) → 250;
//!   upstream connection, replies     delivery rounds send it later, each reply's
//!   relayed verbatim                 verdict decides the recipient (queue::schedule)
//!          └──────────┬──────────────┘
//!          upstream::admission (policy gate → rate limit → connection limit → pool)
//!                     ▼
//!          upstream::client ──SMTP/TLS──▶ provider
//!                     │ every reply: classified once by the observer; the verdict
//!                     ▼ feeds the controller and travels with the reply
//!          policy (classify, controller: limits, pauses, backoff; suppression)
//! ```
//!
//! The floors, and the one direction their imports point (each imports only floors
//! listed before it; `tests/layout.rs` checks this):
//! - [`smtp`]: protocol vocabulary without I/O or policy — replies, commands, line and
//!   DATA framing (the part that makes SMTP smuggling impossible). Imports nothing.
//! - [`net`]: the plain-or-TLS byte stream both sides use. Imports nothing.
//! - [`platform`]: what is Unix-only (file modes, directory fsync, the control socket,
//!   signals), each with its non-Unix path. Imports nothing.
//! - [`policy`]: the rate-control loop, pure (no sockets): classify, controller,
//!   suppression list. Imports `smtp`.
//! - [`config`]: every table of the TOML file, loading with `MAILVALVE__*` overrides,
//!   validation, provider profiles. Imports `policy` (the rule schema) and `smtp`.
//! - [`store`]: durable storage behind the policy's store traits (suppression list in
//!   redb, CSV). Imports `policy`, `smtp`, `platform`.
//! - [`server`]: the inbound ESMTP listener and session state machine. Imports `config`,
//!   `policy`, `smtp`, `net`.
//! - [`upstream`]: the outbound client (TLS, AUTH, pipelining), pool and admission stack.
//!   Imports `config`, `policy`, `smtp`, `net`.
//! - [`queue`]: store-and-forward: spool, delivery engine, retry decisions, bounce
//!   reports, delivery log, control commands. Imports `config`, `policy`, `smtp`, `net`,
//!   `platform`. `server`, `upstream`, `queue` and `store` do not import each other.
//! - [`relay`]: the application floor — assembles policy and limits from the
//!   configuration, runs passthrough and queue mode over the floors above, owns the
//!   background tasks and the [`relay::RelayHandle`] that reads and steers the running
//!   relay.
//! - [`http`]: the HTTP listener — `/metrics`, the JSON API, the embedded dashboard —
//!   over the relay's handle. Imports `relay` and the floors below it.
//! - [`demo`]: the demo's engine (a simulated provider, a campaign, the relay between).
//! - [`cli`]: the subcommands: argument parsing and printing only. Nothing imports `cli`.

pub mod cli;
pub mod config;
pub mod demo;
pub mod http;
pub mod net;
pub mod platform;
pub mod policy;
pub mod queue;
pub mod relay;
pub mod server;
pub mod smtp;
pub mod store;
pub mod upstream;
