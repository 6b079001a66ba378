//! Every `/api/v1` route, with good and bad input: errors are JSON with a clear message
//! and a status that says whose fault it was.

use super::*;
use support::provider::Provider;

#[tokio::test]
async fn queue_routes_show_retry_delete_and_refuse_bad_ids() {
    let provider = Provider::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let mv = start(config(dir.path(), provider.upstream_config())).await;
    // Paused first, so the message stays in the queue to be looked at.
    let r = mv.post("/api/v1/pause").await;
    assert_eq!((r.status, r.json()["paused"].as_bool()), (200, Some(true)));
    send(mv.smtp, &["a@example.org", "b@example.org"], 1).await;

    let s = mv.status().await;
    assert_eq!(s["operator_paused"], true);
    assert_eq!(s["queue"]["messages"], 1);
    assert_eq!(s["queue"]["pending_recipients"], 2);
    assert_eq!(s["received"], 1);
    assert_eq!(s["mode"], "queue");

    let list = mv.get("/api/v1/queue").await.json();
    let msgs = list["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1, "{list}");
    let id = msgs[0]["id"].as_str().unwrap().to_string();
    assert_eq!(msgs[0]["pending"], 2);
    assert_eq!(msgs[0]["from"], "news@news.example");

    let show = mv.get(&format!("/api/v1/queue/{id}")).await;
    assert_eq!(show.status, 200, "{}", show.body);
    let show = show.json();
    assert_eq!(show["rcpts"].as_array().unwrap().len(), 2);
    assert!(!show.to_string().contains("Hello reader"), "never the body");

    // Bad and unknown ids.
    let r = mv.get("/api/v1/queue/not-an-id").await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("queue id"), "{}", r.body);
    let unknown = "0000000000042";
    let r = mv.get(&format!("/api/v1/queue/{unknown}")).await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(r.error().contains("no message"), "{}", r.body);
    let r = mv.post(&format!("/api/v1/queue/{unknown}/retry")).await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = http(
        mv.http,
        "DELETE",
        &format!("/api/v1/queue/{unknown}"),
        &[STEER],
        None,
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);

    let r = mv.post(&format!("/api/v1/queue/{id}/retry")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["due_now"].is_u64(), "{}", r.body);
    let r = mv.post("/api/v1/queue/retry").await;
    assert_eq!(r.status, 200);

    let r = http(
        mv.http,
        "DELETE",
        &format!("/api/v1/queue/{id}"),
        &[STEER],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(mv.status().await["queue"]["messages"], 0);

    // Resume: delivery runs again.
    let r = mv.post("/api/v1/resume").await;
    assert_eq!((r.status, r.json()["paused"].as_bool()), (200, Some(false)));
    send(mv.smtp, &["c@example.org"], 2).await;
    until(&mv, "delivered after resume", |s| {
        s["delivery"]["delivered"] == 1
    })
    .await;

    let r = mv.get("/api/v1/nothing-here").await;
    assert_eq!(r.status, 404);
    assert!(r.error().contains("no such API route"), "{}", r.body);
    mv.stop().await;
}

#[tokio::test]
async fn suppression_routes_add_list_export_remove_and_refuse_bad_json() {
    let provider = Provider::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let mv = start(config(dir.path(), provider.upstream_config())).await;
    let add = |body: &'static str| {
        http(
            mv.http,
            "POST",
            "/api/v1/suppressions",
            &[STEER],
            Some(body),
        )
    };

    let r = add("{not json").await;
    assert_eq!(r.status, 400);
    assert!(r.error().starts_with("bad JSON"), "{}", r.body);
    let r = add(r#"{"address": "a@example.org", "colour": "red"}"#).await;
    assert_eq!(r.status, 400, "unknown fields are refused: {}", r.body);
    let r = add(r#"{"address": "not an address"}"#).await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("expected local@domain"), "{}", r.body);

    let r = add(r#"{"address": "Old@Example.org", "reason": "left the club"}"#).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let list = mv.get("/api/v1/suppressions").await.json();
    let entries = list["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["address"], "old@example.org");

    let csv = mv.get("/api/v1/suppressions/export").await;
    assert_eq!(csv.status, 200);
    assert!(csv.header("content-type").unwrap().starts_with("text/csv"));
    assert!(
        csv.body.contains("old@example.org") && csv.body.contains("left the club"),
        "{}",
        csv.body
    );

    // A suppressed recipient is refused by the relay at once.
    let replies = send(mv.smtp, &["old@example.org"], 1).await;
    assert!(replies.iter().any(|l| l.starts_with("550")), "{replies:?}");

    let r = http(
        mv.http,
        "DELETE",
        "/api/v1/suppressions/old@example.org",
        &[STEER],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = http(
        mv.http,
        "DELETE",
        "/api/v1/suppressions/old@example.org",
        &[STEER],
        None,
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);
    mv.stop().await;
}

#[tokio::test]
async fn explain_uses_the_running_rules_and_refuses_what_is_not_a_reply() {
    let provider = Provider::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let mv = start(config(dir.path(), provider.upstream_config())).await;
    let r = mv
        .get("/api/v1/explain?reply=550%205.1.1%20user%20unknown&lang=de")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let e = r.json();
    assert_eq!(e["verdict"], "suppress");
    assert!(e["meaning"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    for (q, want) in [
        ("", "give the reply"),
        ("?reply=hello", "not an SMTP reply"),
        ("?reply=550&phase=lunch", "phase"),
        ("?reply=550&lang=fr", "expected en or de"),
    ] {
        let r = mv.get(&format!("/api/v1/explain{q}")).await;
        assert_eq!(r.status, 400, "{q}: {}", r.body);
        assert!(r.error().contains(want), "{q}: {}", r.body);
    }
    mv.stop().await;
}

#[tokio::test]
async fn passthrough_has_no_queue_and_says_so() {
    let provider = Provider::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), provider.upstream_config());
    cfg.mode = Mode::Passthrough;
    let mv = start(cfg).await;
    send(mv.smtp, &["a@example.org"], 1).await;
    let s = mv.status().await;
    assert_eq!(s["mode"], "passthrough");
    assert_eq!(s["queue"], Value::Null);
    assert_eq!(s["received"], 1, "{s}");
    let r = mv.post("/api/v1/pause").await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.error().contains("passthrough"), "{}", r.body);
    let r = mv.get("/api/v1/queue").await;
    assert_eq!(r.status, 409);
    mv.stop().await;
}

#[tokio::test]
async fn status_says_what_was_learned_and_when() {
    // The provider refuses a second concurrent connection with 421.
    let provider = Provider::builder().max_connections(1).start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), provider.upstream_config());
    cfg.upstream.max_connections = 4;
    let mv = start(cfg).await;
    let before = mailvalve::policy::clock::wall_ms();
    assert_eq!(mv.post("/api/v1/pause").await.status, 200);
    for i in 0..6 {
        send(mv.smtp, &[&format!("r{i}@example.org")], i).await;
    }
    assert_eq!(mv.post("/api/v1/resume").await.status, 200);
    let s = until(&mv, "6 delivered", |s| s["delivery"]["delivered"] == 6).await;
    let after = mailvalve::policy::clock::wall_ms();
    let c = &s["upstreams"][0]["connections"];
    assert_eq!(c["learned_ceiling"], 1, "{s}");
    let at = c["learned_at"].as_u64().expect("when it was learned");
    assert!(
        (before..=after).contains(&at),
        "{before} <= {at} <= {after}"
    );
    let refusals = s["upstreams"][0]["recent_replies"].as_array().unwrap();
    assert!(
        refusals
            .iter()
            .any(|r| r["code"] == 421 && r["verdict"] == "throttle-connections"),
        "the provider's words: {refusals:?}"
    );
    let m = mv.get("/metrics").await.body;
    assert!(
        m.contains("mailvalve_upstream_connection_ceiling 1\n"),
        "{m}"
    );
    mv.stop().await;
}

#[tokio::test]
async fn control_answers_as_the_socket_does_and_refuses_bad_input_and_cross_site() {
    let provider = support::provider::Provider::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let mv = start(config(dir.path(), provider.upstream_config())).await;
    let post = |headers: &'static [(&'static str, &'static str)], body: &'static str| {
        http(mv.http, "POST", "/api/v1/control", headers, Some(body))
    };
    let r = post(&[STEER], "status").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.starts_with("queue: 0 message(s)"), "{}", r.body);
    // (`status` is compared in tests/http_cli.rs; the list has no moving parts.)
    let r = post(&[STEER], "list").await;
    assert_eq!(r.status, 200, "{}", r.body);
    #[cfg(unix)]
    {
        use mailvalve::queue::control::{request, Command};
        let by_socket = request(&mv.cfg.queue.dir, Command::List)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(r.body, by_socket);
    }
    let r = post(&[STEER], "frobnicate").await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(!r.error().is_empty(), "{}", r.body);
    // Not steerable from a web page elsewhere.
    let r = post(&[], "pause").await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = post(&[STEER, ("Origin", "http://evil.example")], "pause").await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(mv.status().await["operator_paused"], false);
    // Another spool directory: refused.
    let r = post(
        &[STEER, ("X-Mailvalve-Spool", "/nonexistent/spool")],
        "pause",
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.body);
    mv.stop().await;
}
