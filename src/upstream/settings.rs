//! The outbound settings, prepared once: the `[upstream]` configuration plus the TLS
//! connector built from it (loading the root store is slow; do it once, not per connect).
//!
//! It also carries the largest message the provider takes ([`MessageSize`]): the
//! profile's figure, and the `SIZE` the provider's EHLO announced, learned by every
//! connection; the inbound side advertises and enforces it, so a message the provider
//! would refuse is refused before it is taken.
//!
//! Must never print the password: [`Settings`] derives `Debug` only through
//! `UpstreamConfig`, whose `Secret` redacts itself.

use super::error::UpstreamError;
use super::observer::Observer;
use super::tls;
use crate::config::{TlsMode, UpstreamConfig};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// The provider's message size limit (profile and EHLO `SIZE`), shared by every
    /// clone of these settings.
    pub message_size: Arc<MessageSize>,
    /// Access tokens for XOAUTH2 / OAUTHBEARER, when `[upstream.oauth2]` is set.
    pub tokens: Option<Arc<super::oauth::TokenSource>>,
}

/// The largest message the provider takes, as far as known: the smaller of the
/// profile's `max_message_size` and the `SIZE` the provider's last EHLO announced.
#[derive(Debug, Default)]
pub struct MessageSize {
    profile: Option<usize>,
    /// 0 = no EHLO with `SIZE n` seen yet.
    announced: AtomicUsize,
}

impl MessageSize {
    /// Known from the profile (or the user's `[upstream.limits]`): `limit`.
    pub fn new(profile: Option<usize>) -> Self {
        Self {
            profile,
            announced: AtomicUsize::new(0),
        }
    }

    /// The provider's EHLO said `SIZE n` (n > 0; `SIZE 0` means "no limit" and is not
    /// passed here).
    pub fn announce(&self, n: usize) {
        let old = self.announced.swap(n, Ordering::Relaxed);
        if old != n {
            tracing::info!(
                size = n,
                "provider announces a message size limit (EHLO SIZE)"
            );
        }
    }

    /// The EHLO figure, if one was seen.
    pub fn announced(&self) -> Option<usize> {
        Some(self.announced.load(Ordering::Relaxed)).filter(|&n| n > 0)
    }

    /// The profile's figure.
    pub fn profile(&self) -> Option<usize> {
        self.profile
    }

    /// The smaller of the two, `None` when neither is known.
    pub fn limit(&self) -> Option<usize> {
        match (self.profile, self.announced()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
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
            message_size: Arc::new(MessageSize::default()),
            tokens: None,
        }))
    }

    /// The same settings, knowing the provider takes messages up to `limit` bytes (the
    /// profile's figure; the EHLO `SIZE` is learned on top).
    pub fn with_message_size(self: &Arc<Self>, limit: Option<usize>) -> Arc<Self> {
        let mut s = (**self).clone();
        s.message_size = Arc::new(MessageSize::new(limit));
        Arc::new(s)
    }

    /// The same settings, signing in with access tokens from `tokens`.
    pub fn with_tokens(self: &Arc<Self>, tokens: Arc<super::oauth::TokenSource>) -> Arc<Self> {
        let mut s = (**self).clone();
        s.tokens = Some(tokens);
        Arc::new(s)
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
            .field("message_size", &self.message_size.limit())
            .field("oauth2", &self.tokens.is_some())
            .finish()
    }
}
