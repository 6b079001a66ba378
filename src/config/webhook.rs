//! `[queue.webhook]`: where the bounce webhook posts and how it authenticates, and the
//! check of that table — URL, timeout, credentials — done without building an HTTP
//! client or loading certificates, so `mailvalve check` and the running webhook
//! (`queue::webhook`, which starts from [`WebhookConfig::check`]) agree on what is valid.
//!
//! The URL is checked by hand, and why: reqwest's URL parser (used by the running
//! webhook) follows the WHATWG rules, which silently drop tabs and line breaks, read
//! `http:///path` as the host `path` and take an empty port or port 0; a configuration
//! mistake must get an error naming `webhook.url` instead.
//!
//! It must never put the password in an error or in `Debug` output (it is a `Secret`,
//! and credentials inside the URL are refused without being echoed), and never touch
//! the network.

use super::schema::Secret;
use rustls_pki_types::ServerName;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv6Addr;
use std::time::Duration;

/// How long a POST may take, connect to status line, unless configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

/// `[queue.webhook]`: an HTTP POST per failed recipient, in the shape listmonk's bounce
/// webhook takes.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// e.g. `https://listmonk.example.org/webhooks/bounce`. No credentials in it.
    pub url: String,
    /// HTTP Basic user (listmonk: the API user).
    #[serde(default)]
    pub username: Option<String>,
    /// HTTP Basic password (listmonk: the API user's token).
    #[serde(default)]
    pub password: Option<Secret>,
    /// The whole request, connect to status line, must finish within this.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            username: None,
            password: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &redact_userinfo(&self.url))
            .field("username", &self.username)
            .field("password", &self.password)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The URL with anything between `://` and `@` in the authority replaced by `***`.
fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// Where the webhook posts: a checked `http://` or `https://` URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    pub https: bool,
    /// The TLS server name (https only).
    pub server_name: Option<ServerName<'static>>,
    /// For connecting: a name or an IP address, without brackets.
    pub host: String,
    pub port: u16,
    /// `Host:` header value: brackets around IPv6, the port when it is not the default.
    pub host_header: String,
    /// Path and query, at least `/`.
    pub path: String,
}

impl WebhookConfig {
    /// Checks the table (URL `http://` or `https://` with a host and an optional port; no
    /// credentials in the URL; a username without `:`; a timeout above 0) and returns
    /// the target. The error names the key and never the password.
    pub fn check(&self) -> Result<WebhookTarget, String> {
        let target = parse_url(&self.url)?;
        if self.timeout.is_zero() {
            return Err("webhook.timeout must be more than 0".into());
        }
        match (&self.username, &self.password) {
            (Some(u), _) if u.contains(':') || u.chars().any(char::is_control) => {
                Err("webhook.username must not contain ':' or control characters".into())
            }
            (None, Some(_)) => Err("webhook.password is set but webhook.username is not".into()),
            _ => Ok(target),
        }
    }
}

fn parse_url(url: &str) -> Result<WebhookTarget, String> {
    let url = url.trim();
    if url.is_empty() {
        return Err("webhook.url is empty".into());
    }
    if url.chars().any(|c| c.is_control() || c == ' ') {
        return Err("webhook.url must not contain spaces or control characters".into());
    }
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("webhook.url must start with http:// or https://")?;
    let https = match scheme.to_ascii_lowercase().as_str() {
        "http" => false,
        "https" => true,
        _ => return Err("webhook.url must start with http:// or https://".into()),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        // Not echoed: it holds a password.
        return Err(
            "webhook.url must not contain credentials; use webhook.username and webhook.password"
                .into(),
        );
    }
    let (host, port, bracketed) = if let Some(r) = authority.strip_prefix('[') {
        let (h, after) = r
            .split_once(']')
            .ok_or("webhook.url: unclosed '[' in the host")?;
        h.parse::<Ipv6Addr>()
            .map_err(|_| format!("webhook.url: {h:?} is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or("webhook.url: unexpected text after ']'")?,
            ),
        };
        (h, port, true)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p), false),
            None => (authority, None, false),
        }
    };
    if host.is_empty() {
        return Err("webhook.url has no host".into());
    }
    if !bracketed
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return Err(format!(
            "webhook.url: {host:?} is not a valid host name (IPv6 addresses go in brackets)"
        ));
    }
    let default_port = if https { 443 } else { 80 };
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => {
                return Err(format!(
                    "webhook.url: port {p:?} is not a number from 1 to 65535"
                ))
            }
        },
    };
    let shown = if bracketed {
        format!("[{host}]")
    } else {
        host.to_ascii_lowercase()
    };
    let host_header = if port == default_port {
        shown
    } else {
        format!("{shown}:{port}")
    };
    let tail = tail.split('#').next().unwrap_or("");
    let path = if tail.starts_with('/') {
        tail.to_string()
    } else {
        format!("/{tail}")
    };
    let server_name =
        if https {
            let name = if bracketed {
                host.to_string()
            } else {
                host.to_ascii_lowercase()
            };
            Some(ServerName::try_from(name).map_err(|e| {
                format!("webhook.url: {host:?} is not a valid TLS server name: {e}")
            })?)
        } else {
            None
        };
    Ok(WebhookTarget {
        https,
        server_name,
        host: if bracketed {
            host.to_string()
        } else {
            host.to_ascii_lowercase()
        },
        port,
        host_header,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_validation() {
        let t = parse_url("https://Listmonk.Example.org/webhooks/bounce?x=1#frag").unwrap();
        assert!(t.https);
        assert_eq!(t.host, "listmonk.example.org");
        assert_eq!(t.port, 443);
        assert_eq!(t.host_header, "listmonk.example.org");
        assert_eq!(t.path, "/webhooks/bounce?x=1");
        let t = parse_url("http://127.0.0.1:9000").unwrap();
        assert_eq!(
            (t.port, t.path.as_str(), t.host_header.as_str()),
            (9000, "/", "127.0.0.1:9000")
        );
        let t = parse_url("http://[::1]:8080/h").unwrap();
        assert_eq!(
            (t.host.as_str(), t.host_header.as_str()),
            ("::1", "[::1]:8080")
        );
        for bad in [
            "",
            "listmonk.example.org/webhooks/bounce",
            "ftp://example.org/",
            "http:///path",
            "http://:80/",
            "http://example.org:0/",
            "http://example.org:65536/",
            "http://example.org:+80/",
            "http://example.org:/",
            "http://exa mple.org/",
            "http://example.org/\r\nX-Injected: 1",
            "http://[::1/",
            "http://[nope]/",
            "http://a:b:c/",
        ] {
            assert!(parse_url(bad).is_err(), "{bad:?} was accepted");
        }
        let err = parse_url("https://api:hunter2@example.org/").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn config_from_toml_and_redaction() {
        let c: WebhookConfig = toml::from_str(
            "url = \"https://lm.example.org/webhooks/bounce\"\nusername = \"api\"\npassword = \"hunter2\"\ntimeout = \"3s\"",
        )
        .unwrap();
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("hunter2"));
        let c: WebhookConfig = toml::from_str("url = \"http://127.0.0.1:9000/x\"").unwrap();
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert_eq!(WebhookConfig::default().timeout, DEFAULT_TIMEOUT);
        assert!(toml::from_str::<WebhookConfig>("url = \"http://x/\"\npasswd = \"a\"").is_err());

        let c = WebhookConfig {
            url: "https://api:hunter2@lm.example.org/".into(),
            username: Some("api".into()),
            password: Some(Secret::new("hunter2")),
            timeout: DEFAULT_TIMEOUT,
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let err = c.check().unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn check_rejects_bad_credentials_and_timeouts() {
        let base = WebhookConfig {
            url: "http://127.0.0.1:9000/webhooks/bounce".into(),
            ..WebhookConfig::default()
        };
        assert!(base.check().is_ok());
        for bad in [
            WebhookConfig {
                timeout: Duration::ZERO,
                ..base.clone()
            },
            WebhookConfig {
                username: Some("a:b".into()),
                ..base.clone()
            },
            WebhookConfig {
                password: Some(Secret::new("p")),
                ..base.clone()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
