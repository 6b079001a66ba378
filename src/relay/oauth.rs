//! OAuth2 sign-in, wired: `[upstream.oauth2]` merged with the provider profile, the
//! refresh token from the configuration or the token file (`store::token_file`), and
//! the upstream's [`TokenSource`] built from them; the sign-in behind `mailvalve oauth
//! login` ([`login`]: device code, or the browser with a loopback redirect), and what
//! `check` says about OAuth2 and about where each effective upstream value came from
//! ([`check_report`]).
//!
//! It must never log or return a token: errors name keys and files only, and the texts
//! returned here hold host names, numbers and dates, never a secret.

use crate::config::oauth::{OAuth2Config, RefreshSource, ResolvedOAuth2};
use crate::config::profile::{self, Profile};
use crate::config::{Config, Loaded, Secret};
use crate::store::token_file::{self, TokenFile};
use crate::upstream::oauth::{device, http_client, loopback, Given, RefreshStore, TokenSource};
use std::fmt::Write as _;
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

/// The sign-in: resolves endpoints, runs the device flow (Microsoft) or, without a
/// device endpoint, the browser sign-in with a loopback redirect (Google), and writes
/// the token file. Progress goes to `out`.
pub async fn login(
    config: &Config,
    profile_name: Option<&str>,
    client_id: Option<String>,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let name = profile_name.unwrap_or(&config.upstream.profile);
    let prof = match profile::builtin(name) {
        Some(p) => p?,
        None => anyhow::bail!(
            "--profile {name:?}: no such provider profile (known: {})",
            profile::names().collect::<Vec<_>>().join(", ")
        ),
    };
    let mut o: OAuth2Config = config.upstream.oauth2.clone().unwrap_or_default();
    if client_id.is_some() {
        o.client_id = client_id;
    }
    o.refresh_token = None;
    let resolved: ResolvedOAuth2 = o
        .resolve(prof.oauth2.as_ref())
        .map_err(|(key, msg)| anyhow::anyhow!("{key}: {msg}"))?;
    let path = match &resolved.refresh {
        RefreshSource::File(p) => p.clone(),
        RefreshSource::Given(_) => resolved.token_file.clone(),
    };
    let http = http_client()?;
    let refresh = if resolved.device_endpoint.is_some() {
        device_sign_in(&http, &resolved, &prof, out).await?
    } else if resolved.authorization_endpoint.is_some() {
        let hint = config.upstream.username.as_deref();
        browser_sign_in(&http, &resolved, &prof, hint, out).await?
    } else {
        let note = prof
            .oauth2
            .as_ref()
            .and_then(|p| p.note.clone())
            .unwrap_or_else(|| {
                "set upstream.oauth2.device_endpoint or upstream.oauth2.authorization_endpoint"
                    .into()
            });
        anyhow::bail!("profile {name} has no sign-in for `mailvalve oauth login`: {note}");
    };
    let file = TokenFile {
        refresh_token: refresh.expose().to_string(),
        obtained_at: crate::policy::clock::wall_ms() / 1000,
        last_refreshed: None,
        scopes: resolved.scopes.clone(),
        profile: Some(name.to_string()),
    };
    token_file::write(&path, &file).map_err(|e| anyhow::anyhow!(e))?;
    writeln!(
        out,
        "Signed in. The refresh token is stored in {} (readable by you only); \
         mailvalve refreshes its access tokens from it.",
        path.display()
    )?;
    Ok(())
}

/// RFC 8628: print the address and the code, poll until the person signed in.
async fn device_sign_in(
    http: &reqwest::Client,
    resolved: &ResolvedOAuth2,
    prof: &Profile,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<Secret> {
    let started = device::start(http, resolved).await?;
    writeln!(
        out,
        "To sign in to {}, open {} and enter the code {}",
        prof.description, started.verification_uri, started.user_code
    )?;
    if let Some(m) = &started.message {
        writeln!(out, "({m})")?;
    }
    writeln!(
        out,
        "Waiting up to {} minutes for the sign-in ...",
        started.expires_in.min(device::MAX_WAIT).as_secs() / 60
    )?;
    out.flush()?;
    Ok(device::wait_for_grant(
        http,
        resolved,
        &started,
        device::MAX_WAIT,
        tokio::time::sleep,
    )
    .await?)
}

/// RFC 8252 / RFC 7636: print the address to open in a browser on this machine, wait
/// for the provider to send the browser back to 127.0.0.1, exchange the code.
async fn browser_sign_in(
    http: &reqwest::Client,
    resolved: &ResolvedOAuth2,
    prof: &Profile,
    login_hint: Option<&str>,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<Secret> {
    let started = loopback::start(resolved, login_hint).await?;
    writeln!(
        out,
        "To sign in to {}, open this address in a browser on this computer:\n\n  {}\n",
        prof.description, started.authorization_url
    )?;
    writeln!(
        out,
        "After you allow access, the browser is sent back to {} (mailvalve is listening \
         there) and shows \"Signed in\".",
        started.redirect_uri
    )?;
    writeln!(
        out,
        "On a server without a browser: run this on your own computer with the same \
         configuration, then copy the token file to the server."
    )?;
    writeln!(
        out,
        "Waiting up to {} minutes for the sign-in ...",
        loopback::MAX_WAIT.as_secs() / 60
    )?;
    out.flush()?;
    Ok(loopback::wait_and_exchange(http, resolved, started, loopback::MAX_WAIT).await?)
}

/// What `check` adds: where each effective upstream value came from (profile, file,
/// environment, default), the profile figures as applied, and the OAuth2 token status.
/// Never a secret: values printed here are host names, numbers and dates.
pub fn check_report(loaded: &Loaded) -> String {
    let c = &loaded.config;
    let s = &loaded.sources;
    let mut out = String::from("# where the effective upstream values come from:\n");
    let _ = writeln!(
        out,
        "#   upstream.host = {}  ({})",
        c.upstream.host,
        s.origin("upstream.host")
    );
    let _ = writeln!(
        out,
        "#   upstream.port = {}  ({})",
        c.upstream.port,
        s.origin("upstream.port")
    );
    let _ = writeln!(
        out,
        "#   upstream.tls = {:?}  ({})",
        c.upstream.tls,
        s.origin("upstream.tls")
    );
    let prof = profile::builtin(&c.upstream.profile).and_then(Result::ok);
    if let Some(p) = &prof {
        let l = p.limits.overridden_by(&c.upstream.limits);
        let own_mpc = c.upstream.max_messages_per_connection;
        let mpc = l
            .messages_per_connection
            .map_or(own_mpc, |m| m.min(own_mpc))
            .max(1);
        let mpc_from = if l.messages_per_connection.is_some_and(|m| m < own_mpc) {
            limit_origin(s, "messages_per_connection", &p.name)
        } else {
            format!(
                "upstream.max_messages_per_connection, {}",
                s.origin("upstream.max_messages_per_connection")
            )
        };
        let _ = writeln!(out, "#   messages per connection = {mpc}  ({mpc_from})");
        let own = c.server.max_message_size;
        let size = l.max_message_size.map_or(own, |m| m.min(own));
        let size_from = if l.max_message_size.is_some_and(|m| m < own) {
            limit_origin(s, "max_message_size", &p.name)
        } else {
            format!(
                "server.max_message_size, {}",
                s.origin("server.max_message_size")
            )
        };
        let _ = writeln!(
            out,
            "#   max message size = {size} bytes  ({size_from}; lowered further to the SIZE the provider's EHLO announces)"
        );
    }
    if let Some(o) = &c.upstream.oauth2 {
        match o.resolve(prof.as_ref().and_then(|p| p.oauth2.as_ref())) {
            Ok(r) => {
                let _ = writeln!(
                    out,
                    "# OAuth2 sign-in: AUTH {}, token endpoint {}",
                    r.mechanism.name(),
                    r.token_endpoint
                );
                let _ = writeln!(out, "#   {}", token_status(&r));
            }
            Err((key, msg)) => {
                let _ = writeln!(out, "# OAuth2 sign-in: not usable: {key}: {msg}");
            }
        }
    }
    out
}

fn limit_origin(s: &crate::config::provenance::Sources, key: &str, profile: &str) -> String {
    let full = format!("upstream.limits.{key}");
    match s.origin(&full) {
        crate::config::provenance::Origin::Default => format!("profile {profile}"),
        o => format!("{full}, {o}"),
    }
}

/// Whether a usable refresh token is there, and when it was obtained and last used.
pub fn token_status(r: &ResolvedOAuth2) -> String {
    match &r.refresh {
        RefreshSource::Given(_) => {
            "refresh token: given in the configuration or environment (***)".to_string()
        }
        RefreshSource::File(path) => match token_file::read(path) {
            Ok(Some(f)) if !f.refresh_token.is_empty() => format!(
                "refresh token: stored in {} (obtained {}, last refreshed {})",
                path.display(),
                when(Some(f.obtained_at)),
                when(f.last_refreshed)
            ),
            Ok(_) => format!(
                "refresh token: MISSING ({} has none): run `mailvalve oauth login`",
                path.display()
            ),
            Err(e) => format!("refresh token: UNUSABLE: {e}"),
        },
    }
}

fn when(secs: Option<u64>) -> String {
    match secs {
        Some(s) => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(s),
        )
        .to_string(),
        None => "never".into(),
    }
}
