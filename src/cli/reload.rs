//! `mailvalve reload`: tells the running instance to re-read and apply its
//! configuration (as SIGHUP and `POST /api/v1/reload` do) and prints what took effect,
//! what needs a restart, or why the new configuration was refused (the running one then
//! stays).
//!
//! On Unix it talks over the control socket in the spool directory; where there is none
//! (other systems, or the socket is missing) it posts to the HTTP API at `http.listen`
//! with `http.token`. It must never print the token.

use crate::config::Config;
use anyhow::Context;

pub fn run(cfg: &Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let answer = rt.block_on(async {
        #[cfg(unix)]
        {
            let dir = &cfg.queue.dir;
            let command = crate::queue::control::Command::Reload;
            if let Some(answer) = crate::queue::control::request(dir, command)
                .await
                .with_context(|| {
                    format!(
                        "cannot talk to the running instance ({})",
                        crate::queue::control::socket_path(dir).display()
                    )
                })?
            {
                return Ok::<_, anyhow::Error>(answer);
            }
        }
        over_http(cfg).await
    })?;
    match answer {
        Ok(text) => {
            print!("{text}");
            Ok(())
        }
        Err(e) => anyhow::bail!("reload: {e}"),
    }
}

/// `POST /api/v1/reload` on the instance's HTTP listener.
async fn over_http(cfg: &Config) -> anyhow::Result<Result<String, String>> {
    let Some(listen) = cfg.http.listen else {
        anyhow::bail!(
            "no instance reachable: no control socket in {} and the HTTP listener is off \
             (http.listen = \"\")",
            cfg.queue.dir.display()
        );
    };
    let scheme = if cfg.http.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let host = if listen.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        listen.ip().to_string()
    };
    let url = format!(
        "{scheme}://{}/api/v1/reload",
        std::net::SocketAddr::new(host.parse()?, listen.port())
    );
    let mut builder = reqwest::Client::builder();
    if let Some(tls) = &cfg.http.tls {
        // The listener's own certificate is the one to trust (it is often self-signed).
        let pem = std::fs::read(&tls.cert)
            .with_context(|| format!("http.tls.cert: cannot read {}", tls.cert.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .with_context(|| format!("http.tls.cert: {} is not PEM", tls.cert.display()))?;
        builder = builder.add_root_certificate(cert);
    }
    let client = builder.build().context("cannot build the HTTP client")?;
    let mut req = client
        .post(&url)
        .header(crate::http::guard::STEER_HEADER, "1");
    if let Some(token) = &cfg.http.token {
        req = req.bearer_auth(token.expose());
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("no instance answers at {url}"))?;
    let ok = resp.status().is_success();
    let bytes = resp.bytes().await.context("no answer from the instance")?;
    let body: serde_json::Value =
        serde_json::from_slice(&bytes).context("the instance's answer is not JSON")?;
    if ok {
        let outcome: crate::relay::reload::ReloadOutcome =
            serde_json::from_value(body).context("unexpected reload answer")?;
        Ok(Ok(outcome.text()))
    } else {
        Ok(Err(body["error"]
            .as_str()
            .unwrap_or("the instance refused the reload")
            .to_string()))
    }
}
