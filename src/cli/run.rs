//! `mailvalve run`: start the relay with a loaded, validated configuration and serve
//! until SIGTERM or Ctrl-C, then shut down gracefully (open sessions get `421 4.3.2`).
//! SIGHUP resumes a paused account.
//!
//! Only the process around the relay lives here — the runtime, logging, the listener's
//! error message, the signals; the relay itself is `relay::Relay`. It must never log the
//! configuration unredacted (`Secret` prints `***`).

use crate::config::Config;
use crate::relay::{Relay, RelayHandle};
use anyhow::Context;
use tokio_util::sync::CancellationToken;

/// Runs until shutdown. The configuration has already passed `config::validate`.
pub fn run(config: Config) -> anyhow::Result<()> {
    super::logging::init_tracing(&config.log.level);
    for w in crate::config::warnings(&config) {
        tracing::warn!("config: {w}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let relay = Relay::new(config)?;
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
    let running = relay.start(listener, shutdown).await?;
    tokio::spawn(resume_on_hangup(running.handle().clone()));
    running.wait().await?;
    tracing::info!("mailvalve stopped");
    Ok(())
}

/// SIGHUP resumes a paused account (after fixing the credentials, say).
async fn resume_on_hangup(handle: RelayHandle) {
    crate::platform::hangups(|| {
        tracing::info!("SIGHUP: resuming sending");
        handle.resume_account();
    })
    .await;
}

/// Cancels `token` on SIGTERM or Ctrl-C (SIGINT).
async fn on_signal(token: CancellationToken) {
    crate::platform::shutdown_requested().await;
    tracing::info!("shutting down: no new sessions; transactions in flight may finish");
    token.cancel();
}
