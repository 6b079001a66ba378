//! Hostile and broken providers (issue 8, points 1 and 7), played by the scripted
//! provider (`support::provider`) over real loopback TCP, in both modes:
//!
//! - queue mode: a raw mailer → mailvalve's server → the queue relay (durable spool) →
//!   the delivery engine → the admission stack → the provider. What must hold: nothing
//!   is recorded "delivered" that the provider did not accept with a 2xx at the end of
//!   DATA; the message stays queued and is retried; nothing is bounced or suppressed for
//!   the provider's misbehaviour.
//! - passthrough: a raw mailer → mailvalve's server → the passthrough relay → the
//!   provider. What must hold: the mailer never sees a 250 the provider did not give for
//!   the message, and gets a 4xx instead.
//!
//! Waits are bounded (`WAIT`); no assertion is about how long something took. Where a
//! timeout is the point (silence after 354, a stalled TLS handshake, pipelined replies
//! that never come) the upstream timeouts are configured short (`SHORT`) and the tests
//! assert only what happened after them. (Not tokio's paused clock: with real loopback
//! sockets its auto-advance fires timers while a reply is already on its way, which
//! would test the clock, not mailvalve. The controller's own timing is covered in
//! simulated time by `tests/simulation.rs`.)
//!
//! The mailer and both harnesses are here; the scenarios are in tests/hostile_provider/,
//! one file per kind of hostility.

mod support;

#[path = "hostile_provider/broken_replies.rs"]
mod broken_replies;
#[path = "hostile_provider/connections.rs"]
mod connections;
#[path = "hostile_provider/out_of_place.rs"]
mod out_of_place;
#[path = "hostile_provider/per_message.rs"]
mod per_message;
#[path = "hostile_provider/stalls.rs"]
mod stalls;

use mailvalve::config::profile::{self, Profile};
use mailvalve::config::{Config, Mode, TlsMode, UpstreamConfig};
use mailvalve::policy::controller::ControllerParams;
use mailvalve::queue::{RcptState, Spool};
use mailvalve::relay::limits;
use mailvalve::relay::{Policy, RunningRelay};
use mailvalve::upstream::{Connection, Settings, UpstreamError};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use support::provider::{Provider, ProviderBuilder, TestCa};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

/// Every wait of a test is bounded by this.
const WAIT: Duration = Duration::from_secs(15);
/// Timeouts the queue-mode tests give the upstream client (real time).
const SHORT: Duration = Duration::from_millis(400);

// ------------------------------------------------------------------------------------
// The mailer: a raw client that sends exact lines and reads exact replies.
// ------------------------------------------------------------------------------------

struct Mailer {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Mailer {
    /// Connects, reads the greeting, says EHLO.
    async fn connect(addr: SocketAddr) -> Mailer {
        let s = timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .unwrap();
        let mut m = Mailer { s, buf: Vec::new() };
        let g = m.replies(1).await;
        assert!(g[0].starts_with("220"), "{g:?}");
        m.send("EHLO mailer.test\r\n").await;
        let e = m.replies(1).await;
        assert!(e[0].starts_with("250"), "{e:?}");
        m
    }

    async fn send(&mut self, text: &str) {
        self.s.write_all(text.as_bytes()).await.unwrap();
    }

    /// The next `n` replies (the last line of each).
    async fn replies(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        let deadline = Instant::now() + WAIT;
        loop {
            while let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..pos]).to_string();
                self.buf.drain(..pos + 2);
                if line.as_bytes().get(3) != Some(&b'-') {
                    out.push(line);
                    if out.len() == n {
                        return out;
                    }
                }
            }
            let mut chunk = [0u8; 4096];
            let k = timeout(deadline - Instant::now(), self.s.read(&mut chunk))
                .await
                .expect("reply in time")
                .unwrap();
            assert!(k > 0, "connection closed; replies so far {out:?}");
            self.buf.extend_from_slice(&chunk[..k]);
        }
    }

    /// MAIL, one RCPT, DATA: returns the replies to MAIL and RCPT, and to DATA.
    async fn envelope(&mut self, mail: &str, rcpt: &str) -> Vec<String> {
        self.send(&format!("{mail}\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n"))
            .await;
        self.replies(3).await
    }

    /// The body and the final dot: the final reply.
    async fn body(&mut self, n: usize) -> String {
        self.send(&format!("{}\r\n.\r\n", message(n))).await;
        self.replies(1).await.remove(0)
    }
}

fn message(n: usize) -> String {
    format!(
        "Message-ID: <hostile.{n}@news.example>\r\nFrom: news@news.example\r\nSubject: test {n}\r\n\r\nHello {n}."
    )
}

// ------------------------------------------------------------------------------------
// mailvalve in passthrough mode, with the whole policy (classifier, controller,
// suppression list) as `run` wires it.
// ------------------------------------------------------------------------------------

struct Relay {
    addr: SocketAddr,
    relay: RunningRelay,
    policy: Arc<Policy>,
    _dir: tempfile::TempDir,
}

/// mailvalve as `run` starts it (`relay::Relay`), on a loopback port of its own, with
/// its spool directory, suppression list and control socket in `dir`.
async fn start(cfg: Config, params: Option<ControllerParams>) -> RunningRelay {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = cfg;
    cfg.server.listen = listener.local_addr().unwrap();
    cfg.server.shutdown_grace = Duration::from_millis(500);
    let relay = match params {
        Some(p) => mailvalve::relay::Relay::with_params(cfg, p),
        None => mailvalve::relay::Relay::new(cfg),
    };
    relay
        .unwrap()
        .start(listener, CancellationToken::new())
        .await
        .unwrap()
}

async fn passthrough(up: UpstreamConfig) -> Relay {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config {
        mode: Mode::Passthrough,
        upstream: UpstreamConfig {
            profile: "local".into(),
            ..up
        },
        ..Config::default()
    };
    cfg.suppression.path = dir.path().join("suppression.redb");
    cfg.queue.dir = dir.path().join("spool");
    let relay = start(cfg, None).await;
    Relay {
        addr: relay.local_addr(),
        policy: relay.handle().policy().clone(),
        relay,
        _dir: dir,
    }
}

impl Relay {
    async fn stop(self) {
        timeout(WAIT, self.relay.stop()).await.unwrap().unwrap();
    }
}

fn local() -> Profile {
    profile::builtin("local").unwrap().unwrap()
}

// ------------------------------------------------------------------------------------
// mailvalve in queue mode.
// ------------------------------------------------------------------------------------

struct Queue {
    addr: SocketAddr,
    relay: RunningRelay,
    spool: Arc<Spool>,
    policy: Arc<Policy>,
    dir: tempfile::TempDir,
}

fn queue_config(dir: &Path, up: UpstreamConfig) -> Config {
    let mut c = Config {
        mode: Mode::Queue,
        upstream: UpstreamConfig {
            profile: "local".into(),
            ..up
        },
        ..Config::default()
    };
    c.queue.dir = dir.join("spool");
    c.suppression.path = dir.join("suppression.redb");
    c
}

/// Retries within a fraction of a second (the defaults wait 30 s and more), so a test
/// sees the second attempt; the upstream's connect backoff as configured by default.
fn quick_retries(cfg: &Config, prof: &Profile) -> ControllerParams {
    ControllerParams {
        retry_base: Duration::from_millis(200),
        retry_min: Duration::from_millis(50),
        retry_max: Duration::from_millis(400),
        ..limits::controller_params(cfg, prof)
    }
}

async fn queue(
    up: UpstreamConfig,
    params: impl FnOnce(&Config, &Profile) -> ControllerParams,
) -> Queue {
    let dir = tempfile::tempdir().unwrap();
    let cfg = queue_config(dir.path(), up);
    let params = params(&cfg, &local());
    let relay = start(cfg, Some(params)).await;
    Queue {
        addr: relay.local_addr(),
        spool: relay.handle().spool().unwrap().clone(),
        policy: relay.handle().policy().clone(),
        relay,
        dir,
    }
}

impl Queue {
    /// One message to `rcpts` in one session; asserts it was queued.
    async fn submit(&self, rcpts: &[&str], n: usize) {
        let mut m = Mailer::connect(self.addr).await;
        let mut script = "MAIL FROM:<news@news.example>\r\n".to_string();
        for r in rcpts {
            script.push_str(&format!("RCPT TO:<{r}>\r\n"));
        }
        script.push_str("DATA\r\n");
        m.send(&script).await;
        let r = m.replies(rcpts.len() + 2).await;
        assert!(
            r.iter()
                .all(|l| l.starts_with("250") || l.starts_with("354")),
            "{r:?}"
        );
        let q = m.body(n).await;
        assert!(q.starts_with("250 2.0.0 Ok: queued as"), "{q}");
    }

    /// (recipient, action) of every line of the delivery log.
    fn log(&self) -> Vec<(String, String)> {
        let Ok(text) = std::fs::read_to_string(self.dir.path().join("spool/delivery.log")) else {
            return Vec::new();
        };
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["rcpt"].as_str().unwrap_or("").to_string(),
                    v["action"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// Nothing was recorded delivered, the message is still queued with its recipient
    /// pending, nothing was bounced.
    fn assert_still_queued(&self, what: &str) {
        let log = self.log();
        assert!(
            !log.iter().any(|(_, a)| a == "delivered" || a == "failed"),
            "{what}: {log:?}"
        );
        let msgs = self.spool.list().unwrap();
        assert_eq!(msgs.len(), 1, "{what}: the message stays queued: {msgs:?}");
        assert!(
            msgs[0]
                .rcpts
                .iter()
                .all(|r| matches!(r.state, RcptState::Pending { .. })),
            "{what}: {msgs:?}"
        );
    }

    async fn stop(self) {
        timeout(WAIT, self.relay.stop()).await.unwrap().unwrap();
    }
}

/// Polls `cond` every 20 ms, at most `WAIT`.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

fn short_timeouts(mut c: UpstreamConfig) -> UpstreamConfig {
    let t = &mut c.timeouts;
    t.connect = SHORT;
    t.greeting = SHORT;
    t.command = SHORT;
    t.mail = SHORT;
    t.rcpt = SHORT;
    t.data = SHORT;
    t.data_block = SHORT;
    t.data_end = SHORT;
    c
}
