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
