//! `mailvalve queue status --watch`: the dashboard's progress for people without a
//! browser — received, queued, delivered, deferred, failed, suppressed, a progress bar,
//! the ETA at the current pace, the limits and any pause — redrawn every few seconds
//! from the running instance's `/api/v1/status` until Ctrl-C.
//!
//! The drawing ([`render`]) is a pure function of the status JSON, tested without a
//! terminal. It must never print the token, and never loop without a pause.

use crate::config::Config;
use anyhow::Context;
use serde_json::Value;
use std::time::Duration;

/// Renders one status answer as text lines.
pub fn render(s: &Value) -> String {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let d = &s["delivery"];
    let pending = n(&s["queue"]["pending_recipients"]);
    let (delivered, failed) = (n(&d["delivered"]), n(&d["failed"]));
    let total = delivered + failed + pending;
    let width = 40usize;
    let done = if total == 0 {
        0
    } else {
        ((delivered + failed) as usize * width) / total as usize
    };
    let bar = format!("[{}{}]", "#".repeat(done), ".".repeat(width - done));
    let up = &s["upstreams"][0];
    let paused = s["operator_paused"] == true || up["pause"]["paused"] == true;
    let eta = if paused && pending > 0 {
        "paused".to_string()
    } else {
        match s["eta_seconds"].as_f64() {
            Some(e) if e <= 0.0 => "done".into(),
            Some(e) => {
                humantime::format_duration(Duration::from_secs(e.round() as u64)).to_string()
            }
            None => "unknown (no pace yet)".into(),
        }
    };
    let mut out = format!(
        "mailvalve {} · {} · {} → {}\n",
        s["version"].as_str().unwrap_or("?"),
        s["mode"].as_str().unwrap_or("?"),
        up["profile"].as_str().unwrap_or("?"),
        up["name"].as_str().unwrap_or("?"),
    );
    out.push_str(&format!(
        "received {}  queued {}  delivered {}  deferred {}  failed {}  suppressed {}\n",
        n(&s["received"]),
        pending,
        delivered,
        n(&d["deferred"]),
        failed,
        n(&d["suppressed"]),
    ));
    out.push_str(&format!(
        "{bar} {}/{}  ETA {eta}\n",
        delivered + failed,
        total
    ));
    let c = &up["connections"];
    let rate = match up["rate"]["per_second"].as_f64() {
        Some(r) => format!("{r:.2} msg/s"),
        None => "unlimited".into(),
    };
    out.push_str(&format!(
        "connections {}/{} (learned ceiling {}, max {})  rate {rate}\n",
        n(&c["open"]),
        n(&c["limit"]),
        c["learned_ceiling"]
            .as_u64()
            .map_or("none".into(), |v| v.to_string()),
        n(&c["max"]),
    ));
    if s["operator_paused"] == true {
        out.push_str("paused by the operator (mailvalve queue resume)\n");
    }
    if up["pause"]["paused"] == true {
        out.push_str(&format!(
            "the provider paused sending: {}\n",
            up["pause"]["reason"].as_str().unwrap_or("?")
        ));
    }
    if s["reload"]["ok"] == false {
        out.push_str(&format!(
            "last reload refused, the running configuration stays: {}\n",
            s["reload"]["error"].as_str().unwrap_or("?")
        ));
    }
    out
}

/// Polls `/api/v1/status` every `every` and redraws until Ctrl-C.
pub fn run(cfg: &Config, every: Duration) -> anyhow::Result<()> {
    let Some(listen) = cfg.http.listen else {
        anyhow::bail!(
            "queue status --watch reads the running instance's HTTP API, and http.listen is \"\" (off)"
        );
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let scheme = if cfg.http.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let host = if listen.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], listen.port()))
    } else {
        listen
    };
    let url = format!("{scheme}://{host}/api/v1/status");
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
    if let Some(tls) = &cfg.http.tls {
        let pem = std::fs::read(&tls.cert)
            .with_context(|| format!("http.tls.cert: cannot read {}", tls.cert.display()))?;
        builder =
            builder
                .add_root_certificate(reqwest::Certificate::from_pem(&pem).with_context(|| {
                    format!("http.tls.cert: {} is not PEM", tls.cert.display())
                })?);
    }
    let client = builder.build().context("cannot build the HTTP client")?;
    rt.block_on(async {
        loop {
            let mut req = client.get(&url);
            if let Some(t) = &cfg.http.token {
                req = req.bearer_auth(t.expose());
            }
            let text = match req.send().await {
                Ok(r) if r.status().is_success() => match r.bytes().await {
                    Ok(b) => serde_json::from_slice::<Value>(&b)
                        .map(|v| render(&v))
                        .unwrap_or_else(|e| format!("unexpected answer from {url}: {e}\n")),
                    Err(e) => format!("no answer from {url}: {e}\n"),
                },
                Ok(r) => format!("{url}: HTTP {}\n", r.status()),
                Err(e) => format!("no instance answers at {url}: {e}\n"),
            };
            // Clear the screen and draw from the top.
            print!("\x1b[2J\x1b[H{text}");
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_progress_eta_limits_and_pauses() {
        let s = json!({
            "version": "0.1.0", "mode": "queue", "received": 100,
            "queue": {"messages": 40, "pending_recipients": 40},
            "delivery": {"delivered": 50, "deferred": 7, "failed": 10, "suppressed": 2},
            "operator_paused": false, "eta_seconds": 125.0,
            "upstreams": [{"name": "smtp.example:587", "profile": "gmx",
                "connections": {"open": 2, "limit": 2, "learned_ceiling": 2, "max": 4},
                "rate": {"per_second": 0.5}, "pause": {"paused": false}}],
            "reload": null,
        });
        let t = render(&s);
        assert!(
            t.contains(
                "received 100  queued 40  delivered 50  deferred 7  failed 10  suppressed 2"
            ),
            "{t}"
        );
        assert!(t.contains("60/100  ETA 2m 5s"), "{t}");
        assert!(
            t.contains(&format!("[{}{}]", "#".repeat(24), ".".repeat(16))),
            "{t}"
        );
        assert!(
            t.contains("connections 2/2 (learned ceiling 2, max 4)  rate 0.50 msg/s"),
            "{t}"
        );

        let mut p = s.clone();
        p["operator_paused"] = json!(true);
        p["upstreams"][0]["pause"] = json!({"paused": true, "reason": "quota"});
        p["reload"] = json!({"ok": false, "error": "key upstream.profile: no provider profile"});
        let t = render(&p);
        assert!(t.contains("ETA paused"), "{t}");
        assert!(t.contains("paused by the operator"), "{t}");
        assert!(t.contains("the provider paused sending: quota"), "{t}");
        assert!(t.contains("last reload refused"), "{t}");
    }
}
