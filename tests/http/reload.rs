//! Reload (`POST /api/v1/reload`, and `mailvalve reload` over the control socket): the
//! same validation as `check` and `run`; an invalid configuration is refused with the
//! error `check` prints and the running one stays; a lower connection limit takes effect
//! for the next transaction, mid-run.

use super::*;
use support::provider::Provider;

fn write(path: &Path, cfg: &Config) {
    std::fs::write(path, toml::to_string(cfg).unwrap()).unwrap();
}

#[tokio::test]
async fn a_lower_limit_takes_effect_mid_run_and_an_invalid_config_changes_nothing() {
    // The provider refuses a second concurrent connection with 421.
    let provider = Provider::builder().max_connections(1).start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mailvalve.toml");
    let mut cfg = config(dir.path(), provider.upstream_config());
    cfg.upstream.max_connections = 4;
    write(&file, &cfg);
    let mv = start_from(cfg, Some(file.clone())).await;
    // From here on the file holds what runs (with the addresses it bound).
    let cfg = mv.cfg.clone();
    write(&file, &cfg);
    let s = mv.status().await;
    assert_eq!(s["upstreams"][0]["connections"]["max"], 4);

    // Messages wait (paused) so that all are due at once when delivery resumes.
    assert_eq!(mv.post("/api/v1/pause").await.status, 200);
    for i in 0..8 {
        send(mv.smtp, &[&format!("r{i}@example.org")], i).await;
    }

    // Invalid: refused with the error `check` prints, nothing changes.
    let mut bad = cfg.clone();
    bad.upstream.profile = "gmial".into();
    bad.upstream.max_connections = 1;
    write(&file, &bad);
    let check_says = mailvalve::config::load_validated(Some(&file), Vec::new())
        .unwrap_err()
        .to_string();
    assert!(check_says.contains("upstream.profile"), "{check_says}");
    let r = mv.post("/api/v1/reload").await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.error(), check_says);
    let s = mv.status().await;
    assert_eq!(
        s["upstreams"][0]["connections"]["max"], 4,
        "old config stays"
    );
    assert_eq!(s["reload"]["ok"], false);
    assert_eq!(s["reload"]["error"], check_says.as_str());

    // Valid, with one connection at most: applied for the next transaction.
    let mut one = cfg.clone();
    one.upstream.max_connections = 1;
    one.log.level = "debug".into();
    write(&file, &one);
    let r = mv.post("/api/v1/reload").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let outcome = r.json();
    assert!(
        outcome["applied"][0]
            .as_str()
            .unwrap()
            .contains("connections: at most 1"),
        "{outcome}"
    );
    assert_eq!(
        outcome["restart_needed"],
        serde_json::json!(["log.level"]),
        "said, not ignored"
    );
    let s = mv.status().await;
    assert_eq!(s["upstreams"][0]["connections"]["max"], 1);
    assert_eq!(s["upstreams"][0]["connections"]["limit"], 1);
    assert_eq!(s["reload"]["ok"], true);

    assert_eq!(mv.post("/api/v1/resume").await.status, 200);
    let s = until(&mv, "8 delivered", |s| s["delivery"]["delivered"] == 8).await;
    let refused: Vec<&Value> = s["upstreams"][0]["recent_replies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["verdict"] == "throttle-connections")
        .collect();
    assert!(
        refused.is_empty(),
        "one connection at a time after the reload, so the provider never refused: {refused:?}"
    );

    // New reply rules take effect for the next reply (explain uses the running table).
    let verdict = |r: Resp| r.json()["verdict"].as_str().unwrap_or_default().to_string();
    let ask = "/api/v1/explain?reply=550%205.1.1%20member%20left%20the%20club";
    assert_eq!(verdict(mv.get(ask).await), "suppress");
    let mut ruled = one.clone();
    ruled.rules.push(mailvalve::policy::rules::RuleSpec {
        code: Some("550".into()),
        text: Some("left the club".into()),
        verdict: "defer".into(),
        ..Default::default()
    });
    write(&file, &ruled);
    let r = mv.post("/api/v1/reload").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("reply rules: 1 of [[rules]]"), "{}", r.body);
    assert_eq!(verdict(mv.get(ask).await), "defer");

    // `mailvalve reload` goes over the control socket to the same handle.
    #[cfg(unix)]
    {
        use mailvalve::queue::control::{request, Command};
        let answer = request(&cfg.queue.dir, Command::Reload)
            .await
            .unwrap()
            .unwrap();
        assert!(answer.unwrap().contains("configuration reloaded"));
        write(&file, &bad);
        let answer = request(&cfg.queue.dir, Command::Reload)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer.unwrap_err(), check_says);
    }
    let m = mv.get("/metrics").await.body;
    assert!(
        m.contains("mailvalve_reloads_total{outcome=\"refused\"} 2"),
        "{m}"
    );
    mv.stop().await;
}

#[tokio::test]
async fn a_relay_not_started_from_a_file_says_there_is_nothing_to_reload() {
    let provider = Provider::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let mv = start(config(dir.path(), provider.upstream_config())).await;
    let r = mv.post("/api/v1/reload").await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.error().contains("nothing to re-read"), "{}", r.body);
    mv.stop().await;
}

/// The file as an operator writes it: the password in clear (a `Secret` serializes
/// redacted).
fn write_with_password(path: &Path, cfg: &Config, password: &str) {
    let text = toml::to_string(cfg)
        .unwrap()
        .replace("password = \"***\"", &format!("password = {password:?}"));
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn a_reload_moves_to_a_new_provider_with_new_credentials_rate_caps_and_webhook() {
    // Two providers, each with its own password; the second refuses one recipient.
    let old = Provider::builder().auth("mv", "old-secret").start().await;
    let new = Provider::builder()
        .auth("mv", "new-secret")
        .rcpt_reply("gone@example.org", "550 5.1.1 user unknown")
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mailvalve.toml");
    let cfg = config(dir.path(), old.upstream_config());
    let mv = start_from(cfg, Some(file.clone())).await;
    let cfg = mv.cfg.clone();
    write_with_password(&file, &cfg, "old-secret");

    send(mv.smtp, &["a@example.org"], 1).await;
    until(&mv, "1 delivered", |s| s["delivery"]["delivered"] == 1).await;
    assert_eq!(old.messages().len(), 1);

    // The new provider, its password, an hourly cap and a bounce webhook.
    let (url, posted) = crate::support::webhook_sink::one_post().await;
    let mut next = cfg.clone();
    let up = new.upstream_config();
    next.upstream.port = up.port;
    next.upstream.host = up.host.clone();
    next.upstream.password = up.password.clone();
    next.upstream.rate.per_hour = Some(1000);
    next.queue.webhook = Some(mailvalve::config::webhook::WebhookConfig {
        url,
        ..Default::default()
    });
    write_with_password(&file, &next, "new-secret");
    let r = mv.post("/api/v1/reload").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.contains("new-secret"), "no secret in the answer");
    let outcome = r.json();
    let applied = outcome["applied"].to_string();
    assert!(
        applied.contains("provider connection: upstream.port"),
        "{outcome}"
    );
    assert!(applied.contains("upstream.password"), "{outcome}");
    assert!(applied.contains("rate caps: 1000 per hour"), "{outcome}");
    assert!(applied.contains("bounce webhook: changed"), "{outcome}");
    assert_eq!(
        outcome["restart_needed"],
        serde_json::json!([]),
        "{outcome}"
    );
    let rates = mv.relay.handle().policy().admission.rates().config();
    assert_eq!(rates.per_hour, Some(1000));

    // The next transaction: the new provider, authenticated with the new password,
    // and the failed recipient goes to the new webhook.
    send(mv.smtp, &["b@example.org", "gone@example.org"], 2).await;
    until(&mv, "the second delivered", |s| {
        s["delivery"]["delivered"] == 2
    })
    .await;
    assert_eq!(old.messages().len(), 1, "nothing more to the old provider");
    assert_eq!(new.messages().len(), 1);
    let req = timeout(WAIT, posted)
        .await
        .expect("webhook called")
        .unwrap();
    assert!(req.contains("gone@example.org"), "{req}");
    mv.stop().await;
}
