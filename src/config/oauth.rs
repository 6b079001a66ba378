//! `[upstream.oauth2]`: signing in to the provider with OAuth2 (XOAUTH2 or OAUTHBEARER,
//! RFC 7628) instead of a password, and the provider profile's OAuth2 endpoints and
//! scopes that fill in what the table leaves out.
//!
//! Only shapes, defaults and the merge with the profile ([`OAuth2Config::resolve`]); the
//! token exchange lives in `upstream::oauth`. It must never print a secret: the client
//! secret and the refresh token are [`Secret`]s.

use super::secret::Secret;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The SASL mechanism that carries the access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mechanism {
    /// Google's and Microsoft's `AUTH XOAUTH2` (`user=...^Aauth=Bearer ...^A^A`).
    #[default]
    Xoauth2,
    /// RFC 7628 `AUTH OAUTHBEARER` (`n,a=user,^Ahost=...^Aport=...^Aauth=Bearer ...^A^A`).
    Oauthbearer,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Xoauth2 => "XOAUTH2",
            Mechanism::Oauthbearer => "OAUTHBEARER",
        }
    }
}

/// `[upstream.oauth2]` as written. Present (even empty) = sign in with OAuth2; every
/// key left out comes from the provider profile where it has one.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct OAuth2Config {
    /// `xoauth2` or `oauthbearer`. Default: the profile's, else `xoauth2`.
    pub mechanism: Option<Mechanism>,
    /// Where access tokens are refreshed (https; http only to a loopback address).
    pub token_endpoint: Option<String>,
    /// Where `mailvalve oauth login` starts the device-code sign-in.
    pub device_endpoint: Option<String>,
    /// Where `mailvalve oauth login` sends the browser for the loopback sign-in
    /// (RFC 8252; Google), used when there is no device endpoint.
    pub authorization_endpoint: Option<String>,
    /// The application (client) id registered with the provider.
    pub client_id: Option<String>,
    /// The client secret, if the registration has one (public clients have none).
    pub client_secret: Option<Secret>,
    /// A refresh token given directly (best from the environment:
    /// `MAILVALVE__UPSTREAM__OAUTH2__REFRESH_TOKEN`); wins over the token file.
    pub refresh_token: Option<Secret>,
    /// The token file `mailvalve oauth login` writes (created 0600 on Unix).
    pub token_file: Option<PathBuf>,
    /// Scopes asked for. Default: the profile's.
    pub scopes: Option<Vec<String>>,
}

/// A profile's `[oauth2]`: the provider's endpoints and scopes.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProfileOAuth2 {
    #[serde(default)]
    pub mechanism: Mechanism,
    pub token_endpoint: String,
    pub device_endpoint: Option<String>,
    /// The browser sign-in (authorization code with PKCE, redirect to 127.0.0.1).
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    pub scopes: Vec<String>,
    /// Said by `oauth login` when the provider needs something first (an app registration).
    #[serde(default)]
    pub note: Option<String>,
}

/// The token file used when `token_file` is not set (relative to the config file's
/// directory, like every relative path in it).
pub const DEFAULT_TOKEN_FILE: &str = "mailvalve-oauth2-token.json";

/// Where the refresh token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshSource {
    /// `upstream.oauth2.refresh_token` (file or environment).
    Given(Secret),
    /// The token file (written by `mailvalve oauth login`).
    File(PathBuf),
}

/// `[upstream.oauth2]` with the profile's values filled in: everything the token
/// exchange needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedOAuth2 {
    pub mechanism: Mechanism,
    pub token_endpoint: String,
    pub device_endpoint: Option<String>,
    pub authorization_endpoint: Option<String>,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub scopes: Vec<String>,
    pub refresh: RefreshSource,
    /// The token file (also when the refresh token is given: `oauth login` writes it).
    pub token_file: PathBuf,
}

impl OAuth2Config {
    /// Merges with the profile's `[oauth2]`. `Err`: the key that is missing or wrong,
    /// and what is expected (for `config::validate`).
    pub fn resolve(
        &self,
        profile: Option<&ProfileOAuth2>,
    ) -> Result<ResolvedOAuth2, (&'static str, String)> {
        let token_endpoint = self
            .token_endpoint
            .clone()
            .or_else(|| profile.map(|p| p.token_endpoint.clone()))
            .ok_or((
                "upstream.oauth2.token_endpoint",
                "required: the provider profile has no OAuth2 token endpoint, so set it"
                    .to_string(),
            ))?;
        check_endpoint(&token_endpoint).map_err(|m| ("upstream.oauth2.token_endpoint", m))?;
        let device_endpoint = self
            .device_endpoint
            .clone()
            .or_else(|| profile.and_then(|p| p.device_endpoint.clone()));
        if let Some(d) = &device_endpoint {
            check_endpoint(d).map_err(|m| ("upstream.oauth2.device_endpoint", m))?;
        }
        let authorization_endpoint = self
            .authorization_endpoint
            .clone()
            .or_else(|| profile.and_then(|p| p.authorization_endpoint.clone()));
        if let Some(a) = &authorization_endpoint {
            check_endpoint(a).map_err(|m| ("upstream.oauth2.authorization_endpoint", m))?;
        }
        let client_id = match self.client_id.as_deref().map(str::trim) {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => {
                return Err((
                    "upstream.oauth2.client_id",
                    "required: the application (client) id you registered with the provider"
                        .to_string(),
                ))
            }
        };
        let scopes = self
            .scopes
            .clone()
            .or_else(|| profile.map(|p| p.scopes.clone()))
            .unwrap_or_default();
        if scopes
            .iter()
            .any(|s| s.is_empty() || s.contains(char::is_whitespace))
        {
            return Err((
                "upstream.oauth2.scopes",
                "each scope must be one word without spaces".to_string(),
            ));
        }
        let token_file = self
            .token_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_TOKEN_FILE));
        let refresh = match &self.refresh_token {
            Some(t) if !t.expose().trim().is_empty() => RefreshSource::Given(t.clone()),
            Some(_) => {
                return Err((
                    "upstream.oauth2.refresh_token",
                    "is empty; leave it out to use the token file".to_string(),
                ))
            }
            None => RefreshSource::File(token_file.clone()),
        };
        Ok(ResolvedOAuth2 {
            mechanism: self
                .mechanism
                .or_else(|| profile.map(|p| p.mechanism))
                .unwrap_or_default(),
            token_endpoint,
            device_endpoint,
            authorization_endpoint,
            client_id,
            client_secret: self.client_secret.clone(),
            scopes,
            refresh,
            token_file,
        })
    }
}

/// An endpoint must be `https://`, or `http://` to a loopback address (tests, a local
/// proxy): the refresh token and the client secret travel in the request body.
pub fn check_endpoint(url: &str) -> Result<(), String> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") && url.len() > "https://".len() {
        return Ok(());
    }
    if let Some(rest) = lower.strip_prefix("http://") {
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        let bare = if let Some(v6) = host.strip_prefix('[') {
            v6.split(']').next().unwrap_or("")
        } else {
            host.split(':').next().unwrap_or("")
        };
        let loopback = bare == "localhost"
            || bare
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback {
            return Ok(());
        }
        return Err(format!(
            "{url:?} is plain http to a host that is not loopback: use https (the refresh \
             token travels in the request)"
        ));
    }
    Err(format!("{url:?} is not an https:// URL"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms() -> ProfileOAuth2 {
        ProfileOAuth2 {
            mechanism: Mechanism::Xoauth2,
            token_endpoint: "https://login.example/token".into(),
            device_endpoint: Some("https://login.example/device".into()),
            authorization_endpoint: None,
            scopes: vec!["a".into(), "offline_access".into()],
            note: None,
        }
    }

    #[test]
    fn profile_fills_what_the_table_leaves_out() {
        let c = OAuth2Config {
            client_id: Some("app".into()),
            ..Default::default()
        };
        let r = c.resolve(Some(&ms())).unwrap();
        assert_eq!(r.token_endpoint, "https://login.example/token");
        assert_eq!(r.scopes, ["a", "offline_access"]);
        assert_eq!(r.refresh, RefreshSource::File(DEFAULT_TOKEN_FILE.into()));
        let c = OAuth2Config {
            client_id: Some("app".into()),
            mechanism: Some(Mechanism::Oauthbearer),
            scopes: Some(vec!["b".into()]),
            refresh_token: Some(Secret::new("r")),
            ..Default::default()
        };
        let r = c.resolve(Some(&ms())).unwrap();
        assert_eq!(r.mechanism, Mechanism::Oauthbearer);
        assert_eq!(r.scopes, ["b"]);
        assert_eq!(r.refresh, RefreshSource::Given(Secret::new("r")));
    }

    #[test]
    fn missing_pieces_name_their_key() {
        let c = OAuth2Config::default();
        assert_eq!(
            c.resolve(Some(&ms())).unwrap_err().0,
            "upstream.oauth2.client_id"
        );
        let c = OAuth2Config {
            client_id: Some("app".into()),
            ..Default::default()
        };
        assert_eq!(
            c.resolve(None).unwrap_err().0,
            "upstream.oauth2.token_endpoint"
        );
    }

    #[test]
    fn endpoints_must_be_https_or_loopback() {
        assert!(check_endpoint("https://login.microsoftonline.com/x").is_ok());
        assert!(check_endpoint("http://127.0.0.1:8080/token").is_ok());
        assert!(check_endpoint("http://[::1]:80/t").is_ok());
        assert!(check_endpoint("http://localhost/t").is_ok());
        assert!(check_endpoint("http://login.example/t").is_err());
        assert!(check_endpoint("http://127.0.0.1.evil.example/t").is_err());
        assert!(check_endpoint("ftp://x").is_err());
        assert!(check_endpoint("https://").is_err());
    }
}
