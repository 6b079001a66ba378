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

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use mailvalve::config::{TlsMode, UpstreamConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// A throwaway CA and a server certificate it signed for `localhost` and `127.0.0.1`.
pub struct TestCa {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mailvalve test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");

        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("leaf params");
        let leaf = leaf_params
            .signed_by(&leaf_key, &ca_cert, &ca_key)
            .expect("leaf cert");

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(leaf.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            )
            .expect("server config");
        Self {
            ca_pem: ca_cert.pem(),
            server: Arc::new(server),
        }
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes the CA certificate to `dir/ca.pem` (for `ca_file`).
    pub fn write_ca_file(&self, dir: &Path) -> PathBuf {
        let p = dir.join("ca.pem");
        std::fs::write(&p, &self.ca_pem).expect("write ca.pem");
        p
    }

    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

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
    mail_reply: String,
    rcpt_replies: HashMap<String, String>,
    rcpt_default: String,
    data_reply: String,
    final_reply: String,
    final_delay: Option<Duration>,
    drop_after_data: bool,
    max_connections: Option<usize>,
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
            mail_reply: "250 2.1.0 Sender OK".into(),
            rcpt_replies: HashMap::new(),
            rcpt_default: "250 2.1.5 Recipient OK".into(),
            data_reply: "354 Start mail input; end with <CRLF>.<CRLF>".into(),
            final_reply: "250 2.0.0 Ok: queued".into(),
            final_delay: None,
            drop_after_data: false,
            max_connections: None,
            overrides: HashMap::new(),
            flood: None,
            rcpt_silent: Vec::new(),
            tls_stall: false,
        }
    }
}

impl ProviderBuilder {
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

struct ConnGuard(Arc<Mutex<Log>>);
impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut l = self.0.lock().unwrap_or_else(|p| p.into_inner());
        l.current -= 1;
    }
}

async fn serve(mut tcp: TcpStream, script: Arc<ProviderBuilder>, log: Arc<Mutex<Log>>) {
    let admitted = {
        let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
        let id = l.connections_total;
        l.connections_total += 1;
        if script.max_connections.is_some_and(|m| l.current >= m) {
            l.refused += 1;
            None
        } else {
            l.current += 1;
            l.max_concurrent = l.max_concurrent.max(l.current);
            Some(id)
        }
    };
    let Some(conn) = admitted else {
        let _ = tcp
            .write_all(b"421 4.7.0 Too many connections, try again later\r\n")
            .await;
        let _ = tcp.shutdown().await;
        return;
    };
    let _guard = ConnGuard(log.clone());
    let mut st = Session {
        conn,
        script,
        log,
        buf: Vec::new(),
        segment: 0,
        authed: false,
        tls: false,
    };
    if st.script.implicit_tls && st.script.tls_stall {
        drain(&mut tcp).await;
        return;
    }
    if st.script.implicit_tls {
        let Some(cfg) = st.script.tls.clone() else {
            return;
        };
        let Ok(mut s) = TlsAcceptor::from(cfg).accept(tcp).await else {
            return;
        };
        st.tls = true;
        if write_line(&mut s, &st.script.greeting.clone())
            .await
            .is_err()
        {
            return;
        }
        st.run(&mut s).await;
        return;
    }
    if write_line(&mut tcp, &st.script.greeting.clone())
        .await
        .is_err()
    {
        return;
    }
    if !st.script.greeting.starts_with('2') {
        return;
    }
    if st.run(&mut tcp).await != Outcome::StartTls {
        return;
    }
    if st.script.tls_stall {
        drain(&mut tcp).await;
        return;
    }
    let Some(cfg) = st.script.tls.clone() else {
        return;
    };
    let Ok(mut s) = TlsAcceptor::from(cfg).accept(tcp).await else {
        return;
    };
    st.tls = true;
    st.buf.clear(); // plaintext pipelined after STARTTLS is discarded
    st.authed = false;
    st.run(&mut s).await;
}

#[derive(PartialEq, Eq)]
enum Outcome {
    Closed,
    StartTls,
}

struct Session {
    conn: usize,
    script: Arc<ProviderBuilder>,
    log: Arc<Mutex<Log>>,
    buf: Vec<u8>,
    segment: usize,
    authed: bool,
    tls: bool,
}

/// Reads and discards until the peer closes (a provider that never answers).
async fn drain(tcp: &mut TcpStream) {
    let mut chunk = [0u8; 4096];
    while let Ok(n) = tcp.read(&mut chunk).await {
        if n == 0 {
            return;
        }
    }
}

async fn write_line<S: AsyncWrite + Unpin>(s: &mut S, line: &str) -> std::io::Result<()> {
    let mut out = line.as_bytes().to_vec();
    out.extend_from_slice(b"\r\n");
    s.write_all(&out).await?;
    s.flush().await
}

impl Session {
    /// Next CRLF-terminated line (without CRLF), or None on EOF/error.
    async fn read_line<S: AsyncRead + Unpin>(&mut self, s: &mut S) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).take(i).collect();
                return Some(String::from_utf8_lossy(&line).into_owned());
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            self.segment += 1;
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn record(&self, line: &str) {
        let mut l = self.log.lock().unwrap_or_else(|p| p.into_inner());
        l.commands.push(Received {
            conn: self.conn,
            segment: self.segment,
            line: line.to_string(),
            tls: self.tls,
        });
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(&mut self, s: &mut S) -> Outcome {
        let script = self.script.clone();
        loop {
            let Some(line) = self.read_line(s).await else {
                return Outcome::Closed;
            };
            self.record(&line);
            let upper = line.to_ascii_uppercase();
            let verb = upper.split(' ').next().unwrap_or("").to_string();
            if let Some((v, lines, len)) = &script.flood {
                if *v == verb {
                    if !self.flood(s, *lines, *len).await {
                        return Outcome::Closed;
                    }
                    continue;
                }
            }
            if let Some(line) = script.overrides.get(&verb) {
                if write_line(s, line).await.is_err() {
                    return Outcome::Closed;
                }
                if line.starts_with("421") {
                    return Outcome::Closed;
                }
                continue;
            }
            let reply: String = match verb.as_str() {
                "EHLO" if !script.ehlo => "502 5.5.2 EHLO not supported".into(),
                "EHLO" => {
                    let mut caps = vec!["provider.test greets you".to_string()];
                    if script.pipelining {
                        caps.push("PIPELINING".into());
                    }
                    caps.push("SIZE 10485760".into());
                    caps.push("8BITMIME".into());
                    caps.push("ENHANCEDSTATUSCODES".into());
                    if script.tls.is_some() && !self.tls {
                        caps.push("STARTTLS".into());
                    }
                    if script.auth.is_some() && !script.auth_mechs.is_empty() {
                        caps.push(format!("AUTH {}", script.auth_mechs.join(" ")));
                    }
                    caps.extend(script.extra_caps.iter().cloned());
                    let n = caps.len();
                    caps.iter()
                        .enumerate()
                        .map(|(i, c)| format!("250{}{c}", if i + 1 == n { ' ' } else { '-' }))
                        .collect::<Vec<_>>()
                        .join("\r\n")
                }
                "HELO" => "250 provider.test".into(),
                "STARTTLS" if script.tls.is_none() || self.tls => {
                    "454 4.7.0 TLS not available".into()
                }
                "STARTTLS" => {
                    let mut out = b"220 2.0.0 Ready to start TLS\r\n".to_vec();
                    if let Some(inj) = &script.inject_after_starttls {
                        out.extend_from_slice(inj);
                    }
                    if s.write_all(&out).await.is_err() || s.flush().await.is_err() {
                        return Outcome::Closed;
                    }
                    return Outcome::StartTls;
                }
                "AUTH" => match self.auth(s, &line).await {
                    Some(r) => r,
                    None => return Outcome::Closed,
                },
                "MAIL" if script.auth.is_some() && !self.authed => {
                    "530 5.7.0 Authentication required".into()
                }
                "MAIL" => script.mail_reply.clone(),
                "RCPT" => {
                    let addr = line
                        .split_once('<')
                        .and_then(|(_, r)| r.split_once('>'))
                        .map(|(a, _)| a.to_ascii_lowercase())
                        .unwrap_or_default();
                    if script.rcpt_silent.contains(&addr) {
                        continue;
                    }
                    script
                        .rcpt_replies
                        .get(&addr)
                        .cloned()
                        .unwrap_or_else(|| script.rcpt_default.clone())
                }
                "DATA" if !script.data_reply.starts_with("354") => script.data_reply.clone(),
                "DATA" => {
                    if write_line(s, &script.data_reply).await.is_err() {
                        return Outcome::Closed;
                    }
                    let mut msg = Vec::new();
                    loop {
                        let Some(l) = self.read_line(s).await else {
                            return Outcome::Closed;
                        };
                        if l == "." {
                            break;
                        }
                        let l = l.strip_prefix('.').unwrap_or(&l);
                        msg.extend_from_slice(l.as_bytes());
                        msg.extend_from_slice(b"\r\n");
                    }
                    self.log
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .messages
                        .push(msg);
                    if script.drop_after_data {
                        return Outcome::Closed;
                    }
                    if let Some((v, lines, len)) = &script.flood {
                        if v == "." {
                            if !self.flood(s, *lines, *len).await {
                                return Outcome::Closed;
                            }
                            continue;
                        }
                    }
                    if let Some(d) = script.final_delay {
                        tokio::time::sleep(d).await;
                    }
                    script.final_reply.clone()
                }
                "RSET" => "250 2.0.0 Reset OK".into(),
                "NOOP" => "250 2.0.0 OK".into(),
                "QUIT" => {
                    let _ = write_line(s, "221 2.0.0 Bye").await;
                    let _ = s.shutdown().await;
                    return Outcome::Closed;
                }
                _ => "500 5.5.2 Command not recognized".into(),
            };
            if write_line(s, &reply).await.is_err() {
                return Outcome::Closed;
            }
            if reply.starts_with("421") {
                return Outcome::Closed;
            }
        }
    }

    /// One reply of `lines` lines of `len` octets, a line at a time; false when the
    /// client stopped reading (counted as an aborted write).
    async fn flood<S: AsyncWrite + Unpin>(&mut self, s: &mut S, lines: usize, len: usize) -> bool {
        let text = "x".repeat(len);
        for i in 0..lines {
            let sep = if i + 1 == lines { ' ' } else { '-' };
            let line = format!("250{sep}{text}\r\n");
            if s.write_all(line.as_bytes()).await.is_err() {
                self.log
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .aborted_writes += 1;
                return false;
            }
            self.log
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .flood_lines_written += 1;
        }
        s.flush().await.is_ok()
    }

    /// AUTH PLAIN [initial-response] or AUTH LOGIN; returns the final reply.
    async fn auth<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        s: &mut S,
        line: &str,
    ) -> Option<String> {
        let Some((user, pass)) = self.script.auth.clone() else {
            return Some("502 5.5.1 AUTH not available".into());
        };
        let mut words = line.split(' ').skip(1);
        let mech = words.next().unwrap_or("").to_ascii_uppercase();
        let ok = match mech.as_str() {
            "PLAIN" => {
                let blob = match words.next() {
                    Some(b) => b.to_string(),
                    None => {
                        write_line(s, "334 ").await.ok()?;
                        let l = self.read_line(s).await?;
                        self.record(&l);
                        l
                    }
                };
                let want = format!("\0{user}\0{pass}");
                B64.decode(blob.trim()).ok().as_deref() == Some(want.as_bytes())
            }
            "LOGIN" => {
                write_line(s, "334 VXNlcm5hbWU6").await.ok()?;
                let u = self.read_line(s).await?;
                self.record(&u);
                write_line(s, "334 UGFzc3dvcmQ6").await.ok()?;
                let p = self.read_line(s).await?;
                self.record(&p);
                B64.decode(u.trim()).ok().as_deref() == Some(user.as_bytes())
                    && B64.decode(p.trim()).ok().as_deref() == Some(pass.as_bytes())
            }
            _ => return Some("504 5.5.4 Unrecognized authentication type".into()),
        };
        if ok {
            self.authed = true;
            Some("235 2.7.0 Authentication successful".into())
        } else {
            Some("535 5.7.8 Authentication credentials invalid".into())
        }
    }
}
