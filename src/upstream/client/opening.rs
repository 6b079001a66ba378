//! Opening a provider connection: TCP connect, TLS (implicit, or STARTTLS with the
//! plaintext left over from before the handshake discarded), the greeting, EHLO with the
//! HELO fallback, and AUTH — up to the point where MAIL FROM can be sent.
//!
//! Must never read bytes buffered before a TLS handshake as if they came through it,
//! and never go on without TLS when STARTTLS was configured and is not offered.

use super::exchange::check_arg;
use super::Connection;
use crate::config::TlsMode;
use crate::policy::verdict::Phase;
use crate::smtp::ehlo::Capabilities;
use crate::upstream::auth;
use crate::upstream::error::UpstreamError;
use crate::upstream::expect::Expect;
use crate::upstream::settings::Settings;
use crate::upstream::stream::Stream;
use crate::upstream::tls;
use bytes::BytesMut;
use std::io;
use std::time::Instant;
use tokio::net::TcpStream;
use tokio::time::timeout;

impl Connection {
    /// Connects and brings the session to the point where MAIL FROM can be sent.
    /// Failures before any reply (refused, TLS), a refused greeting and a refused
    /// STARTTLS are reported to the observer here; replies and read errors are reported as they are read.
    pub async fn connect(settings: &Settings) -> Result<Connection, UpstreamError> {
        if let Some(obs) = &settings.observer {
            obs.connect_started();
        }
        let res = Self::open(settings).await;
        if let Some(obs) = &settings.observer {
            if let Err(
                e @ (UpstreamError::Connect(_)
                | UpstreamError::Tls(_)
                | UpstreamError::Greeting(_)
                | UpstreamError::StartTls(Some(_))),
            ) = &res
            {
                obs.failure(None, e);
            }
            obs.connect_finished(res.is_ok());
        }
        res
    }

    async fn open(settings: &Settings) -> Result<Connection, UpstreamError> {
        let cfg = &settings.config;
        if cfg.tls != TlsMode::None && !cfg.tls_verify {
            tracing::warn!(
                host = %cfg.host,
                "TLS certificate verification is OFF for the provider (tls_verify = false): \
                 anyone on the path can read the mail and the credentials"
            );
        }
        let tcp = match timeout(
            cfg.timeouts.connect,
            TcpStream::connect((cfg.host.as_str(), cfg.port)),
        )
        .await
        {
            Err(_) => {
                return Err(UpstreamError::Connect(io::Error::from(
                    io::ErrorKind::TimedOut,
                )))
            }
            Ok(Err(e)) => return Err(UpstreamError::Connect(e)),
            Ok(Ok(s)) => s,
        };
        let _ = tcp.set_nodelay(true);
        tracing::debug!(host = %cfg.host, port = cfg.port, tls = ?cfg.tls, "connected to provider");

        let mut conn = Connection {
            stream: Stream::Plain(tcp),
            rbuf: BytesMut::with_capacity(4096),
            caps: Capabilities::default(),
            timeouts: cfg.timeouts.clone(),
            usable: true,
            tls: false,
            dirty: false,
            transactions: 0,
            created: Instant::now(),
            last_data_latency: None,
            last_final_latency: None,
            observer: settings.observer.clone(),
            reply_for: None,
            accepted: Vec::new(),
            utf8_tx: false,
            identity: None,
            next_identity: None,
            generation: 0,
            wire: Vec::new(),
            hold_replies: false,
        };
        if cfg.tls == TlsMode::Implicit {
            conn.upgrade(settings).await?;
        }

        let greeting = conn
            .read_reply(Phase::Greeting, Expect::GREETING, conn.timeouts.greeting)
            .await?;
        if greeting.class() != 2 {
            conn.usable = false;
            return Err(UpstreamError::Greeting(greeting));
        }
        check_arg(&cfg.helo_name)?;
        conn.hello(&cfg.helo_name).await?;

        if cfg.tls == TlsMode::Starttls {
            if !conn.caps.starttls {
                return Err(UpstreamError::StartTls(None));
            }
            let r = conn
                .command(
                    "STARTTLS",
                    Phase::StartTls,
                    Expect::STARTTLS,
                    conn.timeouts.command,
                )
                .await?;
            if r.code != 220 {
                conn.usable = false;
                return Err(UpstreamError::StartTls(Some(r)));
            }
            // RFC 3207 / CVE-2011-0411 class: anything after the 220 that arrived in the
            // clear must not be read as if it came through TLS.
            if !conn.rbuf.is_empty() {
                tracing::warn!(
                    bytes = conn.rbuf.len(),
                    "provider sent plaintext after STARTTLS 220; discarded"
                );
                conn.rbuf.clear();
            }
            conn.upgrade(settings).await?;
            conn.caps = Capabilities::default();
            conn.hello(&cfg.helo_name).await?;
        }

        // The EHLO that counts is the last one (after STARTTLS): its SIZE is the
        // provider's limit for the messages this connection will carry.
        if let Some(n) = conn.caps.size {
            settings.message_size.announce(n);
        }

        let wait = conn.command_timeout();
        match (&cfg.username, &cfg.password, &settings.tokens) {
            (Some(user), _, Some(tokens)) => {
                let caps = conn.caps.clone();
                let login = auth::OAuthLogin {
                    mechanism: tokens.config().mechanism,
                    user,
                    host: &cfg.host,
                    port: cfg.port,
                };
                let res = auth::authenticate_oauth(&mut conn, &caps, wait, &login, tokens).await;
                if let (Err(e @ UpstreamError::OAuth(_)), Some(obs)) = (&res, &settings.observer) {
                    obs.failure(Some(Phase::Auth), e);
                }
                res?;
            }
            (Some(user), Some(pass), None) => {
                let caps = conn.caps.clone();
                auth::authenticate(&mut conn, &caps, wait, user, pass).await?;
            }
            _ => {}
        }
        Ok(conn)
    }

    /// Wraps the plain stream in TLS (implicit TLS or after STARTTLS 220).
    async fn upgrade(&mut self, settings: &Settings) -> Result<(), UpstreamError> {
        let connector = settings
            .connector
            .as_ref()
            .ok_or_else(|| UpstreamError::Tls("TLS requested without a connector".into()))?;
        let name = tls::server_name(&settings.config.host)?;
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            self.usable = false;
            return Err(UpstreamError::Tls("stream is not plain TCP".into()));
        };
        let hs = timeout(self.timeouts.connect, connector.connect(name, tcp)).await;
        match hs {
            // A handshake that stalls is a TLS failure like any other: the connection
            // is dropped and the upstream as a whole backs off (see `connect`).
            Err(_) => {
                self.usable = false;
                Err(UpstreamError::Tls(format!(
                    "handshake not finished within {}s (timeouts.connect)",
                    self.timeouts.connect.as_secs_f64()
                )))
            }
            Ok(Err(e)) => {
                self.usable = false;
                Err(UpstreamError::Tls(e.to_string()))
            }
            Ok(Ok(s)) => {
                self.stream = Stream::Tls(Box::new(s));
                self.tls = true;
                Ok(())
            }
        }
    }

    /// EHLO, falling back to HELO when EHLO is refused with 5xx.
    async fn hello(&mut self, name: &str) -> Result<(), UpstreamError> {
        let r = self
            .command(
                &format!("EHLO {name}"),
                Phase::Ehlo,
                Expect::EHLO,
                self.timeouts.command,
            )
            .await?;
        if r.class() == 2 {
            self.caps = Capabilities::from_ehlo(&r.reply);
            return Ok(());
        }
        if r.class() == 5 {
            let r = self
                .command(
                    &format!("HELO {name}"),
                    Phase::Ehlo,
                    Expect::EHLO,
                    self.timeouts.command,
                )
                .await?;
            if r.class() == 2 {
                self.caps = Capabilities::default();
                return Ok(());
            }
            return Err(UpstreamError::Ehlo(r));
        }
        Err(UpstreamError::Ehlo(r))
    }
}
