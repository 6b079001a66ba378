//! Who may talk to the listener: the Host header must name it (DNS rebinding), a
//! state-changing request needs the steer header or the token and must not come from
//! another site, preflights are refused, and with a token set every request but the page
//! needs it (401). Off loopback the configuration must have a token and TLS.

use super::*;
use mailvalve::config::{Secret, ServerTls};
use support::provider::Provider;

#[tokio::test]
async fn rebinding_and_cross_site_requests_are_refused() {
    let provider = Provider::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let mv = start(config(dir.path(), provider.upstream_config())).await;
    let a = mv.http;
    let port = a.port().to_string();

    // DNS rebinding: another name that resolves to 127.0.0.1.
    let evil = format!("evil.example:{port}");
    let r = http(a, "GET", "/api/v1/status", &[("Host", &evil)], None).await;
    assert_eq!(r.status, 421, "{}", r.body);
    assert!(r.error().contains("Host"), "{}", r.body);
    let r = http(a, "GET", "/metrics", &[("Host", &evil)], None).await;
    assert_eq!(r.status, 421);
    for ok in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        let r = http(a, "GET", "/api/v1/status", &[("Host", &ok)], None).await;
        assert_eq!(r.status, 200, "{ok}: {}", r.body);
    }

    // A form post from a page elsewhere carries no custom header.
    let r = http(a, "POST", "/api/v1/pause", &[], None).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.error().contains("x-mailvalve-steer"), "{}", r.body);
    // With the header but from another origin (a preflight would have been refused).
    let r = http(
        a,
        "POST",
        "/api/v1/pause",
        &[STEER, ("Origin", "http://evil.example")],
        None,
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = http(
        a,
        "POST",
        "/api/v1/pause",
        &[STEER, ("Sec-Fetch-Site", "cross-site")],
        None,
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = http(
        a,
        "OPTIONS",
        "/api/v1/pause",
        &[
            ("Origin", "http://evil.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.header("access-control-allow-origin").is_none());
    assert_eq!(
        mv.status().await["operator_paused"],
        false,
        "nothing was paused"
    );

    // The page itself: no framing, nothing from elsewhere.
    let page = mv.get("/").await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("x-frame-options").as_deref(), Some("DENY"));
    assert!(page
        .header("content-security-policy")
        .unwrap()
        .contains("default-src 'none'"));
    assert!(
        !page.body.contains("http://") && !page.body.contains("https://"),
        "no CDN"
    );
    mv.stop().await;
}

#[tokio::test]
async fn with_a_token_every_request_but_the_page_needs_it() {
    let provider = Provider::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), provider.upstream_config());
    cfg.http.token = Some(Secret::new("s3cret-token-42"));
    let mv = start(cfg).await;
    let a = mv.http;
    for (method, path) in [
        ("GET", "/api/v1/status"),
        ("GET", "/metrics"),
        ("POST", "/api/v1/pause"),
    ] {
        let r = http(a, method, path, &[STEER], None).await;
        assert_eq!(r.status, 401, "{method} {path}: {}", r.body);
        assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"));
        assert!(!r.body.contains("s3cret"), "never the token");
        let r = http(
            a,
            method,
            path,
            &[STEER, ("Authorization", "Bearer s3cret-token-41")],
            None,
        )
        .await;
        assert_eq!(r.status, 401, "wrong token: {}", r.body);
    }
    let auth = ("Authorization", "Bearer s3cret-token-42");
    let r = http(a, "GET", "/api/v1/status", &[auth], None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.contains("s3cret"));
    // The token alone is enough to steer (no browser sends it cross-site).
    let r = http(a, "POST", "/api/v1/pause", &[auth], None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The page (no data in it) loads without, and asks for the token.
    let r = http(a, "GET", "/", &[], None).await;
    assert_eq!(r.status, 200);
    assert!(!r.body.contains("s3cret"));
    mv.stop().await;
}

#[test]
fn off_loopback_the_configuration_needs_a_token_and_tls() {
    let mut cfg = Config::default();
    cfg.http.listen = Some("0.0.0.0:2580".parse().unwrap());
    let errs = mailvalve::config::validate(&cfg).unwrap_err();
    let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert!(
        text.iter()
            .any(|e| e.starts_with("key http.token: must be set")
                && e.contains("MAILVALVE__HTTP__TOKEN")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|e| e.starts_with("key http.tls: must be set")),
        "{text:?}"
    );

    cfg.http.token = Some(Secret::new("t"));
    cfg.http.tls = Some(ServerTls {
        cert: "/nonexistent/cert.pem".into(),
        key: "/nonexistent/key.pem".into(),
    });
    let errs = mailvalve::config::validate(&cfg).unwrap_err();
    let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert!(
        text.iter().all(|e| !e.starts_with("key http.token")),
        "{text:?}"
    );
    assert!(
        text.iter().any(|e| e.starts_with("key http.tls.cert")),
        "{text:?}"
    );
    // On loopback neither is needed, and "" turns the listener off.
    let mut cfg = Config::default();
    assert!(mailvalve::config::validate(&cfg).is_ok());
    cfg.http.listen = None;
    assert!(mailvalve::config::validate(&cfg).is_ok());
}

#[tokio::test]
async fn over_tls_with_the_token_it_answers_and_plain_http_gets_nothing() {
    let provider = Provider::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.path().join("http.crt"), dir.path().join("http.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let mut cfg = config(dir.path(), provider.upstream_config());
    cfg.http.token = Some(Secret::new("tls-token"));
    cfg.http.tls = Some(ServerTls {
        cert: cert.clone(),
        key,
    });
    let mv = start(cfg).await;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{}/api/v1/status", mv.http.port());
    let r = timeout(WAIT, client.get(&url).bearer_auth("tls-token").send())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = timeout(WAIT, client.get(&url).send())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        401,
        "the token is still required over TLS"
    );
    // Plain HTTP on the TLS port: no answer, and certainly no data.
    let plain = http(
        mv.http,
        "GET",
        "/api/v1/status",
        &[("Authorization", "Bearer tls-token")],
        None,
    )
    .await;
    assert_ne!(plain.status, 200, "{plain:?}");
    mv.stop().await;
}
