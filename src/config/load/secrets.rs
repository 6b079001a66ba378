//! Secret scrubbing for the loader: which keys hold secrets, every secret value found in
//! the file (without trusting it to parse) or the environment, and the scrubber that
//! replaces each of them with `***` in a message.
//!
//! Must never miss a value it was given: a message that leaves the loader goes through
//! [`Secrets::scrub`] first.

/// Keys whose values are secrets: `upstream.password`, `server.users[3].password`,
/// `http.token`, `upstream.oauth2.client_secret`, `upstream.oauth2.refresh_token`, ...
/// (`token_file` and `token_endpoint` are a path and a URL, not secrets.)
pub(super) fn is_secret_key(key: &str) -> bool {
    let last = key.rsplit(['.', ']']).next().unwrap_or(key);
    let last = last.to_ascii_lowercase();
    last.contains("password")
        || last.contains("secret")
        || last == "token"
        || last.ends_with("_token")
}

/// Password values written in the file, found without trusting it to parse: every
/// `...password... = value` line, the value with and without its quotes, and (if the
/// file parses) every value at a password key, inline tables included.
pub(super) fn secrets_in_text(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if !is_secret_key(k.trim().trim_start_matches('#').trim()) {
            continue;
        }
        let v = v.trim();
        out.push(v.to_owned());
        for q in ['"', '\''] {
            if let Some(inner) = v.strip_prefix(q).and_then(|s| s.split(q).next()) {
                out.push(inner.to_owned());
            }
        }
    }
    if let Ok(table) = text.parse::<toml::Table>() {
        collect_toml_secrets(&toml::Value::Table(table), false, &mut out);
    }
    out
}

pub(super) fn collect_toml_secrets(
    value: &toml::Value,
    under_secret_key: bool,
    out: &mut Vec<String>,
) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                collect_toml_secrets(v, under_secret_key || is_secret_key(k), out);
            }
        }
        toml::Value::Array(a) => {
            for v in a {
                collect_toml_secrets(v, under_secret_key, out);
            }
        }
        toml::Value::String(s) if under_secret_key => out.push(s.clone()),
        other if under_secret_key => out.push(other.to_string()),
        _ => {}
    }
}

/// Replaces every known secret value in a message with `***`.
pub(super) struct Secrets(Vec<String>);

impl Secrets {
    pub(super) fn new(mut all: Vec<String>) -> Self {
        all.retain(|s| !s.is_empty());
        // Longest first, so a password that contains another is replaced whole.
        all.sort_by_key(|s| std::cmp::Reverse(s.len()));
        all.dedup();
        Self(all)
    }

    pub(super) fn scrub(&self, message: &str) -> String {
        let mut out = message.to_owned();
        for s in &self.0 {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_scan_finds_password_lines() {
        let found = secrets_in_text("password = \"a b\" # c\n[[x]]\nfoo = { password = 'q' }\n");
        assert!(found.iter().any(|s| s == "a b"), "{found:?}");
        assert!(found.iter().any(|s| s == "q"), "{found:?}");
    }
}
