//! 8.1: a positive reply where the protocol expects another is a broken connection.

use super::*;

/// The scripts of a provider that answers one step with a positive reply the protocol
/// does not allow there, and what the step is.
fn out_of_place(ca: &TestCa) -> Vec<(&'static str, ProviderBuilder)> {
    vec![
        (
            "plaintext 250 to STARTTLS",
            Provider::builder()
                .starttls(ca)
                .reply_to("STARTTLS", "250 2.0.0 Ok"),
        ),
        (
            "334 where AUTH expects its final reply",
            Provider::builder()
                .auth("user", "secret")
                .auth_mechanisms(&["PLAIN"])
                .reply_to("AUTH", "334 "),
        ),
        (
            "250 to DATA",
            Provider::builder().data_reply("250 2.0.0 Ok whatever"),
        ),
        (
            "354 to MAIL",
            Provider::builder().mail_reply("354 go ahead"),
        ),
        (
            "354 to the end of DATA",
            Provider::builder().final_reply("354 send more"),
        ),
        (
            "250 to RCPT and one more 250 before DATA",
            Provider::builder().rcpt_default("250 2.1.5 Ok\r\n250 2.0.0 Ok"),
        ),
    ]
}

#[tokio::test]
async fn queue_records_nothing_delivered_on_a_positive_reply_out_of_place() {
    let ca = TestCa::new();
    for (what, script) in out_of_place(&ca) {
        let p = script.start().await;
        let ca_dir = tempfile::tempdir().unwrap();
        let mut up = p.upstream_config();
        if up.tls != TlsMode::None {
            up.ca_file = Some(ca.write_ca_file(ca_dir.path()));
        }
        let q = queue(up, quick_retries).await;
        q.submit(&["ok@example.org"], 1).await;
        // A second connection means the first attempt's outcome was recorded and the
        // message retried; an empty spool means it was (wrongly) taken as delivered.
        eventually(&format!("{what}: retried or gone"), || {
            p.connections_total() >= 2 || q.spool.is_empty()
        })
        .await;
        q.assert_still_queued(what);
        println!(
            "{what}: {} connections, {} message bodies at the provider, still queued",
            p.connections_total(),
            p.messages().len()
        );
        q.stop().await;
    }
}

#[tokio::test]
async fn passthrough_never_answers_250_for_a_message_the_provider_did_not_take() {
    for (what, script, final_reply) in [
        (
            "250 to DATA",
            Provider::builder().data_reply("250 2.0.0 Ok whatever"),
            None,
        ),
        (
            "354 to the end of DATA",
            Provider::builder().final_reply("354 send more"),
            None,
        ),
        (
            "one reply too many before DATA",
            Provider::builder().rcpt_default("250 2.1.5 Ok\r\n250 2.0.0 Ok"),
            None,
        ),
        (
            "a plain provider (control)",
            Provider::builder(),
            Some("250"),
        ),
    ] {
        let p = script.start().await;
        let r = passthrough(p.upstream_config()).await;
        let mut m = Mailer::connect(r.addr).await;
        let env = m
            .envelope("MAIL FROM:<news@news.example>", "ok@example.org")
            .await;
        let last = if env[2].starts_with("354") {
            m.body(1).await
        } else {
            env[2].clone()
        };
        println!("{what}: mailer got {env:?} then {last:?}");
        match final_reply {
            Some(code) => assert!(last.starts_with(code), "{what}: {last}"),
            None => assert!(last.starts_with('4'), "{what}: {env:?} {last}"),
        }
        assert!(
            env.iter().all(|l| !l.starts_with("250 2.0.0")),
            "{what}: {env:?}"
        );
        r.stop().await;
    }
}
