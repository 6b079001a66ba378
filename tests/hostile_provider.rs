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

mod support;

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

// ------------------------------------------------------------------------------------
// 8.1: a positive reply where the protocol expects another is a broken connection.
// ------------------------------------------------------------------------------------

/// The scripts of a provider that answers one step with a positive reply the protocol
/// does not allow there, and what the step is.
fn out_of_place(ca: &TestCa) -> Vec<(&'static str, ProviderBuilder)> {
    vec![
        (
            "plaintext 250 to STARTTLS",
            Provider::builder()
                .starttls(ca)
                .reply_to("STARTTLS", "250 2.0.0 Ok"),
        ),
        (
            "334 where AUTH expects its final reply",
            Provider::builder()
                .auth("user", "secret")
                .auth_mechanisms(&["PLAIN"])
                .reply_to("AUTH", "334 "),
        ),
        (
            "250 to DATA",
            Provider::builder().data_reply("250 2.0.0 Ok whatever"),
        ),
        (
            "354 to MAIL",
            Provider::builder().mail_reply("354 go ahead"),
        ),
        (
            "354 to the end of DATA",
            Provider::builder().final_reply("354 send more"),
        ),
        (
            "250 to RCPT and one more 250 before DATA",
            Provider::builder().rcpt_default("250 2.1.5 Ok\r\n250 2.0.0 Ok"),
        ),
    ]
}

#[tokio::test]
async fn queue_records_nothing_delivered_on_a_positive_reply_out_of_place() {
    let ca = TestCa::new();
    for (what, script) in out_of_place(&ca) {
        let p = script.start().await;
        let ca_dir = tempfile::tempdir().unwrap();
        let mut up = p.upstream_config();
        if up.tls != TlsMode::None {
            up.ca_file = Some(ca.write_ca_file(ca_dir.path()));
        }
        let q = queue(up, quick_retries).await;
        q.submit(&["ok@example.org"], 1).await;
        // A second connection means the first attempt's outcome was recorded and the
        // message retried; an empty spool means it was (wrongly) taken as delivered.
        eventually(&format!("{what}: retried or gone"), || {
            p.connections_total() >= 2 || q.spool.is_empty()
        })
        .await;
        q.assert_still_queued(what);
        println!(
            "{what}: {} connections, {} message bodies at the provider, still queued",
            p.connections_total(),
            p.messages().len()
        );
        q.stop().await;
    }
}

#[tokio::test]
async fn passthrough_never_answers_250_for_a_message_the_provider_did_not_take() {
    for (what, script, final_reply) in [
        (
            "250 to DATA",
            Provider::builder().data_reply("250 2.0.0 Ok whatever"),
            None,
        ),
        (
            "354 to the end of DATA",
            Provider::builder().final_reply("354 send more"),
            None,
        ),
        (
            "one reply too many before DATA",
            Provider::builder().rcpt_default("250 2.1.5 Ok\r\n250 2.0.0 Ok"),
            None,
        ),
        (
            "a plain provider (control)",
            Provider::builder(),
            Some("250"),
        ),
    ] {
        let p = script.start().await;
        let r = passthrough(p.upstream_config()).await;
        let mut m = Mailer::connect(r.addr).await;
        let env = m
            .envelope("MAIL FROM:<news@news.example>", "ok@example.org")
            .await;
        let last = if env[2].starts_with("354") {
            m.body(1).await
        } else {
            env[2].clone()
        };
        println!("{what}: mailer got {env:?} then {last:?}");
        match final_reply {
            Some(code) => assert!(last.starts_with(code), "{what}: {last}"),
            None => assert!(last.starts_with('4'), "{what}: {env:?} {last}"),
        }
        assert!(
            env.iter().all(|l| !l.starts_with("250 2.0.0")),
            "{what}: {env:?}"
        );
        r.stop().await;
    }
}

// ------------------------------------------------------------------------------------
// 8.7: a reply of 100 000 lines.
// ------------------------------------------------------------------------------------

#[tokio::test]
async fn a_reply_of_100000_lines_is_cut_off_and_the_message_retried() {
    // The client stops reading after a bounded amount (MAX_REPLY_BYTES) and drops the
    // connection; the provider's remaining writes fail.
    let p = Provider::builder()
        .flood_reply("EHLO", 100_000, 200)
        .start()
        .await;
    let s = Settings::new(p.upstream_config()).unwrap();
    let err = timeout(WAIT, Connection::connect(&s))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Protocol(_)), "{err:?}");
    assert_eq!(err.to_reply().class(), 4);
    eventually("the provider's flood is cut off", || {
        p.aborted_writes() >= 1
    })
    .await;
    let written = p.flood_lines_written();
    println!(
        "EHLO flood: the provider got {written} of 100000 lines into the socket before the \
         client closed it (client buffer bound {} octets)",
        mailvalve::upstream::client::MAX_REPLY_BYTES
    );
    assert!(written < 100_000);

    // The same flood as the final reply (each line "250-..."): not an acceptance.
    let p = Provider::builder()
        .flood_reply(".", 100_000, 200)
        .start()
        .await;
    let q = queue(p.upstream_config(), quick_retries).await;
    q.submit(&["ok@example.org"], 1).await;
    eventually("retried or gone", || {
        p.messages().len() >= 2 || q.spool.is_empty()
    })
    .await;
    q.assert_still_queued("100 000-line final reply");
    q.stop().await;

    let p = Provider::builder()
        .flood_reply(".", 100_000, 200)
        .start()
        .await;
    let r = passthrough(p.upstream_config()).await;
    let mut m = Mailer::connect(r.addr).await;
    let env = m
        .envelope("MAIL FROM:<news@news.example>", "ok@example.org")
        .await;
    assert!(env[2].starts_with("354"), "{env:?}");
    let last = m.body(1).await;
    assert!(last.starts_with("451"), "{last}");
    r.stop().await;
}

// ------------------------------------------------------------------------------------
// 8.7: a reply count that no longer matches the commands pipelined.
// ------------------------------------------------------------------------------------

#[tokio::test]
async fn passthrough_a_missing_pipelined_reply_times_out_into_a_4xx() {
    let p = Provider::builder()
        .rcpt_silent("b@example.org")
        .start()
        .await;
    let r = passthrough(short_timeouts(p.upstream_config())).await;
    let mut m = Mailer::connect(r.addr).await;
    m.send("MAIL FROM:<news@news.example>\r\nRCPT TO:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
        .await;
    let replies = m.replies(4).await;
    println!("missing RCPT reply: mailer got {replies:?}");
    assert!(
        replies
            .iter()
            .all(|l| !l.starts_with('2') && !l.starts_with('3')),
        "{replies:?}"
    );
    assert!(p.messages().is_empty());
    r.stop().await;
}

#[tokio::test]
async fn queue_retries_when_pipelined_replies_do_not_match() {
    // One reply missing: the RCPT timeout, a broken connection, a retry.
    let p = Provider::builder()
        .rcpt_silent("b@example.org")
        .start()
        .await;
    let q = queue(short_timeouts(p.upstream_config()), quick_retries).await;
    q.submit(&["a@example.org", "b@example.org"], 1).await;
    eventually("retried", || {
        p.connections_total() >= 2 || q.spool.is_empty()
    })
    .await;
    q.assert_still_queued("missing RCPT reply");
    assert!(p.messages().is_empty());
    q.stop().await;
}

// ------------------------------------------------------------------------------------
// 8.7: silence after 354.
// ------------------------------------------------------------------------------------

#[tokio::test]
async fn passthrough_silence_after_354_is_a_4xx_never_250() {
    let p = Provider::builder()
        .final_delay(Duration::from_secs(24 * 3600))
        .start()
        .await;
    let r = passthrough(short_timeouts(p.upstream_config())).await;
    let mut m = Mailer::connect(r.addr).await;
    let env = m
        .envelope("MAIL FROM:<news@news.example>", "ok@example.org")
        .await;
    assert!(env[2].starts_with("354"), "{env:?}");
    let last = m.body(1).await;
    println!("silence after 354: mailer got {last}");
    assert!(
        last.starts_with("451 4.4.2"),
        "the data_end timeout: {last}"
    );
    r.stop().await;
}

#[tokio::test]
async fn queue_silence_after_354_is_retried_never_delivered() {
    let p = Provider::builder()
        .final_delay(Duration::from_secs(24 * 3600))
        .start()
        .await;
    let q = queue(short_timeouts(p.upstream_config()), quick_retries).await;
    q.submit(&["ok@example.org"], 1).await;
    eventually("sent twice", || {
        p.messages().len() >= 2 || q.spool.is_empty()
    })
    .await;
    q.assert_still_queued("silence after 354");
    q.stop().await;
}

// ------------------------------------------------------------------------------------
// 8.7: a greeting of 421, forever.
// ------------------------------------------------------------------------------------

#[tokio::test]
async fn queue_421_greeting_forever_backs_off_and_holds_the_queue() {
    let p = Provider::builder()
        .greeting("421 4.3.2 Service not available, closing transmission channel")
        .start()
        .await;
    // Default controller parameters: the engine's own pacing, nothing sped up.
    let q = queue(p.upstream_config(), |c, prof| {
        limits::controller_params(c, prof)
    })
    .await;
    const MESSAGES: usize = 20;
    for n in 0..MESSAGES {
        q.submit(&[&format!("r{n}@example.org")], n).await;
    }
    eventually("provider contacted", || p.connections_total() >= 1).await;
    // Watch the engine for a while: it must back off, not reconnect per message.
    sleep(Duration::from_secs(3)).await;
    let connections = p.connections_total();
    println!("421 greeting forever, {MESSAGES} queued messages: {connections} connections in ~3 s");
    assert!(
        connections <= 10,
        "{connections} connections for {MESSAGES} messages: no backoff"
    );
    let msgs = q.spool.list().unwrap();
    assert_eq!(msgs.len(), MESSAGES, "nothing delivered, bounced or lost");
    for m in &msgs {
        match &m.rcpts[0].state {
            RcptState::Pending { attempts, .. } => {
                assert_eq!(*attempts, 0, "a refused greeting uses no attempt: {m:?}")
            }
            s => panic!("must stay pending: {s:?}"),
        }
    }
    assert!(p.messages().is_empty());
    q.stop().await;
}

#[tokio::test]
async fn passthrough_421_greeting_forever_is_not_a_reconnect_per_transaction() {
    let p = Provider::builder()
        .greeting("421 4.3.2 Service not available, closing transmission channel")
        .start()
        .await;
    let r = passthrough(p.upstream_config()).await;
    const TRANSACTIONS: usize = 8;
    let mut m = Mailer::connect(r.addr).await;
    for _ in 0..TRANSACTIONS {
        m.send("MAIL FROM:<news@news.example>\r\n").await;
        let reply = m.replies(1).await.remove(0);
        assert!(reply.starts_with('4'), "{reply}");
    }
    let connections = p.connections_total();
    println!("421 greeting forever: {connections} connections for {TRANSACTIONS} transactions");
    assert!(connections <= 4, "{connections} connections: no backoff");
    r.stop().await;
}

// ------------------------------------------------------------------------------------
// 8.7: a TLS handshake that stalls.
// ------------------------------------------------------------------------------------

#[tokio::test]
async fn a_stalled_tls_handshake_times_out() {
    let ca = TestCa::new();
    for script in [
        Provider::builder().implicit_tls(&ca).tls_stall(),
        Provider::builder().starttls(&ca).tls_stall(),
    ] {
        let p = script.start().await;
        let up = short_timeouts(p.upstream_config());
        let connect = up.timeouts.connect;
        let s = Settings::new(up).unwrap();
        let start = Instant::now();
        let err = timeout(WAIT, Connection::connect(&s))
            .await
            .expect("bounded by the connect timeout")
            .unwrap_err();
        assert!(matches!(err, UpstreamError::Tls(_)), "{err:?}");
        // The handshake was given the configured time, not cut short (a lower bound:
        // safe on a slow machine).
        assert!(start.elapsed() >= connect, "{:?}", start.elapsed());
        assert_eq!(err.to_reply().class(), 4);
    }

    // Passthrough: the mailer hears a 4xx at MAIL.
    let p = Provider::builder()
        .implicit_tls(&ca)
        .tls_stall()
        .start()
        .await;
    let r = passthrough(short_timeouts(p.upstream_config())).await;
    let mut m = Mailer::connect(r.addr).await;
    m.send("MAIL FROM:<news@news.example>\r\n").await;
    let reply = m.replies(1).await.remove(0);
    assert!(reply.starts_with("451 4.7.5"), "{reply}");
    r.stop().await;
}

#[tokio::test]
async fn queue_a_stalled_tls_handshake_holds_the_message() {
    let ca = TestCa::new();
    let p = Provider::builder()
        .implicit_tls(&ca)
        .tls_stall()
        .start()
        .await;
    let q = queue(short_timeouts(p.upstream_config()), quick_retries).await;
    q.submit(&["ok@example.org"], 1).await;
    eventually("tried twice", || {
        p.connections_total() >= 2 || q.spool.is_empty()
    })
    .await;
    q.assert_still_queued("stalled TLS handshake");
    q.stop().await;
}

// ------------------------------------------------------------------------------------
// 8.6: a mailbox-full 4xx counts once per message and day.
// ------------------------------------------------------------------------------------

#[tokio::test]
async fn queue_three_quick_retries_of_one_message_do_not_suppress_the_address() {
    let p = Provider::builder()
        .rcpt_reply("full@example.org", "452 4.2.2 Mailbox full")
        .start()
        .await;
    let q = queue(p.upstream_config(), quick_retries).await;
    q.submit(&["full@example.org"], 1).await;
    let rcpts = || {
        p.lines()
            .iter()
            .filter(|l| l.starts_with("RCPT TO:<full@"))
            .count()
    };
    // soft_threshold is 3: a fourth attempt reaches the provider only if the first
    // three did not suppress the address.
    eventually("four attempts, or the address failed", || {
        rcpts() >= 4
            || q.spool
                .list()
                .unwrap()
                .first()
                .is_none_or(|m| !matches!(m.rcpts[0].state, RcptState::Pending { .. }))
    })
    .await;
    println!("mailbox full: {} attempts of one message", rcpts());
    assert!(
        !q.policy.suppressions.is_suppressed("full@example.org"),
        "retries of one message suppressed the address"
    );
    q.assert_still_queued("mailbox full");
    q.stop().await;
}

#[tokio::test]
async fn passthrough_retries_of_one_message_do_not_suppress_the_address() {
    let p = Provider::builder()
        .rcpt_reply("full@example.org", "452 4.2.2 Mailbox full")
        .start()
        .await;
    let r = passthrough(p.upstream_config()).await;
    // The mailer tries the same message four times (same sender, same SIZE).
    for attempt in 0..4 {
        let mut m = Mailer::connect(r.addr).await;
        m.send("MAIL FROM:<news@news.example> SIZE=120\r\nRCPT TO:<full@example.org>\r\n")
            .await;
        let replies = m.replies(2).await;
        assert!(
            replies[1].starts_with("452 4.2.2"),
            "attempt {attempt}: the provider's own reply, not a local suppression: {replies:?}"
        );
        m.send("QUIT\r\n").await;
    }
    assert!(!r.policy.suppressions.is_suppressed("full@example.org"));
    r.stop().await;
}

// ------------------------------------------------------------------------------------
// 8.6: SMTPUTF8 toward a provider that does not offer it (RFC 6531).
// ------------------------------------------------------------------------------------

#[tokio::test]
async fn passthrough_non_ascii_recipient_gets_553_5_6_7_without_smtputf8_upstream() {
    let p = Provider::builder().start().await; // no SMTPUTF8
    let r = passthrough(p.upstream_config()).await;
    let mut m = Mailer::connect(r.addr).await;
    m.send("MAIL FROM:<news@news.example> SMTPUTF8\r\nRCPT TO:<jörg@example.org>\r\nRCPT TO:<ok@example.org>\r\n")
        .await;
    let replies = m.replies(3).await;
    println!("non-ASCII recipient: {replies:?}");
    assert!(replies[0].starts_with("250"), "{replies:?}");
    assert!(replies[1].starts_with("553 5.6.7"), "{replies:?}");
    assert!(replies[2].starts_with("250"), "{replies:?}");
    assert!(
        !p.lines().iter().any(|l| !l.is_ascii()),
        "a non-ASCII address reached the provider: {:?}",
        p.lines()
    );
    assert!(!r.policy.suppressions.is_suppressed("jörg@example.org"));
    r.stop().await;
}

#[tokio::test]
async fn queue_non_ascii_recipient_fails_with_a_5_6_7_bounce_and_is_not_suppressed() {
    let p = Provider::builder().start().await; // no SMTPUTF8
    let q = queue(p.upstream_config(), quick_retries).await;
    let mut m = Mailer::connect(q.addr).await;
    m.send("MAIL FROM:<news@news.example> SMTPUTF8\r\nRCPT TO:<jörg@example.org>\r\nRCPT TO:<ok@example.org>\r\nDATA\r\n")
        .await;
    let r = m.replies(4).await;
    assert!(r[3].starts_with("354"), "{r:?}");
    let queued = m.body(1).await;
    assert!(queued.starts_with("250 2.0.0 Ok: queued as"), "{queued}");
    // ok@ delivered, and a bounce report for jörg@ to the sender.
    eventually("message and bounce report", || p.messages().len() >= 2).await;
    let bounce = String::from_utf8_lossy(&p.messages()[1]).to_string();
    assert!(bounce.contains("Status: 5.6.7"), "{bounce}");
    // RFC 6533: the address in utf-8-addr-xtext form.
    assert!(
        bounce.contains("Final-Recipient: utf-8; j\\x{F6}rg@example.org"),
        "{bounce}"
    );
    assert!(
        !p.lines()
            .iter()
            .any(|l| l.starts_with("RCPT") && !l.is_ascii()),
        "{:?}",
        p.lines()
    );
    assert!(!q.policy.suppressions.is_suppressed("jörg@example.org"));
    let log = q.log();
    assert!(
        log.contains(&("ok@example.org".into(), "delivered".into())),
        "{log:?}"
    );
    assert!(
        log.contains(&("jörg@example.org".into(), "failed".into())),
        "{log:?}"
    );
    q.stop().await;
}
