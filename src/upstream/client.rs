//! One SMTP client connection to the provider: connect (plain, implicit TLS or
//! STARTTLS), greeting, EHLO (HELO fallback), AUTH, and the transaction commands
//! (MAIL + RCPT pipelined when offered, DATA, RSET, QUIT).
//!
//! This module reports replies; it decides nothing about them (that is `policy`). It
//! must never send a bare CR or LF (addresses are checked, the message is re-dot-stuffed),
//! never log a password or an AUTH blob, never trust bytes buffered before a TLS
//! handshake, and never report a message as sent unless the provider said so: any I/O
//! error or timeout is an `Err` and leaves the connection unusable.

use super::auth;
use super::error::{phase_name, UpstreamError};
use super::observer::Observer;
use super::settings::Settings;
use super::stream::Stream;
use super::tls;
use crate::config::{TlsMode, UpstreamTimeouts};
use crate::policy::latency::LatencyKind;
use crate::policy::verdict::Phase;
use crate::smtp::data::dot_stuff;
use crate::smtp::ehlo::Capabilities;
use crate::smtp::{Envelope, Reply};
use bytes::{Buf, BytesMut};
use futures::FutureExt;
use std::fmt::Write as _;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Bytes of message written per timed write (RFC 5321's data block timeout applies to
/// each one, not to the whole message).
const DATA_CHUNK: usize = 64 * 1024;
/// Largest stuffing buffer a connection keeps between messages (an idle pooled
/// connection should not hold on to a big message's worth of memory).
const KEEP_WIRE: usize = 256 * 1024;
/// QUIT is a courtesy: never wait long for its reply.
const QUIT_WAIT: Duration = Duration::from_secs(5);

/// An open, greeted (and, when configured, encrypted and authenticated) connection.
pub struct Connection {
    stream: Stream,
    rbuf: BytesMut,
    caps: Capabilities,
    timeouts: UpstreamTimeouts,
    usable: bool,
    tls: bool,
    /// MAIL was sent since the last RSET: the next transaction needs a RSET first.
    dirty: bool,
    transactions: usize,
    created: Instant,
    last_data_latency: Option<Duration>,
    last_final_latency: Option<Duration>,
    /// Where replies, failures and latencies are reported (the policy).
    observer: Option<Arc<dyn Observer>>,
    /// The recipient the next RCPT reply answers (for the observer).
    reply_for: Option<String>,
    /// Recipients the provider accepted in the current transaction.
    accepted: Vec<String>,
    /// The last message as written (re-dot-stuffed), reused for the next one.
    wire: Vec<u8>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("tls", &self.tls)
            .field("usable", &self.usable)
            .field("transactions", &self.transactions)
            .field("caps", &self.caps)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects and brings the session to the point where MAIL FROM can be sent.
    /// Failures before any reply (refused, TLS) are reported to the observer here;
    /// replies and read errors are reported as they are read.
    pub async fn connect(settings: &Settings) -> Result<Connection, UpstreamError> {
        if let Some(obs) = &settings.observer {
            obs.connect_started();
        }
        let res = Self::open(settings).await;
        if let Some(obs) = &settings.observer {
            if let Err(e @ (UpstreamError::Connect(_) | UpstreamError::Tls(_))) = &res {
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
            wire: Vec::new(),
        };
        if cfg.tls == TlsMode::Implicit {
            conn.upgrade(settings).await?;
        }

        let greeting = conn
            .read_reply(Phase::Greeting, conn.timeouts.greeting)
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
                .command("STARTTLS", Phase::StartTls, conn.timeouts.command)
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

        if let (Some(user), Some(pass)) = (&cfg.username, &cfg.password) {
            auth::authenticate(&mut conn, user, pass).await?;
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
            Err(_) => {
                self.usable = false;
                Err(UpstreamError::Timeout {
                    phase: Phase::StartTls,
                })
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
            .command(&format!("EHLO {name}"), Phase::Ehlo, self.timeouts.command)
            .await?;
        if r.class() == 2 {
            self.caps = Capabilities::from_ehlo(&r);
            return Ok(());
        }
        if r.class() == 5 {
            let r = self
                .command(&format!("HELO {name}"), Phase::Ehlo, self.timeouts.command)
                .await?;
            if r.class() == 2 {
                self.caps = Capabilities::default();
                return Ok(());
            }
            return Err(UpstreamError::Ehlo(r));
        }
        Err(UpstreamError::Ehlo(r))
    }

    /// MAIL FROM (with SIZE=, BODY=8BITMIME, SMTPUTF8 when both sides have them) and one
    /// RCPT per address. With PIPELINING everything goes out in one write; without it,
    /// one by one, and no RCPT is sent when MAIL was refused (the rcpt vec is empty).
    /// After a 421 the remaining replies are copies of that 421.
    pub async fn envelope(
        &mut self,
        env: &Envelope,
        rcpts: &[String],
    ) -> Result<(Reply, Vec<Reply>), UpstreamError> {
        self.ensure_usable()?;
        check_arg(&env.from)?;
        for r in rcpts {
            check_arg(r)?;
        }
        let mut mail = String::with_capacity(env.from.len() + 48);
        mail.push_str("MAIL FROM:<");
        mail.push_str(&env.from);
        mail.push('>');
        if let (Some(size), Some(_)) = (env.size, self.caps.size) {
            let _ = write!(mail, " SIZE={size}");
        }
        if env.eight_bit && self.caps.eight_bit_mime {
            mail.push_str(" BODY=8BITMIME");
        }
        if env.smtputf8 && self.caps.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        self.dirty = true;
        self.transactions += 1;
        self.accepted.clear();

        if self.caps.pipelining {
            let mut out = Vec::with_capacity(mail.len() + 2 + rcpts.len() * 40);
            push_line(&mut out, &mail);
            for r in rcpts {
                push_rcpt(&mut out, r);
            }
            tracing::trace!(rcpts = rcpts.len(), "> {mail} + RCPTs (pipelined)");
            self.write(&out, Phase::Mail, self.timeouts.command).await?;
            let mail_reply = self.read_reply(Phase::Mail, self.timeouts.mail).await?;
            let rcpt_replies = if mail_reply.code == 421 {
                vec![mail_reply.clone(); rcpts.len()]
            } else {
                self.read_rcpt_replies(rcpts).await?
            };
            Ok((mail_reply, rcpt_replies))
        } else {
            let mail_reply = self.command(&mail, Phase::Mail, self.timeouts.mail).await?;
            if mail_reply.class() != 2 {
                return Ok((mail_reply, Vec::new()));
            }
            let rcpt_replies = self.rcpt(rcpts).await?;
            Ok((mail_reply, rcpt_replies))
        }
    }

    /// More recipients in the open transaction; one reply each (pipelined when offered).
    pub async fn rcpt(&mut self, rcpts: &[String]) -> Result<Vec<Reply>, UpstreamError> {
        self.ensure_usable()?;
        for r in rcpts {
            check_arg(r)?;
        }
        if self.caps.pipelining {
            let mut out = Vec::with_capacity(rcpts.len() * 40);
            for r in rcpts {
                push_rcpt(&mut out, r);
            }
            self.write(&out, Phase::Rcpt, self.timeouts.command).await?;
            return self.read_rcpt_replies(rcpts).await;
        }
        let mut replies = Vec::with_capacity(rcpts.len());
        for r in rcpts {
            if !self.usable {
                // The provider said 421 and is closing: answer the rest the same way.
                let last = replies.last().cloned().unwrap_or_else(closing_reply);
                replies.push(last);
                continue;
            }
            self.reply_for = Some(r.clone());
            let reply = self
                .command(&format!("RCPT TO:<{r}>"), Phase::Rcpt, self.timeouts.rcpt)
                .await?;
            if reply.class() == 2 {
                self.accepted.push(r.clone());
            }
            replies.push(reply);
        }
        Ok(replies)
    }

    async fn read_rcpt_replies(&mut self, rcpts: &[String]) -> Result<Vec<Reply>, UpstreamError> {
        let mut replies: Vec<Reply> = Vec::with_capacity(rcpts.len());
        for r in rcpts {
            if !self.usable {
                let last = replies.last().cloned().unwrap_or_else(closing_reply);
                replies.push(last);
                continue;
            }
            self.reply_for = Some(r.clone());
            let reply = self.read_reply(Phase::Rcpt, self.timeouts.rcpt).await?;
            if reply.class() == 2 {
                self.accepted.push(r.clone());
            }
            replies.push(reply);
        }
        Ok(replies)
    }

    /// DATA, the message (re-dot-stuffed, CRLF only) and the final reply. A reply other
    /// than 354 to DATA is returned as is (nothing is sent). A lost connection or a
    /// timeout after DATA is an `Err`: the message must not be reported as sent.
    pub async fn data(&mut self, message: &[u8]) -> Result<Reply, UpstreamError> {
        self.ensure_usable()?;
        let start = Instant::now();
        let r = self
            .command("DATA", Phase::Data, self.timeouts.data)
            .await?;
        self.last_data_latency = Some(start.elapsed());
        if r.code != 354 {
            return Ok(r);
        }
        if let Some(obs) = &self.observer {
            obs.latency(LatencyKind::To354, start.elapsed());
        }
        // The stuffing buffer is kept for the next message unless it grew large.
        let mut wire = std::mem::take(&mut self.wire);
        wire.clear();
        dot_stuff(message, &mut wire);
        for chunk in wire.chunks(DATA_CHUNK) {
            self.write(chunk, Phase::DataEnd, self.timeouts.data_block)
                .await?;
        }
        if wire.capacity() <= KEEP_WIRE {
            self.wire = wire;
        }
        let end = Instant::now();
        let r = self
            .read_reply(Phase::DataEnd, self.timeouts.data_end)
            .await?;
        self.last_final_latency = Some(end.elapsed());
        if let Some(obs) = &self.observer {
            obs.latency(LatencyKind::ToFinal, end.elapsed());
        }
        // The final reply, positive or not, ends the transaction (RFC 5321 4.1.1.4):
        // no RSET is needed before the next MAIL, saving a round trip per message.
        self.dirty = false;
        tracing::debug!(code = r.code, bytes = message.len(), "message final reply");
        Ok(r)
    }

    /// RSET: ends the transaction. A reply other than 2xx leaves the connection unusable
    /// (we cannot know what state the provider is in).
    pub async fn rset(&mut self) -> Result<Reply, UpstreamError> {
        self.ensure_usable()?;
        let r = self
            .command("RSET", Phase::Rset, self.timeouts.command)
            .await?;
        if r.class() == 2 {
            self.dirty = false;
        } else {
            self.usable = false;
        }
        Ok(r)
    }

    /// QUIT and close. Best effort, bounded: errors are ignored.
    pub async fn quit(mut self) {
        if self.usable {
            let wait = self.timeouts.command.min(QUIT_WAIT);
            let _ = self.command("QUIT", Phase::Rset, wait).await;
        }
        let _ = timeout(QUIT_WAIT, self.stream.shutdown()).await;
    }

    /// The capabilities of the current (post-STARTTLS, when used) EHLO.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }
    /// Transactions begun (MAIL FROM sent) on this connection.
    pub fn transactions_done(&self) -> usize {
        self.transactions
    }
    /// False after an I/O error, a timeout, a malformed reply or a 421.
    pub fn is_usable(&self) -> bool {
        self.usable
    }
    /// A transaction was begun and not yet RSET.
    pub fn in_transaction(&self) -> bool {
        self.dirty
    }
    /// The session runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }
    /// When the connection was opened.
    pub fn created(&self) -> Instant {
        self.created
    }
    /// Time from sending DATA to the provider's reply (354 or not), last transaction.
    pub fn last_data_latency(&self) -> Option<Duration> {
        self.last_data_latency
    }
    /// Time from the end of the message to the final reply, last transaction.
    pub fn last_final_latency(&self) -> Option<Duration> {
        self.last_final_latency
    }

    /// Cheap liveness check for an idle pooled connection, without waiting: the
    /// provider closed it, or sent something unasked (typically `421 idle timeout`),
    /// means it is dead. Marks it unusable and returns false in that case.
    pub fn probe_idle(&mut self) -> bool {
        if !self.usable {
            return false;
        }
        if !self.rbuf.is_empty() {
            self.usable = false;
            return false;
        }
        match self.stream.read_buf(&mut self.rbuf).now_or_never() {
            None => true,
            Some(Ok(0)) | Some(Err(_)) => {
                self.usable = false;
                false
            }
            Some(Ok(_)) => {
                tracing::debug!("idle provider connection sent unsolicited data; closing it");
                self.usable = false;
                false
            }
        }
    }

    pub(crate) fn command_timeout(&self) -> Duration {
        self.timeouts.command
    }

    fn ensure_usable(&self) -> Result<(), UpstreamError> {
        if self.usable {
            Ok(())
        } else {
            Err(UpstreamError::Unusable)
        }
    }

    /// Sends one command line and reads its reply. `AUTH` lines must go through
    /// [`Connection::command_redacted`].
    pub(crate) async fn command(
        &mut self,
        line: &str,
        phase: Phase,
        wait: Duration,
    ) -> Result<Reply, UpstreamError> {
        self.command_redacted(line, line, phase, wait).await
    }

    /// Sends `line`, logging `shown` in its place (for AUTH exchanges).
    pub(crate) async fn command_redacted(
        &mut self,
        line: &str,
        shown: &str,
        phase: Phase,
        wait: Duration,
    ) -> Result<Reply, UpstreamError> {
        tracing::trace!("> {shown}");
        let mut out = Vec::with_capacity(line.len() + 2);
        push_line(&mut out, line);
        self.write(&out, phase, self.timeouts.command).await?;
        let r = self.read_reply(phase, wait).await?;
        tracing::trace!(phase = phase_name(phase), "< {}", r.code);
        Ok(r)
    }

    async fn write(
        &mut self,
        bytes: &[u8],
        phase: Phase,
        wait: Duration,
    ) -> Result<(), UpstreamError> {
        let res = timeout(wait, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await;
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.usable = false;
                Err(io_error(e))
            }
            Err(_) => {
                self.usable = false;
                Err(UpstreamError::Timeout { phase })
            }
        }
    }

    /// Reads one complete (possibly multi-line) reply within `wait`. A 421 marks the
    /// connection unusable (the provider is closing it) but is returned as a reply.
    pub(crate) async fn read_reply(
        &mut self,
        phase: Phase,
        wait: Duration,
    ) -> Result<Reply, UpstreamError> {
        let res = timeout(wait, self.read_reply_inner()).await;
        let res = match res {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout { phase }),
        };
        let rcpt = self.reply_for.take();
        if let Some(obs) = &self.observer {
            match &res {
                Ok(r) => {
                    let about = match phase {
                        Phase::Rcpt => rcpt.as_deref(),
                        Phase::DataEnd if self.accepted.len() == 1 => {
                            self.accepted.first().map(String::as_str)
                        }
                        _ => None,
                    };
                    obs.reply(phase, r, about);
                    if phase == Phase::DataEnd && r.class() == 2 {
                        obs.delivered();
                    }
                }
                Err(e) => obs.failure(Some(phase), e),
            }
        }
        match res {
            Ok(r) => {
                if !r.is_positive() {
                    tracing::debug!(phase = phase_name(phase), reply = %r, "provider refused");
                }
                if r.code == 421 {
                    tracing::debug!(
                        phase = phase_name(phase),
                        "provider sent 421; connection closing"
                    );
                    self.usable = false;
                }
                Ok(r)
            }
            Err(e) => {
                self.usable = false;
                Err(e)
            }
        }
    }

    async fn read_reply_inner(&mut self) -> Result<Reply, UpstreamError> {
        loop {
            if let Some((reply, n)) = Reply::parse(&self.rbuf)? {
                self.rbuf.advance(n);
                return Ok(reply);
            }
            self.rbuf.reserve(4096);
            let n = self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .map_err(io_error)?;
            if n == 0 {
                return Err(UpstreamError::Closed);
            }
        }
    }
}

fn io_error(e: io::Error) -> UpstreamError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted => UpstreamError::Closed,
        _ => UpstreamError::Connect(e),
    }
}

fn closing_reply() -> Reply {
    Reply::plain(421, "Service closing transmission channel")
}

fn push_line(out: &mut Vec<u8>, line: &str) {
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `RCPT TO:<addr>` CRLF, without a temporary String.
fn push_rcpt(out: &mut Vec<u8>, addr: &str) {
    out.extend_from_slice(b"RCPT TO:<");
    out.extend_from_slice(addr.as_bytes());
    out.extend_from_slice(b">\r\n");
}

/// An address or name that goes into a command line: no control characters (so no CR
/// or LF), no angle brackets, no spaces.
fn check_arg(s: &str) -> Result<(), UpstreamError> {
    if s.chars()
        .any(|c| c.is_control() || c == '<' || c == '>' || c == ' ')
    {
        return Err(UpstreamError::BadAddress(s.to_string()));
    }
    Ok(())
}
