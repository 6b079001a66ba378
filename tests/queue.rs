//! Queue mode end to end over real loopback TCP: a raw mailer → mailvalve's server →
//! the queue relay (durable spool) → the delivery engine → the upstream admission stack
//! → the scripted provider (`support::provider`). Checks what the mailer is told, what
//! arrives, what stays queued, what is bounced and what is logged. Every wait is bounded.

mod support;

use mailvalve::config::{Config, Mode, UpstreamConfig};
use mailvalve::queue::{RcptState, Spool};
use mailvalve::relay::{Relay, RunningRelay};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use support::provider::Provider;
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

async fn read_replies(s: &mut TcpStream, buf: &mut Vec<u8>, out: &mut Vec<String>, n: usize) {
    let deadline = Instant::now() + WAIT;
    while out.len() < n {
        while let Some(pos) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..pos]).to_string();
            buf.drain(..pos + 2);
            if line.as_bytes().get(3) != Some(&b'-') {
                out.push(line);
            }
        }
        if out.len() >= n {
            break;
        }
        let mut chunk = [0u8; 4096];
        let k = timeout(deadline - Instant::now(), s.read(&mut chunk))
            .await
            .expect("reply in time")
            .unwrap();
        assert!(k > 0, "connection closed; replies so far {out:?}");
        buf.extend_from_slice(&chunk[..k]);
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

#[tokio::test]
async fn queued_then_delivered_with_per_recipient_outcomes_and_a_bounce() {
    let dir = tempfile::tempdir().unwrap();
    let p = Provider::builder()
        .rcpt_reply(
            "gone@example.org",
            "550 5.1.1 <gone@example.org>: user unknown",
        )
        .rcpt_reply(
            "busy@example.org",
            "450 4.2.1 Mailbox busy, try again in 1 hour",
        )
        .start()
        .await;
    let mv = start(config(dir.path(), p.upstream_config())).await;

    let replies = mv
        .campaign(
            &["ok@example.org", "gone@example.org", "busy@example.org"],
            1,
        )
        .await;
    // The mailer is told "queued" for every recipient: the provider is not consulted.
    assert!(replies[2].starts_with("250"), "{replies:?}");
    assert!(
        replies[3..6].iter().all(|r| r.starts_with("250")),
        "{replies:?}"
    );
    let queued = &replies[7];
    assert!(
        queued.starts_with("250 2.0.0 Ok: queued as "),
        "{replies:?}"
    );

    // The message and a bounce report for gone@ arrive at the provider.
    eventually("message and bounce report delivered", || {
        p.messages().len() >= 2
    })
    .await;
    let msgs = p.messages();
    let original = String::from_utf8_lossy(&msgs[0]).to_string();
    assert!(original.contains("Message-ID: <campaign-7.1@news.example>"));
    assert!(
        original.contains("\r\n.a line that starts with a dot")
            && !original.contains("\r\n..a line"),
        "unstuffed once on the way in, re-stuffed on the way out: {original}"
    );
    let dsn = String::from_utf8_lossy(&msgs[1]).to_string();
    assert!(dsn.contains("report-type=delivery-status"), "{dsn}");
    assert!(
        dsn.contains("Final-Recipient: rfc822; gone@example.org"),
        "{dsn}"
    );
    assert!(
        dsn.contains("Message-ID: <campaign-7.1@news.example>"),
        "{dsn}"
    );
    assert!(dsn.contains("X-Campaign: spring-7"), "{dsn}");
    assert!(
        !dsn.contains("busy@example.org"),
        "deferred is not failed: {dsn}"
    );

    // The bounce goes to the envelope sender from the null sender.
    let lines = p.lines();
    assert!(lines.iter().any(|l| l == "MAIL FROM:<>"), "{lines:?}");
    assert!(
        lines.iter().any(|l| l == "RCPT TO:<news@news.example>"),
        "{lines:?}"
    );

    // busy@ stays queued: one counted attempt, the provider's reply kept, not due for
    // at least the hinted hour.
    eventually("bounce removed, message with busy@ left", || {
        mv.spool.len() == 1
    })
    .await;
    let left = mv.spool.list().unwrap();
    let m = &left[0];
    assert!(
        matches!(m.rcpts[0].state, RcptState::Delivered { .. }),
        "{m:?}"
    );
    assert!(
        matches!(m.rcpts[1].state, RcptState::Failed { .. }),
        "{m:?}"
    );
    match &m.rcpts[2].state {
        RcptState::Pending {
            attempts,
            next_attempt,
            last_reply,
        } => {
            assert_eq!(*attempts, 1);
            assert!(*next_attempt >= m.received + 3_600_000, "{m:?}");
            assert_eq!(last_reply.as_ref().map(|r| r.code), Some(450));
        }
        s => panic!("busy@ should be pending: {s:?}"),
    }

    // The delivery log has one line per outcome; the next campaign's RCPT to gone@ is
    // answered locally.
    let log = std::fs::read_to_string(dir.path().join("spool/delivery.log")).unwrap();
    let actions: Vec<String> = log
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!(
                "{} {}",
                v["rcpt"].as_str().unwrap(),
                v["action"].as_str().unwrap()
            )
        })
        .collect();
    for want in [
        "ok@example.org delivered",
        "gone@example.org failed",
        "busy@example.org deferred",
        "news@news.example delivered",
    ] {
        assert!(
            actions.iter().any(|a| a == want),
            "{want} not in {actions:?}"
        );
    }
    let before = p.lines().len();
    let replies = mv
        .campaign(&["gone@example.org", "ok@example.org"], 2)
        .await;
    assert!(replies[3].starts_with("550 5.1.1"), "{replies:?}");
    eventually("second message delivered", || p.messages().len() >= 3).await;
    assert!(
        !p.lines()[before..].iter().any(|l| l.contains("gone@")),
        "a suppressed address never reaches the provider"
    );
    mv.stop().await;
}

#[tokio::test]
async fn recipients_beyond_the_per_message_limit_are_split() {
    let dir = tempfile::tempdir().unwrap();
    let p = Provider::builder().start().await;
    let mut cfg = config(dir.path(), p.upstream_config());
    cfg.upstream.limits.recipients_per_message = Some(2);
    let mv = start(cfg).await;
    let rcpts = [
        "a@x.example",
        "b@x.example",
        "c@x.example",
        "d@x.example",
        "e@x.example",
    ];
    let replies = mv.campaign(&rcpts, 1).await;
    assert!(replies.last().unwrap().starts_with("221"), "{replies:?}");
    eventually("three transactions", || p.messages().len() >= 3).await;
    eventually("spool empty", || mv.spool.is_empty()).await;
    let rcpt_lines = p.lines().iter().filter(|l| l.starts_with("RCPT")).count();
    assert_eq!(rcpt_lines, 5);
    assert_eq!(p.messages().len(), 3, "2 + 2 + 1 recipients");
    mv.stop().await;
}

#[tokio::test]
async fn a_spent_quota_holds_the_queue_without_using_an_attempt_or_bouncing() {
    let dir = tempfile::tempdir().unwrap();
    let p = Provider::builder()
        .mail_reply("550 5.4.5 Daily user sending quota exceeded")
        .start()
        .await;
    let mv = start(config(dir.path(), p.upstream_config())).await;
    let replies = mv.campaign(&["ok@example.org"], 1).await;
    assert!(
        replies[5].starts_with("250 2.0.0 Ok: queued"),
        "{replies:?}"
    );
    eventually("provider asked once", || {
        p.lines().iter().any(|l| l.starts_with("MAIL FROM"))
    })
    .await;
    // Give the engine time to (wrongly) retry or bounce.
    sleep(Duration::from_millis(500)).await;
    let mails = p
        .lines()
        .iter()
        .filter(|l| l.starts_with("MAIL FROM"))
        .count();
    assert_eq!(mails, 1, "paused: no second attempt");
    let left = mv.spool.list().unwrap();
    assert_eq!(left.len(), 1, "nothing lost, no bounce queued");
    assert_eq!(
        left[0].rcpts[0].state,
        RcptState::Pending {
            attempts: 0,
            next_attempt: 0,
            last_reply: None
        },
        "a pause uses up no attempt and does not push the schedule out"
    );
    mv.stop().await;
}

#[tokio::test]
async fn queued_mail_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // First run: the provider is down (nothing listens on its port).
    let port = closed_port();
    let p = Provider::builder().start().await;
    let mut down = p.upstream_config();
    down.port = port;
    let mv = start(config(dir.path(), down)).await;
    for n in 0..5 {
        let r = mv.campaign(&["ok@example.org"], n).await;
        assert!(r[5].starts_with("250 2.0.0 Ok: queued"), "{r:?}");
    }
    assert_eq!(mv.spool.len(), 5);
    mv.stop().await;
    // Second run, provider up: everything recovered and delivered, once.
    let mv = start(config(dir.path(), p.upstream_config())).await;
    // Connection failures backed the messages off (up to 30 s): make them due now, as
    // `mailvalve queue retry --all` does.
    mv.spool
        .retry_now(mailvalve::queue::Which::All)
        .await
        .unwrap();
    eventually("all five delivered", || p.messages().len() >= 5).await;
    eventually("spool empty", || mv.spool.is_empty()).await;
    assert_eq!(p.messages().len(), 5);
    mv.stop().await;
}

#[tokio::test]
async fn a_daily_quota_is_not_reset_by_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let p = Provider::builder().start().await;
    let mut cfg = config(dir.path(), p.upstream_config());
    cfg.upstream.limits.messages_per_day = Some(3);
    cfg.upstream.admission_wait = Duration::from_millis(300);
    let mv = start(cfg.clone()).await;
    for n in 0..3 {
        mv.campaign(&["ok@example.org"], n).await;
    }
    eventually("the day's three delivered", || p.messages().len() == 3).await;
    mv.stop().await; // saves the quota ledger
    let mv = start(cfg).await;
    let r = mv.campaign(&["ok@example.org"], 9).await;
    assert!(r[5].starts_with("250 2.0.0 Ok: queued"), "{r:?}");
    // Several admission waits pass: the quota is spent, the fourth stays queued.
    sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        p.messages().len(),
        3,
        "a restart must not hand out the spent quota"
    );
    assert_eq!(mv.spool.len(), 1);
    mv.stop().await;
}

/// `mailvalve queue -c FILE ARGS...`: (exit status success, stdout + stderr).
fn queue_cli(file: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(support::harness::mailvalve())
        .arg("queue")
        .arg("-c")
        .arg(file)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `queue_cli` on a blocking thread, so that an instance running on this test's runtime
/// keeps serving while the CLI talks to it over the control socket.
async fn queue_cli_off_thread(file: &Path, args: &[&str]) -> (bool, String) {
    let file = file.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        queue_cli(&file, &args)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn operator_commands_offline_and_against_the_running_instance() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let p = Provider::builder().start().await;
    let mut down = p.upstream_config();
    down.port = port;
    let cfg = config(dir.path(), down);
    let file = dir.path().join("mailvalve.toml");
    std::fs::write(
        &file,
        format!(
            "[queue]\ndir = {:?}\n[suppression]\npath = {:?}\n",
            cfg.queue.dir, cfg.suppression.path
        ),
    )
    .unwrap();
    let cli = |args: &[&str]| queue_cli(&file, args);
    let mv = start(cfg.clone()).await;
    let r = mv.campaign(&["ok@example.org"], 1).await;
    let id = r[5].rsplit(' ').next().unwrap().to_string();
    // The running instance answers over its control socket.
    let (ok, out) = queue_cli_off_thread(&file, &["list"]).await;
    assert!(
        ok && out.contains(&id) && out.contains("1 message(s)"),
        "{out}"
    );
    let (ok, out) = queue_cli_off_thread(&file, &["status"]).await;
    assert!(ok && out.contains("instance: running"), "{out}");
    let (ok, out) = queue_cli_off_thread(&file, &["pause"]).await;
    assert!(ok && out.contains("paused"), "{out}");
    mv.stop().await;

    // Offline: the spool is opened directly; the pause survived.
    let (ok, out) = cli(&["show", &id]);
    assert!(ok && out.contains("ok@example.org  pending"), "{out}");
    let (ok, out) = cli(&["status"]);
    assert!(
        ok && out.contains("operator pause: on") && out.contains("not running"),
        "{out}"
    );
    let (ok, out) = cli(&["show", "0000000000000"]);
    assert!(!ok && out.contains("no message"), "{out}");
    let (ok, out) = cli(&["retry"]);
    assert!(!ok && out.contains("--all"), "{out}");

    // Restarted with the provider up, still paused: nothing goes out until resume.
    let mv = start(config(dir.path(), p.upstream_config())).await;
    mv.spool
        .retry_now(mailvalve::queue::Which::All)
        .await
        .unwrap();
    sleep(Duration::from_millis(700)).await;
    assert!(p.messages().is_empty(), "operator pause survives a restart");
    let (ok, out) = queue_cli_off_thread(&file, &["resume"]).await;
    assert!(ok, "{out}");
    eventually("delivered after resume", || p.messages().len() == 1).await;
    mv.stop().await;
}

#[tokio::test]
async fn a_failed_recipient_is_posted_to_the_bounce_webhook() {
    let dir = tempfile::tempdir().unwrap();
    // A one-request HTTP server that records the request and answers 200.
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhooks/bounce", http.local_addr().unwrap());
    let got = tokio::spawn(async move {
        let (mut s, _) = http.accept().await.unwrap();
        let mut req = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.unwrap();
            req.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&req).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= len || n == 0 {
                    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .await
                        .unwrap();
                    return text;
                }
            }
            assert!(n > 0, "client closed early");
        }
    });
    let p = Provider::builder()
        .rcpt_reply("gone@example.org", "550 5.1.1 user unknown")
        .start()
        .await;
    let mut cfg = config(dir.path(), p.upstream_config());
    cfg.queue.webhook = Some(mailvalve::config::webhook::WebhookConfig {
        url,
        username: Some("listmonk".into()),
        password: Some(mailvalve::config::Secret::new("api-token")),
        ..Default::default()
    });
    let mv = start(cfg).await;
    let body = format!(
        "X-Listmonk-Campaign: 5f1c2f8e-7c4a-4e8b-9a55-0d6e3b1f2a90\r\n{}",
        newsletter(1)
    );
    send(mv.addr, "news@news.example", &["gone@example.org"], &body).await;
    let req = timeout(WAIT, got).await.expect("webhook called").unwrap();
    assert!(req.starts_with("POST /webhooks/bounce HTTP/1.1"), "{req}");
    assert!(req.contains("Authorization: Basic "), "{req}");
    let json: serde_json::Value =
        serde_json::from_str(req.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(json["email"], "gone@example.org");
    assert_eq!(json["type"], "hard");
    assert_eq!(
        json["campaign_uuid"],
        "5f1c2f8e-7c4a-4e8b-9a55-0d6e3b1f2a90"
    );
    assert!(
        json["meta"]["reply"].as_str().unwrap().contains("5.1.1"),
        "{json}"
    );
    mv.stop().await;
}

#[tokio::test]
async fn a_bounce_that_fails_is_not_bounced_again() {
    let dir = tempfile::tempdir().unwrap();
    // The provider rejects both the recipient and the sender's own address (where the
    // bounce report would go).
    let p = Provider::builder()
        .rcpt_reply("gone@example.org", "550 5.1.1 user unknown")
        .rcpt_reply("news@news.example", "550 5.1.1 user unknown")
        .start()
        .await;
    let mv = start(config(dir.path(), p.upstream_config())).await;
    mv.campaign(&["gone@example.org"], 1).await;
    eventually("message and its bounce attempted, spool empty", || {
        p.lines()
            .iter()
            .filter(|l| l.starts_with("MAIL FROM"))
            .count()
            >= 2
            && mv.spool.is_empty()
    })
    .await;
    sleep(Duration::from_millis(300)).await;
    let mails = p
        .lines()
        .iter()
        .filter(|l| l.starts_with("MAIL FROM"))
        .count();
    assert_eq!(
        mails, 2,
        "the original and one bounce report, no bounce of the bounce"
    );
    assert!(mv.spool.is_empty());
    mv.stop().await;
}

#[tokio::test]
async fn a_failed_message_from_the_null_sender_gets_no_bounce_report() {
    let dir = tempfile::tempdir().unwrap();
    let p = Provider::builder()
        .rcpt_reply(
            "gone@example.org",
            "550 5.1.1 <gone@example.org>: user unknown",
        )
        .start()
        .await;
    let mv = start(config(dir.path(), p.upstream_config())).await;
    // A bounce (or any other message) from the null sender, to an address the provider
    // rejects for good.
    let replies = send(mv.addr, "", &["gone@example.org"], &newsletter(1)).await;
    assert!(replies[2].starts_with("250"), "MAIL FROM:<> {replies:?}");
    assert!(
        replies[5].starts_with("250 2.0.0 Ok: queued as "),
        "{replies:?}"
    );
    eventually("the recipient failed and the message is gone", || {
        mv.spool.is_empty() && p.lines().iter().any(|l| l.starts_with("RCPT TO:<gone@"))
    })
    .await;
    // Give the engine time to (wrongly) send a bounce report.
    sleep(Duration::from_millis(1000)).await;
    let lines = p.lines();
    let mails: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("MAIL FROM"))
        .collect();
    println!(
        "null sender: {} MAIL at the provider, {} messages, spool {} messages",
        mails.len(),
        p.messages().len(),
        mv.spool.len()
    );
    assert_eq!(
        mails.len(),
        1,
        "exactly the one attempt, no bounce: {lines:?}"
    );
    assert!(mails[0].starts_with("MAIL FROM:<>"), "{mails:?}");
    assert!(p.messages().is_empty(), "no DATA: {lines:?}");
    assert!(mv.spool.is_empty(), "no bounce report queued");
    let log = std::fs::read_to_string(dir.path().join("spool/delivery.log")).unwrap();
    let actions: Vec<(String, String)> = log
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["rcpt"].as_str().unwrap().to_string(),
                v["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [("gone@example.org".to_string(), "failed".to_string())],
        "one outcome, no bounce delivered"
    );
    mv.stop().await;
}

#[tokio::test]
async fn a_2xx_to_data_is_never_taken_as_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let p = Provider::builder()
        .data_reply("250 2.0.0 Ok whatever")
        .start()
        .await;
    let mv = start(config(dir.path(), p.upstream_config())).await;
    mv.campaign(&["ok@example.org"], 1).await;
    eventually("DATA tried", || p.lines().iter().any(|l| l == "DATA")).await;
    eventually("outcome recorded", || {
        mv.spool
            .list()
            .unwrap()
            .first()
            .is_some_and(|m| matches!(m.rcpts[0].state, RcptState::Pending { attempts: 1, .. }))
    })
    .await;
    assert!(p.messages().is_empty(), "no message was ever sent");
    assert_eq!(
        mv.spool.len(),
        1,
        "kept for a retry, not recorded as delivered"
    );
    mv.stop().await;
}

#[tokio::test]
async fn a_blocked_sender_ip_holds_the_queue_and_never_bounces() {
    let dir = tempfile::tempdir().unwrap();
    let p = Provider::builder()
        .greeting("554 5.7.1 Service unavailable; client host blocked")
        .start()
        .await;
    let mv = start(config(dir.path(), p.upstream_config())).await;
    mv.campaign(&["ok@example.org"], 1).await;
    eventually("provider contacted", || p.connections_total() >= 1).await;
    sleep(Duration::from_millis(500)).await;
    let m = mv.spool.list().unwrap();
    assert_eq!(m.len(), 1, "nothing bounced or lost: {m:?}");
    match &m[0].rcpts[0].state {
        RcptState::Pending { attempts, .. } => assert_eq!(*attempts, 0, "{m:?}"),
        s => panic!("must stay pending: {s:?}"),
    }
    mv.stop().await;
}

/// Issue 8.6: a 5xx to the end of DATA of a transaction with several recipients cannot
/// say which address is bad: the message fails for all of them, none is suppressed (a
/// later RCPT to them is not refused locally) and the webhook reports none as "hard".
#[tokio::test]
async fn a_5xx_after_data_for_several_recipients_fails_all_and_suppresses_none() {
    let dir = tempfile::tempdir().unwrap();
    // An HTTP server that records every request body and answers 200.
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhooks/bounce", http.local_addr().unwrap());
    let seen = Arc::new(std::sync::Mutex::new(Vec::<serde_json::Value>::new()));
    let s2 = seen.clone();
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = http.accept().await else {
                return;
            };
            let seen = s2.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut chunk = [0u8; 4096];
                // Bounded: a request is a few hundred bytes.
                for _ in 0..100 {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&req).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            seen.lock()
                                .unwrap()
                                .push(serde_json::from_str(body).unwrap());
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                                .await;
                            return;
                        }
                    }
                }
            });
        }
    });
    let p = Provider::builder()
        .final_reply("550 5.1.1 <a@example.org>: Recipient address rejected: User unknown")
        .start()
        .await;
    let mut cfg = config(dir.path(), p.upstream_config());
    cfg.queue.bounces = false;
    cfg.queue.webhook = Some(mailvalve::config::webhook::WebhookConfig {
        url,
        ..Default::default()
    });
    let mv = start(cfg).await;
    let replies = mv.campaign(&["a@example.org", "b@example.org"], 1).await;
    assert!(
        replies[6].starts_with("250 2.0.0 Ok: queued as"),
        "{replies:?}"
    );
    eventually("both recipients failed and reported", || {
        seen.lock().unwrap().len() >= 2 && mv.spool.is_empty()
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    let mut emails: Vec<&str> = seen.iter().map(|j| j["email"].as_str().unwrap()).collect();
    emails.sort();
    assert_eq!(emails, vec!["a@example.org", "b@example.org"]);
    for j in &seen {
        assert_eq!(j["type"], "soft", "{j}");
        assert_eq!(j["meta"]["kind"], "message", "{j}");
    }
    let log = std::fs::read_to_string(dir.path().join("spool/delivery.log")).unwrap();
    assert_eq!(log.matches("\"action\":\"failed\"").count(), 2, "{log}");
    // Not suppressed: a new message to them is accepted at RCPT, not refused locally.
    let replies = mv.campaign(&["a@example.org", "b@example.org"], 2).await;
    assert!(
        replies[3].starts_with("250") && replies[4].starts_with("250"),
        "{replies:?}"
    );
    server.abort();
    mv.stop().await;
}
