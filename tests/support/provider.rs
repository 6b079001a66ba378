//! A scripted in-process SMTP provider for integration tests.
//!
//! A tokio TCP server on `127.0.0.1:0` that answers per a [`ProviderBuilder`] script and
//! records every command line (with its connection number and the read "segment" it
//! arrived in, so pipelining is visible), every message body (unstuffed), and connection
//! counts (total, concurrent maximum, refused).
//!
//! ```ignore
//! let ca = TestCa::new();
//! let p = Provider::builder()
//!     .starttls(&ca)
//!     .auth("user", "secret")
//!     .rcpt_reply("bad@example.org", "550 5.1.1 No such user")
//!     .start()
//!     .await;
//! let cfg = p.upstream_config(); // host/port/tls set, short timeouts
//! // ... drive mailvalve ...
//! assert_eq!(p.messages().len(), 1);
//! ```
//!
//! Replies are given as full lines without CRLF (`"250 2.0.0 OK"`); a reply may hold
//! several lines separated by `\r\n` (`"250-a\r\n250 b"`). It never panics on client input;
//! unexpected input gets `500`.

mod ca;
mod session;

pub use ca::TestCa;
use session::serve;

use mailvalve::config::{TlsMode, UpstreamConfig};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One command line as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Connection number, from 0, in accept order.
    pub conn: usize,
    /// Which read() on that connection delivered the line's last byte. Commands sent
    /// in one pipelined write share a segment.
    pub segment: usize,
    /// The line without CRLF. AUTH blobs are recorded as sent.
    pub line: String,
    /// The session was encrypted when the line arrived.
    pub tls: bool,
}

#[derive(Debug, Default)]
struct Log {
    commands: Vec<Received>,
    messages: Vec<Vec<u8>>,
    connections_total: usize,
    current: usize,
    max_concurrent: usize,
    refused: usize,
    /// Flood replies the client stopped reading before they were written in full.
    aborted_writes: usize,
    /// Lines of flood replies written so far (all connections).
    flood_lines_written: usize,
    /// The current connection-rate unit: when it began, attempts in it.
    rate_unit: Option<(tokio::time::Instant, usize)>,
}

/// The script. Build with [`Provider::builder`].
#[derive(Clone)]
pub struct ProviderBuilder {
    greeting: String,
    ehlo: bool,
    pipelining: bool,
    extra_caps: Vec<String>,
    tls: Option<Arc<rustls::ServerConfig>>,
    implicit_tls: bool,
    inject_after_starttls: Option<Vec<u8>>,
    auth: Option<(String, String)>,
    auth_mechs: Vec<String>,
    /// XOAUTH2 / OAUTHBEARER: decides on (mechanism, decoded initial response).
    oauth: Option<OAuthCheck>,
    /// The SIZE the EHLO reply announces (0: no SIZE line).
    size: usize,
    mail_reply: String,
    rcpt_replies: HashMap<String, String>,
    rcpt_default: String,
    data_reply: String,
    final_reply: String,
    final_delay: Option<Duration>,
    drop_after_data: bool,
    /// While set, close after receiving the message, without a final reply.
    drop_switch: Option<Arc<std::sync::atomic::AtomicBool>>,
    max_connections: Option<usize>,
    /// Connection attempts allowed per fixed window (Postfix anvil style).
    connection_rate: Option<(usize, Duration)>,
    /// Replies that replace the scripted one for a verb (`"STARTTLS"`, `"RSET"`, ...).
    overrides: HashMap<String, String>,
    /// Verb answered with a reply of this many lines of `flood_line_len` octets each,
    /// written a line at a time (the provider never holds the whole reply).
    flood: Option<(String, usize, usize)>,
    /// RCPTs (lower-cased addresses) that get no reply at all.
    rcpt_silent: Vec<String>,
    /// Never complete a TLS handshake (implicit TLS, or after the STARTTLS `220`).
    tls_stall: bool,
}

impl Default for ProviderBuilder {
    fn default() -> Self {
        Self {
            greeting: "220 provider.test ESMTP scripted".into(),
            ehlo: true,
            pipelining: true,
            extra_caps: Vec::new(),
            tls: None,
            implicit_tls: false,
            inject_after_starttls: None,
            auth: None,
            auth_mechs: vec!["PLAIN".into(), "LOGIN".into()],
            oauth: None,
            size: 10_485_760,
            mail_reply: "250 2.1.0 Sender OK".into(),
            rcpt_replies: HashMap::new(),
            rcpt_default: "250 2.1.5 Recipient OK".into(),
            data_reply: "354 Start mail input; end with <CRLF>.<CRLF>".into(),
            final_reply: "250 2.0.0 Ok: queued".into(),
            final_delay: None,
            drop_after_data: false,
            drop_switch: None,
            max_connections: None,
            connection_rate: None,
            overrides: HashMap::new(),
            flood: None,
            rcpt_silent: Vec::new(),
            tls_stall: false,
        }
    }
}

/// Decides an OAuth2 sign-in: `(mechanism, decoded initial client response)` → accepted.
pub type OAuthCheck = Arc<dyn Fn(&str, &[u8]) -> bool + Send + Sync>;

impl ProviderBuilder {
    /// Require AUTH with `mechs` (e.g. `["XOAUTH2"]`), answered by `check`. A refused
    /// token gets the providers' error challenge (`334` + base64 JSON); the client must
    /// answer it with an empty line (XOAUTH2) or `AQ==` (OAUTHBEARER, RFC 7628 3.2.3),
    /// then gets `535 5.7.8`; any other answer gets `501 5.5.2` (so a test sees it).
    pub fn oauth(mut self, mechs: &[&str], check: OAuthCheck) -> Self {
        self.auth_mechs = mechs.iter().map(|s| s.to_string()).collect();
        self.oauth = Some(check);
        self
    }
    /// The SIZE announced in the EHLO reply (default 10 MiB; 0 = no SIZE line).
    pub fn size(mut self, n: usize) -> Self {
        self.size = n;
        self
    }
    /// Greeting line, e.g. `"421 4.7.0 Too busy"`.
    pub fn greeting(mut self, line: &str) -> Self {
        self.greeting = line.into();
        self
    }
    /// Answer EHLO with `502` (the client must fall back to HELO).
    pub fn no_ehlo(mut self) -> Self {
        self.ehlo = false;
        self
    }
    /// Advertise PIPELINING (default on).
    pub fn pipelining(mut self, on: bool) -> Self {
        self.pipelining = on;
        self
    }
    /// An extra EHLO keyword line, e.g. `"SMTPUTF8"`.
    pub fn capability(mut self, kw: &str) -> Self {
        self.extra_caps.push(kw.into());
        self
    }
    /// Offer STARTTLS with a certificate from `ca`.
    pub fn starttls(mut self, ca: &TestCa) -> Self {
        self.tls = Some(ca.server_config());
        self.implicit_tls = false;
        self
    }
    /// TLS from the first byte (port 465 style) with a certificate from `ca`.
    pub fn implicit_tls(mut self, ca: &TestCa) -> Self {
        self.tls = Some(ca.server_config());
        self.implicit_tls = true;
        self
    }
    /// Send these bytes in the clear right after the STARTTLS `220`, in the same write
    /// (the CVE-2011-0411-style injection a client must discard).
    pub fn inject_after_starttls(mut self, bytes: &[u8]) -> Self {
        self.inject_after_starttls = Some(bytes.to_vec());
        self
    }
    /// Require AUTH with these credentials before MAIL (`530` otherwise).
    pub fn auth(mut self, user: &str, pass: &str) -> Self {
        self.auth = Some((user.into(), pass.into()));
        self
    }
    /// Which AUTH mechanisms to advertise (default `PLAIN LOGIN`).
    pub fn auth_mechanisms(mut self, mechs: &[&str]) -> Self {
        self.auth_mechs = mechs.iter().map(|s| s.to_string()).collect();
        self
    }
    /// Reply to every MAIL FROM.
    pub fn mail_reply(mut self, line: &str) -> Self {
        self.mail_reply = line.into();
        self
    }
    /// Reply to `RCPT TO:<addr>` (address compared case-insensitively).
    pub fn rcpt_reply(mut self, addr: &str, line: &str) -> Self {
        self.rcpt_replies
            .insert(addr.to_ascii_lowercase(), line.into());
        self
    }
    /// Reply to RCPTs not listed with `rcpt_reply`.
    pub fn rcpt_default(mut self, line: &str) -> Self {
        self.rcpt_default = line.into();
        self
    }
    /// Reply to DATA; anything but 354 means no message follows.
    pub fn data_reply(mut self, line: &str) -> Self {
        self.data_reply = line.into();
        self
    }
    /// Reply after the message.
    pub fn final_reply(mut self, line: &str) -> Self {
        self.final_reply = line.into();
        self
    }
    /// Wait this long before the final reply.
    pub fn final_delay(mut self, d: Duration) -> Self {
        self.final_delay = Some(d);
        self
    }
    /// Close the connection after receiving the message, without a final reply.
    pub fn drop_after_data(mut self) -> Self {
        self.drop_after_data = true;
        self
    }
    /// While `switch` is set, close the connection after receiving the message, without
    /// a final reply (a provider restart in the middle of transactions).
    pub fn drop_after_data_while(mut self, switch: Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.drop_switch = Some(switch);
        self
    }
    /// At most `n` connection attempts per `window`, counted like Postfix's
    /// `smtpd_client_connection_rate_limit` (anvil: a fixed unit that starts with the
    /// first attempt after the last one ended; refused attempts count too); beyond that,
    /// Postfix's own `421 4.7.0 <host> Error: too many connections from <ip>`.
    pub fn connection_rate(mut self, n: usize, window: Duration) -> Self {
        self.connection_rate = Some((n, window));
        self
    }
    /// More concurrent connections than this get `421 4.7.0 Too many connections`.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = Some(n);
        self
    }

    /// Answer `verb` (upper case: `"STARTTLS"`, `"RSET"`, `"EHLO"`, `"AUTH"`, `"MAIL"`)
    /// with `line` instead of the scripted reply. For STARTTLS the session stays in
    /// plaintext; for AUTH no exchange follows (the reply is all there is).
    pub fn reply_to(mut self, verb: &str, line: &str) -> Self {
        self.overrides
            .insert(verb.to_ascii_uppercase(), line.to_string());
        self
    }
    /// Answer `verb` with one reply of `lines` lines (`250-xxx...`, the last `250 xxx`),
    /// each `line_len` octets of text, written a line at a time until done or the
    /// client stops reading (counted in [`Provider::aborted_writes`]). `"."` is the end
    /// of DATA (the final reply).
    pub fn flood_reply(mut self, verb: &str, lines: usize, line_len: usize) -> Self {
        self.flood = Some((verb.to_ascii_uppercase(), lines, line_len));
        self
    }
    /// Send no reply at all to `RCPT TO:<addr>` (a reply count that no longer matches
    /// the commands pipelined).
    pub fn rcpt_silent(mut self, addr: &str) -> Self {
        self.rcpt_silent.push(addr.to_ascii_lowercase());
        self
    }
    /// Accept TCP but never complete the TLS handshake: with implicit TLS from the first
    /// byte, with STARTTLS after the `220`.
    pub fn tls_stall(mut self) -> Self {
        self.tls_stall = true;
        self
    }

    /// Binds `127.0.0.1:0` and starts serving.
    pub async fn start(self) -> Provider {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let log = Arc::new(Mutex::new(Log::default()));
        let script = Arc::new(self);
        let task = {
            let log = log.clone();
            let script = script.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let log = log.clone();
                    let script = script.clone();
                    tokio::spawn(async move { serve(tcp, script, log).await });
                }
            })
        };
        Provider {
            addr,
            log,
            task,
            script,
        }
    }
}

/// A running scripted provider. Stops accepting when dropped.
pub struct Provider {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    task: JoinHandle<()>,
    script: Arc<ProviderBuilder>,
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Provider {
    pub fn builder() -> ProviderBuilder {
        ProviderBuilder::default()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// An `[upstream]` config pointing here: TLS mode per the script (verification on,
    /// `ca_file` left to the caller), credentials from `auth()`, short timeouts (5 s),
    /// `admission_wait` 5 s.
    pub fn upstream_config(&self) -> UpstreamConfig {
        let mut c = UpstreamConfig {
            host: "127.0.0.1".into(),
            port: self.addr.port(),
            tls: match (&self.script.tls, self.script.implicit_tls) {
                (None, _) => TlsMode::None,
                (Some(_), true) => TlsMode::Implicit,
                (Some(_), false) => TlsMode::Starttls,
            },
            helo_name: "client.test".into(),
            admission_wait: Duration::from_secs(5),
            ..UpstreamConfig::default()
        };
        if let Some((u, p)) = &self.script.auth {
            c.username = Some(u.clone());
            c.password = Some(mailvalve::config::Secret::new(p.clone()));
        }
        let t = &mut c.timeouts;
        let s5 = Duration::from_secs(5);
        t.connect = s5;
        t.greeting = s5;
        t.command = s5;
        t.mail = s5;
        t.rcpt = s5;
        t.data = s5;
        t.data_block = s5;
        t.data_end = s5;
        c
    }

    /// Every command line received, in order.
    pub fn commands(&self) -> Vec<Received> {
        self.lock().commands.clone()
    }

    /// Just the command lines.
    pub fn lines(&self) -> Vec<String> {
        self.lock()
            .commands
            .iter()
            .map(|c| c.line.clone())
            .collect()
    }

    /// Message bodies received (unstuffed, CRLF line ends, without the final `.`).
    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.lock().messages.clone()
    }

    /// Connections accepted (including refused ones).
    pub fn connections_total(&self) -> usize {
        self.lock().connections_total
    }

    /// Most connections open at once (refused ones not counted).
    pub fn max_concurrent(&self) -> usize {
        self.lock().max_concurrent
    }

    /// Connections answered with 421 because of `max_connections`.
    pub fn refused(&self) -> usize {
        self.lock().refused
    }

    /// Flood replies that could not be written in full (the client closed first).
    pub fn aborted_writes(&self) -> usize {
        self.lock().aborted_writes
    }

    /// Lines of flood replies written (accepted by the socket) so far.
    pub fn flood_lines_written(&self) -> usize {
        self.lock().flood_lines_written
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
}
