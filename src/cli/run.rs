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
use std::path::Path;
use tokio_util::sync::CancellationToken;

/// Runs until shutdown. The configuration has already passed `config::validate`.
pub fn run(config: Config) -> anyhow::Result<()> {
    super::logging::init_tracing(&config.log.level);
    for w in crate::config::warnings(&config) {
        tracing::warn!("config: {w}");
    }
    if let Ok(cwd) = std::env::current_dir() {
        for w in stray_data(&config, &cwd) {
            tracing::warn!("{w}");
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(config))
}

/// The spool or suppression database that an older mailvalve (which resolved the
/// default paths against the working directory) left in `cwd`, when it is not the one
/// configured now: messages in it would never be delivered, so `run` says so.
pub fn stray_data(config: &Config, cwd: &Path) -> Vec<String> {
    let same = |a: &Path, b: &Path| {
        let (a, b) = (cwd.join(a), cwd.join(b));
        match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => a == b,
        }
    };
    let mut out = Vec::new();
    let defaults = Config::default();
    let spool = cwd.join(&defaults.queue.dir);
    if spool.join("queue.redb").is_file() && !same(&spool, &config.queue.dir) {
        out.push(format!(
            "found a spool in {} that is not the configured one (queue.dir = {}): messages \
             in it are not delivered. Older versions put it in the current directory; to \
             deliver them, stop mailvalve and move its contents to queue.dir (or set \
             queue.dir to it)",
            spool.display(),
            config.queue.dir.display()
        ));
    }
    let list = cwd.join(&defaults.suppression.path);
    if list.is_file() && !same(&list, &config.suppression.path) {
        out.push(format!(
            "found a suppression database {} that is not the configured one \
             (suppression.path = {}): its addresses are not suppressed. Move it there \
             (or set suppression.path to it)",
            list.display(),
            config.suppression.path.display()
        ));
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spool_left_in_the_working_directory_is_named() {
        let cwd = tempfile::tempdir().unwrap();
        let conf = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.queue.dir = conf.path().join("mailvalve-spool");
        config.suppression.path = conf.path().join("mailvalve-suppression.redb");
        assert!(stray_data(&config, cwd.path()).is_empty());

        std::fs::create_dir(cwd.path().join("mailvalve-spool")).unwrap();
        std::fs::write(cwd.path().join("mailvalve-spool/queue.redb"), b"").unwrap();
        std::fs::write(cwd.path().join("mailvalve-suppression.redb"), b"").unwrap();
        let w = stray_data(&config, cwd.path());
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("queue.dir"), "{w:?}");
        assert!(w[1].contains("suppression.path"), "{w:?}");

        // The configured ones, reached through the working directory: no warning.
        config.queue.dir = "mailvalve-spool".into();
        config.suppression.path = cwd.path().join("mailvalve-suppression.redb");
        assert!(stray_data(&config, cwd.path()).is_empty());
    }
}
