//! Every provider profile's figures reach the running relay (issue 11, point 4):
//! `host`, `port` and `tls` as defaults of `[upstream]` (with where each came from),
//! `messages_per_connection` (the smaller of profile and
//! `upstream.max_messages_per_connection`) and `max_message_size` (the smallest of
//! mailvalve's own, the profile's and the provider's EHLO `SIZE`, advertised and
//! enforced with `552 5.3.4` at MAIL and at the end of DATA).
//! Quotas in the provider's unit (issue 10 point 4): `recipients_per_day` counts
//! recipients, in queue mode across a restart and in passthrough.
//! Over real loopback TCP against the scripted provider; every wait is bounded.

mod support;

use mailvalve::config::profile;
use mailvalve::config::provenance::Origin;
use mailvalve::config::{load::load_str, Config, Mode, TlsMode};
use mailvalve::relay::{Relay, RunningRelay};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use support::provider::Provider;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);
const OWN: usize = 25 * 1024 * 1024;

#[test]
fn profile_plus_credentials_is_a_complete_upstream() {
    for (name, p) in profile::all().unwrap() {
        let text = format!("[upstream]\nprofile = \"{name}\"\nusername = \"me@example.org\"\n");
        let env = vec![(
            "MAILVALVE__UPSTREAM__PASSWORD".to_string(),
            "pw-secret".to_string(),
        )];
        let loaded = load_str(&text, "test.toml", env).unwrap();
        let u = &loaded.config.upstream;
        let d = Config::default().upstream;
        assert_eq!(u.host, p.host.clone().unwrap_or(d.host.clone()), "{name}");
        assert_eq!(u.port, p.port.unwrap_or(d.port), "{name}");
        assert_eq!(u.tls, p.tls.unwrap_or(d.tls), "{name}");
        let want = |set: bool| {
            if set {
                Origin::Profile(name.to_string())
            } else {
                Origin::Default
            }
        };
        let s = &loaded.sources;
        assert_eq!(s.origin("upstream.host"), want(p.host.is_some()), "{name}");
        assert_eq!(s.origin("upstream.port"), want(p.port.is_some()), "{name}");
        assert_eq!(s.origin("upstream.tls"), want(p.tls.is_some()), "{name}");
        assert_eq!(s.origin("upstream.username"), Origin::File);
        assert_eq!(
            s.origin("upstream.password"),
            Origin::Environment("MAILVALVE__UPSTREAM__PASSWORD".into())
        );
        if p.host.is_some() {
            mailvalve::config::validate(&loaded.config).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        }
    }
}

#[test]
fn the_file_and_the_environment_win_over_the_profile() {
    let text = "[upstream]\nprofile = \"office365\"\nport = 465\ntls = \"implicit\"\n";
    let env = vec![(
        "MAILVALVE__UPSTREAM__HOST".to_string(),
        "smtp.example.org".to_string(),
    )];
    let loaded = load_str(text, "test.toml", env).unwrap();
    let u = &loaded.config.upstream;
    assert_eq!(
        (u.host.as_str(), u.port, u.tls),
        ("smtp.example.org", 465, TlsMode::Implicit)
    );
    assert_eq!(
        loaded.sources.origin("upstream.host"),
        Origin::Environment("MAILVALVE__UPSTREAM__HOST".into())
    );
    assert_eq!(loaded.sources.origin("upstream.port"), Origin::File);
}

fn config(dir: &Path, p: &Provider, name: &str) -> Config {
    let mut up = p.upstream_config();
    up.profile = name.into();
    let mut c = Config {
        mode: Mode::Passthrough,
        upstream: up,
        ..Config::default()
    };
    // The profiles' rates are not under test here: lift them so the few messages of a
    // test never wait for a rate slot.
    c.upstream.limits.messages_per_second = Some(10_000);
    c.upstream.limits.messages_per_minute = Some(100_000);
    c.queue.dir = dir.join("spool");
    c.suppression.path = dir.join("suppression.redb");
    c
}

async fn start(mut cfg: Config) -> RunningRelay {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    cfg.server.listen = listener.local_addr().unwrap();
    cfg.server.shutdown_grace = Duration::from_millis(500);
    Relay::new(cfg)
        .unwrap()
        .start(listener, CancellationToken::new())
        .await
        .unwrap()
}

struct Session {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Session {
    async fn open(addr: SocketAddr) -> Session {
        let s = timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        let mut s = Session { s, buf: Vec::new() };
        assert!(s.reply().await[0].starts_with("220"));
        s
    }

    /// One reply, all its lines.
    async fn reply(&mut self) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut lines = Vec::new();
        loop {
            while let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..pos]).to_string();
                self.buf.drain(..pos + 2);
                let last = line.as_bytes().get(3) != Some(&b'-');
                lines.push(line);
                if last {
                    return lines;
                }
            }
            let mut chunk = [0u8; 8192];
            let k = timeout(deadline - Instant::now(), self.s.read(&mut chunk))
                .await
                .expect("reply in time")
                .unwrap();
            assert!(k > 0, "closed; so far {lines:?}");
            self.buf.extend_from_slice(&chunk[..k]);
        }
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.s
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await.join("\n")
    }

    /// One message from `a@example.org` to `rcpts`: every reply, the last being the one
    /// to the end of DATA (or the first refusal of MAIL / all RCPTs / DATA).
    async fn send_to(&mut self, rcpts: &[&str]) -> Vec<String> {
        let mut out = vec![self.cmd("MAIL FROM:<a@example.org>").await];
        if !out[0].starts_with("250") {
            return out;
        }
        let mut any = false;
        for r in rcpts {
            let reply = self.cmd(&format!("RCPT TO:<{r}>")).await;
            any |= reply.starts_with("250");
            out.push(reply);
        }
        if !any {
            out.push(self.cmd("RSET").await);
            return out;
        }
        let r = self.cmd("DATA").await;
        if !r.starts_with("354") {
            out.push(r);
            return out;
        }
        self.s
            .write_all(b"Subject: quota\r\n\r\nhello\r\n.\r\n")
            .await
            .unwrap();
        out.push(self.reply().await.join("\n"));
        out
    }

    /// The SIZE the EHLO reply advertises.
    async fn ehlo_size(&mut self) -> usize {
        let r = self.cmd("EHLO mailer.test").await;
        r.lines()
            .find_map(|l| l[4..].strip_prefix("SIZE "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no SIZE in {r}"))
    }

    /// One message of `body` bytes; the reply to the end of DATA (or the first refusal).
    async fn message(&mut self, size_param: Option<usize>, body: usize) -> String {
        let mail = match size_param {
            Some(n) => format!("MAIL FROM:<a@example.org> SIZE={n}"),
            None => "MAIL FROM:<a@example.org>".into(),
        };
        let r = self.cmd(&mail).await;
        if !r.starts_with("250") {
            return r;
        }
        let r = self.cmd("RCPT TO:<b@example.net>").await;
        assert!(r.starts_with("250"), "{r}");
        let r = self.cmd("DATA").await;
        assert!(r.starts_with("354"), "{r}");
        let mut msg = String::from("Subject: x\r\n\r\n");
        let line = "x".repeat(998) + "\r\n";
        while msg.len() + line.len() <= body {
            msg.push_str(&line);
        }
        msg.push_str(".\r\n");
        self.s.write_all(msg.as_bytes()).await.unwrap();
        self.reply().await.join("\n")
    }
}

/// For every profile: the relay advertises and enforces the smaller of its own limit
/// and the profile's before it has talked to the provider, then also the provider's
/// EHLO SIZE; the pool closes a connection after the profile's messages per connection.
#[tokio::test]
async fn every_profiles_figures_reach_the_running_relay() {
    for (name, prof) in profile::all().unwrap() {
        let dir = tempfile::tempdir().unwrap();
        let provider_size = 1_000_000;
        let p = Provider::builder().size(provider_size).start().await;
        let relay = start(config(dir.path(), &p, name)).await;
        let settings = relay.handle().policy().admission.pool().settings().clone();
        let per_conn = prof
            .limits
            .messages_per_connection
            .unwrap_or(usize::MAX)
            .min(100);
        assert_eq!(
            settings.config.max_messages_per_connection, per_conn,
            "{name}: messages_per_connection"
        );

        let mut s = Session::open(relay.local_addr()).await;
        let before = prof.limits.max_message_size.unwrap_or(OWN).min(OWN);
        assert_eq!(
            s.ehlo_size().await,
            before,
            "{name}: SIZE before the provider"
        );
        let r = s.message(Some(before + 1), 100).await;
        assert!(r.starts_with("552 5.3.4"), "{name}: MAIL SIZE= over: {r}");

        // One message through: the provider's EHLO said SIZE 1000000.
        let r = s.message(Some(100), 100).await;
        assert!(r.starts_with("250"), "{name}: {r}");
        assert_eq!(
            s.ehlo_size().await,
            provider_size,
            "{name}: provider's SIZE"
        );
        let r = s.message(Some(provider_size + 1), 100).await;
        assert!(r.starts_with("552 5.3.4"), "{name}: {r}");
        let r = s.message(None, provider_size + 10_000).await;
        assert!(
            r.starts_with("552 5.3.4"),
            "{name}: DATA over the limit: {r}"
        );
        assert_eq!(
            p.messages().len(),
            1,
            "{name}: nothing over the limit went out"
        );
        timeout(WAIT, relay.stop()).await.unwrap().unwrap();
    }
}

/// `generic` says 50 messages per connection, below the default 100: with 50 taken
/// down to 2 by `[upstream.limits]`, five messages use three provider connections.
#[tokio::test]
async fn the_pool_closes_a_connection_after_the_profiles_messages_per_connection() {
    let dir = tempfile::tempdir().unwrap();
    let p = Provider::builder().start().await;
    let mut cfg = config(dir.path(), &p, "generic");
    cfg.upstream.limits.messages_per_connection = Some(2);
    let relay = start(cfg).await;
    let mut s = Session::open(relay.local_addr()).await;
    s.cmd("EHLO mailer.test").await;
    for _ in 0..5 {
        let r = s.message(None, 100).await;
        assert!(r.starts_with("250"), "{r}");
    }
    assert_eq!(p.messages().len(), 5);
    assert_eq!(p.connections_total(), 3, "2 + 2 + 1 messages");
    timeout(WAIT, relay.stop()).await.unwrap().unwrap();
}

/// Waits (bounded) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// RCPT TO lines the provider received.
fn rcpts_received(p: &Provider) -> usize {
    p.lines()
        .iter()
        .filter(|l| l.to_ascii_uppercase().starts_with("RCPT TO:"))
        .count()
}

/// Queue mode: a daily quota counted in recipients takes each message's recipients
/// (3 + 2 spend a quota of 5), is saved in the ledger, and a restart does not hand the
/// spent quota out again: a message to one more recipient stays queued.
#[tokio::test]
async fn a_daily_recipient_quota_counts_recipients_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let p = Provider::builder().start().await;
    let mut cfg = config(dir.path(), &p, "office365");
    cfg.mode = Mode::Queue;
    cfg.upstream.limits.recipients_per_day = Some(5);
    cfg.upstream.admission_wait = Duration::from_millis(300);
    let relay = start(cfg.clone()).await;
    let mut s = Session::open(relay.local_addr()).await;
    s.cmd("EHLO mailer.test").await;
    let r = s
        .send_to(&["r1@example.net", "r2@example.net", "r3@example.net"])
        .await;
    assert!(r.last().unwrap().starts_with("250"), "{r:?}");
    let r = s.send_to(&["r4@example.net", "r5@example.net"]).await;
    assert!(r.last().unwrap().starts_with("250"), "{r:?}");
    eventually("five recipients delivered", || rcpts_received(&p) == 5).await;
    timeout(WAIT, relay.stop()).await.unwrap().unwrap(); // saves the ledger
    let ledger = std::fs::read_to_string(dir.path().join("spool/quota.json")).unwrap();
    assert!(ledger.contains("\"recipients\""), "{ledger}");

    let relay = start(cfg).await;
    let mut s = Session::open(relay.local_addr()).await;
    s.cmd("EHLO mailer.test").await;
    let r = s.send_to(&["r6@example.net"]).await;
    assert!(r.last().unwrap().starts_with("250"), "queued: {r:?}");
    // Several admission waits pass: the recipient quota is spent, the message waits.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        p.messages().len(),
        2,
        "a restart must not hand out the spent quota"
    );
    assert_eq!(rcpts_received(&p), 5);
    let spool = relay.handle().spool().unwrap().clone();
    assert_eq!(spool.len(), 1, "the sixth recipient stays queued");
    timeout(WAIT, relay.stop()).await.unwrap().unwrap();
}

/// Passthrough: the lease takes the recipients pipelined with MAIL (none here: the
/// mailer waits for each reply), each later RCPT its own; a recipient the quota has no
/// room for gets 451 4.7.0 and never reaches the provider.
#[tokio::test]
async fn passthrough_recipients_count_against_the_recipient_quota() {
    let dir = tempfile::tempdir().unwrap();
    let p = Provider::builder().start().await;
    let mut cfg = config(dir.path(), &p, "office365");
    cfg.upstream.limits.recipients_per_day = Some(3);
    cfg.upstream.admission_wait = Duration::from_millis(300);
    let relay = start(cfg).await;
    let mut s = Session::open(relay.local_addr()).await;
    s.cmd("EHLO mailer.test").await;
    let r = s.send_to(&["r1@example.net", "r2@example.net"]).await;
    assert!(r.last().unwrap().starts_with("250"), "{r:?}");
    let r = s.send_to(&["r3@example.net", "r4@example.net"]).await;
    assert!(r[1].starts_with("250"), "the third fits: {r:?}");
    assert!(r[2].starts_with("451 4.7.0"), "the fourth does not: {r:?}");
    assert!(r.last().unwrap().starts_with("250"), "{r:?}");
    assert_eq!(rcpts_received(&p), 3);
    // The quota is spent: the next transaction cannot even be admitted.
    let r = s.send_to(&["r5@example.net"]).await;
    assert!(r[0].starts_with("451"), "{r:?}");
    assert_eq!(rcpts_received(&p), 3);
    timeout(WAIT, relay.stop()).await.unwrap().unwrap();
}
