//! The browser sign-in behind `mailvalve oauth login` for providers whose device-code
//! flow does not grant the mail scope (Google: `https://mail.google.com/`): the
//! authorization-code grant with PKCE (RFC 7636) and a loopback redirect (RFC 8252 7.3).
//! mailvalve listens on `127.0.0.1:0`, prints the address to open, the person signs in
//! in any browser on this machine, the provider redirects the browser to
//! `http://127.0.0.1:PORT/?code=...&state=...`, and mailvalve exchanges the code and its
//! verifier at the token endpoint for the refresh token.
//!
//! It must never print or return the code, the code verifier, an access token or the
//! refresh token except as `Secret`s; it answers only a redirect whose `state` is the
//! one it made (anything else gets 400 and is ignored), waits at most `max_wait`, and
//! listens on loopback only.
//!
//! The listener is hand-written over tokio: it reads one HTTP/1.1 request line per
//! connection and answers with a fixed page — a server framework (hyper's server side
//! or axum, neither in the tree) would be more code to wire than this. PKCE's S256 and
//! the random verifier use `ring` (already in the tree as rustls' crypto), the base64url
//! encoding the `base64` crate.

use super::{endpoint_error, post_form, OAuthError};
use crate::config::oauth::ResolvedOAuth2;
use crate::config::Secret;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Never wait longer than this for the browser to come back.
pub const MAX_WAIT: Duration = Duration::from_secs(10 * 60);
/// Largest request head read from the browser.
const MAX_HEAD: usize = 16 * 1024;
/// One browser connection may take at most this long to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One sign-in attempt: the PKCE verifier, the `state`, and the redirect address.
pub struct Started {
    /// The address the person opens in a browser.
    pub authorization_url: String,
    /// `http://127.0.0.1:PORT` — where the provider sends the browser back.
    pub redirect_uri: String,
    state: String,
    verifier: Secret,
    listener: TcpListener,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("redirect_uri", &self.redirect_uri)
            .finish_non_exhaustive()
    }
}

/// `n` random bytes from the operating system, base64url without padding.
fn random_b64(n: usize) -> Result<String, OAuthError> {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| OAuthError::Unavailable("no random numbers from the system".into()))?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

/// RFC 7636 4.2: `BASE64URL(SHA256(ASCII(code_verifier)))`.
pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ))
}

/// Binds `127.0.0.1:0` (RFC 8252 7.3: any port, loopback IP literal) and builds the
/// authorization address: code flow, S256 challenge, offline access with consent so
/// the provider issues a refresh token.
pub async fn start(cfg: &ResolvedOAuth2, login_hint: Option<&str>) -> Result<Started, OAuthError> {
    let endpoint = cfg.authorization_endpoint.as_deref().ok_or_else(|| {
        OAuthError::NoRefreshToken(
            "no authorization endpoint: set upstream.oauth2.authorization_endpoint (the profile has none)".into(),
        )
    })?;
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(|e| {
        OAuthError::Unavailable(format!("cannot listen on 127.0.0.1 for the sign-in: {e}"))
    })?;
    let port = listener
        .local_addr()
        .map_err(|e| OAuthError::Unavailable(format!("loopback listener: {e}")))?
        .port();
    let redirect_uri = format!("http://127.0.0.1:{port}");
    // 32 bytes give a 43-character verifier, the shortest RFC 7636 4.1 allows.
    let verifier = random_b64(32)?;
    let state = random_b64(16)?;
    let challenge = s256(&verifier);
    let scope = cfg.scopes.join(" ");
    let mut params: Vec<(&str, &str)> = vec![
        ("response_type", "code"),
        ("client_id", cfg.client_id.as_str()),
        ("redirect_uri", redirect_uri.as_str()),
        ("scope", scope.as_str()),
        ("state", state.as_str()),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("access_type", "offline"),
        ("prompt", "consent"),
    ];
    if let Some(h) = login_hint {
        params.push(("login_hint", h));
    }
    let url = reqwest::Url::parse_with_params(endpoint, &params).map_err(|e| {
        OAuthError::NoRefreshToken(format!(
            "upstream.oauth2.authorization_endpoint {endpoint:?} is not a URL: {e}"
        ))
    })?;
    Ok(Started {
        authorization_url: url.into(),
        redirect_uri,
        state,
        verifier: Secret::new(verifier),
        listener,
    })
}

#[derive(Deserialize)]
struct Granted {
    #[serde(default)]
    refresh_token: Option<String>,
}

/// What one browser request said.
enum Redirect {
    /// The provider's answer with the right `state`: a code, or an error.
    Code(Secret),
    Error(String),
    /// Not the redirect (a favicon, a wrong or missing `state`): answered and ignored.
    Other,
}

const PAGE_OK: &str = "Signed in. mailvalve has the sign-in; you can close this window.";
const PAGE_ERR: &str = "The provider refused the sign-in. See the terminal for what to do.";
const PAGE_STATE: &str = "This address was not opened from the current `mailvalve oauth login` (state does not match); ignored.";

async fn respond(sock: &mut tokio::net::TcpStream, status: &str, text: &str) {
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = sock.write_all(resp.as_bytes()).await;
    let _ = sock.shutdown().await;
}

/// Reads a request head and returns its target (`/?code=...`), or `None`.
async fn read_target(sock: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(READ_TIMEOUT, sock.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() > MAX_HEAD {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let line = head.lines().next()?;
    let mut parts = line.split(' ');
    (parts.next()? == "GET").then_some(())?;
    parts.next().map(str::to_string)
}

fn read_redirect(target: &str, state: &str) -> Redirect {
    let Ok(url) = reqwest::Url::parse(&format!("http://127.0.0.1{target}")) else {
        return Redirect::Other;
    };
    let mut got_state = None;
    let mut code = None;
    let mut error = None;
    for (k, v) in url.query_pairs() {
        match &*k {
            "state" => got_state = Some(v.into_owned()),
            "code" => code = Some(Secret::new(v.into_owned())),
            "error" => error = Some(v.into_owned()),
            _ => {}
        }
    }
    // Constant-time comparison is not needed: the state is checked once per request
    // and a wrong one only gets the request ignored.
    if got_state.as_deref() != Some(state) {
        return Redirect::Other;
    }
    match (code, error) {
        (_, Some(e)) => Redirect::Error(e),
        (Some(c), None) if !c.expose().is_empty() => Redirect::Code(c),
        _ => Redirect::Other,
    }
}

/// Waits (at most `max_wait`) for the browser to come back with the code, then
/// exchanges code and verifier for the refresh token.
pub async fn wait_and_exchange(
    http: &reqwest::Client,
    cfg: &ResolvedOAuth2,
    started: Started,
    max_wait: Duration,
) -> Result<Secret, OAuthError> {
    let deadline = tokio::time::Instant::now() + max_wait;
    let code = loop {
        let accepted = tokio::time::timeout_at(deadline, started.listener.accept()).await;
        let Ok(accepted) = accepted else {
            return Err(OAuthError::Refused {
                code: "expired_token".into(),
                description: Some(format!(
                    "nobody signed in within {} minutes",
                    max_wait.as_secs() / 60
                )),
            });
        };
        let Ok((mut sock, _)) = accepted else {
            continue;
        };
        let Some(target) = read_target(&mut sock).await else {
            respond(&mut sock, "400 Bad Request", PAGE_STATE).await;
            continue;
        };
        match read_redirect(&target, &started.state) {
            Redirect::Code(c) => {
                respond(&mut sock, "200 OK", PAGE_OK).await;
                break c;
            }
            Redirect::Error(e) => {
                respond(&mut sock, "200 OK", PAGE_ERR).await;
                return Err(OAuthError::Refused {
                    code: e,
                    description: Some("the sign-in in the browser was declined".into()),
                });
            }
            Redirect::Other => respond(&mut sock, "400 Bad Request", PAGE_STATE).await,
        }
    };
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code.expose()),
        ("redirect_uri", started.redirect_uri.as_str()),
        ("client_id", cfg.client_id.as_str()),
        ("code_verifier", started.verifier.expose()),
    ];
    if let Some(s) = &cfg.client_secret {
        form.push(("client_secret", s.expose()));
    }
    let mut secrets: Vec<String> = cfg
        .client_secret
        .iter()
        .map(|s| s.expose().to_string())
        .collect();
    secrets.push(code.expose().to_string());
    secrets.push(started.verifier.expose().to_string());
    let (status, body) = post_form(http, &cfg.token_endpoint, &form, &secrets).await?;
    if !status.is_success() {
        return Err(endpoint_error(status, &body, &secrets));
    }
    let g: Granted = serde_json::from_slice(&body).map_err(|_| {
        OAuthError::Unavailable("token endpoint answered without a JSON body".into())
    })?;
    match g.refresh_token {
        Some(t) if !t.is_empty() => Ok(Secret::new(t)),
        _ => Err(OAuthError::Refused {
            code: "no_refresh_token".into(),
            description: Some(
                "the provider granted no refresh token (Google: remove mailvalve's access under your account's security settings and sign in again)".into(),
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7636 Appendix B's example.
    #[test]
    fn s256_matches_rfc7636_appendix_b() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn only_the_right_state_counts() {
        assert!(matches!(
            read_redirect("/?code=c1&state=s1", "s1"),
            Redirect::Code(_)
        ));
        assert!(matches!(
            read_redirect("/?code=c1&state=s2", "s1"),
            Redirect::Other
        ));
        assert!(matches!(read_redirect("/?code=c1", "s1"), Redirect::Other));
        assert!(matches!(
            read_redirect("/?error=access_denied&state=s1", "s1"),
            Redirect::Error(_)
        ));
        assert!(matches!(
            read_redirect("/favicon.ico", "s1"),
            Redirect::Other
        ));
    }
}
