//! The outbound settings, prepared once: the `[upstream]` configuration plus the TLS
//! connector built from it (loading the root store is slow; do it once, not per connect).
//!
//! Must never print the password: [`Settings`] derives `Debug` only through
//! `UpstreamConfig`, whose `Secret` redacts itself.

use super::error::UpstreamError;
use super::observer::Observer;
use super::tls;
use crate::config::{TlsMode, UpstreamConfig};
use std::fmt;
use std::sync::Arc;
use tokio_rustls::TlsConnector;

/// Everything a [`Connection`](super::Connection), the pool and admission need.
#[derive(Clone)]
pub struct Settings {
    pub config: UpstreamConfig,
    /// `None` when `tls = "none"`.
    pub(crate) connector: Option<TlsConnector>,
    /// Where every reply, failure and latency is reported (the policy). `None`: nobody.
    pub observer: Option<Arc<dyn Observer>>,
}

impl Settings {
    /// Prepares the TLS connector (root store, CA file). Fails if the CA file cannot
    /// be read.
    pub fn new(config: UpstreamConfig) -> Result<Arc<Self>, UpstreamError> {
        let connector = match config.tls {
            TlsMode::None => None,
            TlsMode::Implicit | TlsMode::Starttls => Some(tls::connector(
                config.tls_verify,
                config.ca_file.as_deref(),
            )?),
        };
        Ok(Arc::new(Self {
            config,
            connector,
            observer: None,
        }))
    }

    /// The same settings, reporting to `observer`.
    pub fn with_observer(self: &Arc<Self>, observer: Arc<dyn Observer>) -> Arc<Self> {
        let mut s = (**self).clone();
        s.observer = Some(observer);
        Arc::new(s)
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("config", &self.config)
            .field("tls", &self.connector.is_some())
            .finish()
    }
}
