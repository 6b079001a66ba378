//! Integration tests for the inbound ESMTP server over real TCP on 127.0.0.1: a raw
//! socket client for the edge cases, lettre as a real mailer, tokio-rustls for STARTTLS,
//! and a recording `Relay` standing in for the provider. Every wait is bounded.

mod support;

use base64::Engine as _;
use mailvalve::config::{Secret, ServerConfig, ServerTls, User};
use mailvalve::server::{Relay, RelayTransaction, Server, ServerError, SessionStats};
use mailvalve::smtp::{EnhancedCode, Envelope, Reply};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------
// The recording relay. Scripted by address: a sender starting with `busy` gets a 451
// from `begin`, `blocked` a 550; a recipient starting with `bad` gets 550 5.1.1.
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Begin { from: String, rcpts: Vec<String> },
    Rcpt(Vec<String>),
    Data(Vec<u8>),
    End,
}

#[derive(Default)]
struct Inner {
    events: Mutex<Vec<Ev>>,
    data_delay: Mutex<Duration>,
    envelopes: Mutex<Vec<Envelope>>,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Inner>);

impl Recorder {
    fn push(&self, e: Ev) {
        self.0.events.lock().unwrap().push(e);
    }
    fn events(&self) -> Vec<Ev> {
        self.0.events.lock().unwrap().clone()
    }
    fn messages(&self) -> Vec<Vec<u8>> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Ev::Data(m) => Some(m),
                _ => None,
            })
            .collect()
    }
    fn begins(&self) -> Vec<(String, Vec<String>)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Ev::Begin { from, rcpts } => Some((from, rcpts)),
                _ => None,
            })
            .collect()
    }
    fn set_data_delay(&self, d: Duration) {
        *self.0.data_delay.lock().unwrap() = d;
    }
}

fn rcpt_reply(addr: &str) -> Reply {
    if addr.starts_with("bad") {
        Reply::new(
            550,
            EnhancedCode::new(5, 1, 1),
            format!("<{addr}>: Recipient address rejected: User unknown in virtual mailbox table"),
        )
    } else {
        Reply::new(250, EnhancedCode::new(2, 1, 5), "Recipient OK")
    }
}

struct RecTx(Recorder);

impl Relay for Recorder {
    type Tx = RecTx;

    async fn begin(
        &self,
        env: Envelope,
        rcpts: Vec<String>,
    ) -> Result<(RecTx, Reply, Vec<Reply>), Reply> {
        self.0.envelopes.lock().unwrap().push(env.clone());
        if env.from.starts_with("busy") {
            return Err(Reply::new(
                451,
                EnhancedCode::new(4, 7, 0),
                "Too many concurrent SMTP connections",
            ));
        }
        if env.from.starts_with("blocked") {
            return Err(Reply::new(
                550,
                EnhancedCode::new(5, 7, 1),
                "Sender blocked",
            ));
        }
        self.push(Ev::Begin {
            from: env.from,
            rcpts: rcpts.clone(),
        });
        let replies = rcpts.iter().map(|r| rcpt_reply(r)).collect();
        Ok((
            RecTx(self.clone()),
            Reply::new(250, EnhancedCode::new(2, 1, 0), "Sender OK"),
            replies,
        ))
    }
}

impl RelayTransaction for RecTx {
    type Body = Vec<u8>;

    async fn body(&mut self) -> Result<Vec<u8>, Reply> {
        Ok(Vec::new())
    }

    async fn rcpt(&mut self, rcpts: Vec<String>) -> Result<Vec<Reply>, Reply> {
        self.0.push(Ev::Rcpt(rcpts.clone()));
        Ok(rcpts.iter().map(|r| rcpt_reply(r)).collect())
    }

    async fn data(&mut self, message: Vec<u8>) -> Reply {
        self.0.push(Ev::Data(message));
        let delay = *self.0 .0.data_delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Reply::new(250, EnhancedCode::new(2, 0, 0), "Ok: queued as 4F2A")
    }

    async fn end(self) {
        self.0.push(Ev::End);
    }
}

// ---------------------------------------------------------------------------------
// Server harness and raw client.
// ---------------------------------------------------------------------------------

fn cfg() -> ServerConfig {
    ServerConfig {
        hostname: "mx.test".into(),
        idle_timeout: Duration::from_secs(10),
        shutdown_grace: Duration::from_secs(2),
        ..ServerConfig::default()
    }
}

fn alice() -> Vec<User> {
    vec![User {
        name: "alice".into(),
        password: Secret::new("Sup3rS3cretPw"),
    }]
}

struct Srv {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<Result<(), ServerError>>,
    rec: Recorder,
    stats: Arc<SessionStats>,
}

async fn start(cfg: ServerConfig) -> Srv {
    start_with(cfg, false).await
}

/// One global TRACE subscriber for the whole test binary, installed before any server
/// runs (a scoped one misses events when parallel tests cache callsite interest).
fn log_capture() -> &'static Capture {
    static CAPTURE: std::sync::OnceLock<Capture> = std::sync::OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(capture.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        capture
    })
}

async fn start_with(cfg: ServerConfig, public: bool) -> Srv {
    log_capture();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rec = Recorder::default();
    let server = Server::new(Arc::new(cfg), Arc::new(rec.clone()))
        .unwrap()
        .public_rules(public);
    let stats = server.stats();
    let stop = CancellationToken::new();
    let task = tokio::spawn(server.serve(listener, stop.clone()));
    Srv {
        addr,
        stop,
        task,
        rec,
        stats,
    }
}

impl Srv {
    async fn connect(&self) -> Client<TcpStream> {
        let s = timeout(WAIT, TcpStream::connect(self.addr))
            .await
            .unwrap()
            .unwrap();
        // No Nagle: under the paused clock a segment held back for a delayed ACK (real
        // milliseconds) would let simulated time run ahead of the bytes.
        s.set_nodelay(true).unwrap();
        let mut c = Client::new(s);
        let g = c.reply().await;
        assert_eq!(g.code, 220);
        assert_eq!(g.lines, vec!["mx.test ESMTP mailvalve"]);
        c
    }

    async fn stop(self) {
        self.stop.cancel();
        timeout(WAIT, self.task).await.unwrap().unwrap().unwrap();
    }
}

struct Client<S> {
    s: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    fn new(s: S) -> Self {
        Self { s, buf: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        timeout(WAIT, self.s.write_all(bytes))
            .await
            .unwrap()
            .unwrap();
    }

    async fn reply(&mut self) -> Reply {
        self.reply_within(WAIT).await
    }

    async fn reply_within(&mut self, limit: Duration) -> Reply {
        loop {
            if let Some((r, n)) = Reply::parse(&self.buf).unwrap() {
                self.buf.drain(..n);
                return r;
            }
            let mut chunk = [0u8; 4096];
            let n = timeout(limit, self.s.read(&mut chunk))
                .await
                .expect("reply in time")
                .expect("read");
            assert!(n > 0, "connection closed, buffered: {:?}", self.buf);
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    async fn cmd_within(&mut self, line: &str, limit: Duration) -> Reply {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply_within(limit).await
    }

    /// The server closed the connection, with nothing more to say.
    async fn assert_closed(&mut self) {
        let mut chunk = [0u8; 1024];
        let n = timeout(WAIT, self.s.read(&mut chunk))
            .await
            .expect("close in time")
            .unwrap_or(0);
        assert_eq!(
            n,
            0,
            "unexpected bytes: {:?}",
            String::from_utf8_lossy(&chunk[..n])
        );
        assert!(self.buf.is_empty(), "unexpected bytes: {:?}", self.buf);
    }
}

fn code(r: &Reply) -> (u16, Option<String>) {
    (r.code, r.enhanced.map(|e| e.to_string()))
}

fn is(r: &Reply, c: u16, e: &str) {
    assert_eq!(code(r), (c, Some(e.to_string())), "{r}");
}

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

// ---------------------------------------------------------------------------------
// ESMTP basics.
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn ehlo_and_basic_verbs() {
    let srv = start(cfg()).await;
    let mut c = srv.connect().await;

    // Sequence errors before EHLO.
    is(&c.cmd("MAIL FROM:<a@x.test>").await, 503, "5.5.1");
    is(&c.cmd("RCPT TO:<b@y.test>").await, 503, "5.5.1");
    is(&c.cmd("DATA").await, 503, "5.5.1");

    let e = c.cmd("EHLO client.test").await;
    assert_eq!(e.code, 250);
    assert_eq!(
        e.lines,
        vec![
            "mx.test",
            "PIPELINING",
            "SIZE 26214400",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES"
        ]
    );
    is(&c.cmd("NOOP").await, 250, "2.0.0");
    is(&c.cmd("HELP").await, 214, "2.0.0");
    is(&c.cmd("VRFY alice").await, 252, "2.5.2");
    is(&c.cmd("RSET").await, 250, "2.0.0");
    is(&c.cmd("EXPN list").await, 502, "5.5.1");
    is(&c.cmd("FOO").await, 500, "5.5.1");
    is(&c.cmd("RCPT TO:<b@y.test>").await, 503, "5.5.1");
    is(&c.cmd("DATA").await, 503, "5.5.1");
    // No TLS configured, no users: neither is available.
    is(&c.cmd("STARTTLS").await, 502, "5.5.1");
    is(&c.cmd("AUTH PLAIN").await, 502, "5.5.1");
    // Unsupported MAIL parameters (DSN) are refused, not ignored.
    is(&c.cmd("MAIL FROM:<a@x.test> RET=FULL").await, 555, "5.5.4");

    // A transaction with the parameters carried into the envelope.
    is(
        &c.cmd("MAIL FROM:<a@x.test> SIZE=1000 BODY=8BITMIME SMTPUTF8")
            .await,
        250,
        "2.1.0",
    );
    is(&c.cmd("MAIL FROM:<a@x.test>").await, 503, "5.5.1");
    is(&c.cmd("RCPT TO:<b@y.test>").await, 250, "2.1.5");
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(b"Subject: hi\r\n\r\n..dot\r\nbody\r\n.\r\n").await;
    is(&c.reply().await, 250, "2.0.0");
    {
        let envs = srv.rec.0.envelopes.lock().unwrap().clone();
        assert_eq!(
            envs,
            vec![Envelope {
                from: "a@x.test".into(),
                size: Some(1000),
                eight_bit: true,
                smtputf8: true,
            }]
        );
    }
    assert_eq!(
        srv.rec.messages(),
        vec![b"Subject: hi\r\n\r\n.dot\r\nbody\r\n".to_vec()]
    );

    // HELO works too, and resets.
    assert_eq!(c.cmd("HELO client.test").await.code, 250);
    is(&c.cmd("QUIT").await, 221, "2.0.0");
    c.assert_closed().await;
    assert_eq!(
        srv.rec.events().last(),
        Some(&Ev::End),
        "the transaction was ended"
    );
    srv.stop().await;
}

#[tokio::test]
async fn pipelined_rcpts_go_in_one_begin_and_replies_are_verbatim() {
    let srv = start(cfg()).await;
    let mut c = srv.connect().await;
    c.cmd("EHLO client.test").await;
    c.send(
        b"MAIL FROM:<news@x.test>\r\nRCPT TO:<a@y.test>\r\nRCPT TO:<bad1@y.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n",
    )
    .await;
    is(&c.reply().await, 250, "2.1.0");
    is(&c.reply().await, 250, "2.1.5");
    let rejected = c.reply().await;
    assert_eq!(
        rejected,
        rcpt_reply("bad1@y.test"),
        "the provider's reply, verbatim"
    );
    is(&c.reply().await, 250, "2.1.5");
    assert_eq!(c.reply().await.code, 354);
    c.send(b"hello\r\n.\r\n").await;
    assert_eq!(
        c.reply().await,
        Reply::new(250, EnhancedCode::new(2, 0, 0), "Ok: queued as 4F2A")
    );
    assert_eq!(
        srv.rec.events()[0],
        Ev::Begin {
            from: "news@x.test".into(),
            rcpts: vec!["a@y.test".into(), "bad1@y.test".into(), "b@y.test".into()],
        },
        "one upstream round trip for MAIL and its pipelined RCPTs"
    );

    // Later RCPTs arriving together go in one `rcpt` call.
    is(&c.cmd("MAIL FROM:<news@x.test>").await, 250, "2.1.0");
    c.send(b"RCPT TO:<c@y.test>\r\nRCPT TO:<bad2@y.test>\r\nRCPT TO:<d@y.test>\r\n")
        .await;
    is(&c.reply().await, 250, "2.1.5");
    is(&c.reply().await, 550, "5.1.1");
    is(&c.reply().await, 250, "2.1.5");
    let ev = srv.rec.events();
    assert!(ev.contains(&Ev::Rcpt(vec![
        "c@y.test".into(),
        "bad2@y.test".into(),
        "d@y.test".into()
    ])));
    is(&c.cmd("RSET").await, 250, "2.0.0");

    // Nobody accepted: DATA is refused locally.
    is(&c.cmd("MAIL FROM:<news@x.test>").await, 250, "2.1.0");
    is(&c.cmd("RCPT TO:<bad3@y.test>").await, 550, "5.1.1");
    is(&c.cmd("DATA").await, 554, "5.5.1");
    is(&c.cmd("QUIT").await, 221, "2.0.0");
    c.assert_closed().await;
    assert_eq!(srv.rec.messages().len(), 1);
    srv.stop().await;
}

#[tokio::test]
async fn eof_rset_and_quit_end_the_relay_transaction() {
    let srv = start(cfg()).await;
    let ends = |rec: &Recorder| rec.events().iter().filter(|e| **e == Ev::End).count();
    // RSET.
    let mut c = srv.connect().await;
    c.cmd("EHLO client.test").await;
    c.cmd("MAIL FROM:<a@x.test>").await;
    is(&c.cmd("RSET").await, 250, "2.0.0");
    assert_eq!(ends(&srv.rec), 1);
    // QUIT.
    c.cmd("MAIL FROM:<a@x.test>").await;
    c.cmd("RCPT TO:<b@y.test>").await;
    is(&c.cmd("QUIT").await, 221, "2.0.0");
    c.assert_closed().await;
    assert_eq!(ends(&srv.rec), 2);
    // EOF, even mid-DATA.
    let mut c = srv.connect().await;
    c.cmd("EHLO client.test").await;
    c.cmd("MAIL FROM:<a@x.test>").await;
    c.cmd("RCPT TO:<b@y.test>").await;
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(b"half a message\r\n").await;
    drop(c);
    for _ in 0..200 {
        if ends(&srv.rec) == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ends(&srv.rec), 3);
    assert!(srv.rec.messages().is_empty());
    srv.stop().await;
}

#[tokio::test]
async fn refused_mail_answers_pipelined_commands() {
    let srv = start(cfg()).await;
    let mut c = srv.connect().await;
    c.cmd("EHLO client.test").await;
    // A 4xx from the relay: the pipelined RCPTs and DATA get the same 4xx, so a
    // naive mailer retries rather than marking the addresses as bad.
    c.send(b"MAIL FROM:<busy@x.test>\r\nRCPT TO:<a@y.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
        .await;
    for _ in 0..4 {
        let r = c.reply().await;
        is(&r, 451, "4.7.0");
        assert_eq!(r.lines, vec!["Too many concurrent SMTP connections"]);
    }
    // A 5xx: the RCPTs get 503.
    c.send(b"MAIL FROM:<blocked@x.test>\r\nRCPT TO:<a@y.test>\r\nDATA\r\n")
        .await;
    is(&c.reply().await, 550, "5.7.1");
    is(&c.reply().await, 503, "5.5.1");
    is(&c.reply().await, 503, "5.5.1");
    // The session is fine afterwards.
    is(&c.cmd("RSET").await, 250, "2.0.0");
    is(&c.cmd("MAIL FROM:<ok@x.test>").await, 250, "2.1.0");
    assert!(srv.rec.messages().is_empty());
    srv.stop().await;
}

// ---------------------------------------------------------------------------------
// lettre as the mailer.
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn lettre_sends_50_messages_in_one_session() {
    use lettre::address::Envelope as LEnvelope;
    use lettre::transport::smtp::client::AsyncSmtpConnection;
    use lettre::transport::smtp::extension::ClientId;

    let srv = start(cfg()).await;
    let mut conn = AsyncSmtpConnection::connect_tokio1(
        srv.addr,
        Some(WAIT),
        &ClientId::Domain("client.test".into()),
        None,
        None,
    )
    .await
    .unwrap();
    for i in 0..50 {
        let env = LEnvelope::new(
            Some("news@x.test".parse().unwrap()),
            vec![format!("reader{i}@y.test").parse().unwrap()],
        )
        .unwrap();
        let body = format!("Subject: issue {i}\r\n\r\nHello {i}\r\n.leading dot\r\n");
        let resp = timeout(WAIT, conn.send(&env, body.as_bytes()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.code().to_string(), "250");
    }
    conn.quit().await.unwrap();

    let msgs = srv.rec.messages();
    assert_eq!(msgs.len(), 50);
    for (i, m) in msgs.iter().enumerate() {
        let text = String::from_utf8_lossy(m);
        assert!(text.contains(&format!("Subject: issue {i}")), "{text}");
        assert!(text.contains("\r\n.leading dot\r\n"), "unstuffed: {text}");
    }
    let begins = srv.rec.begins();
    assert_eq!(begins.len(), 50);
    let ends = srv.rec.events().iter().filter(|e| **e == Ev::End).count();
    assert_eq!(
        ends, 50,
        "every transaction ended (connection back to the pool)"
    );
    srv.stop().await;
}

// ---------------------------------------------------------------------------------
// Limits.
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn recipient_and_size_limits() {
    let srv = start(ServerConfig {
        max_recipients: 3,
        max_message_size: 100,
        ..cfg()
    })
    .await;
    let mut c = srv.connect().await;
    let e = c.cmd("EHLO client.test").await;
    assert!(e.lines.contains(&"SIZE 100".to_string()));
    is(&c.cmd("MAIL FROM:<a@x.test> SIZE=101").await, 552, "5.3.4");

    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<r1@y.test>\r\nRCPT TO:<r2@y.test>\r\nRCPT TO:<r3@y.test>\r\nRCPT TO:<r4@y.test>\r\nRCPT TO:<r5@y.test>\r\n").await;
    is(&c.reply().await, 250, "2.1.0");
    for _ in 0..3 {
        is(&c.reply().await, 250, "2.1.5");
    }
    for _ in 0..2 {
        let r = c.reply().await;
        is(&r, 452, "4.5.3");
        assert_eq!(r.lines, vec!["Too many recipients"]);
    }
    // And later ones too.
    is(&c.cmd("RCPT TO:<r6@y.test>").await, 452, "4.5.3");
    assert_eq!(srv.rec.begins()[0].1.len(), 3, "only 3 forwarded");
    assert!(!srv.rec.events().iter().any(|e| matches!(e, Ev::Rcpt(_))));

    // Too big: read to the end, refused, not relayed; the session goes on.
    assert_eq!(c.cmd("DATA").await.code, 354);
    let mut body = Vec::new();
    for _ in 0..10 {
        body.extend_from_slice(b"0123456789012345678901234567890123456789\r\n");
    }
    body.extend_from_slice(b".\r\n");
    c.send(&body).await;
    let r = c.reply().await;
    is(&r, 552, "5.3.4");
    assert_eq!(r.lines, vec!["Message too big"]);
    is(&c.cmd("NOOP").await, 250, "2.0.0");
    assert!(srv.rec.messages().is_empty());
    srv.stop().await;
}

#[tokio::test]
async fn long_lines() {
    let srv = start(cfg()).await;
    let mut c = srv.connect().await;
    c.cmd("EHLO client.test").await;
    c.cmd("MAIL FROM:<a@x.test>").await;
    c.cmd("RCPT TO:<b@y.test>").await;
    assert_eq!(c.cmd("DATA").await.code, 354);
    let mut body = b"Subject: x\r\n\r\n".to_vec();
    body.extend_from_slice(&[b'a'; 1200]);
    body.extend_from_slice(b"\r\nafter\r\n.\r\n");
    c.send(&body).await;
    let r = c.reply().await;
    is(&r, 500, "5.5.6");
    assert_eq!(r.lines, vec!["Line too long"]);
    // Not relayed, and the session continues.
    assert!(srv.rec.messages().is_empty());
    is(&c.cmd("NOOP").await, 250, "2.0.0");

    // A command line over 512 octets: framing is lost, the session is closed.
    let mut long = b"NOOP ".to_vec();
    long.extend_from_slice(&[b'x'; 600]);
    long.extend_from_slice(b"\r\nQUIT\r\n");
    c.send(&long).await;
    is(&c.reply().await, 500, "5.5.2");
    c.assert_closed().await;
    srv.stop().await;
}

#[tokio::test]
async fn idle_timeout_closes_with_421() {
    let srv = start(ServerConfig {
        idle_timeout: Duration::from_millis(300),
        ..cfg()
    })
    .await;
    let mut c = srv.connect().await;
    let r = c.reply().await;
    is(&r, 421, "4.4.2");
    assert_eq!(r.lines, vec!["Idle timeout"]);
    c.assert_closed().await;

    // In DATA too: the message is not relayed.
    let mut c = srv.connect().await;
    c.cmd("EHLO client.test").await;
    c.cmd("MAIL FROM:<a@x.test>").await;
    c.cmd("RCPT TO:<b@y.test>").await;
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(b"partial line without end").await;
    is(&c.reply().await, 421, "4.4.2");
    c.assert_closed().await;
    assert!(srv.rec.messages().is_empty());
    srv.stop().await;
}

#[tokio::test(start_paused = true)]
async fn default_idle_timeout_is_five_minutes() {
    let srv = start(ServerConfig {
        idle_timeout: Duration::from_secs(300),
        ..cfg()
    })
    .await;
    let started = tokio::time::Instant::now();
    let mut c = srv.connect().await;
    let r = c.reply_within(Duration::from_secs(600)).await;
    is(&r, 421, "4.4.2");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(300) && waited < Duration::from_secs(301),
        "{waited:?}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn max_sessions() {
    let srv = start(ServerConfig {
        max_sessions: 2,
        ..cfg()
    })
    .await;
    let mut a = srv.connect().await;
    let _b = srv.connect().await;
    let s = timeout(WAIT, TcpStream::connect(srv.addr))
        .await
        .unwrap()
        .unwrap();
    let mut third = Client::new(s);
    let r = third.reply().await;
    is(&r, 421, "4.3.2");
    assert_eq!(r.lines, vec!["Too many connections, try later"]);
    third.assert_closed().await;

    // A slot frees up when a session ends.
    is(&a.cmd("QUIT").await, 221, "2.0.0");
    a.assert_closed().await;
    let mut got_in = false;
    for _ in 0..50 {
        let s = TcpStream::connect(srv.addr).await.unwrap();
        let mut c = Client::new(s);
        if c.reply().await.code == 220 {
            got_in = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(got_in);
    srv.stop().await;
}

// ---------------------------------------------------------------------------------
// SMTP smuggling.
// ---------------------------------------------------------------------------------

const SMUGGLING: [&[u8]; 10] = [
    b"\n.\n",
    b"\r.\r",
    b"\r.\n",
    b"\n.\r",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\r\n.\r\r\n",
    b"\r\n\x00.\r\n",
];

#[tokio::test]
async fn smuggling_sequences_in_data_close_the_session() {
    let srv = start(cfg()).await;
    for seq in SMUGGLING {
        let before = srv.rec.events().len();
        let mut c = srv.connect().await;
        c.cmd("EHLO client.test").await;
        is(&c.cmd("MAIL FROM:<a@x.test>").await, 250, "2.1.0");
        is(&c.cmd("RCPT TO:<b@y.test>").await, 250, "2.1.5");
        assert_eq!(c.cmd("DATA").await.code, 354);
        let mut wire = b"Subject: x\r\n\r\nhello".to_vec();
        wire.extend_from_slice(seq);
        wire.extend_from_slice(
            b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nsmuggled\r\n.\r\n",
        );
        c.send(&wire).await;
        let r = c.reply().await;
        is(&r, 550, "5.5.2");
        assert_eq!(
            r.lines,
            vec!["Bare CR or LF is not allowed; closing connection"]
        );
        c.assert_closed().await;

        let events = srv.rec.events()[before..].to_vec();
        let begins = events
            .iter()
            .filter(|e| matches!(e, Ev::Begin { .. }))
            .count();
        assert_eq!(begins, 1, "{seq:?}: no second transaction: {events:?}");
        let msgs: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                Ev::Data(m) => Some(m),
                _ => None,
            })
            .collect();
        assert!(msgs.len() <= 1, "{seq:?}");
        assert!(
            msgs.is_empty(),
            "{seq:?}: nothing relayed after a framing error"
        );
        assert!(
            !events
                .iter()
                .any(|e| format!("{e:?}").contains("evil") || format!("{e:?}").contains("victim")),
            "{seq:?}"
        );
    }
    srv.stop().await;
}

#[tokio::test]
async fn bare_line_endings_in_commands_close_the_session() {
    let srv = start(cfg()).await;
    for bad in [
        &b"NOOP\r\nMAIL FROM:<a@x.test>\nRCPT TO:<b@y.test>\r\n"[..],
        b"NOOP\r\nMAIL FROM:<a@x.test>\rRCPT TO:<b@y.test>\r\n",
        b"NOOP\r\nMAIL FROM:<a@x.test>\x00\r\nRCPT TO:<b@y.test>\r\n",
    ] {
        let mut c = srv.connect().await;
        c.cmd("EHLO client.test").await;
        c.send(bad).await;
        is(&c.reply().await, 250, "2.0.0");
        is(&c.reply().await, 550, "5.5.2");
        c.assert_closed().await;
    }
    // The MAIL after the NOOP was never executed.
    assert!(srv.rec.0.envelopes.lock().unwrap().is_empty());

    // A framing error behind a pipelined MAIL: the MAIL runs (it came first), the RCPT
    // batch stops at the bad line, nothing after it runs.
    let mut c = srv.connect().await;
    c.cmd("EHLO client.test").await;
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\nDATA\r\n")
        .await;
    is(&c.reply().await, 250, "2.1.0");
    is(&c.reply().await, 250, "2.1.5");
    is(&c.reply().await, 550, "5.5.2");
    c.assert_closed().await;
    assert_eq!(
        srv.rec.begins(),
        vec![("a@x.test".into(), vec!["b@y.test".into()])]
    );
    assert!(srv.rec.messages().is_empty());
    srv.stop().await;
}

// ---------------------------------------------------------------------------------
// STARTTLS.
// ---------------------------------------------------------------------------------

struct Pki {
    _dir: tempfile::TempDir,
    tls: ServerTls,
    cert_der: rustls_pki_types::CertificateDer<'static>,
    cert_pem: String,
}

fn pki() -> Pki {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert: PathBuf = dir.path().join("cert.pem");
    let key: PathBuf = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    Pki {
        _dir: dir,
        tls: ServerTls { cert, key },
        cert_der: ck.cert.der().clone(),
        cert_pem: ck.cert.pem(),
    }
}

async fn tls_upgrade(
    c: Client<TcpStream>,
    pki: &Pki,
) -> Client<tokio_rustls::client::TlsStream<TcpStream>> {
    assert!(
        c.buf.is_empty(),
        "no plaintext reply after 220: {:?}",
        c.buf
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.cert_der.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = timeout(WAIT, connector.connect(name, c.s))
        .await
        .unwrap()
        .unwrap();
    Client::new(tls)
}

#[tokio::test]
async fn starttls_discards_pipelined_plaintext_and_resets_the_session() {
    let pki = pki();
    let srv = start(ServerConfig {
        tls: Some(pki.tls.clone()),
        users: alice(),
        ..cfg()
    })
    .await;
    let mut c = srv.connect().await;
    let e = c.cmd("EHLO client.test").await;
    assert!(e.lines.contains(&"STARTTLS".to_string()));
    assert!(
        e.lines.contains(&"AUTH PLAIN LOGIN".to_string()),
        "loopback: AUTH without TLS"
    );
    // Authenticated before TLS: forgotten after it.
    let plain = b64(b"\0alice\0Sup3rS3cretPw");
    is(&c.cmd(&format!("AUTH PLAIN {plain}")).await, 235, "2.7.0");

    // STARTTLS and RSET in one segment: the RSET is never executed nor answered.
    c.send(b"STARTTLS\r\nRSET\r\n").await;
    is(&c.reply().await, 220, "2.0.0");
    let mut t = tls_upgrade(c, &pki).await;
    // State reset: EHLO is needed again...
    is(&t.cmd("MAIL FROM:<a@x.test>").await, 503, "5.5.1");
    let e = t.cmd("EHLO client.test").await;
    assert_eq!(e.code, 250);
    assert!(!e.lines.contains(&"STARTTLS".to_string()));
    assert!(e.lines.contains(&"AUTH PLAIN LOGIN".to_string()));
    // ...and AUTH too.
    is(&t.cmd("STARTTLS").await, 503, "5.5.1");
    is(&t.cmd(&format!("AUTH PLAIN {plain}")).await, 235, "2.7.0");
    is(&t.cmd("MAIL FROM:<a@x.test>").await, 250, "2.1.0");
    is(&t.cmd("RCPT TO:<b@y.test>").await, 250, "2.1.5");
    assert_eq!(t.cmd("DATA").await.code, 354);
    t.send(b"over tls\r\n.\r\n").await;
    is(&t.reply().await, 250, "2.0.0");
    is(&t.cmd("QUIT").await, 221, "2.0.0");
    assert_eq!(srv.rec.messages(), vec![b"over tls\r\n".to_vec()]);
    srv.stop().await;
}

#[tokio::test]
async fn public_listener_needs_tls_for_auth_and_auth_for_mail() {
    let pki = pki();
    let srv = start_with(
        ServerConfig {
            tls: Some(pki.tls.clone()),
            users: alice(),
            ..cfg()
        },
        true,
    )
    .await;
    let mut c = srv.connect().await;
    let e = c.cmd("EHLO client.test").await;
    assert!(e.lines.contains(&"STARTTLS".to_string()));
    assert!(
        !e.lines.iter().any(|l| l.starts_with("AUTH")),
        "no AUTH before TLS"
    );
    let plain = b64(b"\0alice\0Sup3rS3cretPw");
    let r = c.cmd(&format!("AUTH PLAIN {plain}")).await;
    is(&r, 538, "5.7.11");
    is(&c.cmd("MAIL FROM:<a@x.test>").await, 530, "5.7.0");
    is(&c.cmd("STARTTLS").await, 220, "2.0.0");
    let mut t = tls_upgrade(c, &pki).await;
    let e = t.cmd("EHLO client.test").await;
    assert!(e.lines.contains(&"AUTH PLAIN LOGIN".to_string()));
    is(&t.cmd("MAIL FROM:<a@x.test>").await, 530, "5.7.0");
    is(&t.cmd(&format!("AUTH PLAIN {plain}")).await, 235, "2.7.0");
    is(&t.cmd("MAIL FROM:<a@x.test>").await, 250, "2.1.0");
    srv.stop().await;
}

#[tokio::test]
async fn lettre_with_starttls_and_auth() {
    use lettre::message::Message;
    use lettre::transport::smtp::authentication::{Credentials, Mechanism};
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

    let pki = pki();
    let srv = start_with(
        ServerConfig {
            tls: Some(pki.tls.clone()),
            users: alice(),
            ..cfg()
        },
        true,
    )
    .await;
    let params = TlsParameters::builder("127.0.0.1".into())
        .add_root_certificate(Certificate::from_pem(pki.cert_pem.as_bytes()).unwrap())
        .build_rustls()
        .unwrap();
    for mech in [Mechanism::Plain, Mechanism::Login] {
        let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(srv.addr.port())
            .tls(Tls::Required(params.clone()))
            .credentials(Credentials::new("alice".into(), "Sup3rS3cretPw".into()))
            .authentication(vec![mech])
            .timeout(Some(WAIT))
            .build();
        let email = Message::builder()
            .from("News <news@x.test>".parse().unwrap())
            .to("reader@y.test".parse().unwrap())
            .subject(format!("via {mech:?}"))
            .body(String::from("Hello over TLS"))
            .unwrap();
        let resp = timeout(WAIT, mailer.send(email)).await.unwrap().unwrap();
        assert!(resp.is_positive());
    }
    assert_eq!(srv.rec.messages().len(), 2);

    // Wrong password: lettre sees the 535.
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(srv.addr.port())
        .tls(Tls::Required(params))
        .credentials(Credentials::new("alice".into(), "wrong".into()))
        .timeout(Some(WAIT))
        .build();
    let email = Message::builder()
        .from("news@x.test".parse().unwrap())
        .to("reader@y.test".parse().unwrap())
        .body(String::from("x"))
        .unwrap();
    let err = timeout(WAIT, mailer.send(email))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.status().map(|c| c.to_string()), Some("535".into()));
    assert_eq!(srv.rec.messages().len(), 2);
    srv.stop().await;
}

// ---------------------------------------------------------------------------------
// AUTH.
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn auth_plain_and_login() {
    let srv = start(ServerConfig {
        users: alice(),
        require_auth: true,
        ..cfg()
    })
    .await;
    let mut c = srv.connect().await;
    is(&c.cmd("AUTH PLAIN").await, 503, "5.5.1"); // EHLO first
    c.cmd("EHLO client.test").await;
    is(&c.cmd("MAIL FROM:<a@x.test>").await, 530, "5.7.0");
    is(
        &c.cmd(&format!("AUTH PLAIN {}", b64(b"\0alice\0wrong")))
            .await,
        535,
        "5.7.8",
    );
    is(&c.cmd("AUTH CRAM-MD5").await, 504, "5.5.4");
    // Cancel at the continuation.
    let r = c.cmd("AUTH PLAIN").await;
    assert_eq!((r.code, r.lines.clone()), (334, vec![String::new()]));
    is(&c.cmd("*").await, 501, "5.7.0");
    // Not base64.
    assert_eq!(c.cmd("AUTH LOGIN").await.code, 334);
    is(&c.cmd("!!!").await, 501, "5.5.2");
    // LOGIN, step by step.
    let r = c.cmd("AUTH LOGIN").await;
    assert_eq!((r.code, r.lines[0].as_str()), (334, "VXNlcm5hbWU6"));
    let r = c.cmd(&b64(b"alice")).await;
    assert_eq!((r.code, r.lines[0].as_str()), (334, "UGFzc3dvcmQ6"));
    is(&c.cmd(&b64(b"Sup3rS3cretPw")).await, 235, "2.7.0");
    is(&c.cmd("AUTH PLAIN").await, 503, "5.5.1");
    let e = c.cmd("EHLO client.test").await;
    assert!(
        !e.lines.iter().any(|l| l.starts_with("AUTH")),
        "not offered again"
    );
    is(&c.cmd("MAIL FROM:<a@x.test>").await, 250, "2.1.0");
    is(&c.cmd("AUTH PLAIN").await, 503, "5.5.1");
    is(&c.cmd("QUIT").await, 221, "2.0.0");

    // PLAIN with a 334 continuation; authzid must match.
    let mut c = srv.connect().await;
    c.cmd("EHLO client.test").await;
    assert_eq!(c.cmd("AUTH PLAIN").await.code, 334);
    is(
        &c.cmd(&b64(b"bob\0alice\0Sup3rS3cretPw")).await,
        535,
        "5.7.8",
    );
    assert_eq!(c.cmd("AUTH PLAIN").await.code, 334);
    is(
        &c.cmd(&b64(b"alice\0alice\0Sup3rS3cretPw")).await,
        235,
        "2.7.0",
    );
    c.cmd("QUIT").await;

    // Three failures close the session.
    let mut c = srv.connect().await;
    c.cmd("EHLO client.test").await;
    let bad = format!("AUTH PLAIN {}", b64(b"\0alice\0nope"));
    is(&c.cmd(&bad).await, 535, "5.7.8");
    is(&c.cmd(&bad).await, 535, "5.7.8");
    is(&c.cmd(&bad).await, 421, "4.7.0");
    c.assert_closed().await;
    srv.stop().await;
}

/// A `MakeWriter` that appends to a shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

#[tokio::test]
async fn credentials_never_reach_the_log() {
    let srv = start(ServerConfig {
        users: alice(),
        ..cfg()
    })
    .await;
    let mut c = srv.connect().await;
    c.cmd("EHLO client.test").await;
    let ok_plain = b64(b"\0alice\0Sup3rS3cretPw");
    let bad_plain = b64(b"\0alice\0Sup3rS3cretPwTypo");
    is(
        &c.cmd(&format!("AUTH PLAIN {bad_plain}")).await,
        535,
        "5.7.8",
    );
    assert_eq!(c.cmd("AUTH LOGIN").await.code, 334);
    assert_eq!(c.cmd(&b64(b"Sup3rS3cretPw")).await.code, 334); // password as user name
    is(&c.cmd(&b64(b"Sup3rS3cretPw")).await, 535, "5.7.8");
    is(
        &c.cmd(&format!("AUTH PLAIN {ok_plain}")).await,
        235,
        "2.7.0",
    );
    c.cmd("QUIT").await;
    c.assert_closed().await;
    srv.stop().await;

    // The log of every test in this binary so far, this one's included.
    let log = String::from_utf8(log_capture().0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("authenticated"), "capture works: {log}");
    assert!(log.contains("authentication failed"), "{log}");
    for secret in [
        "Sup3rS3cretPw".to_string(),
        ok_plain,
        bad_plain,
        b64(b"Sup3rS3cretPw"),
    ] {
        assert!(!log.contains(&secret), "{secret} leaked into:\n{log}");
    }
}

// ---------------------------------------------------------------------------------
// Graceful shutdown.
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn shutdown_closes_idle_sessions_at_once() {
    let srv = start(cfg()).await;
    let mut idle = srv.connect().await;
    idle.cmd("EHLO client.test").await;
    let mut fresh = srv.connect().await;
    let addr = srv.addr;
    srv.stop.cancel();
    for c in [&mut idle, &mut fresh] {
        let r = c.reply_within(Duration::from_secs(1)).await;
        is(&r, 421, "4.3.2");
        assert_eq!(r.lines, vec!["Service shutting down"]);
        c.assert_closed().await;
    }
    timeout(WAIT, srv.task).await.unwrap().unwrap().unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn shutdown_lets_a_transaction_finish_within_grace() {
    let srv = start(ServerConfig {
        shutdown_grace: Duration::from_secs(5),
        ..cfg()
    })
    .await;
    srv.rec.set_data_delay(Duration::from_millis(500));
    let mut c = srv.connect().await;
    c.cmd("EHLO client.test").await;
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
        .await;
    c.reply().await;
    c.reply().await;
    assert_eq!(c.reply().await.code, 354);
    c.send(b"hello\r\n.\r\n").await;
    // The relay is busy with the message when shutdown starts.
    while srv.rec.messages().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    srv.stop.cancel();
    is(&c.reply().await, 250, "2.0.0");
    is(&c.reply().await, 421, "4.3.2");
    c.assert_closed().await;
    timeout(WAIT, srv.task).await.unwrap().unwrap().unwrap();
    assert_eq!(srv.rec.events().last(), Some(&Ev::End));
}

#[tokio::test]
async fn shutdown_grace_expiry_closes_transactions_in_flight() {
    let srv = start(ServerConfig {
        shutdown_grace: Duration::from_millis(300),
        ..cfg()
    })
    .await;
    srv.rec.set_data_delay(Duration::from_secs(60));
    // One session mid-DATA (relay hangs), one mid-transaction waiting for the client.
    let mut c = srv.connect().await;
    c.cmd("EHLO client.test").await;
    c.cmd("MAIL FROM:<a@x.test>").await;
    c.cmd("RCPT TO:<b@y.test>").await;
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(b"hello\r\n.\r\n").await;
    let mut d = srv.connect().await;
    d.cmd("EHLO client.test").await;
    is(&d.cmd("MAIL FROM:<a@x.test>").await, 250, "2.1.0");
    while srv.rec.messages().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t0 = std::time::Instant::now();
    srv.stop.cancel();
    for s in [&mut c, &mut d] {
        let r = s.reply_within(Duration::from_secs(3)).await;
        is(&r, 421, "4.3.2");
        s.assert_closed().await;
    }
    timeout(Duration::from_secs(3), srv.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

// ---------------------------------------------------------------------------------
// Slow clients, per-address limits, AUTH failure delay, connection bursts.
// ---------------------------------------------------------------------------------

/// A bound for replies under the paused clock: generous, because simulated time moves
/// to the next timer whenever every task waits.
const LONG: Duration = Duration::from_secs(3600);

/// How a slow-drip client ended.
struct Dripped {
    /// Everything the server sent.
    text: String,
    /// From connect to the server closing the connection.
    held: Duration,
}

/// A slow-drip client: sends `fast` at once, then `drip` one byte every `every`
/// (cycling), until the server closes the connection or `max_bytes` were dripped.
async fn drip(
    addr: SocketAddr,
    fast: &'static [u8],
    drip: &'static [u8],
    every: Duration,
) -> Dripped {
    const MAX_BYTES: usize = 1000;
    let started = tokio::time::Instant::now();
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (mut rd, mut wr) = s.into_split();
    let reader = tokio::spawn(async move {
        let mut all = Vec::new();
        let _ = timeout(LONG, rd.read_to_end(&mut all)).await;
        (all, started.elapsed())
    });
    wr.write_all(fast).await.unwrap();
    for &b in drip.iter().cycle().take(MAX_BYTES) {
        if reader.is_finished() {
            break;
        }
        tokio::time::sleep(every).await;
        if wr.write_all(&[b]).await.is_err() {
            break;
        }
    }
    let (all, held) = reader.await.unwrap();
    Dripped {
        text: String::from_utf8_lossy(&all).into_owned(),
        held,
    }
}

fn last_line(text: &str) -> &str {
    text.trim_end().lines().last().unwrap_or("")
}

/// Issue 8.5: every session slot taken by a client that sends a byte now and then (so
/// the idle timer never fires), each a different way — before MAIL, inside a command
/// line after MAIL, inside DATA. A normal mailer must still get through, within the
/// longest deadline (5 minutes), and each slow client is cut by its own deadline.
#[tokio::test(start_paused = true)]
async fn slow_drip_clients_cannot_hold_every_slot() {
    let srv = start(ServerConfig {
        hostname: "mx.test".into(),
        max_sessions: 3,
        ..ServerConfig::default()
    })
    .await;
    let defaults = ServerConfig::default();
    let every = Duration::from_secs(10);
    let t0 = tokio::time::Instant::now();
    // Complete NOOPs, one byte every 10 s: never a MAIL.
    let pre_mail = tokio::spawn(drip(srv.addr, b"EHLO drip.test\r\n", b"NOOP\r\n", every));
    // After MAIL, a RCPT line that takes 8 minutes to arrive.
    let line = tokio::spawn(drip(
        srv.addr,
        b"EHLO drip.test\r\nMAIL FROM:<drip@x.test>\r\n",
        b"RCPT TO:<a-rather-long-recipient-address@y.test>\r\n",
        every,
    ));
    // Inside DATA, one byte of the body every 10 s.
    let data = tokio::spawn(drip(
        srv.addr,
        b"EHLO drip.test\r\nMAIL FROM:<drip@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n",
        b"Subject: slow\r\n\r\nslow body\r\n",
        every,
    ));
    for _ in 0..100 {
        if srv.stats.active() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(srv.stats.active(), 3, "every slot taken by a slow client");

    // The mailer retries every 5 s while the slots are full.
    let mut refused = 0;
    let through_after = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(900),
            "the mailer never got a session ({refused} times 421)"
        );
        let s = TcpStream::connect(srv.addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut c = Client::new(s);
        let g = c.reply_within(LONG).await;
        if g.code == 421 {
            is(&g, 421, "4.3.2");
            refused += 1;
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        }
        assert_eq!(g.code, 220);
        assert_eq!(c.cmd_within("EHLO mailer.test", LONG).await.code, 250);
        is(
            &c.cmd_within("MAIL FROM:<news@x.test>", LONG).await,
            250,
            "2.1.0",
        );
        is(
            &c.cmd_within("RCPT TO:<reader@y.test>", LONG).await,
            250,
            "2.1.5",
        );
        assert_eq!(c.cmd_within("DATA", LONG).await.code, 354);
        c.send(b"Subject: news\r\n\r\nhello\r\n.\r\n").await;
        is(&c.reply_within(LONG).await, 250, "2.0.0");
        is(&c.cmd_within("QUIT", LONG).await, 221, "2.0.0");
        break t0.elapsed();
    };
    assert!(refused > 0, "the slots were full when the mailer came");
    assert!(
        through_after <= defaults.command_timeout + Duration::from_secs(60),
        "the mailer got through only after {through_after:?}"
    );

    let pre_mail = pre_mail.await.unwrap();
    assert_eq!(
        last_line(&pre_mail.text),
        "421 4.4.2 Timeout: no MAIL FROM in time",
        "{}",
        pre_mail.text
    );
    let line = line.await.unwrap();
    assert_eq!(
        last_line(&line.text),
        "421 4.4.2 Timeout waiting for a complete command line",
        "{}",
        line.text
    );
    let data = data.await.unwrap();
    assert_eq!(
        last_line(&data.text),
        "421 4.4.2 Timeout waiting for message data",
        "{}",
        data.text
    );
    // Each held its slot no longer than its deadline (plus one drip interval of slack).
    for (d, limit) in [
        (&pre_mail, defaults.pre_mail_timeout),
        (&line, defaults.command_timeout),
        (&data, defaults.data_block_timeout),
    ] {
        assert!(
            d.held >= limit && d.held <= limit + 3 * every,
            "held {:?}, deadline {limit:?}: {}",
            d.held,
            d.text
        );
    }
    // Only the mailer's message was relayed.
    assert_eq!(
        srv.rec.messages(),
        vec![b"Subject: news\r\n\r\nhello\r\n".to_vec()]
    );
    srv.stop().await;
}

/// A body that keeps arriving at a real pace is not cut by the data block deadline,
/// however long the whole message takes: each 64 KiB block restarts it.
#[tokio::test(start_paused = true)]
async fn data_block_deadline_allows_a_slow_but_steady_message() {
    let srv = start(ServerConfig {
        hostname: "mx.test".into(),
        data_block_timeout: Duration::from_secs(60),
        ..ServerConfig::default()
    })
    .await;
    let mut c = srv.connect().await;
    c.cmd_within("EHLO client.test", LONG).await;
    c.cmd_within("MAIL FROM:<a@x.test>", LONG).await;
    c.cmd_within("RCPT TO:<b@y.test>", LONG).await;
    assert_eq!(c.cmd_within("DATA", LONG).await.code, 354);
    // 4 KiB every 2 s: a 64 KiB block in 32 s, the whole 256 KiB in over 2 minutes.
    let line = format!("{}\r\n", "x".repeat(998));
    let chunk = line.repeat(4);
    let started = tokio::time::Instant::now();
    for _ in 0..64 {
        c.send(chunk.as_bytes()).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    c.send(b".\r\n").await;
    is(&c.reply_within(LONG).await, 250, "2.0.0");
    assert!(started.elapsed() > Duration::from_secs(120));
    assert_eq!(srv.rec.messages()[0].len(), 64 * chunk.len());
    srv.stop().await;
}

#[tokio::test]
async fn sessions_per_address_are_capped_off_loopback_only() {
    let cap = ServerConfig {
        max_sessions_per_ip: 2,
        ..cfg()
    };
    // A public listener (rules forced on, as on a non-loopback address).
    let srv = start_with(cap.clone(), true).await;
    let mut a = srv.connect().await;
    let _b = srv.connect().await;
    let s = timeout(WAIT, TcpStream::connect(srv.addr))
        .await
        .unwrap()
        .unwrap();
    let mut third = Client::new(s);
    let r = third.reply().await;
    is(&r, 421, "4.7.0");
    third.assert_closed().await;
    assert_eq!(srv.stats.refused_per_ip(), 1);
    // A place frees up when a session from that address ends.
    is(&a.cmd("QUIT").await, 221, "2.0.0");
    a.assert_closed().await;
    let mut got_in = false;
    for _ in 0..50 {
        let s = TcpStream::connect(srv.addr).await.unwrap();
        if Client::new(s).reply().await.code == 220 {
            got_in = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(got_in);
    srv.stop().await;

    // On loopback the local mailer may open as many sessions as max_sessions.
    let srv = start(cap).await;
    let _a = srv.connect().await;
    let _b = srv.connect().await;
    let _c = srv.connect().await;
    assert_eq!(srv.stats.refused_per_ip(), 0);
    srv.stop().await;
}

#[tokio::test(start_paused = true)]
async fn failed_auth_is_answered_after_a_delay_off_loopback() {
    let pki = pki();
    let conf = ServerConfig {
        tls: Some(pki.tls.clone()),
        users: alice(),
        auth_failure_delay: Duration::from_secs(3),
        ..cfg()
    };
    let wrong = format!("AUTH PLAIN {}", b64(b"\0alice\0guess"));
    let right = format!("AUTH PLAIN {}", b64(b"\0alice\0Sup3rS3cretPw"));

    let srv = start_with(conf.clone(), true).await;
    let mut c = srv.connect().await;
    c.cmd_within("EHLO client.test", LONG).await;
    is(&c.cmd_within("STARTTLS", LONG).await, 220, "2.0.0");
    let mut t = tls_upgrade(c, &pki).await;
    t.cmd_within("EHLO client.test", LONG).await;
    for _ in 0..2 {
        let sent = tokio::time::Instant::now();
        is(&t.cmd_within(&wrong, LONG).await, 535, "5.7.8");
        assert!(
            sent.elapsed() >= Duration::from_secs(3),
            "{:?}",
            sent.elapsed()
        );
    }
    // Success is not delayed.
    let sent = tokio::time::Instant::now();
    is(&t.cmd_within(&right, LONG).await, 235, "2.7.0");
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
    srv.stop().await;

    // On loopback there is no delay.
    let srv = start(conf).await;
    let mut c = srv.connect().await;
    c.cmd_within("EHLO client.test", LONG).await;
    let sent = tokio::time::Instant::now();
    is(&c.cmd_within(&wrong, LONG).await, 535, "5.7.8");
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
    srv.stop().await;
}

/// Issue 8.6: 1000 connections at once. They all fit in the listen backlog before the
/// server accepts a single one (a backlog of 128 leaves the rest hanging in SYN
/// retries, or half-open with no greeting), and once it runs each gets a reply: a
/// greeting, or 421 beyond `max_sessions` — never silence.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_1000_connections_is_answered_every_one() {
    const N: usize = 1000;
    support::client::allow_open_files(4 * N as libc::rlim_t);
    let conf = ServerConfig {
        hostname: "mx.test".into(),
        ..ServerConfig::default()
    };
    let listener =
        mailvalve::server::bind("127.0.0.1:0".parse().unwrap(), conf.listen_backlog).unwrap();
    let addr = listener.local_addr().unwrap();

    // Nothing accepts yet: every connection must be queued by the kernel.
    let mut connects = tokio::task::JoinSet::new();
    for _ in 0..N {
        connects.spawn(TcpStream::connect(addr));
    }
    let mut clients = Vec::with_capacity(N);
    let all = timeout(Duration::from_secs(30), async {
        while let Some(c) = connects.join_next().await {
            clients.push(c.unwrap().unwrap());
        }
    })
    .await;
    assert!(
        all.is_ok(),
        "only {} of {N} connections got through the listen backlog",
        clients.len()
    );

    let rec = Recorder::default();
    let server = Server::new(Arc::new(conf.clone()), Arc::new(rec)).unwrap();
    let stats = server.stats();
    let stop = CancellationToken::new();
    let task = tokio::spawn(server.serve(listener, stop.clone()));

    let mut reads = tokio::task::JoinSet::new();
    for s in clients {
        reads.spawn(async move {
            let mut c = Client::new(s);
            let r = c.reply_within(Duration::from_secs(60)).await;
            (r, c)
        });
    }
    let (mut greeted, mut busy, mut keep) = (0, 0, Vec::new());
    while let Some(done) = reads.join_next().await {
        let (r, c) = done.unwrap();
        match r.code {
            220 => greeted += 1,
            421 => {
                is(&r, 421, "4.3.2");
                busy += 1;
            }
            other => panic!("unexpected reply {other}: {r}"),
        }
        keep.push(c);
    }
    assert_eq!(greeted + busy, N, "every connection got a reply");
    assert_eq!(greeted, conf.max_sessions);
    assert_eq!(stats.refused(), (N - conf.max_sessions) as u64);
    drop(keep);
    stop.cancel();
    timeout(WAIT, task).await.unwrap().unwrap().unwrap();
}
