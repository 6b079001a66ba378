//! Issue 8.4, "whole messages in memory", over real loopback TCP:
//!
//! * queue mode writes DATA into the spool's `tmp/` file while it arrives (the file
//!   grows before the mailer has sent the end of the message), and a refused message
//!   (too big, framing error, lost session) leaves nothing behind;
//! * passthrough keeps each message whole until its end, within one memory budget for
//!   all sessions (`server.passthrough_buffer`): a session that would exceed it waits
//!   (`passthrough_buffer_wait`), then gets `451 4.3.1`, and the session goes on.
//!
//! Every wait is bounded; nothing asserts how long something took.

mod support;

use mailvalve::config::{Config, Mode, ServerConfig, UpstreamConfig};
use mailvalve::relay::{Passthrough, Relay, RunningRelay};
use mailvalve::server::relay::BufferBudget;
use mailvalve::upstream::{Admission, Settings};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use support::provider::Provider;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);

/// A raw mailer connection.
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

    async fn send(&mut self, bytes: &[u8]) {
        timeout(WAIT, self.s.write_all(bytes))
            .await
            .unwrap()
            .unwrap();
    }

    /// Reads `n` replies (the last line of each).
    async fn replies(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        let deadline = Instant::now() + WAIT;
        while out.len() < n {
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
            assert!(k > 0, "connection closed early; got {out:?}");
            self.buf.extend_from_slice(&chunk[..k]);
        }
        out
    }

    /// EHLO, MAIL, RCPT, DATA; asserts 250s and the 354.
    async fn start_data(&mut self) {
        self.send(
            b"EHLO mailer.test\r\nMAIL FROM:<news@news.example>\r\n\
              RCPT TO:<reader@example.net>\r\nDATA\r\n",
        )
        .await;
        let r = self.replies(4).await;
        assert!(r[..3].iter().all(|l| l.starts_with("250")), "{r:?}");
        assert!(r[3].starts_with("354"), "{r:?}");
    }
}

/// `n` bytes of message lines (78 characters and CRLF each), never starting with a dot.
fn body(n: usize) -> Vec<u8> {
    let line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz-body\r\n";
    let mut v = b"Subject: big\r\n\r\n".to_vec();
    while v.len() + line.len() <= n {
        v.extend_from_slice(line);
    }
    v
}

/// Polls `cond` every 20 ms for at most `WAIT`; true if it held.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(20)).await;
    }
}

/// (name, size) of the files in `dir`.
fn files(dir: &Path) -> Vec<(String, u64)> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                    (e.file_name().to_string_lossy().into_owned(), len)
                })
                .collect()
        })
        .unwrap_or_default()
}

struct QueueRig {
    addr: SocketAddr,
    spool: PathBuf,
    relay: RunningRelay,
    _dir: tempfile::TempDir,
}

/// Queue mode, the provider down (nothing leaves the spool), `max_message_size` 4 MiB.
async fn queue_mode() -> QueueRig {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut cfg = Config {
        mode: Mode::Queue,
        upstream: UpstreamConfig {
            profile: "local".into(),
            host: "127.0.0.1".into(),
            port,
            tls: mailvalve::config::TlsMode::None,
            ..UpstreamConfig::default()
        },
        ..Config::default()
    };
    cfg.queue.dir = dir.path().join("spool");
    cfg.suppression.path = dir.path().join("suppression.redb");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    cfg.server.listen = listener.local_addr().unwrap();
    cfg.server.max_message_size = 4 * 1024 * 1024;
    cfg.server.shutdown_grace = Duration::from_millis(500);
    let spool = cfg.queue.dir.clone();
    let relay = Relay::new(cfg)
        .unwrap()
        .start(listener, CancellationToken::new())
        .await
        .unwrap();
    QueueRig {
        addr: relay.local_addr(),
        spool,
        relay,
        _dir: dir,
    }
}

impl QueueRig {
    fn tmp(&self) -> Vec<(String, u64)> {
        files(&self.spool.join("tmp"))
    }
    fn msg(&self) -> Vec<(String, u64)> {
        files(&self.spool.join("msg"))
    }
    async fn stop(self) {
        timeout(WAIT, self.relay.stop()).await.unwrap().unwrap();
    }
}

/// Queue mode: the body is on disk while DATA is still arriving (before the fix the
/// whole message was collected in a `Vec` and written at its end, so `tmp/` stayed
/// empty until then), and the committed message is complete.
#[tokio::test]
async fn queue_mode_streams_data_into_the_spool_file() {
    let q = queue_mode().await;
    let mut c = Raw::connect(q.addr).await;
    c.start_data().await;
    let msg = body(3 * 1024 * 1024);
    let (first, rest) = msg.split_at(2 * 1024 * 1024);
    c.send(first).await;
    let streamed = eventually(|| q.tmp().iter().any(|(_, len)| *len >= 1024 * 1024)).await;
    assert!(
        streamed,
        "2 MiB sent, the end of DATA not yet: nothing of it in tmp/: {:?}",
        q.tmp()
    );
    assert!(q.msg().is_empty(), "committed before the end of DATA");
    c.send(rest).await;
    c.send(b".\r\nQUIT\r\n").await;
    let r = c.replies(2).await;
    assert!(r[0].starts_with("250 2.0.0 Ok: queued as "), "{r:?}");
    let id = r[0].rsplit(' ').next().unwrap().to_string();
    assert!(q.tmp().is_empty(), "{:?}", q.tmp());
    assert_eq!(q.msg(), vec![(id.clone(), msg.len() as u64)]);
    let stored = std::fs::read(q.spool.join("msg").join(&id)).unwrap();
    assert!(stored == msg, "stored body differs from the message sent");
    q.stop().await;
}

/// Queue mode: a message refused at the end of DATA (too big), one with a framing
/// error, and one whose mailer went away mid-DATA leave nothing in the spool.
#[tokio::test]
async fn a_refused_message_leaves_nothing_behind() {
    let q = queue_mode().await;

    // Too big: read to its end, 552, the session goes on.
    let mut c = Raw::connect(q.addr).await;
    c.start_data().await;
    c.send(&body(5 * 1024 * 1024)).await;
    c.send(b".\r\nRSET\r\n").await;
    let r = c.replies(2).await;
    assert!(r[0].starts_with("552"), "{r:?}");
    assert!(r[1].starts_with("250"), "{r:?}");
    assert!(q.tmp().is_empty(), "{:?}", q.tmp());
    assert!(q.msg().is_empty());

    // A bare LF after half a megabyte: 550 5.5.2 and the session is closed.
    c.send(b"MAIL FROM:<news@news.example>\r\nRCPT TO:<reader@example.net>\r\nDATA\r\n")
        .await;
    let r = c.replies(3).await;
    assert!(r[2].starts_with("354"), "{r:?}");
    c.send(&body(512 * 1024)).await;
    c.send(b"smuggled\n.\n").await;
    let r = c.replies(1).await;
    assert!(r[0].starts_with("550 5.5.2"), "{r:?}");
    assert!(eventually(|| q.tmp().is_empty()).await, "{:?}", q.tmp());

    // The mailer goes away in the middle of DATA.
    let mut c = Raw::connect(q.addr).await;
    c.start_data().await;
    c.send(&body(512 * 1024)).await;
    assert!(eventually(|| !q.tmp().is_empty()).await, "not streamed");
    drop(c);
    assert!(eventually(|| q.tmp().is_empty()).await, "{:?}", q.tmp());
    assert!(q.msg().is_empty(), "{:?}", q.msg());
    q.stop().await;
}

/// Passthrough: one session's message holds most of a 1 MiB budget while the provider
/// takes its time (8 s) with the final reply; a second session's message finds no room, waits
/// `passthrough_buffer_wait`, then gets `451 4.3.1` (before the fix it was buffered
/// without any bound and relayed). The session goes on, and once the first message is
/// through a third one is relayed.
#[tokio::test]
async fn passthrough_buffers_within_one_budget_for_all_sessions() {
    // The provider holds A's final reply long enough for B's whole wait (300 ms) with a
    // wide margin for a loaded machine; our side waits for it (data_end 30 s).
    let p = Provider::builder()
        .final_delay(Duration::from_secs(8))
        .start()
        .await;
    let mut up = p.upstream_config();
    up.timeouts.data_end = Duration::from_secs(30);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = Arc::new(ServerConfig {
        listen: addr,
        max_message_size: 1024 * 1024,
        shutdown_grace: Duration::from_millis(500),
        ..ServerConfig::default()
    });
    let budget = BufferBudget::new(1024 * 1024, Duration::from_millis(300));
    let relay = Arc::new(
        Passthrough::new(Admission::new(Settings::new(up).unwrap())).with_buffer(budget.clone()),
    );
    let stop = CancellationToken::new();
    let s = stop.clone();
    let server = tokio::spawn(async move {
        mailvalve::server::serve(listener, cfg, relay, s)
            .await
            .unwrap();
    });

    // A: 900 KB, relayed; the provider holds its final reply for 8 s.
    let mut a = Raw::connect(addr).await;
    a.start_data().await;
    let big = body(900 * 1024);
    a.send(&big).await;
    a.send(b".\r\n").await;
    // Its DATA reached the provider: the whole body is buffered (and held) by now.
    assert!(
        eventually(|| p.lines().iter().any(|l| l == "DATA")).await,
        "{:?}",
        p.lines()
    );
    assert!(budget.available() < 128 * 1024, "{}", budget.available());

    // B: no room within 300 ms → 451 4.3.1 at the end of its DATA; the session goes on.
    let mut b = Raw::connect(addr).await;
    b.start_data().await;
    b.send(&body(500 * 1024)).await;
    b.send(b".\r\nRSET\r\n").await;
    let r = b.replies(2).await;
    assert!(r[0].starts_with("451 4.3.1"), "{r:?}");
    assert!(r[1].starts_with("250"), "{r:?}");

    // A gets the provider's reply; its room is given back.
    let r = a.replies(1).await;
    assert!(r[0].starts_with("250"), "{r:?}");
    assert!(eventually(|| budget.available() == budget.total()).await);

    // C: relayed.
    let mut c = Raw::connect(addr).await;
    c.start_data().await;
    c.send(&body(500 * 1024)).await;
    c.send(b".\r\n").await;
    let r = c.replies(1).await;
    assert!(r[0].starts_with("250"), "{r:?}");

    let msgs = p.messages();
    assert_eq!(msgs.len(), 2, "A and C arrived, B did not");
    assert_eq!(msgs[0].len(), big.len());
    stop.cancel();
    drop((a, b, c));
    timeout(WAIT, server).await.unwrap().unwrap();
}
