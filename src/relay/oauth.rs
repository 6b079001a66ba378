//! OAuth2 sign-in, wired: `[upstream.oauth2]` merged with the provider profile, the
//! refresh token from the configuration or the token file (`store::token_file`), and
//! the upstream's [`TokenSource`] built from them.
//!
//! It must never log or return a token: errors name keys and files only.

use crate::config::oauth::RefreshSource;
use crate::config::profile::Profile;
use crate::config::{Config, Secret};
use crate::store::token_file;
use crate::upstream::oauth::{Given, RefreshStore, TokenSource};
use std::path::PathBuf;
use std::sync::Arc;

/// The refresh token in the token file `mailvalve oauth login` wrote; a rotated one is
/// written back, and every refresh is stamped (for `check`).
pub struct TokenFileStore(pub PathBuf);

impl RefreshStore for TokenFileStore {
    fn load(&self) -> Result<Secret, String> {
        match token_file::read(&self.0)? {
            Some(f) if !f.refresh_token.is_empty() => Ok(Secret::new(f.refresh_token)),
            Some(_) => Err(format!(
                "token file {} holds no refresh token",
                self.0.display()
            )),
            None => Err(format!("token file {} does not exist", self.0.display())),
        }
    }

    fn refreshed(&self, rotated: Option<Secret>) {
        let res = match rotated {
            Some(t) => token_file::update_refresh(&self.0, t.expose().to_string()),
            None => token_file::touch_refreshed(&self.0),
        };
        if let Err(e) = res {
            tracing::warn!("OAuth2 token file not updated: {e}");
        }
    }
}

/// The upstream's token source, when `[upstream.oauth2]` is set. `Err` names the key.
pub fn token_source(
    config: &Config,
    profile: &Profile,
) -> anyhow::Result<Option<Arc<TokenSource>>> {
    let Some(o) = &config.upstream.oauth2 else {
        return Ok(None);
    };
    let resolved = o
        .resolve(profile.oauth2.as_ref())
        .map_err(|(key, msg)| anyhow::anyhow!("config key {key}: {msg}"))?;
    let store: Arc<dyn RefreshStore> = match &resolved.refresh {
        RefreshSource::Given(s) => Arc::new(Given(s.clone())),
        RefreshSource::File(p) => Arc::new(TokenFileStore(p.clone())),
    };
    let source =
        TokenSource::new(resolved, store).map_err(|e| anyhow::anyhow!("upstream.oauth2: {e}"))?;
    Ok(Some(source))
}
