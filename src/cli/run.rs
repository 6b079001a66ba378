//! `mailvalve run`: start the relay with a loaded, validated configuration.
//!
//! For now it only sets up logging and reports that the relay is not wired; the
//! integrator replaces the body. It must never log the configuration unredacted (use
//! `Debug`, where `Secret` prints `***`, or single fields that are not secrets).

use crate::config::Config;

/// Runs until shutdown. The configuration has already passed `config::validate`.
pub fn run(config: Config) -> anyhow::Result<()> {
    super::logging::init_tracing(&config.log.level);
    for w in crate::config::warnings(&config) {
        tracing::warn!("config: {w}");
    }
    tracing::info!(
        listen = %config.server.listen,
        upstream = %format_args!("{}:{}", config.upstream.host, config.upstream.port),
        profile = %config.upstream.profile,
        "mailvalve starting"
    );
    anyhow::bail!("passthrough relay not wired yet")
}
