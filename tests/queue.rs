//! Queue mode end to end over real loopback TCP: a raw mailer → mailvalve's server →
//! the queue relay (durable spool) → the delivery engine → the upstream admission stack
//! → the scripted provider (`support::provider`). Checks what the mailer is told, what
//! arrives, what stays queued, what is bounced and what is logged. Every wait is bounded.
//!
//! The harness (a mailvalve in queue mode on a scripted provider, a raw mailer) is here;
//! the tests are in tests/queue/, one file per topic.

mod support;

#[path = "queue/bounces.rs"]
mod bounces;
#[path = "queue/delivery.rs"]
mod delivery;
#[path = "queue/holds.rs"]
mod holds;
#[path = "queue/operator.rs"]
mod operator;

use mailvalve::config::{Config, Mode, UpstreamConfig};
use mailvalve::queue::{RcptState, Spool};
use mailvalve::relay::{Relay, RunningRelay};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use support::provider::Provider;
use support::replies::read_replies;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);

struct Mv {
    addr: SocketAddr,
    relay: RunningRelay,
    spool: Arc<Spool>,
}

fn config(dir: &Path, up: UpstreamConfig) -> Config {
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

/// mailvalve as `mailvalve run` starts it, on a loopback port of its own.
async fn start(mut cfg: Config) -> Mv {
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
        spool: relay.handle().spool().unwrap().clone(),
        relay,
    }
}

impl Mv {
    /// One session sending `newsletter(n)` from the campaign's sender to `rcpts`.
    async fn campaign(&self, rcpts: &[&str], n: usize) -> Vec<String> {
        send(self.addr, "news@news.example", rcpts, &newsletter(n)).await
    }

    async fn stop(self) {
        timeout(WAIT, self.relay.stop()).await.unwrap().unwrap();
    }
}

/// Sends one message in one session; returns every reply line (last lines of replies).
async fn send(addr: SocketAddr, from: &str, rcpts: &[&str], body: &str) -> Vec<String> {
    let mut s = timeout(WAIT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let mut script = format!("EHLO mailer.test\r\nMAIL FROM:<{from}>\r\n");
    for r in rcpts {
        script.push_str(&format!("RCPT TO:<{r}>\r\n"));
    }
    script.push_str("DATA\r\n");
    let mut buf = Vec::new();
    let mut replies = Vec::new();
    let expect_before_data = 2 + 1 + rcpts.len() + 1; // greeting, EHLO, MAIL, RCPTs, 354
    s.write_all(script.as_bytes()).await.unwrap();
    read_replies(&mut s, &mut buf, &mut replies, expect_before_data).await;
    s.write_all(format!("{body}\r\n.\r\nQUIT\r\n").as_bytes())
        .await
        .unwrap();
    read_replies(&mut s, &mut buf, &mut replies, expect_before_data + 2).await;
    replies
}

/// Polls `cond` every 20 ms for at most `WAIT`.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback port nobody listens on: a provider that is down.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn newsletter(n: usize) -> String {
    format!(
        "Message-ID: <campaign-7.{n}@news.example>\r\nX-Campaign: spring-7\r\nFrom: news@news.example\r\nSubject: Spring news {n}\r\n\r\nHello reader {n}.\r\n..a line that starts with a dot"
    )
}
