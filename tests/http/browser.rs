//! The dashboard in a real browser: Debian's headless Chromium driven over WebDriver
//! (chromedriver, from `chromium-driver`; the test starts it) during a queue-mode run
//! against Postfix's smtp-sink. The page's numbers must equal the API's; clicking
//! "Pause" pauses the queue (new mail stays queued), "Resume" delivers it. A screenshot
//! goes to `target/dashboard.png`. German with `?lang=de`.
//!
//! Skips with `SKIPPED:` when chromium, chromedriver or smtp-sink is missing, unless
//! `MAILVALVE_REQUIRE_TOOLS` is set (then it fails).

use super::*;
use fantoccini::{ClientBuilder, Locator};
use support::harness::{free_port, tool, tools_required, Proc};
use support::sink::start_sink;

/// The tool, or: fail under `MAILVALVE_REQUIRE_TOOLS`, else say SKIPPED and `None`.
fn need(test: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = tool(name) {
        return Some(p);
    }
    let hint = "apt-get install chromium chromium-driver postfix";
    assert!(
        !tools_required(),
        "{test}: required tool `{name}` not installed and MAILVALVE_REQUIRE_TOOLS is set ({hint})"
    );
    eprintln!("SKIPPED: {test}: {name} not installed ({hint})");
    None
}

async fn text(c: &fantoccini::Client, id: &str) -> String {
    c.find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"))
        .text()
        .await
        .unwrap()
}

/// Polls the page until `cond` holds on the text of `#id`, for at most `WAIT`.
async fn page_until(c: &fantoccini::Client, id: &str, what: &str, cond: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let t = text(c, id).await;
        if cond(&t) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "page: timed out waiting for {what}; #{id} = {t:?}"
        );
        sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_api_numbers_and_its_buttons_pause_and_resume() {
    let test = "dashboard_shows_the_api_numbers_and_its_buttons_pause_and_resume";
    let (Some(chromium), Some(driver), Some(sink_bin)) = (
        need(test, "chromium"),
        need(test, "chromedriver"),
        need(test, "smtp-sink"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sink_port = free_port();
    let _sink = start_sink(&sink_bin, dir.path(), "provider", &[], sink_port, false);
    let up = UpstreamConfig {
        host: "127.0.0.1".into(),
        port: sink_port,
        tls: mailvalve::config::TlsMode::None,
        ..UpstreamConfig::default()
    };
    let mut cfg = config(dir.path(), up);
    cfg.queue.bounces = false;
    let mv = start(cfg).await;
    for i in 0..12 {
        send(mv.smtp, &[&format!("reader{i}@example.org")], i).await;
    }
    // The counters move before the spool's commit: wait for both, so the API's numbers
    // hold still while the page is compared with them.
    until(&mv, "12 delivered, none pending", |s| {
        s["delivery"]["delivered"] == 12 && s["queue"]["pending_recipients"] == 0
    })
    .await;

    let driver_port = free_port();
    let mut proc = Proc::spawn(
        "chromedriver",
        std::process::Command::new(&driver).arg(format!("--port={driver_port}")),
        dir.path().join("chromedriver.log"),
    );
    proc.wait_listening(driver_port, WAIT);
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1000",
                     format!("--user-data-dir={}", dir.path().join("chromium").display())],
        }),
    );
    let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{driver_port}"))
        .await
        .expect("a WebDriver session with headless chromium");

    let url = format!("http://127.0.0.1:{}/?lang=en", mv.http.port());
    c.goto(&url).await.unwrap();
    // The numbers on the page are the API's.
    let api = mv.status().await;
    for (id, value) in [
        ("delivered", &api["delivery"]["delivered"]),
        ("received", &api["received"]),
        ("queued", &api["queue"]["pending_recipients"]),
        ("failed", &api["delivery"]["failed"]),
        ("deferred", &api["delivery"]["deferred"]),
    ] {
        let want = value.to_string();
        page_until(&c, id, "the API's number", |t| t == want).await;
    }
    page_until(&c, "state", "sending", |t| t == "sending").await;

    // Pause: the queue pauses; new mail stays queued.
    c.find(Locator::Id("pause"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(&mv, "operator pause", |s| s["operator_paused"] == true).await;
    page_until(&c, "state", "paused badge", |t| t == "paused").await;
    for i in 12..15 {
        send(mv.smtp, &[&format!("reader{i}@example.org")], i).await;
    }
    let s = until(&mv, "3 queued", |s| s["queue"]["pending_recipients"] == 3).await;
    assert_eq!(
        s["delivery"]["delivered"], 12,
        "nothing delivered while paused"
    );
    page_until(&c, "queued", "3 queued on the page", |t| t == "3").await;
    assert!(text(&c, "banner").await.contains("paused by the operator"));
    let png = c.screenshot().await.unwrap();
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard.png");
    std::fs::write(&shot, &png).unwrap();
    eprintln!("screenshot: {}", shot.display());

    // Resume: the three go out.
    c.find(Locator::Id("resume"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(&mv, "15 delivered", |s| s["delivery"]["delivered"] == 15).await;
    page_until(&c, "delivered", "15 on the page", |t| t == "15").await;
    page_until(&c, "state", "sending again", |t| t == "sending").await;

    // German.
    c.goto(&format!("http://127.0.0.1:{}/?lang=de", mv.http.port()))
        .await
        .unwrap();
    page_until(&c, "state", "German badge", |t| t == "sendet").await;
    let pause_label = text(&c, "pause").await;
    assert_eq!(pause_label, "Anhalten");

    c.close().await.unwrap();
    proc.terminate(Duration::from_secs(5));
    mv.stop().await;
}
