//! The inbound server under test (tests/server/): a recording `Relay` standing in for
//! the provider, scripted by address (a sender starting with `busy` gets a 451 from
//! `begin`, `blocked` a 550; a recipient starting with `bad` gets 550 5.1.1), the server
//! harness with a global log capture, a raw SMTP client, and the TLS material for
//! STARTTLS. Every wait is bounded by [`WAIT`].

pub use super::capture::Capture;
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

pub const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev {
    Begin { from: String, rcpts: Vec<String> },
    Rcpt(Vec<String>),
    Data(Vec<u8>),
    End,
}

#[derive(Default)]
pub struct Inner {
    pub events: Mutex<Vec<Ev>>,
    pub data_delay: Mutex<Duration>,
    pub envelopes: Mutex<Vec<Envelope>>,
}

#[derive(Clone, Default)]
pub struct Recorder(pub Arc<Inner>);

impl Recorder {
    pub fn push(&self, e: Ev) {
        self.0.events.lock().unwrap().push(e);
    }
    pub fn events(&self) -> Vec<Ev> {
        self.0.events.lock().unwrap().clone()
    }
    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Ev::Data(m) => Some(m),
                _ => None,
            })
            .collect()
    }
    pub fn begins(&self) -> Vec<(String, Vec<String>)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Ev::Begin { from, rcpts } => Some((from, rcpts)),
                _ => None,
            })
            .collect()
    }
    pub fn set_data_delay(&self, d: Duration) {
        *self.0.data_delay.lock().unwrap() = d;
    }
}

pub fn rcpt_reply(addr: &str) -> Reply {
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

pub struct RecTx(pub Recorder);

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

pub fn cfg() -> ServerConfig {
    ServerConfig {
        hostname: "mx.test".into(),
        idle_timeout: Duration::from_secs(10),
        shutdown_grace: Duration::from_secs(2),
        ..ServerConfig::default()
    }
}

pub fn alice() -> Vec<User> {
    vec![User {
        name: "alice".into(),
        password: Secret::new("Sup3rS3cretPw"),
    }]
}

pub struct Srv {
    pub addr: SocketAddr,
    pub stop: CancellationToken,
    pub task: JoinHandle<Result<(), ServerError>>,
    pub rec: Recorder,
    pub stats: Arc<SessionStats>,
}

pub async fn start(cfg: ServerConfig) -> Srv {
    start_with(cfg, false).await
}

/// One global TRACE subscriber for the whole test binary, installed before any server
/// runs (a scoped one misses events when parallel tests cache callsite interest).
pub fn log_capture() -> &'static Capture {
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

pub async fn start_with(cfg: ServerConfig, public: bool) -> Srv {
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
    pub async fn connect(&self) -> Client<TcpStream> {
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

    pub async fn stop(self) {
        self.stop.cancel();
        timeout(WAIT, self.task).await.unwrap().unwrap().unwrap();
    }
}

pub struct Client<S> {
    pub s: S,
    pub buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn new(s: S) -> Self {
        Self { s, buf: Vec::new() }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        timeout(WAIT, self.s.write_all(bytes))
            .await
            .unwrap()
            .unwrap();
    }

    pub async fn reply(&mut self) -> Reply {
        self.reply_within(WAIT).await
    }

    pub async fn reply_within(&mut self, limit: Duration) -> Reply {
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

    pub async fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    pub async fn cmd_within(&mut self, line: &str, limit: Duration) -> Reply {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply_within(limit).await
    }

    /// The server closed the connection, with nothing more to say.
    pub async fn assert_closed(&mut self) {
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

pub fn code(r: &Reply) -> (u16, Option<String>) {
    (r.code, r.enhanced.map(|e| e.to_string()))
}

pub fn is(r: &Reply, c: u16, e: &str) {
    assert_eq!(code(r), (c, Some(e.to_string())), "{r}");
}

pub fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

pub struct Pki {
    pub _dir: tempfile::TempDir,
    pub tls: ServerTls,
    pub cert_der: rustls_pki_types::CertificateDer<'static>,
    pub cert_pem: String,
}

pub fn pki() -> Pki {
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

pub async fn tls_upgrade(
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
