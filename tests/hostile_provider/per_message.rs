//! 8.6: a mailbox-full 4xx counts once per message and day; 8.6: SMTPUTF8 toward a provider that does not offer it (RFC 6531).

use super::*;

// ------------------------------------------------------------------------------------
// 8.6: a mailbox-full 4xx counts once per message and day.
// ------------------------------------------------------------------------------------

#[tokio::test]
async fn queue_three_quick_retries_of_one_message_do_not_suppress_the_address() {
    let p = Provider::builder()
        .rcpt_reply("full@example.org", "452 4.2.2 Mailbox full")
        .start()
        .await;
    let q = queue(p.upstream_config(), quick_retries).await;
    q.submit(&["full@example.org"], 1).await;
    let rcpts = || {
        p.lines()
            .iter()
            .filter(|l| l.starts_with("RCPT TO:<full@"))
            .count()
    };
    // soft_threshold is 3: a fourth attempt reaches the provider only if the first
    // three did not suppress the address.
    eventually("four attempts, or the address failed", || {
        rcpts() >= 4
            || q.spool
                .list()
                .unwrap()
                .first()
                .is_none_or(|m| !matches!(m.rcpts[0].state, RcptState::Pending { .. }))
    })
    .await;
    println!("mailbox full: {} attempts of one message", rcpts());
    assert!(
        !q.policy.suppressions.is_suppressed("full@example.org"),
        "retries of one message suppressed the address"
    );
    q.assert_still_queued("mailbox full");
    q.stop().await;
}

#[tokio::test]
async fn passthrough_retries_of_one_message_do_not_suppress_the_address() {
    let p = Provider::builder()
        .rcpt_reply("full@example.org", "452 4.2.2 Mailbox full")
        .start()
        .await;
    let r = passthrough(p.upstream_config()).await;
    // The mailer tries the same message four times (same sender, same SIZE).
    for attempt in 0..4 {
        let mut m = Mailer::connect(r.addr).await;
        m.send("MAIL FROM:<news@news.example> SIZE=120\r\nRCPT TO:<full@example.org>\r\n")
            .await;
        let replies = m.replies(2).await;
        assert!(
            replies[1].starts_with("452 4.2.2"),
            "attempt {attempt}: the provider's own reply, not a local suppression: {replies:?}"
        );
        m.send("QUIT\r\n").await;
    }
    assert!(!r.policy.suppressions.is_suppressed("full@example.org"));
    r.stop().await;
}

// ------------------------------------------------------------------------------------
// 8.6: SMTPUTF8 toward a provider that does not offer it (RFC 6531).
// ------------------------------------------------------------------------------------

#[tokio::test]
async fn passthrough_non_ascii_recipient_gets_553_5_6_7_without_smtputf8_upstream() {
    let p = Provider::builder().start().await; // no SMTPUTF8
    let r = passthrough(p.upstream_config()).await;
    let mut m = Mailer::connect(r.addr).await;
    m.send("MAIL FROM:<news@news.example> SMTPUTF8\r\nRCPT TO:<jörg@example.org>\r\nRCPT TO:<ok@example.org>\r\n")
        .await;
    let replies = m.replies(3).await;
    println!("non-ASCII recipient: {replies:?}");
    assert!(replies[0].starts_with("250"), "{replies:?}");
    assert!(replies[1].starts_with("553 5.6.7"), "{replies:?}");
    assert!(replies[2].starts_with("250"), "{replies:?}");
    assert!(
        !p.lines().iter().any(|l| !l.is_ascii()),
        "a non-ASCII address reached the provider: {:?}",
        p.lines()
    );
    assert!(!r.policy.suppressions.is_suppressed("jörg@example.org"));
    r.stop().await;
}

#[tokio::test]
async fn queue_non_ascii_recipient_fails_with_a_5_6_7_bounce_and_is_not_suppressed() {
    let p = Provider::builder().start().await; // no SMTPUTF8
    let q = queue(p.upstream_config(), quick_retries).await;
    let mut m = Mailer::connect(q.addr).await;
    m.send("MAIL FROM:<news@news.example> SMTPUTF8\r\nRCPT TO:<jörg@example.org>\r\nRCPT TO:<ok@example.org>\r\nDATA\r\n")
        .await;
    let r = m.replies(4).await;
    assert!(r[3].starts_with("354"), "{r:?}");
    let queued = m.body(1).await;
    assert!(queued.starts_with("250 2.0.0 Ok: queued as"), "{queued}");
    // ok@ delivered, and a bounce report for jörg@ to the sender.
    eventually("message and bounce report", || p.messages().len() >= 2).await;
    let bounce = String::from_utf8_lossy(&p.messages()[1]).to_string();
    assert!(bounce.contains("Status: 5.6.7"), "{bounce}");
    // RFC 6533: the address in utf-8-addr-xtext form.
    assert!(
        bounce.contains("Final-Recipient: utf-8; j\\x{F6}rg@example.org"),
        "{bounce}"
    );
    assert!(
        !p.lines()
            .iter()
            .any(|l| l.starts_with("RCPT") && !l.is_ascii()),
        "{:?}",
        p.lines()
    );
    assert!(!q.policy.suppressions.is_suppressed("jörg@example.org"));
    let log = q.log();
    assert!(
        log.contains(&("ok@example.org".into(), "delivered".into())),
        "{log:?}"
    );
    assert!(
        log.contains(&("jörg@example.org".into(), "failed".into())),
        "{log:?}"
    );
    q.stop().await;
}
