//! ESMTP basics.

use super::*;

#[tokio::test]
async fn ehlo_and_basic_verbs() {
    let srv = start(cfg()).await;
    let mut c = srv.connect().await;

    // Sequence errors before EHLO.
    is(&c.cmd("MAIL FROM:<a@x.test>").await, 503, "5.5.1");
    is(&c.cmd("RCPT TO:<b@y.test>").await, 503, "5.5.1");
    is(&c.cmd("DATA").await, 503, "5.5.1");

    let e = c.cmd("EHLO client.test").await;
    assert_eq!(e.code, 250);
    assert_eq!(
        e.lines,
        vec![
            "mx.test",
            "PIPELINING",
            "SIZE 26214400",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES"
        ]
    );
    is(&c.cmd("NOOP").await, 250, "2.0.0");
    is(&c.cmd("HELP").await, 214, "2.0.0");
    is(&c.cmd("VRFY alice").await, 252, "2.5.2");
    is(&c.cmd("RSET").await, 250, "2.0.0");
    is(&c.cmd("EXPN list").await, 502, "5.5.1");
    is(&c.cmd("FOO").await, 500, "5.5.1");
    is(&c.cmd("RCPT TO:<b@y.test>").await, 503, "5.5.1");
    is(&c.cmd("DATA").await, 503, "5.5.1");
    // No TLS configured, no users: neither is available.
    is(&c.cmd("STARTTLS").await, 502, "5.5.1");
    is(&c.cmd("AUTH PLAIN").await, 502, "5.5.1");
    // Unsupported MAIL parameters (DSN) are refused, not ignored.
    is(&c.cmd("MAIL FROM:<a@x.test> RET=FULL").await, 555, "5.5.4");

    // A transaction with the parameters carried into the envelope.
    is(
        &c.cmd("MAIL FROM:<a@x.test> SIZE=1000 BODY=8BITMIME SMTPUTF8")
            .await,
        250,
        "2.1.0",
    );
    is(&c.cmd("MAIL FROM:<a@x.test>").await, 503, "5.5.1");
    is(&c.cmd("RCPT TO:<b@y.test>").await, 250, "2.1.5");
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(b"Subject: hi\r\n\r\n..dot\r\nbody\r\n.\r\n").await;
    is(&c.reply().await, 250, "2.0.0");
    {
        let envs = srv.rec.0.envelopes.lock().unwrap().clone();
        assert_eq!(
            envs,
            vec![Envelope {
                from: "a@x.test".into(),
                size: Some(1000),
                eight_bit: true,
                smtputf8: true,
            }]
        );
    }
    assert_eq!(
        srv.rec.messages(),
        vec![b"Subject: hi\r\n\r\n.dot\r\nbody\r\n".to_vec()]
    );

    // HELO works too, and resets.
    assert_eq!(c.cmd("HELO client.test").await.code, 250);
    is(&c.cmd("QUIT").await, 221, "2.0.0");
    c.assert_closed().await;
    assert_eq!(
        srv.rec.events().last(),
        Some(&Ev::End),
        "the transaction was ended"
    );
    srv.stop().await;
}

#[tokio::test]
async fn pipelined_rcpts_go_in_one_begin_and_replies_are_verbatim() {
    let srv = start(cfg()).await;
    let mut c = srv.connect().await;
    c.cmd("EHLO client.test").await;
    c.send(
        b"MAIL FROM:<news@x.test>\r\nRCPT TO:<a@y.test>\r\nRCPT TO:<bad1@y.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n",
    )
    .await;
    is(&c.reply().await, 250, "2.1.0");
    is(&c.reply().await, 250, "2.1.5");
    let rejected = c.reply().await;
    assert_eq!(
        rejected,
        rcpt_reply("bad1@y.test"),
        "the provider's reply, verbatim"
    );
    is(&c.reply().await, 250, "2.1.5");
    assert_eq!(c.reply().await.code, 354);
    c.send(b"hello\r\n.\r\n").await;
    assert_eq!(
        c.reply().await,
        Reply::new(250, EnhancedCode::new(2, 0, 0), "Ok: queued as 4F2A")
    );
    assert_eq!(
        srv.rec.events()[0],
        Ev::Begin {
            from: "news@x.test".into(),
            rcpts: vec!["a@y.test".into(), "bad1@y.test".into(), "b@y.test".into()],
        },
        "one upstream round trip for MAIL and its pipelined RCPTs"
    );

    // Later RCPTs arriving together go in one `rcpt` call.
    is(&c.cmd("MAIL FROM:<news@x.test>").await, 250, "2.1.0");
    c.send(b"RCPT TO:<c@y.test>\r\nRCPT TO:<bad2@y.test>\r\nRCPT TO:<d@y.test>\r\n")
        .await;
    is(&c.reply().await, 250, "2.1.5");
    is(&c.reply().await, 550, "5.1.1");
    is(&c.reply().await, 250, "2.1.5");
    let ev = srv.rec.events();
    assert!(ev.contains(&Ev::Rcpt(vec![
        "c@y.test".into(),
        "bad2@y.test".into(),
        "d@y.test".into()
    ])));
    is(&c.cmd("RSET").await, 250, "2.0.0");

    // Nobody accepted: DATA is refused locally.
    is(&c.cmd("MAIL FROM:<news@x.test>").await, 250, "2.1.0");
    is(&c.cmd("RCPT TO:<bad3@y.test>").await, 550, "5.1.1");
    is(&c.cmd("DATA").await, 554, "5.5.1");
    is(&c.cmd("QUIT").await, 221, "2.0.0");
    c.assert_closed().await;
    assert_eq!(srv.rec.messages().len(), 1);
    srv.stop().await;
}

#[tokio::test]
async fn eof_rset_and_quit_end_the_relay_transaction() {
    let srv = start(cfg()).await;
    let ends = |rec: &Recorder| rec.events().iter().filter(|e| **e == Ev::End).count();
    // RSET.
    let mut c = srv.connect().await;
    c.cmd("EHLO client.test").await;
    c.cmd("MAIL FROM:<a@x.test>").await;
    is(&c.cmd("RSET").await, 250, "2.0.0");
    assert_eq!(ends(&srv.rec), 1);
    // QUIT.
    c.cmd("MAIL FROM:<a@x.test>").await;
    c.cmd("RCPT TO:<b@y.test>").await;
    is(&c.cmd("QUIT").await, 221, "2.0.0");
    c.assert_closed().await;
    assert_eq!(ends(&srv.rec), 2);
    // EOF, even mid-DATA.
    let mut c = srv.connect().await;
    c.cmd("EHLO client.test").await;
    c.cmd("MAIL FROM:<a@x.test>").await;
    c.cmd("RCPT TO:<b@y.test>").await;
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(b"half a message\r\n").await;
    drop(c);
    for _ in 0..200 {
        if ends(&srv.rec) == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ends(&srv.rec), 3);
    assert!(srv.rec.messages().is_empty());
    srv.stop().await;
}

#[tokio::test]
async fn refused_mail_answers_pipelined_commands() {
    let srv = start(cfg()).await;
    let mut c = srv.connect().await;
    c.cmd("EHLO client.test").await;
    // A 4xx from the relay: the pipelined RCPTs and DATA get the same 4xx, so a
    // naive mailer retries rather than marking the addresses as bad.
    c.send(b"MAIL FROM:<busy@x.test>\r\nRCPT TO:<a@y.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
        .await;
    for _ in 0..4 {
        let r = c.reply().await;
        is(&r, 451, "4.7.0");
        assert_eq!(r.lines, vec!["Too many concurrent SMTP connections"]);
    }
    // A 5xx: the RCPTs get 503.
    c.send(b"MAIL FROM:<blocked@x.test>\r\nRCPT TO:<a@y.test>\r\nDATA\r\n")
        .await;
    is(&c.reply().await, 550, "5.7.1");
    is(&c.reply().await, 503, "5.5.1");
    is(&c.reply().await, 503, "5.5.1");
    // The session is fine afterwards.
    is(&c.cmd("RSET").await, 250, "2.0.0");
    is(&c.cmd("MAIL FROM:<ok@x.test>").await, 250, "2.1.0");
    assert!(srv.rec.messages().is_empty());
    srv.stop().await;
}
