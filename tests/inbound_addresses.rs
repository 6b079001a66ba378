//! Inbound address rules, in both modes, end to end over loopback: a raw mailer →
//! mailvalve's server (wired as `mailvalve run` wires it: the suppressing relay around
//! passthrough or the queue) → the scripted provider (`support::provider`).
//!
//! What must hold: an address is passed on exactly as the mailer wrote it, or refused at
//! MAIL/RCPT with a 5xx — never rewritten, never accepted and bounced later. Every wait
//! is bounded.

mod support;

use mailvalve::config::{Config, Mode, UpstreamConfig};
use mailvalve::relay::{Policy, Relay, RunningRelay};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use support::provider::Provider;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);
const MODES: [Mode; 2] = [Mode::Passthrough, Mode::Queue];

struct Mv {
    addr: SocketAddr,
    relay: RunningRelay,
    policy: Arc<Policy>,
    _dir: tempfile::TempDir,
}

/// mailvalve in `mode` in front of `up`, started like `mailvalve run` starts it.
async fn start(mode: Mode, up: UpstreamConfig) -> Mv {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config {
        mode,
        upstream: UpstreamConfig {
            profile: "local".into(),
            ..up
        },
        ..Config::default()
    };
    cfg.queue.dir = dir.path().join("spool");
    cfg.suppression.path = dir.path().join("suppression.redb");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    cfg.server.listen = listener.local_addr().unwrap();
    cfg.server.shutdown_grace = Duration::from_millis(500);
    let relay = Relay::new(cfg)
        .unwrap()
        .start(listener, CancellationToken::new())
        .await
        .unwrap();
    Mv {
        addr: relay.local_addr(),
        policy: relay.handle().policy().clone(),
        relay,
        _dir: dir,
    }
}

impl Mv {
    async fn stop(self) {
        timeout(WAIT, self.relay.stop()).await.unwrap().unwrap();
    }

    /// A session after EHLO.
    async fn session(&self) -> Raw {
        let s = timeout(WAIT, TcpStream::connect(self.addr))
            .await
            .unwrap()
            .unwrap();
        let mut r = Raw { s, buf: Vec::new() };
        assert!(r.reply().await.starts_with("220"));
        r.send(b"EHLO mailer.test\r\n").await;
        assert!(r.reply().await.starts_with("250"));
        r
    }
}

struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn send(&mut self, bytes: &[u8]) {
        timeout(WAIT, self.s.write_all(bytes))
            .await
            .unwrap()
            .unwrap();
    }

    /// The last line of the next reply.
    async fn reply(&mut self) -> String {
        loop {
            while let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..pos]).to_string();
                self.buf.drain(..pos + 2);
                if line.as_bytes().get(3) != Some(&b'-') {
                    return line;
                }
            }
            let mut chunk = [0u8; 4096];
            let n = timeout(WAIT, self.s.read(&mut chunk))
                .await
                .expect("reply in time")
                .unwrap();
            assert!(n > 0, "connection closed; buffered {:?}", self.buf);
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn cmd(&mut self, line: &[u8]) -> String {
        let mut l = line.to_vec();
        l.extend_from_slice(b"\r\n");
        self.send(&l).await;
        self.reply().await
    }

    /// DATA with a small message; the reply to its end.
    async fn data(&mut self) -> String {
        let r = self.cmd(b"DATA").await;
        assert!(r.starts_with("354"), "{r}");
        self.send(b"Subject: t\r\n\r\nhello\r\n.\r\n").await;
        self.reply().await
    }
}

/// Polls `cond` every 20 ms for at most `WAIT`.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

fn starts(r: &str, prefix: &str) {
    assert!(r.starts_with(prefix), "expected {prefix}…, got {r:?}");
}

/// Sends one message that must reach the provider; returns after it arrived.
async fn deliver_one(mv: &Mv, p: &Provider, from: &[u8], to: &[u8]) {
    let before = p.messages().len();
    let mut c = mv.session().await;
    starts(
        &c.cmd(&[b"MAIL FROM:".as_ref(), from].concat()).await,
        "250",
    );
    starts(&c.cmd(&[b"RCPT TO:".as_ref(), to].concat()).await, "250");
    starts(&c.data().await, "250");
    c.cmd(b"QUIT").await;
    eventually("message at the provider", || p.messages().len() > before).await;
}

#[tokio::test]
async fn postmaster_is_passed_on_as_postmaster_not_as_the_null_path() {
    for mode in MODES {
        let p = Provider::builder()
            .rcpt_reply("postmaster", "550 5.1.1 <Postmaster>: no such user here")
            .start()
            .await;
        let mv = start(mode, p.upstream_config()).await;
        deliver_one(&mv, &p, b"<postmaster>", b"<ok@example.org>").await;
        let lines = p.lines();
        assert!(
            lines.iter().any(|l| l == "MAIL FROM:<postmaster>"),
            "{mode:?}: {lines:?}"
        );
        assert!(
            !lines.iter().any(|l| l == "MAIL FROM:<>"),
            "{mode:?}: {lines:?}"
        );

        // RCPT TO:<Postmaster> goes as written; the provider's 5.1.1 suppresses that
        // address, never the null path.
        let mut c = mv.session().await;
        starts(&c.cmd(b"MAIL FROM:<news@example.org>").await, "250");
        let r = c.cmd(b"RCPT TO:<Postmaster>").await;
        if mode == Mode::Passthrough {
            starts(&r, "550 5.1.1");
        } else {
            starts(&r, "250");
            starts(&c.cmd(b"RCPT TO:<ok@example.org>").await, "250");
            starts(&c.data().await, "250");
        }
        c.cmd(b"QUIT").await;
        let sup = mv.policy.suppressions.clone();
        eventually("Postmaster suppressed", || {
            sup.lookup("postmaster").is_some()
        })
        .await;
        assert!(
            sup.lookup("").is_none(),
            "{mode:?}: the null path suppressed"
        );
        let lines = p.lines();
        assert!(
            lines.iter().any(|l| l == "RCPT TO:<Postmaster>"),
            "{mode:?}: {lines:?}"
        );
        assert!(
            !lines.iter().any(|l| l == "RCPT TO:<>"),
            "{mode:?}: {lines:?}"
        );
        mv.stop().await;
    }
}

#[tokio::test]
async fn null_recipient_is_refused() {
    for mode in MODES {
        let p = Provider::builder().start().await;
        let mv = start(mode, p.upstream_config()).await;
        let mut c = mv.session().await;
        starts(&c.cmd(b"MAIL FROM:<news@example.org>").await, "250");
        starts(&c.cmd(b"RCPT TO:<>").await, "501 5.1.3");
        // Pipelined behind MAIL too.
        c.cmd(b"RSET").await;
        c.send(b"MAIL FROM:<news@example.org>\r\nRCPT TO:<>\r\nRCPT TO:<a@example.org>\r\n")
            .await;
        starts(&c.reply().await, "250");
        starts(&c.reply().await, "501 5.1.3");
        starts(&c.reply().await, "250");
        starts(&c.data().await, "250");
        c.cmd(b"QUIT").await;
        eventually("message at the provider", || p.messages().len() == 1).await;
        let lines = p.lines();
        assert!(
            !lines.iter().any(|l| l == "RCPT TO:<>"),
            "{mode:?}: {lines:?}"
        );
        mv.stop().await;
    }
}

#[tokio::test]
async fn invalid_utf8_in_mail_or_rcpt_is_refused() {
    for mode in MODES {
        let p = Provider::builder().start().await;
        let mv = start(mode, p.upstream_config()).await;
        let mut c = mv.session().await;
        starts(
            &c.cmd(b"MAIL FROM:<j\xfcrgen@example.org> SMTPUTF8").await,
            "501 5.1.7",
        );
        starts(
            &c.cmd(b"MAIL FROM:<news@example.org> SMTPUTF8").await,
            "250",
        );
        starts(
            &c.cmd(b"RCPT TO:<m\xfcller@example.org>").await,
            "501 5.1.3",
        );
        starts(&c.cmd(b"RCPT TO:<\xc3(@example.org>").await, "501 5.1.3");
        starts(&c.cmd(b"RCPT TO:<ok@example.org>").await, "250");
        starts(&c.data().await, "250");
        c.cmd(b"QUIT").await;
        eventually("message at the provider", || p.messages().len() == 1).await;
        let lines = p.lines();
        assert!(
            !lines.iter().any(|l| l.contains('\u{fffd}')),
            "{mode:?}: {lines:?}"
        );
        assert!(
            lines.iter().filter(|l| l.starts_with("RCPT")).count() == 1,
            "{mode:?}: {lines:?}"
        );
        mv.stop().await;
    }
}

#[tokio::test]
async fn quoted_local_part_is_refused_at_mail_and_rcpt() {
    for mode in MODES {
        let p = Provider::builder().start().await;
        let mv = start(mode, p.upstream_config()).await;
        let mut c = mv.session().await;
        starts(
            &c.cmd(b"MAIL FROM:<\"news desk\"@example.org>").await,
            "553 5.1.7",
        );
        starts(&c.cmd(b"MAIL FROM:<news@example.org>").await, "250");
        for rcpt in [
            b"RCPT TO:<\"john doe\"@example.org>".as_ref(),
            b"RCPT TO:<\"john\"@example.org>",
            b"RCPT TO:<\"a\\\"b\"@example.org>",
        ] {
            starts(&c.cmd(rcpt).await, "553 5.1.3");
        }
        starts(&c.cmd(b"RCPT TO:<john@example.org>").await, "250");
        starts(&c.data().await, "250");
        c.cmd(b"QUIT").await;
        eventually("message at the provider", || p.messages().len() == 1).await;
        let lines = p.lines();
        let rcpts: Vec<_> = lines.iter().filter(|l| l.starts_with("RCPT")).collect();
        assert_eq!(rcpts, vec!["RCPT TO:<john@example.org>"], "{mode:?}");
        mv.stop().await;
    }
}

#[tokio::test]
async fn non_ascii_addresses_need_smtputf8_on_mail() {
    for mode in MODES {
        let p = Provider::builder().capability("SMTPUTF8").start().await;
        let mv = start(mode, p.upstream_config()).await;
        let mut c = mv.session().await;
        // Without SMTPUTF8: refused at MAIL, and at RCPT (also pipelined behind MAIL).
        starts(
            &c.cmd("MAIL FROM:<jürgen@example.org>".as_bytes()).await,
            "553 5.6.7",
        );
        let batch = "MAIL FROM:<news@example.org>\r\n\
                     RCPT TO:<müller@example.org>\r\n\
                     RCPT TO:<a@example.org>\r\n";
        c.send(batch.as_bytes()).await;
        starts(&c.reply().await, "250");
        starts(&c.reply().await, "553 5.6.7");
        starts(&c.reply().await, "250");
        starts(
            &c.cmd("RCPT TO:<b@exämple.org>".as_bytes()).await,
            "553 5.6.7",
        );
        starts(&c.data().await, "250");
        eventually("message at the provider", || p.messages().len() == 1).await;

        // With SMTPUTF8 on MAIL: passed on exactly.
        deliver_one(
            &mv,
            &p,
            "<jürgen@example.org> SMTPUTF8".as_bytes(),
            "<müller@exämple.org>".as_bytes(),
        )
        .await;
        let lines = p.lines();
        assert!(
            lines
                .iter()
                .any(|l| l == "MAIL FROM:<jürgen@example.org> SMTPUTF8"),
            "{mode:?}: {lines:?}"
        );
        assert!(
            lines.iter().any(|l| l == "RCPT TO:<müller@exämple.org>"),
            "{mode:?}: {lines:?}"
        );
        assert!(
            !lines.iter().any(|l| l.contains("müller@example.org")),
            "{mode:?}: {lines:?}"
        );
        mv.stop().await;
    }
}

#[tokio::test]
async fn control_characters_in_addresses_are_refused() {
    for mode in MODES {
        let p = Provider::builder().start().await;
        let mv = start(mode, p.upstream_config()).await;
        let mut c = mv.session().await;
        starts(&c.cmd(b"MAIL FROM:<a\x7fb@example.org>").await, "501 5.1.7");
        starts(
            &c.cmd(b"MAIL FROM:<news@example.org> SMTPUTF8").await,
            "250",
        );
        starts(&c.cmd(b"RCPT TO:<a\x7fb@example.org>").await, "501 5.1.3");
        starts(
            &c.cmd("RCPT TO:<a\u{85}b@example.org>".as_bytes()).await,
            "501 5.1.3",
        );
        c.cmd(b"QUIT").await;
        mv.stop().await;
        assert!(
            !p.lines().iter().any(|l| l.starts_with("RCPT")),
            "{mode:?}: {:?}",
            p.lines()
        );
    }
}
