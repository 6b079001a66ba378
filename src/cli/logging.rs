//! Logging setup: one `tracing` subscriber writing to stderr, filtered by `RUST_LOG` when
//! that is set and valid, else by the configured level.
//!
//! It must never log configuration values itself (they may hold secrets), and never
//! panic when a subscriber is already installed (tests call it repeatedly).

use crate::relay::reload::SetLogLevel;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{fmt, reload, EnvFilter};

/// Installs the global subscriber. `level` is a tracing filter (`info`,
/// `mailvalve=debug,warn`); `RUST_LOG` wins over it. An invalid `level` falls back to
/// `info`. A second call is a no-op.
pub fn init_tracing(level: &str) {
    let _ = init_reloadable(level);
}

/// [`init_tracing`], returning how to change the level later (a configuration reload):
/// `None` when `RUST_LOG` decides the level or a subscriber was already installed.
pub fn init_reloadable(level: &str) -> Option<SetLogLevel> {
    let (filter, from_env) = match EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, true),
        Err(_) => (
            EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info")),
            false,
        ),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(
            fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .try_init()
        .is_ok();
    if !installed || from_env {
        return None;
    }
    Some(Box::new(move |level: &str| {
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    }))
}
