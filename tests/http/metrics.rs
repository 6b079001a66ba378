//! `/metrics`: parses with an independent parser, every line is well-formed OpenMetrics
//! text with the one `mailvalve_` prefix and no address in a label, and the numbers are
//! those of a known run (4 messages, 3 delivered, 1 recipient refused for good).

use super::*;
use prometheus_parse::{Scrape, Value as PValue};
use support::provider::Provider;

fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let s = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"));
    match &s.value {
        PValue::Counter(v) | PValue::Gauge(v) | PValue::Untyped(v) => *v,
        other => panic!("{name}: not a single value: {other:?}"),
    }
}

/// Each line: `# HELP`, `# TYPE`, `# EOF` (last), or `mailvalve_name{k="v",...} number`.
fn strict_lines(text: &str) {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "OpenMetrics ends with # EOF");
    for l in &lines[..lines.len() - 1] {
        if let Some(rest) = l.strip_prefix("# ") {
            let mut w = rest.split_whitespace();
            let kind = w.next().unwrap_or("");
            assert!(kind == "HELP" || kind == "TYPE", "{l}");
            assert!(w.next().unwrap_or("").starts_with("mailvalve_"), "{l}");
            continue;
        }
        let (name_labels, number) = l.rsplit_once(' ').unwrap_or_else(|| panic!("{l}"));
        assert!(number.parse::<f64>().is_ok(), "value of {l}");
        let name = name_labels.split('{').next().unwrap();
        assert!(name.starts_with("mailvalve_"), "{l}");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{l}"
        );
        assert!(!name_labels.contains('@'), "no address as a label: {l}");
    }
}

#[tokio::test]
async fn metrics_parse_and_match_a_known_run() {
    let provider = Provider::builder()
        .rcpt_reply(
            "gone@example.org",
            "550 5.1.1 <gone@example.org>: user unknown",
        )
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), provider.upstream_config());
    // No bounce report to the sender: the queue is empty at the end.
    cfg.queue.bounces = false;
    let mv = start(cfg).await;
    for (i, r) in [
        "a@example.org",
        "b@example.org",
        "c@example.org",
        "gone@example.org",
    ]
    .iter()
    .enumerate()
    {
        let replies = send(mv.smtp, &[r], i).await;
        assert!(replies[replies.len() - 2].starts_with("250"), "{replies:?}");
    }
    // The counters move before the spool's commit: wait for both.
    until(&mv, "3 delivered, 1 failed, none pending", |s| {
        s["delivery"]["delivered"] == 3
            && s["delivery"]["failed"] == 1
            && s["queue"]["pending_recipients"] == 0
    })
    .await;

    let r = mv.get("/metrics").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{}",
        r.head
    );
    strict_lines(&r.body);
    let scrape = Scrape::parse(r.body.lines().map(|l| Ok(l.to_string()))).unwrap();
    let v = |name: &str, labels: &[(&str, &str)]| value(&scrape, name, labels);

    assert_eq!(v("mailvalve_messages_received_total", &[]), 4.0);
    assert_eq!(
        v("mailvalve_deliveries_total", &[("outcome", "delivered")]),
        3.0
    );
    assert_eq!(
        v("mailvalve_deliveries_total", &[("outcome", "failed")]),
        1.0
    );
    assert_eq!(
        v("mailvalve_deliveries_total", &[("outcome", "deferred")]),
        0.0
    );
    assert_eq!(
        v("mailvalve_deliveries_total", &[("outcome", "expired")]),
        0.0
    );
    assert_eq!(
        v(
            "mailvalve_provider_replies_total",
            &[("class", "5xx"), ("verdict", "suppress")]
        ),
        1.0
    );
    assert!(
        v(
            "mailvalve_provider_replies_total",
            &[("class", "2xx"), ("verdict", "accept")]
        ) >= 3.0,
        "at least the three final 250s"
    );
    assert_eq!(v("mailvalve_suppressed_addresses", &[]), 1.0);
    assert_eq!(v("mailvalve_queue_recipients", &[("state", "due")]), 0.0);
    assert_eq!(
        v("mailvalve_queue_recipients", &[("state", "waiting")]),
        0.0
    );
    assert_eq!(v("mailvalve_upstream_connection_max", &[]), 10.0);
    assert_eq!(v("mailvalve_paused", &[("reason", "operator")]), 0.0);
    assert_eq!(
        v(
            "mailvalve_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    // The size histogram saw the four messages; the latency histogram the three finals.
    let hist = |name: &str| {
        scrape
            .samples
            .iter()
            .find_map(|s| match (&s.value, s.metric == name) {
                (PValue::Histogram(h), true) => {
                    h.iter().map(|b| b.count).fold(0.0, f64::max).into()
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no histogram {name}"))
    };
    assert_eq!(hist("mailvalve_message_size_bytes"), 4.0);
    assert!(hist("mailvalve_provider_reply_latency_seconds") >= 3.0);

    // Pausing shows in the gauge and the counter.
    assert_eq!(mv.post("/api/v1/pause").await.status, 200);
    let r = mv.get("/metrics").await;
    let scrape = Scrape::parse(r.body.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert_eq!(
        value(&scrape, "mailvalve_paused", &[("reason", "operator")]),
        1.0
    );
    assert_eq!(
        value(&scrape, "mailvalve_pauses_total", &[("reason", "operator")]),
        1.0
    );
    mv.stop().await;
}
