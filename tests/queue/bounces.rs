//! Failed recipients: bounce reports, the bounce webhook, and bounces that must never
//! be bounced again.

use super::*;

#[tokio::test]
async fn a_failed_recipient_is_posted_to_the_bounce_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let (url, got) = crate::support::webhook_sink::one_post().await;
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
