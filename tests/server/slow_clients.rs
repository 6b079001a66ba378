//! Slow clients, per-address limits, AUTH failure delay, connection bursts.

use super::*;

/// A bound for replies under the paused clock: generous, because simulated time moves
/// to the next timer whenever every task waits.
const LONG: Duration = Duration::from_secs(3600);

/// How a slow-drip client ended.
struct Dripped {
    /// Everything the server sent.
    text: String,
    /// From connect to the server closing the connection.
    held: Duration,
}

/// A slow-drip client: sends `fast` at once, then `drip` one byte every `every`
/// (cycling), until the server closes the connection or `max_bytes` were dripped.
async fn drip(
    addr: SocketAddr,
    fast: &'static [u8],
    drip: &'static [u8],
    every: Duration,
) -> Dripped {
    const MAX_BYTES: usize = 1000;
    let started = tokio::time::Instant::now();
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (mut rd, mut wr) = s.into_split();
    let reader = tokio::spawn(async move {
        let mut all = Vec::new();
        let _ = timeout(LONG, rd.read_to_end(&mut all)).await;
        (all, started.elapsed())
    });
    wr.write_all(fast).await.unwrap();
    for &b in drip.iter().cycle().take(MAX_BYTES) {
        if reader.is_finished() {
            break;
        }
        tokio::time::sleep(every).await;
        if wr.write_all(&[b]).await.is_err() {
            break;
        }
    }
    let (all, held) = reader.await.unwrap();
    Dripped {
        text: String::from_utf8_lossy(&all).into_owned(),
        held,
    }
}

fn last_line(text: &str) -> &str {
    text.trim_end().lines().last().unwrap_or("")
}

/// Issue 8.5: every session slot taken by a client that sends a byte now and then (so
/// the idle timer never fires), each a different way — before MAIL, inside a command
/// line after MAIL, inside DATA. A normal mailer must still get through, within the
/// longest deadline (5 minutes), and each slow client is cut by its own deadline.
#[tokio::test(start_paused = true)]
async fn slow_drip_clients_cannot_hold_every_slot() {
    let srv = start(ServerConfig {
        hostname: "mx.test".into(),
        max_sessions: 3,
        ..ServerConfig::default()
    })
    .await;
    let defaults = ServerConfig::default();
    let every = Duration::from_secs(10);
    let t0 = tokio::time::Instant::now();
    // Complete NOOPs, one byte every 10 s: never a MAIL.
    let pre_mail = tokio::spawn(drip(srv.addr, b"EHLO drip.test\r\n", b"NOOP\r\n", every));
    // After MAIL, a RCPT line that takes 8 minutes to arrive.
    let line = tokio::spawn(drip(
        srv.addr,
        b"EHLO drip.test\r\nMAIL FROM:<drip@x.test>\r\n",
        b"RCPT TO:<a-rather-long-recipient-address@y.test>\r\n",
        every,
    ));
    // Inside DATA, one byte of the body every 10 s.
    let data = tokio::spawn(drip(
        srv.addr,
        b"EHLO drip.test\r\nMAIL FROM:<drip@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n",
        b"Subject: slow\r\n\r\nslow body\r\n",
        every,
    ));
    for _ in 0..100 {
        if srv.stats.active() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(srv.stats.active(), 3, "every slot taken by a slow client");

    // The mailer retries every 5 s while the slots are full.
    let mut refused = 0;
    let through_after = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(900),
            "the mailer never got a session ({refused} times 421)"
        );
        let s = TcpStream::connect(srv.addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut c = Client::new(s);
        let g = c.reply_within(LONG).await;
        if g.code == 421 {
            is(&g, 421, "4.3.2");
            refused += 1;
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        }
        assert_eq!(g.code, 220);
        assert_eq!(c.cmd_within("EHLO mailer.test", LONG).await.code, 250);
        is(
            &c.cmd_within("MAIL FROM:<news@x.test>", LONG).await,
            250,
            "2.1.0",
        );
        is(
            &c.cmd_within("RCPT TO:<reader@y.test>", LONG).await,
            250,
            "2.1.5",
        );
        assert_eq!(c.cmd_within("DATA", LONG).await.code, 354);
        c.send(b"Subject: news\r\n\r\nhello\r\n.\r\n").await;
        is(&c.reply_within(LONG).await, 250, "2.0.0");
        is(&c.cmd_within("QUIT", LONG).await, 221, "2.0.0");
        break t0.elapsed();
    };
    assert!(refused > 0, "the slots were full when the mailer came");
    assert!(
        through_after <= defaults.command_timeout + Duration::from_secs(60),
        "the mailer got through only after {through_after:?}"
    );

    let pre_mail = pre_mail.await.unwrap();
    assert_eq!(
        last_line(&pre_mail.text),
        "421 4.4.2 Timeout: no MAIL FROM in time",
        "{}",
        pre_mail.text
    );
    let line = line.await.unwrap();
    assert_eq!(
        last_line(&line.text),
        "421 4.4.2 Timeout waiting for a complete command line",
        "{}",
        line.text
    );
    let data = data.await.unwrap();
    assert_eq!(
        last_line(&data.text),
        "421 4.4.2 Timeout waiting for message data",
        "{}",
        data.text
    );
    // Each held its slot no longer than its deadline (plus one drip interval of slack).
    for (d, limit) in [
        (&pre_mail, defaults.pre_mail_timeout),
        (&line, defaults.command_timeout),
        (&data, defaults.data_block_timeout),
    ] {
        assert!(
            d.held >= limit && d.held <= limit + 3 * every,
            "held {:?}, deadline {limit:?}: {}",
            d.held,
            d.text
        );
    }
    // Only the mailer's message was relayed.
    assert_eq!(
        srv.rec.messages(),
        vec![b"Subject: news\r\n\r\nhello\r\n".to_vec()]
    );
    srv.stop().await;
}

/// A body that keeps arriving at a real pace is not cut by the data block deadline,
/// however long the whole message takes: each 64 KiB block restarts it.
#[tokio::test(start_paused = true)]
async fn data_block_deadline_allows_a_slow_but_steady_message() {
    let srv = start(ServerConfig {
        hostname: "mx.test".into(),
        data_block_timeout: Duration::from_secs(60),
        ..ServerConfig::default()
    })
    .await;
    let mut c = srv.connect().await;
    c.cmd_within("EHLO client.test", LONG).await;
    c.cmd_within("MAIL FROM:<a@x.test>", LONG).await;
    c.cmd_within("RCPT TO:<b@y.test>", LONG).await;
    assert_eq!(c.cmd_within("DATA", LONG).await.code, 354);
    // 4 KiB every 2 s: a 64 KiB block in 32 s, the whole 256 KiB in over 2 minutes.
    let line = format!("{}\r\n", "x".repeat(998));
    let chunk = line.repeat(4);
    let started = tokio::time::Instant::now();
    for _ in 0..64 {
        c.send(chunk.as_bytes()).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    c.send(b".\r\n").await;
    is(&c.reply_within(LONG).await, 250, "2.0.0");
    assert!(started.elapsed() > Duration::from_secs(120));
    assert_eq!(srv.rec.messages()[0].len(), 64 * chunk.len());
    srv.stop().await;
}

#[tokio::test]
async fn sessions_per_address_are_capped_off_loopback_only() {
    let cap = ServerConfig {
        max_sessions_per_ip: 2,
        ..cfg()
    };
    // A public listener (rules forced on, as on a non-loopback address).
    let srv = start_with(cap.clone(), true).await;
    let mut a = srv.connect().await;
    let _b = srv.connect().await;
    let s = timeout(WAIT, TcpStream::connect(srv.addr))
        .await
        .unwrap()
        .unwrap();
    let mut third = Client::new(s);
    let r = third.reply().await;
    is(&r, 421, "4.7.0");
    third.assert_closed().await;
    assert_eq!(srv.stats.refused_per_ip(), 1);
    // A place frees up when a session from that address ends.
    is(&a.cmd("QUIT").await, 221, "2.0.0");
    a.assert_closed().await;
    let mut got_in = false;
    for _ in 0..50 {
        let s = TcpStream::connect(srv.addr).await.unwrap();
        if Client::new(s).reply().await.code == 220 {
            got_in = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(got_in);
    srv.stop().await;

    // On loopback the local mailer may open as many sessions as max_sessions.
    let srv = start(cap).await;
    let _a = srv.connect().await;
    let _b = srv.connect().await;
    let _c = srv.connect().await;
    assert_eq!(srv.stats.refused_per_ip(), 0);
    srv.stop().await;
}

#[tokio::test(start_paused = true)]
async fn failed_auth_is_answered_after_a_delay_off_loopback() {
    let pki = pki();
    let conf = ServerConfig {
        tls: Some(pki.tls.clone()),
        users: alice(),
        auth_failure_delay: Duration::from_secs(3),
        ..cfg()
    };
    let wrong = format!("AUTH PLAIN {}", b64(b"\0alice\0guess"));
    let right = format!("AUTH PLAIN {}", b64(b"\0alice\0Sup3rS3cretPw"));

    let srv = start_with(conf.clone(), true).await;
    let mut c = srv.connect().await;
    c.cmd_within("EHLO client.test", LONG).await;
    is(&c.cmd_within("STARTTLS", LONG).await, 220, "2.0.0");
    let mut t = tls_upgrade(c, &pki).await;
    t.cmd_within("EHLO client.test", LONG).await;
    for _ in 0..2 {
        let sent = tokio::time::Instant::now();
        is(&t.cmd_within(&wrong, LONG).await, 535, "5.7.8");
        assert!(
            sent.elapsed() >= Duration::from_secs(3),
            "{:?}",
            sent.elapsed()
        );
    }
    // Success is not delayed.
    let sent = tokio::time::Instant::now();
    is(&t.cmd_within(&right, LONG).await, 235, "2.7.0");
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
    srv.stop().await;

    // On loopback there is no delay.
    let srv = start(conf).await;
    let mut c = srv.connect().await;
    c.cmd_within("EHLO client.test", LONG).await;
    let sent = tokio::time::Instant::now();
    is(&c.cmd_within(&wrong, LONG).await, 535, "5.7.8");
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
    srv.stop().await;
}

/// Issue 8.6: 1000 connections at once. They all fit in the listen backlog before the
/// server accepts a single one (a backlog of 128 leaves the rest hanging in SYN
/// retries, or half-open with no greeting), and once it runs each gets a reply: a
/// greeting, or 421 beyond `max_sessions` — never silence.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_1000_connections_is_answered_every_one() {
    const N: usize = 1000;
    support::client::allow_open_files(4 * N as libc::rlim_t);
    let conf = ServerConfig {
        hostname: "mx.test".into(),
        ..ServerConfig::default()
    };
    let listener =
        mailvalve::server::bind("127.0.0.1:0".parse().unwrap(), conf.listen_backlog).unwrap();
    let addr = listener.local_addr().unwrap();

    // Nothing accepts yet: every connection must be queued by the kernel.
    let mut connects = tokio::task::JoinSet::new();
    for _ in 0..N {
        connects.spawn(TcpStream::connect(addr));
    }
    let mut clients = Vec::with_capacity(N);
    let all = timeout(Duration::from_secs(30), async {
        while let Some(c) = connects.join_next().await {
            clients.push(c.unwrap().unwrap());
        }
    })
    .await;
    assert!(
        all.is_ok(),
        "only {} of {N} connections got through the listen backlog",
        clients.len()
    );

    let rec = Recorder::default();
    let server = Server::new(Arc::new(conf.clone()), Arc::new(rec)).unwrap();
    let stats = server.stats();
    let stop = CancellationToken::new();
    let task = tokio::spawn(server.serve(listener, stop.clone()));

    let mut reads = tokio::task::JoinSet::new();
    for s in clients {
        reads.spawn(async move {
            let mut c = Client::new(s);
            let r = c.reply_within(Duration::from_secs(60)).await;
            (r, c)
        });
    }
    let (mut greeted, mut busy, mut keep) = (0, 0, Vec::new());
    while let Some(done) = reads.join_next().await {
        let (r, c) = done.unwrap();
        match r.code {
            220 => greeted += 1,
            421 => {
                is(&r, 421, "4.3.2");
                busy += 1;
            }
            other => panic!("unexpected reply {other}: {r}"),
        }
        keep.push(c);
    }
    assert_eq!(greeted + busy, N, "every connection got a reply");
    assert_eq!(greeted, conf.max_sessions);
    assert_eq!(stats.refused(), (N - conf.max_sessions) as u64);
    drop(keep);
    stop.cancel();
    timeout(WAIT, task).await.unwrap().unwrap().unwrap();
}
