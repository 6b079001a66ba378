//! Inbound ESMTP server: where the mailer connects.
//!
//! [`serve`] (or [`Server::serve`]) runs the accept loop on a bound listener until the
//! shutdown token fires, then drains the sessions and returns. Each connection is a
//! session (`session.rs`) — a state machine that reads pipelined commands from its buffer, answers
//! them in order (replies batched into one write per round trip, RFC 2920) and hands the
//! mail onward through a [`Relay`]: MAIL FROM opens a relay transaction (with every RCPT
//! already buffered behind it, so one upstream round trip serves the whole batch), RCPT
//! and DATA are forwarded, and the replies the relay returns go to the mailer verbatim.
//!
//! One file per verb group, as in Stalwart's smtp crate: `ehlo` (EHLO/HELO),
//! `mail` (MAIL/RCPT), `data` (DATA), `auth` (AUTH PLAIN/LOGIN), `starttls`
//! (STARTTLS and the TLS acceptor), `replies` (every locally generated reply),
//! `listener` (the listening socket and its backlog, accept loop, session limits,
//! graceful shutdown).
//!
//! Slow clients: every wait for the client is bounded by deadlines that a trickle of
//! bytes does not reset — a whole command line (`command_timeout`), each 64 KiB block of
//! DATA (`data_block_timeout`), everything before the first MAIL FROM
//! (`pre_mail_timeout`) — so slow-drip clients cannot hold the session slots for long.
//! Off loopback, one address gets at most `max_sessions_per_ip` sessions and each failed
//! AUTH is answered after `auth_failure_delay`.
//!
//! What this module must never do:
//! - answer 2xx to MAIL, RCPT or the end of DATA unless the relay returned it;
//! - guess where a line or a message ends: a bare CR, bare LF or NUL closes the session
//!   (SMTP smuggling), and nothing buffered after it is executed;
//! - execute plaintext that was pipelined behind STARTTLS;
//! - log credentials, AUTH lines or their base64.
//!
//! Reply codes chosen where RFCs leave room (all carry an enhanced code except the 220
//! greeting, the EHLO/HELO reply — clients parse its lines as keywords — and the 334/354
//! intermediate replies, whose class 3 has no enhanced code in RFC 3463):
//! - a bare CR/LF/NUL in a command or in DATA: `550 5.5.2`, then close;
//! - a command line over 512 octets: `500 5.5.2`, then close (its end cannot be found
//!   safely); a DATA line over 1000 octets: `500 5.5.6` after the terminator, the
//!   session goes on;
//! - MAIL refused by the relay with a 4xx: the RCPTs and DATA that follow (until the next
//!   MAIL, RSET, EHLO/HELO) get the same 4xx, so a naive mailer retries them instead of
//!   marking addresses as bad; after a 5xx MAIL they get `503 5.5.1`;
//! - more recipients than `max_recipients`: `452 4.5.3`, locally. Recipients still
//!   waiting for the relay's answer in the same pipelined batch count against the limit.

pub mod relay;
pub mod suppress;

mod auth;
mod data;
mod ehlo;
mod listener;
mod mail;
mod replies;
mod session;
mod starttls;

pub use listener::{bind, SessionStats};
pub use relay::{Relay, RelayTransaction};
pub use session::DATA_BLOCK_BYTES;
pub use starttls::load_tls_acceptor;

use crate::config::ServerConfig;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Why the server could not start. Never carries key material or passwords.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: io::Error,
    },
    #[error("listener: {0}")]
    Listener(io::Error),
    #[error("TLS certificate or key {path}: {reason}")]
    Tls { path: PathBuf, reason: String },
}

/// A configured inbound server, ready to run on a listener.
pub struct Server<R: Relay> {
    cfg: Arc<ServerConfig>,
    relay: Arc<R>,
    tls: Option<TlsAcceptor>,
    public: Option<bool>,
    stats: Arc<SessionStats>,
}

impl<R: Relay> Server<R> {
    /// Loads the TLS certificate and key when `cfg.tls` is set.
    pub fn new(cfg: Arc<ServerConfig>, relay: Arc<R>) -> Result<Self, ServerError> {
        let tls = match &cfg.tls {
            Some(t) => Some(load_tls_acceptor(t)?),
            None => None,
        };
        Ok(Self {
            cfg,
            relay,
            tls,
            public: None,
            stats: Arc::new(SessionStats::default()),
        })
    }

    /// The session counters of this server (open now, most at once, refused); take a
    /// handle before [`Server::serve`] to watch them while it runs.
    pub fn stats(&self) -> Arc<SessionStats> {
        Arc::clone(&self.stats)
    }

    /// Overrides the loopback detection: `true` applies the rules for a public listener
    /// (AUTH required for MAIL, AUTH only after TLS) even on a loopback address. By
    /// default they apply when the listener's address is not loopback.
    pub fn public_rules(mut self, public: bool) -> Self {
        self.public = Some(public);
        self
    }

    /// Binds `cfg.listen` (with `cfg.listen_backlog`) and serves until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ServerError> {
        let listener = bind(self.cfg.listen, self.cfg.listen_backlog)?;
        self.serve(listener, shutdown).await
    }

    /// Serves on an already bound listener (bind it with [`bind`] for the configured
    /// backlog; tests bind `127.0.0.1:0`). Stops accepting
    /// when `shutdown` fires, lets transactions in flight finish for up to
    /// `shutdown_grace`, and returns when every session has ended.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), ServerError> {
        let local = listener.local_addr().map_err(ServerError::Listener)?;
        let public = self.public.unwrap_or(!local.ip().is_loopback());
        let shared = Arc::new(Shared {
            cfg: self.cfg,
            relay: self.relay,
            tls: self.tls,
            public,
            shutdown,
            grace_over: CancellationToken::new(),
            stats: self.stats,
        });
        listener::accept_loop(listener, shared).await;
        Ok(())
    }
}

/// Runs the inbound server on `listener` until `shutdown` is cancelled and all sessions
/// have ended. Shorthand for `Server::new(cfg, relay)?.serve(listener, shutdown)`.
pub async fn serve<R: Relay>(
    listener: TcpListener,
    cfg: Arc<ServerConfig>,
    relay: Arc<R>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    Server::new(cfg, relay)?.serve(listener, shutdown).await
}

/// What every session of one server shares.
pub(crate) struct Shared<R> {
    pub(crate) cfg: Arc<ServerConfig>,
    pub(crate) relay: Arc<R>,
    pub(crate) tls: Option<TlsAcceptor>,
    /// Non-loopback rules: MAIL needs AUTH, AUTH needs TLS.
    pub(crate) public: bool,
    /// Fired by the owner: stop accepting, close idle sessions.
    pub(crate) shutdown: CancellationToken,
    /// Fired by the listener `shutdown_grace` after `shutdown`: close everything.
    pub(crate) grace_over: CancellationToken,
    /// Session counters, shared with whoever asked [`Server::stats`].
    pub(crate) stats: Arc<SessionStats>,
}
