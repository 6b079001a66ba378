//! SMTP smuggling.

use super::*;

const SMUGGLING: [&[u8]; 10] = [
    b"\n.\n",
    b"\r.\r",
    b"\r.\n",
    b"\n.\r",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\r\n.\r\r\n",
    b"\r\n\x00.\r\n",
];

#[tokio::test]
async fn smuggling_sequences_in_data_close_the_session() {
    let srv = start(cfg()).await;
    for seq in SMUGGLING {
        let before = srv.rec.events().len();
        let mut c = srv.connect().await;
        c.cmd("EHLO client.test").await;
        is(&c.cmd("MAIL FROM:<a@x.test>").await, 250, "2.1.0");
        is(&c.cmd("RCPT TO:<b@y.test>").await, 250, "2.1.5");
        assert_eq!(c.cmd("DATA").await.code, 354);
        let mut wire = b"Subject: x\r\n\r\nhello".to_vec();
        wire.extend_from_slice(seq);
        wire.extend_from_slice(
            b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nsmuggled\r\n.\r\n",
        );
        c.send(&wire).await;
        let r = c.reply().await;
        is(&r, 550, "5.5.2");
        assert_eq!(
            r.lines,
            vec!["Bare CR or LF is not allowed; closing connection"]
        );
        c.assert_closed().await;

        let events = srv.rec.events()[before..].to_vec();
        let begins = events
            .iter()
            .filter(|e| matches!(e, Ev::Begin { .. }))
            .count();
        assert_eq!(begins, 1, "{seq:?}: no second transaction: {events:?}");
        let msgs: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                Ev::Data(m) => Some(m),
                _ => None,
            })
            .collect();
        assert!(msgs.len() <= 1, "{seq:?}");
        assert!(
            msgs.is_empty(),
            "{seq:?}: nothing relayed after a framing error"
        );
        assert!(
            !events
                .iter()
                .any(|e| format!("{e:?}").contains("evil") || format!("{e:?}").contains("victim")),
            "{seq:?}"
        );
    }
    srv.stop().await;
}

#[tokio::test]
async fn bare_line_endings_in_commands_close_the_session() {
    let srv = start(cfg()).await;
    for bad in [
        &b"NOOP\r\nMAIL FROM:<a@x.test>\nRCPT TO:<b@y.test>\r\n"[..],
        b"NOOP\r\nMAIL FROM:<a@x.test>\rRCPT TO:<b@y.test>\r\n",
        b"NOOP\r\nMAIL FROM:<a@x.test>\x00\r\nRCPT TO:<b@y.test>\r\n",
    ] {
        let mut c = srv.connect().await;
        c.cmd("EHLO client.test").await;
        c.send(bad).await;
        is(&c.reply().await, 250, "2.0.0");
        is(&c.reply().await, 550, "5.5.2");
        c.assert_closed().await;
    }
    // The MAIL after the NOOP was never executed.
    assert!(srv.rec.0.envelopes.lock().unwrap().is_empty());

    // A framing error behind a pipelined MAIL: the MAIL runs (it came first), the RCPT
    // batch stops at the bad line, nothing after it runs.
    let mut c = srv.connect().await;
    c.cmd("EHLO client.test").await;
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\nDATA\r\n")
        .await;
    is(&c.reply().await, 250, "2.1.0");
    is(&c.reply().await, 250, "2.1.5");
    is(&c.reply().await, 550, "5.5.2");
    c.assert_closed().await;
    assert_eq!(
        srv.rec.begins(),
        vec![("a@x.test".into(), vec!["b@y.test".into()])]
    );
    assert!(srv.rec.messages().is_empty());
    srv.stop().await;
}
