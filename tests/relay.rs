//! End-to-end passthrough over real loopback TCP: a mailer (lettre, or a raw socket for
//! exact replies) → mailvalve's server → the passthrough relay → the upstream admission
//! stack → the scripted provider (`support::provider`), which records what arrived.
//! Every wait is bounded.

mod support;

use mailvalve::config::{ServerConfig, UpstreamConfig};
use mailvalve::relay::Passthrough;
use mailvalve::server::serve;
use mailvalve::upstream::{Admission, Settings};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use support::provider::Provider;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

struct Relay {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(up: UpstreamConfig) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cfg = Arc::new(ServerConfig {
            listen: addr,
            shutdown_grace: Duration::from_millis(500),
            ..ServerConfig::default()
        });
        let relay = Arc::new(Passthrough::new(Admission::new(Settings::new(up).unwrap())));
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            serve(listener, cfg, relay, s).await.unwrap();
        });
        Relay { addr, stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        timeout(WAIT, self.task).await.unwrap().unwrap();
    }
}

/// A raw client that sends one pipelined batch and reads `n` replies (one line each,
/// multi-line replies joined).
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let s = timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        let mut r = Raw { s, buf: Vec::new() };
        let g = r.replies(1).await;
        assert!(g[0].starts_with("220"), "{g:?}");
        r
    }

    async fn send(&mut self, bytes: &str) {
        self.s.write_all(bytes.as_bytes()).await.unwrap();
    }

    async fn replies(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        while out.len() < n {
            while let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..pos]).to_string();
                self.buf.drain(..pos + 2);
                if line.as_bytes().get(3) == Some(&b' ') || line.len() == 3 {
                    out.push(line);
                    if out.len() == n {
                        return out;
                    }
                }
            }
            let mut chunk = [0u8; 4096];
            let n = timeout(WAIT, self.s.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "connection closed early; got {out:?}");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        out
    }
}

#[tokio::test]
async fn fifty_messages_in_one_pipelined_session_arrive_and_reuse_connections() {
    use lettre::address::Envelope as LEnvelope;
    use lettre::transport::smtp::client::AsyncSmtpConnection;
    use lettre::transport::smtp::extension::ClientId;

    let provider = Provider::builder().start().await;
    let relay = Relay::start(provider.upstream_config()).await;
    let mut conn = AsyncSmtpConnection::connect_tokio1(
        relay.addr,
        Some(WAIT),
        &ClientId::Domain("mailer.test".into()),
        None,
        None,
    )
    .await
    .unwrap();
    for i in 0..50 {
        let env = LEnvelope::new(
            Some("news@sender.test".parse().unwrap()),
            vec![
                format!("reader{i}@example.test").parse().unwrap(),
                format!("other{i}@example.test").parse().unwrap(),
            ],
        )
        .unwrap();
        let body =
            format!("Subject: issue {i}\r\nX-Campaign: 7\r\n\r\nHello {i}\r\n.leading dot\r\n");
        let resp = timeout(WAIT, conn.send(&env, body.as_bytes()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.code().to_string(), "250");
    }
    conn.quit().await.unwrap();

    let msgs = provider.messages();
    assert_eq!(msgs.len(), 50);
    for (i, m) in msgs.iter().enumerate() {
        let text = String::from_utf8_lossy(m);
        assert!(text.contains(&format!("Subject: issue {i}\r\n")), "{text}");
        assert!(
            text.contains("\r\n.leading dot\r\n"),
            "dot-stuffing round trip: {text}"
        );
    }
    // The pooled connection was reused (lettre does not pipeline, so each command went
    // upstream on its own; the raw-client test below checks pipelining).
    assert!(
        provider.connections_total() <= 2,
        "connections: {}",
        provider.connections_total()
    );
    relay.stop().await;
}

#[tokio::test]
async fn per_rcpt_replies_are_relayed_verbatim() {
    let provider = Provider::builder()
        .rcpt_reply(
            "gone@example.test",
            "550 5.1.1 <gone@example.test>: Recipient address rejected: User unknown",
        )
        .rcpt_reply("full@example.test", "452 4.2.2 Mailbox full, try later")
        .start()
        .await;
    let relay = Relay::start(provider.upstream_config()).await;
    let mut c = Raw::connect(relay.addr).await;
    c.send("EHLO mailer.test\r\nMAIL FROM:<news@sender.test>\r\nRCPT TO:<ok@example.test>\r\nRCPT TO:<gone@example.test>\r\nRCPT TO:<full@example.test>\r\nDATA\r\n").await;
    let r = c.replies(6).await;
    assert!(r[1].starts_with("250"), "{r:?}");
    assert!(r[2].starts_with("250"), "{r:?}");
    assert_eq!(
        r[3],
        "550 5.1.1 <gone@example.test>: Recipient address rejected: User unknown"
    );
    assert_eq!(r[4], "452 4.2.2 Mailbox full, try later");
    assert!(r[5].starts_with("354"), "{r:?}");
    c.send("Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n").await;
    let r = c.replies(2).await;
    assert!(r[0].starts_with("250"), "{r:?}");
    assert_eq!(provider.messages().len(), 1);
    // The mailer pipelined MAIL and three RCPTs: they went upstream in one write.
    let cmds = provider.commands();
    let mail = cmds
        .iter()
        .find(|c| c.line.starts_with("MAIL FROM"))
        .unwrap();
    let batch: Vec<&str> = cmds
        .iter()
        .filter(|c| c.conn == mail.conn && c.segment == mail.segment)
        .map(|c| c.line.as_str())
        .collect();
    assert_eq!(batch.len(), 4, "MAIL + RCPTs in one segment: {batch:?}");
    relay.stop().await;
}

#[tokio::test]
async fn greeting_421_reaches_the_mailer_as_4xx() {
    let provider = Provider::builder()
        .greeting("421 4.7.0 Too many connections, try later")
        .start()
        .await;
    let relay = Relay::start(provider.upstream_config()).await;
    let mut c = Raw::connect(relay.addr).await;
    c.send("EHLO m\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<b@e.test>\r\nDATA\r\n")
        .await;
    let r = c.replies(4).await;
    assert!(r[1].starts_with("451 4.7.0"), "{r:?}");
    assert!(r[1].contains("Too many connections"), "{r:?}");
    assert!(r[2].starts_with('4') && r[3].starts_with('4'), "{r:?}");
    assert!(provider.messages().is_empty());
    relay.stop().await;
}

#[tokio::test]
async fn drop_mid_data_is_a_4xx_and_nothing_is_reported_sent() {
    let provider = Provider::builder().drop_after_data().start().await;
    let relay = Relay::start(provider.upstream_config()).await;
    let mut c = Raw::connect(relay.addr).await;
    c.send("EHLO m\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<b@e.test>\r\nDATA\r\n")
        .await;
    let r = c.replies(4).await;
    assert!(r[3].starts_with("354"), "{r:?}");
    c.send("Subject: x\r\n\r\nbody\r\n.\r\n").await;
    let r = c.replies(1).await;
    assert!(r[0].starts_with('4'), "must not be reported as sent: {r:?}");
    // The session goes on; a new transaction gets a fresh connection.
    c.send("RSET\r\nQUIT\r\n").await;
    let r = c.replies(2).await;
    assert!(r[0].starts_with("250") && r[1].starts_with("221"), "{r:?}");
    relay.stop().await;
}

#[tokio::test]
async fn unreachable_provider_is_a_4xx_that_says_why() {
    // A port nobody listens on: bind, read the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let up = UpstreamConfig {
        host: "127.0.0.1".into(),
        port,
        tls: mailvalve::config::TlsMode::None,
        ..UpstreamConfig::default()
    };
    let relay = Relay::start(up).await;
    let mut c = Raw::connect(relay.addr).await;
    c.send("EHLO m\r\nMAIL FROM:<a@s.test>\r\n").await;
    let r = c.replies(2).await;
    assert!(r[1].starts_with("451 4.4.1"), "{r:?}");
    assert!(r[1].to_lowercase().contains("unreachable"), "{r:?}");
    relay.stop().await;
}

#[tokio::test]
async fn busy_provider_makes_mail_wait_then_451() {
    // One upstream connection, held by the first session's open transaction: the second
    // session's MAIL waits admission_wait and gets 451 4.7.0.
    let provider = Provider::builder().start().await;
    let up = UpstreamConfig {
        max_connections: 1,
        admission_wait: Duration::from_millis(300),
        ..provider.upstream_config()
    };
    let relay = Relay::start(up).await;
    let mut a = Raw::connect(relay.addr).await;
    a.send("EHLO a\r\nMAIL FROM:<a@s.test>\r\n").await;
    let r = a.replies(2).await;
    assert!(r[1].starts_with("250"), "{r:?}");
    let mut b = Raw::connect(relay.addr).await;
    b.send("EHLO b\r\nMAIL FROM:<b@s.test>\r\n").await;
    let r = b.replies(2).await;
    assert!(r[1].starts_with("451 4.7.0"), "{r:?}");
    assert!(r[1].to_lowercase().contains("busy"), "{r:?}");
    // When the first transaction ends, the connection is free again.
    a.send("RSET\r\n").await;
    a.replies(1).await;
    b.send("MAIL FROM:<b@s.test>\r\n").await;
    let r = b.replies(1).await;
    assert!(r[0].starts_with("250"), "{r:?}");
    relay.stop().await;
}

// ---------------------------------------------------------------------------------
// The policy in the relay: `relay::Relay` in passthrough mode, as `mailvalve run` starts it.
// ---------------------------------------------------------------------------------

use mailvalve::config::{Config, Mode};

struct PolicyRelay {
    relay: Relay,
    _dir: tempfile::TempDir,
}

async fn start_with_policy(up: UpstreamConfig, profile: &str) -> PolicyRelay {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config {
        upstream: up,
        ..Config::default()
    };
    cfg.upstream.profile = profile.into();
    cfg.suppression.path = dir.path().join("suppression.redb");
    cfg.mode = Mode::Passthrough;
    cfg.queue.dir = dir.path().join("spool");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    cfg.server.listen = addr;
    cfg.server.shutdown_grace = Duration::from_millis(500);
    let stop = CancellationToken::new();
    let running = mailvalve::relay::Relay::new(cfg)
        .unwrap()
        .start(listener, stop.clone())
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        running.wait().await.unwrap();
    });
    PolicyRelay {
        relay: Relay { addr, stop, task },
        _dir: dir,
    }
}

#[tokio::test]
async fn a_5xx_unknown_user_is_suppressed_and_never_sent_upstream_again() {
    let provider = Provider::builder()
        .rcpt_reply(
            "gone@example.test",
            "550 5.1.1 <gone@example.test>: Recipient address rejected: User unknown",
        )
        .start()
        .await;
    let r = start_with_policy(provider.upstream_config(), "generic").await;
    let mut c = Raw::connect(r.relay.addr).await;
    c.send("EHLO m\r\nMAIL FROM:<n@s.test>\r\nRCPT TO:<ok@example.test>\r\nRCPT TO:<gone@example.test>\r\nDATA\r\n").await;
    let rep = c.replies(5).await;
    // First time: the provider's own reply, verbatim.
    assert_eq!(
        rep[3],
        "550 5.1.1 <gone@example.test>: Recipient address rejected: User unknown"
    );
    c.send("Subject: 1\r\n\r\nx\r\n.\r\n").await;
    assert!(c.replies(1).await[0].starts_with("250"));
    // Second campaign: answered locally with the original reason.
    c.send("MAIL FROM:<n@s.test>\r\nRCPT TO:<GONE@example.test>\r\nRCPT TO:<ok@example.test>\r\nDATA\r\n").await;
    let rep = c.replies(4).await;
    assert!(
        rep[1].starts_with("550 5.1.1")
            && rep[1].contains("suppressed")
            && rep[1].contains("User unknown"),
        "{rep:?}"
    );
    c.send("Subject: 2\r\n\r\nx\r\n.\r\nQUIT\r\n").await;
    c.replies(2).await;
    let gone = provider
        .lines()
        .iter()
        .filter(|l| l.to_lowercase().contains("gone@"))
        .count();
    assert_eq!(gone, 1, "the provider saw the bad address once");
    r.relay.stop().await;
}

#[tokio::test]
async fn wrong_password_pauses_after_the_first_attempt() {
    let provider = Provider::builder().auth("user", "right").start().await;
    let mut up = provider.upstream_config();
    up.password = Some(mailvalve::config::Secret::new("wrong"));
    let r = start_with_policy(up, "generic").await;
    let mut c = Raw::connect(r.relay.addr).await;
    c.send("EHLO m\r\nMAIL FROM:<n@s.test>\r\n").await;
    let rep = c.replies(2).await;
    assert!(rep[1].starts_with("454 4.7.0"), "{rep:?}");
    for _ in 0..3 {
        c.send("MAIL FROM:<n@s.test>\r\n").await;
        let rep = c.replies(1).await;
        assert!(
            rep[0].starts_with("454 4.7.0") && rep[0].contains("paused"),
            "{rep:?}"
        );
    }
    let auths = provider
        .lines()
        .iter()
        .filter(|l| l.starts_with("AUTH"))
        .count();
    assert_eq!(auths, 1, "no second AUTH until resumed");
    assert_eq!(provider.connections_total(), 1);
    r.relay.stop().await;
}

#[tokio::test]
async fn a_quota_reply_pauses_new_transactions_with_451() {
    let provider = Provider::builder()
        .final_reply("550 5.4.5 Daily user sending quota exceeded")
        .start()
        .await;
    let r = start_with_policy(provider.upstream_config(), "gmail").await;
    let mut c = Raw::connect(r.relay.addr).await;
    c.send("EHLO m\r\nMAIL FROM:<n@s.test>\r\nRCPT TO:<a@example.test>\r\nDATA\r\n")
        .await;
    c.replies(4).await;
    c.send("Subject: 1\r\n\r\nx\r\n.\r\n").await;
    // The provider's reply, verbatim.
    assert_eq!(
        c.replies(1).await[0],
        "550 5.4.5 Daily user sending quota exceeded"
    );
    c.send("MAIL FROM:<n@s.test>\r\n").await;
    let rep = c.replies(1).await;
    assert!(
        rep[0].starts_with("451 4.7.0") && rep[0].contains("quota"),
        "{rep:?}"
    );
    // The address is fine: not suppressed.
    assert_eq!(provider.messages().len(), 1);
    r.relay.stop().await;
}

/// A provider that allows 2 connections, mailvalve starting at 4 with 8 mailer sessions
/// sending at once: the surplus connections are refused at the greeting (421), the limit
/// drops to 2, and the mailers whose MAIL triggered a refused connection wait for a
/// working one instead of getting `451` (smtp-source aborts its whole run on that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_surplus_connections_are_not_a_451_for_the_mailer() {
    let provider = Provider::builder().max_connections(2).start().await;
    let mut up = provider.upstream_config();
    up.max_connections = 20;
    up.limits.initial_connections = Some(4);
    up.limits.max_connections = Some(20);
    up.admission_wait = Duration::from_secs(10);
    let r = start_with_policy(up, "local").await;
    let addr = r.relay.addr;
    let mut tasks = Vec::new();
    for s in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut c = Raw::connect(addr).await;
            c.send("EHLO m\r\n").await;
            c.replies(1).await;
            for m in 0..3 {
                c.send(&format!(
                    "MAIL FROM:<n@s.test>\r\nRCPT TO:<r{s}.{m}@example.test>\r\nDATA\r\n"
                ))
                .await;
                let rep = c.replies(3).await;
                assert!(
                    rep[0].starts_with("250") && rep[2].starts_with("354"),
                    "session {s} message {m}: {rep:?}"
                );
                c.send("Subject: x\r\n\r\nx\r\n.\r\n").await;
                let rep = c.replies(1).await;
                assert!(rep[0].starts_with("250"), "{rep:?}");
            }
            c.send("QUIT\r\n").await;
        }));
    }
    for t in tasks {
        timeout(Duration::from_secs(30), t).await.unwrap().unwrap();
    }
    assert_eq!(provider.messages().len(), 24);
    assert!(provider.max_concurrent() <= 2);
    assert!(
        (1..=2).contains(&provider.refused()),
        "refused connections: {}",
        provider.refused()
    );
    r.relay.stop().await;
}
