//! Store-and-forward for queue mode: the mailer gets `250` once a message is durable in
//! the [`spool`], and delivery workers send it later within the provider's limits.
//!
//! This module must never acknowledge a message before it is durable, never deliver a
//! half-written one, and never hold message bodies in memory. It imports `smtp`,
//! `policy`, `config`, `net` and `platform`, never `server`, `upstream`, `relay` or `cli`.
//!
//! - [`spool`]: durable storage of bodies, envelopes and per-recipient states, with
//!   crash recovery and group commit. No SMTP, no network.
//! - [`id`]: short, sortable, file-name-safe queue ids.
//! - [`record`]: what is stored per message and per recipient.
//! - [`quota`]: the per-minute ledger that keeps hourly/daily quotas across restarts.
//! - [`schedule`]: what an attempt's outcome (the reply's verdict, or a local failure)
//!   does to a recipient (pure; the one decision function).
//! - [`transport`]: what delivery needs from the upstream side (implemented in `relay`).
//! - [`control`]: operator commands, over a socket to the running instance or offline.
//! - [`deliver`]: the engine — due messages out through the transport, outcomes back
//!   into the spool, bounce reports ([`dsn`]), the [`delivery_log`] and the [`webhook`].

pub mod control;
pub mod deliver;
pub mod delivery_log;
pub mod dsn;
pub mod error;
pub mod headers;
pub mod id;
mod index;
pub mod quota;
pub mod record;
pub mod schedule;
pub mod spool;
pub mod transport;
pub mod webhook;
mod writer;

pub use error::SpoolError;
pub use id::{BadQueueId, QueueId};
pub use record::{Message, Rcpt, RcptState, StoredReply};
pub use spool::{Recovered, Spool, Which};
