//! `mailvalve oauth login`: the provider's device-code sign-in (RFC 8628; Microsoft) —
//! prints the address to open and the code to type — or, for Google, the browser
//! sign-in with a redirect to 127.0.0.1 (RFC 8252, PKCE) — prints the address to open;
//! waits (bounded) until the person signed in, and stores the refresh token in the
//! token file (0600 on Unix). Argument parsing only: the work is `relay::oauth::login`.
//!
//! It must never print a refresh token, an access token, the device code or the client
//! secret: only the user code and the address, which the person needs, are shown.

use crate::config::Loaded;
use anyhow::Context;

/// `mailvalve oauth ...`
#[derive(Debug, clap::Subcommand)]
pub enum OauthCmd {
    /// Sign in at the provider (Microsoft: device code; Google: browser, back to
    /// 127.0.0.1) and store the refresh token in the token file.
    Login {
        /// The provider profile whose endpoints and scopes to use (default: the
        /// configuration's upstream.profile).
        #[arg(long)]
        profile: Option<String>,
        /// The application (client) id (default: upstream.oauth2.client_id).
        #[arg(long)]
        client_id: Option<String>,
    },
}

/// Runs `cmd` with the loaded (not necessarily OAuth2-configured) configuration.
pub fn run(cmd: OauthCmd, loaded: &Loaded) -> anyhow::Result<()> {
    match cmd {
        OauthCmd::Login { profile, client_id } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the runtime")?;
            rt.block_on(crate::relay::oauth::login(
                &loaded.config,
                profile.as_deref(),
                client_id,
                &mut std::io::stdout(),
            ))
        }
    }
}

/// What `check` adds about OAuth2 and where the upstream values came from.
pub fn check_report(loaded: &Loaded) -> String {
    crate::relay::oauth::check_report(loaded)
}
