//! `mailvalve run`: start the relay with a loaded, validated configuration and serve
//! until SIGTERM or Ctrl-C, then shut down gracefully (open sessions get `421 4.3.2`).
//!
//! This is where the pieces are wired: the inbound server, the suppression list, the
//! passthrough relay over the upstream admission stack. It must never log the
//! configuration unredacted (`Secret` prints `***`).

use super::passthrough::Passthrough;
use crate::config::{profile, Config};
use crate::server::suppress::SuppressingRelay;
use crate::upstream::{Admission, Settings};
use anyhow::Context;
use std::sync::Arc;
use tokio::net::TcpListener;
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
    let profile = match profile::builtin(&config.upstream.profile) {
        Some(p) => p?,
        None => anyhow::bail!(
            "config key upstream.profile: no provider profile {:?} (known: {})",
            config.upstream.profile,
            profile::names().collect::<Vec<_>>().join(", ")
        ),
    };
    let settings =
        Settings::new(config.upstream.clone()).map_err(|e| anyhow::anyhow!("upstream: {e}"))?;
    let admission = Admission::new(settings);
    let suppressions = Arc::new(super::suppress::open(&config)?);
    let relay = Arc::new(SuppressingRelay::new(
        Passthrough::new(admission),
        suppressions,
    ));

    let listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| {
            format!(
                "config key server.listen: cannot listen on {}",
                config.server.listen
            )
        })?;
    tracing::info!(
        listen = %config.server.listen,
        upstream = %format_args!("{}:{}", config.upstream.host, config.upstream.port),
        profile = %profile.name,
        mode = ?config.mode,
        "mailvalve ready"
    );

    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));
    crate::server::serve(listener, Arc::new(config.server), relay, shutdown).await?;
    tracing::info!("mailvalve stopped");
    Ok(())
}

/// Cancels `token` on SIGTERM or Ctrl-C (SIGINT).
async fn on_signal(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!("cannot watch SIGTERM ({e}); Ctrl-C still works");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutting down: no new sessions; transactions in flight may finish");
    token.cancel();
}
