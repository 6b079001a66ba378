//! 8.7: a reply of 100 000 lines; 8.7: a reply count that no longer matches the commands pipelined.

use super::*;

// ------------------------------------------------------------------------------------
// 8.7: a reply of 100 000 lines.
// ------------------------------------------------------------------------------------

#[tokio::test]
async fn a_reply_of_100000_lines_is_cut_off_and_the_message_retried() {
    // The client stops reading after a bounded amount (MAX_REPLY_BYTES) and drops the
    // connection; the provider's remaining writes fail.
    let p = Provider::builder()
        .flood_reply("EHLO", 100_000, 200)
        .start()
        .await;
    let s = Settings::new(p.upstream_config()).unwrap();
    let err = timeout(WAIT, Connection::connect(&s))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Protocol(_)), "{err:?}");
    assert_eq!(err.to_reply().class(), 4);
    eventually("the provider's flood is cut off", || {
        p.aborted_writes() >= 1
    })
    .await;
    let written = p.flood_lines_written();
    println!(
        "EHLO flood: the provider got {written} of 100000 lines into the socket before the \
         client closed it (client buffer bound {} octets)",
        mailvalve::upstream::client::MAX_REPLY_BYTES
    );
    assert!(written < 100_000);

    // The same flood as the final reply (each line "250-..."): not an acceptance.
    let p = Provider::builder()
        .flood_reply(".", 100_000, 200)
        .start()
        .await;
    let q = queue(p.upstream_config(), quick_retries).await;
    q.submit(&["ok@example.org"], 1).await;
    eventually("retried or gone", || {
        p.messages().len() >= 2 || q.spool.is_empty()
    })
    .await;
    q.assert_still_queued("100 000-line final reply");
    q.stop().await;

    let p = Provider::builder()
        .flood_reply(".", 100_000, 200)
        .start()
        .await;
    let r = passthrough(p.upstream_config()).await;
    let mut m = Mailer::connect(r.addr).await;
    let env = m
        .envelope("MAIL FROM:<news@news.example>", "ok@example.org")
        .await;
    assert!(env[2].starts_with("354"), "{env:?}");
    let last = m.body(1).await;
    assert!(last.starts_with("451"), "{last}");
    r.stop().await;
}

// ------------------------------------------------------------------------------------
// 8.7: a reply count that no longer matches the commands pipelined.
// ------------------------------------------------------------------------------------

#[tokio::test]
async fn passthrough_a_missing_pipelined_reply_times_out_into_a_4xx() {
    let p = Provider::builder()
        .rcpt_silent("b@example.org")
        .start()
        .await;
    let r = passthrough(short_timeouts(p.upstream_config())).await;
    let mut m = Mailer::connect(r.addr).await;
    m.send("MAIL FROM:<news@news.example>\r\nRCPT TO:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
        .await;
    let replies = m.replies(4).await;
    println!("missing RCPT reply: mailer got {replies:?}");
    assert!(
        replies
            .iter()
            .all(|l| !l.starts_with('2') && !l.starts_with('3')),
        "{replies:?}"
    );
    assert!(p.messages().is_empty());
    r.stop().await;
}

#[tokio::test]
async fn queue_retries_when_pipelined_replies_do_not_match() {
    // One reply missing: the RCPT timeout, a broken connection, a retry.
    let p = Provider::builder()
        .rcpt_silent("b@example.org")
        .start()
        .await;
    let q = queue(short_timeouts(p.upstream_config()), quick_retries).await;
    q.submit(&["a@example.org", "b@example.org"], 1).await;
    eventually("retried", || {
        p.connections_total() >= 2 || q.spool.is_empty()
    })
    .await;
    q.assert_still_queued("missing RCPT reply");
    assert!(p.messages().is_empty());
    q.stop().await;
}
