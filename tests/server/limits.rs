//! Limits.

use super::*;

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
