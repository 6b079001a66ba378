//! What the mailer is told and what arrives: delivery, per-recipient outcomes, splitting
//! by the per-message limit, and replies that must never count as delivered.

use super::*;

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
