//! One SMTP client connection to the provider: connect (plain, implicit TLS or
//! STARTTLS), greeting, EHLO (HELO fallback), AUTH, and the transaction commands
//! (MAIL + RCPT pipelined when offered, DATA, RSET, QUIT).
//!
//! This module reports replies; it decides nothing about them (that is `policy`). It
//! must never send a bare CR or LF (addresses are checked, the message is re-dot-stuffed),
//! never log a password or an AUTH blob, never trust bytes buffered before a TLS
//! handshake, and never report a message as sent unless the provider said so: any I/O
//! error or timeout is an `Err` and leaves the connection unusable.
//!
//! **The one guard** (for passthrough and queue mode alike): every reply is checked
//! against what the protocol allows where it arrives (`Expect`): greeting `220`,
//! EHLO/HELO `250`, STARTTLS `220`, AUTH `334` continuations then `235`, MAIL/RCPT
//! `250`/`251`/`252`, DATA `354`, end of DATA any `2xx`, RSET `250`. A positive (2xx or
//! 3xx) reply that is not the expected one — a plaintext `250` injected in answer to
//! STARTTLS, a `334` where AUTH expects its final reply, a `250` to DATA — is a broken
//! connection: [`UpstreamError::Unexpected`], the connection is dropped, and the reply
//! never reaches the observer as a reply (so it is never classified, never counted, never
//! relayed to the mailer). Bytes that arrive before a command was sent (more replies
//! than commands) are [`UpstreamError::Unsolicited`]. Negative replies (4xx, 5xx) are
//! always allowed and returned as they are. A reply is at most
//! [`MAX_REPLY_BYTES`] octets; a longer one (a provider streaming `250-` lines forever)
//! is a protocol error, so memory stays bounded whatever the provider sends.
//!
//! SMTPUTF8 (RFC 6531): a non-ASCII address is sent only in a transaction whose MAIL
//! carried `SMTPUTF8`, which needs the provider to advertise it; otherwise that address
//! gets a local `553 5.6.7` and is never sent (a non-ASCII sender: MAIL itself gets it).

use super::answer::Answer;
use super::auth;
use super::error::UpstreamError;
use super::expect::Expect;
use super::observer::Observer;
use super::settings::Settings;
use super::stream::Stream;
use super::tls;
use crate::config::{TlsMode, UpstreamTimeouts};
use crate::policy::latency::LatencyKind;
use crate::policy::verdict::Phase;
use crate::smtp::data::dot_stuff;
use crate::smtp::ehlo::Capabilities;
use crate::smtp::reply::{MAX_REPLY_LINE, MAX_REPLY_LINES};
use crate::smtp::{EnhancedCode, Envelope, Reply, ReplyError};
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
/// Most octets a connection buffers while waiting for one reply: just above what the
/// parser can hold before it gives up (at most `MAX_REPLY_LINES` lines of at most
/// `MAX_REPLY_LINE` octets, plus one unfinished line). The parser normally errs first;
/// this bound holds whatever it does, so a provider streaming a reply of 100 000 lines
/// (or one endless line) costs a connection at most this much memory, then the
/// connection is dropped.
pub const MAX_REPLY_BYTES: usize = (MAX_REPLY_LINE + 2) * (MAX_REPLY_LINES + 1);

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
    /// MAIL of the current transaction carried SMTPUTF8: non-ASCII addresses may go out.
    utf8_tx: bool,
    /// What identifies the message of the current transaction (for the observer: a
    /// soft bounce counts once per message and day), and the one the next `envelope`
    /// takes over.
    identity: Option<Arc<str>>,
    next_identity: Option<Arc<str>>,
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
    /// Failures before any reply (refused, TLS) and a refused greeting are reported to
    /// the observer here; replies and read errors are reported as they are read.
    pub async fn connect(settings: &Settings) -> Result<Connection, UpstreamError> {
        if let Some(obs) = &settings.observer {
            obs.connect_started();
        }
        let res = Self::open(settings).await;
        if let Some(obs) = &settings.observer {
            if let Err(
                e
                @ (UpstreamError::Connect(_) | UpstreamError::Tls(_) | UpstreamError::Greeting(_)),
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
            wire: Vec::new(),
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

        if let (Some(user), Some(pass)) = (&cfg.username, &cfg.password) {
            let (caps, wait) = (conn.caps.clone(), conn.command_timeout());
            auth::authenticate(&mut conn, &caps, wait, user, pass).await?;
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

    /// What identifies the message of the next transaction (the one the next
    /// [`Connection::envelope`] begins), for the observer: a mailbox-full reply counts
    /// toward suppression at most once per message and day. Taken over by `envelope`;
    /// without a call, the transaction has none.
    pub fn set_message_identity(&mut self, identity: Option<&str>) {
        self.next_identity = identity.map(Arc::from);
    }

    /// MAIL FROM (with SIZE=, BODY=8BITMIME, SMTPUTF8 when both sides have them) and one
    /// RCPT per address. With PIPELINING everything goes out in one write; without it,
    /// one by one, and no RCPT is sent when MAIL was refused (the rcpt vec is empty).
    /// After a 421 the remaining replies are copies of that 421.
    ///
    /// A non-ASCII address goes out only when MAIL carries SMTPUTF8 (RFC 6531): with a
    /// provider that does not offer it, such a recipient gets a local `553 5.6.7` and is
    /// not sent, and a non-ASCII sender gets it for MAIL (nothing is sent at all).
    pub async fn envelope(
        &mut self,
        env: &Envelope,
        rcpts: &[String],
    ) -> Result<(Answer, Vec<Answer>), UpstreamError> {
        self.ensure_usable()?;
        check_arg(&env.from)?;
        for r in rcpts {
            check_arg(r)?;
        }
        self.identity = self.next_identity.take();
        self.utf8_tx = env.smtputf8 && self.caps.smtputf8;
        self.accepted.clear();
        if !self.sendable(&env.from) {
            tracing::info!("non-ASCII sender and the provider offers no SMTPUTF8; not sent");
            return Ok((Answer::local(no_utf8_reply("sender")), Vec::new()));
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
        if self.utf8_tx {
            mail.push_str(" SMTPUTF8");
        }
        self.dirty = true;
        self.transactions += 1;

        if self.caps.pipelining {
            let mut out = Vec::with_capacity(mail.len() + 2 + rcpts.len() * 40);
            push_line(&mut out, &mail);
            for r in rcpts.iter().filter(|r| self.sendable(r)) {
                push_rcpt(&mut out, r);
            }
            tracing::trace!(rcpts = rcpts.len(), "> {mail} + RCPTs (pipelined)");
            self.send(&out, Phase::Mail).await?;
            let mail_reply = self
                .read_reply(Phase::Mail, Expect::MAIL, self.timeouts.mail)
                .await?;
            let rcpt_replies = if mail_reply.code == 421 {
                vec![mail_reply.clone(); rcpts.len()]
            } else {
                self.read_rcpt_replies(rcpts).await?
            };
            Ok((mail_reply, rcpt_replies))
        } else {
            let mail_reply = self
                .command(&mail, Phase::Mail, Expect::MAIL, self.timeouts.mail)
                .await?;
            if mail_reply.class() != 2 {
                return Ok((mail_reply, Vec::new()));
            }
            let rcpt_replies = self.rcpt(rcpts).await?;
            Ok((mail_reply, rcpt_replies))
        }
    }

    /// More recipients in the open transaction; one reply each (pipelined when offered).
    /// A non-ASCII address the transaction cannot carry gets a local `553 5.6.7`.
    pub async fn rcpt(&mut self, rcpts: &[String]) -> Result<Vec<Answer>, UpstreamError> {
        self.ensure_usable()?;
        for r in rcpts {
            check_arg(r)?;
        }
        if self.caps.pipelining {
            let mut out = Vec::with_capacity(rcpts.len() * 40);
            for r in rcpts.iter().filter(|r| self.sendable(r)) {
                push_rcpt(&mut out, r);
            }
            if !out.is_empty() {
                self.send(&out, Phase::Rcpt).await?;
            }
            return self.read_rcpt_replies(rcpts).await;
        }
        let mut replies = Vec::with_capacity(rcpts.len());
        for r in rcpts {
            if !self.usable {
                // The provider said 421 and is closing: answer the rest the same way.
                let last = replies
                    .last()
                    .cloned()
                    .unwrap_or_else(|| Answer::local(closing_reply()));
                replies.push(last);
                continue;
            }
            if !self.sendable(r) {
                replies.push(Answer::local(no_utf8_reply("recipient")));
                continue;
            }
            self.reply_for = Some(r.clone());
            let reply = self
                .command(
                    &format!("RCPT TO:<{r}>"),
                    Phase::Rcpt,
                    Expect::RCPT,
                    self.timeouts.rcpt,
                )
                .await?;
            if reply.class() == 2 {
                self.accepted.push(r.clone());
            }
            replies.push(reply);
        }
        Ok(replies)
    }

    /// The replies to the RCPTs of `rcpts` that were sent (in order), with the local
    /// `553 5.6.7` in the place of each one that was not.
    async fn read_rcpt_replies(&mut self, rcpts: &[String]) -> Result<Vec<Answer>, UpstreamError> {
        let mut replies: Vec<Answer> = Vec::with_capacity(rcpts.len());
        for r in rcpts {
            if !self.sendable(r) {
                replies.push(Answer::local(no_utf8_reply("recipient")));
                continue;
            }
            if !self.usable {
                let last = replies
                    .last()
                    .cloned()
                    .unwrap_or_else(|| Answer::local(closing_reply()));
                replies.push(last);
                continue;
            }
            self.reply_for = Some(r.clone());
            let reply = self
                .read_reply(Phase::Rcpt, Expect::RCPT, self.timeouts.rcpt)
                .await?;
            if reply.class() == 2 {
                self.accepted.push(r.clone());
            }
            replies.push(reply);
        }
        Ok(replies)
    }

    /// Whether `addr` may go out in the current transaction: ASCII, or MAIL carried
    /// SMTPUTF8.
    fn sendable(&self, addr: &str) -> bool {
        addr.is_ascii() || self.utf8_tx
    }

    /// DATA, the message (re-dot-stuffed, CRLF only) and the final reply. A 4xx/5xx to
    /// DATA is returned as is (nothing is sent; the transaction stays open); any other
    /// positive reply than 354 is [`UpstreamError::Unexpected`]. A lost connection or a
    /// timeout after DATA is an `Err`: the message must not be reported as sent. `Ok`
    /// with a 2xx is the provider's acceptance of the message, and nothing else is.
    pub async fn data(&mut self, message: &[u8]) -> Result<Answer, UpstreamError> {
        self.ensure_usable()?;
        let start = Instant::now();
        let r = self
            .command("DATA", Phase::Data, Expect::DATA, self.timeouts.data)
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
            .read_reply(Phase::DataEnd, Expect::DATA_END, self.timeouts.data_end)
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
            .command("RSET", Phase::Rset, Expect::RSET, self.timeouts.command)
            .await?
            .reply;
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
            let _ = self.command("QUIT", Phase::Rset, Expect::QUIT, wait).await;
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

    /// Sends one command line and reads its reply, which must be negative or one that
    /// `expect` allows. `AUTH` lines must go through [`Connection::command_redacted`].
    pub(crate) async fn command(
        &mut self,
        line: &str,
        phase: Phase,
        expect: Expect,
        wait: Duration,
    ) -> Result<Answer, UpstreamError> {
        auth::Commands::command_redacted(self, line, line, phase, expect, wait).await
    }

    /// Writes the command(s) in `bytes`, after checking that the provider has not sent
    /// anything since the last reply we read: bytes waiting now would be taken for the
    /// reply to this command (more replies than commands, e.g. a pipelined batch
    /// answered twice), so the connection is dropped instead.
    async fn send(&mut self, bytes: &[u8], phase: Phase) -> Result<(), UpstreamError> {
        if !self.rbuf.is_empty() {
            let e = UpstreamError::Unsolicited {
                phase,
                bytes: self.rbuf.len(),
            };
            tracing::warn!(error = %e, "dropping the provider connection");
            self.usable = false;
            self.rbuf.clear();
            if let Some(obs) = &self.observer {
                obs.failure(Some(phase), &e);
            }
            return Err(e);
        }
        self.write(bytes, phase, self.timeouts.command).await
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

    /// Reads one complete (possibly multi-line) reply within `wait` and holds it against
    /// `expect` (the guard described in the module docs): a positive reply the protocol
    /// does not allow here is [`UpstreamError::Unexpected`] and is reported to the
    /// observer as a failure, never as a reply. A 421 marks the connection unusable (the
    /// provider is closing it) but is returned as a reply.
    pub(crate) async fn read_reply(
        &mut self,
        phase: Phase,
        expect: Expect,
        wait: Duration,
    ) -> Result<Answer, UpstreamError> {
        let res = timeout(wait, self.read_reply_inner()).await;
        let res = match res {
            Ok(Ok(r)) if !expect.allows(&r) => Err(UpstreamError::Unexpected { phase, reply: r }),
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout { phase }),
        };
        let rcpt = self.reply_for.take();
        let mut verdict = None;
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
                    verdict = obs.reply(phase, r, about, self.identity.as_deref());
                }
                Err(e) => obs.failure(Some(phase), e),
            }
        }
        match res {
            Ok(r) => {
                if !r.is_positive() {
                    tracing::debug!(phase = phase.name(), reply = %r, "provider refused");
                }
                if r.code == 421 {
                    tracing::debug!(
                        phase = phase.name(),
                        "provider sent 421; connection closing"
                    );
                    self.usable = false;
                }
                Ok(Answer::provider(r, verdict))
            }
            Err(e) => {
                if matches!(e, UpstreamError::Unexpected { .. }) {
                    tracing::warn!(error = %e, "dropping the provider connection");
                }
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
            // The parser bounds line length and count; this bounds the buffer itself,
            // whatever the provider streams (bytes not yet split into lines included).
            // (The parser has no error of its own for "too many octets"; a reply this
            // long has too many lines of the longest kind.)
            if self.rbuf.len() > MAX_REPLY_BYTES {
                return Err(UpstreamError::Protocol(ReplyError::TooManyLines));
            }
            let room = (MAX_REPLY_BYTES + 1 - self.rbuf.len()).min(8192);
            self.rbuf.reserve(room);
            let n = (&mut self.stream)
                .take(room as u64)
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

/// The local answer for a non-ASCII address the provider cannot take (RFC 6531 3.7.4):
/// permanent for this message, never a reason to suppress the address.
fn no_utf8_reply(which: &str) -> Reply {
    Reply::new(
        553,
        EnhancedCode::new(5, 6, 7),
        format!("Non-ASCII {which} address needs SMTPUTF8, which the provider does not offer"),
    )
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

/// Every command goes out this way; AUTH's with the line logged redacted.
impl auth::Commands for Connection {
    /// Sends `line`, logging `shown` in its place (for AUTH exchanges), and reads its
    /// reply.
    async fn command_redacted(
        &mut self,
        line: &str,
        shown: &str,
        phase: Phase,
        expect: Expect,
        wait: Duration,
    ) -> Result<Answer, UpstreamError> {
        tracing::trace!("> {shown}");
        let mut out = Vec::with_capacity(line.len() + 2);
        push_line(&mut out, line);
        self.send(&out, phase).await?;
        let r = self.read_reply(phase, expect, wait).await?;
        tracing::trace!(phase = phase.name(), "< {}", r.code);
        Ok(r)
    }
}
