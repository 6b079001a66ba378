//! The webhook's URL, checked by hand before reqwest sees it, and why: reqwest's URL
//! parser follows the WHATWG rules, which silently drop tabs and line breaks, read
//! `http:///path` as the host `path` and take an empty port or port 0; a configuration
//! mistake must get an error naming `webhook.url` instead.
//!
//! Must never echo credentials found in the URL (they are refused, not shown).

use std::net::Ipv6Addr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    pub(super) https: bool,
    /// For connecting: a name or an IP address, without brackets.
    pub(super) host: String,
    pub(super) port: u16,
    /// `Host:` header value: brackets around IPv6, the port when it is not the default.
    pub(super) host_header: String,
    /// Path and query, at least `/`.
    pub(super) path: String,
}

impl Target {
    /// The same URL for reqwest, rebuilt from the checked parts (no fragment).
    pub(super) fn url(&self) -> Result<reqwest::Url, String> {
        let scheme = if self.https { "https" } else { "http" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let url = format!("{scheme}://{host}:{}{}", self.port, self.path);
        reqwest::Url::parse(&url).map_err(|e| format!("webhook.url is not a valid URL: {e}"))
    }
}

pub(super) fn parse_url(url: &str) -> Result<Target, String> {
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
    Ok(Target {
        https,
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
}
