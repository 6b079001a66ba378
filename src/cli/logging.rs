//! Logging setup: one `tracing` subscriber writing to stderr, filtered by `RUST_LOG` when
//! that is set and valid, else by the configured level.
//!
//! It must never log configuration values itself (they may hold secrets), and never
//! panic when a subscriber is already installed (tests call it repeatedly).

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `level` is a tracing filter (`info`,
/// `mailvalve=debug,warn`); `RUST_LOG` wins over it. An invalid `level` falls back to
/// `info`. A second call is a no-op.
pub fn init_tracing(level: &str) {
    let filter = match EnvFilter::try_from_default_env() {
        Ok(filter) => filter,
        Err(_) => EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
