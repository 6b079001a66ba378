//! `mailvalve run`: start the relay with a loaded, validated configuration and serve
//! until SIGTERM or Ctrl-C, then shut down gracefully (open sessions get `421 4.3.2`).
//! SIGHUP reloads the configuration (and so ends an account pause); the HTTP listener
//! (`[http]`: metrics, API, dashboard) starts beside the relay and its address is printed.
//!
//! Only the process around the relay lives here — the runtime, logging, the listener's
//! error message, the signals; the relay itself is `relay::Relay`. It must never log the
//! configuration unredacted (`Secret` prints `***`).

use crate::config::Config;
use crate::relay::{Relay, RelayHandle};
use anyhow::Context;
use tokio_util::sync::CancellationToken;

/// Runs until shutdown. The configuration has already passed `config::validate`.
pub fn run(config: Config, path: Option<&std::path::Path>) -> anyhow::Result<()> {
    let set_level = super::logging::init_reloadable(&config.log.level);
    for w in crate::config::warnings(&config) {
        tracing::warn!("config: {w}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(config, path.map(|p| p.to_path_buf()), set_level))
}

async fn serve(
    config: Config,
    path: Option<std::path::PathBuf>,
    set_level: Option<crate::relay::reload::SetLogLevel>,
) -> anyhow::Result<()> {
    let relay = Relay::new(config)?.reloadable_from(path);
    let cfg = relay.config();
    let listener =
        crate::server::bind(cfg.server.listen, cfg.server.listen_backlog).with_context(|| {
            format!(
                "config key server.listen: cannot listen on {}",
                cfg.server.listen
            )
        })?;
    tracing::info!(
        listen = %cfg.server.listen,
        upstream = %format_args!("{}:{}", cfg.upstream.host, cfg.upstream.port),
        profile = %relay.profile().name,
        mode = ?cfg.mode,
        "mailvalve ready"
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));
    let http_cfg = cfg.http.clone();
    let running = relay.start(listener, shutdown.clone()).await?;
    if let Some(f) = set_level {
        running.handle().on_log_level(f);
    }
    println!("mailvalve: SMTP on {}", running.local_addr());
    let http = match crate::http::start(&http_cfg, running.handle().clone(), shutdown.clone()).await
    {
        Ok(Some(http)) => {
            println!(
                "mailvalve: dashboard {} (metrics {}metrics, API {}api/v1/)",
                http.url(),
                http.url(),
                http.url()
            );
            tracing::info!(listen = %http.local_addr(), "http listener ready");
            Some(http)
        }
        Ok(None) => {
            println!("mailvalve: HTTP listener off (http.listen = \"\")");
            None
        }
        Err(e) => {
            shutdown.cancel();
            let _ = running.wait().await;
            return Err(e);
        }
    };
    tokio::spawn(reload_on_hangup(running.handle().clone()));
    running.wait().await?;
    if let Some(http) = http {
        http.wait().await;
    }
    tracing::info!("mailvalve stopped");
    Ok(())
}

/// SIGHUP reloads the configuration; a valid one also resumes a paused account (after
/// fixing the credentials, say). An invalid one is refused and logged; the running one
/// stays.
async fn reload_on_hangup(handle: RelayHandle) {
    crate::platform::hangups(|| {
        tracing::info!("SIGHUP: reloading the configuration");
        let h = handle.clone();
        // Reading the file is blocking I/O: off the async workers.
        tokio::task::spawn_blocking(move || {
            let _ = h.reload();
        });
    })
    .await;
}

/// Cancels `token` on SIGTERM or Ctrl-C (SIGINT).
async fn on_signal(token: CancellationToken) {
    crate::platform::shutdown_requested().await;
    tracing::info!("shutting down: no new sessions; transactions in flight may finish");
    token.cancel();
}
