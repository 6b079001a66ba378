//! The `MAILVALVE__*` environment variables: which ones there are, the key each one
//! overrides (`MAILVALVE__UPSTREAM__RATE__PER_MINUTE` → `upstream.rate.per_minute`, the
//! `config` crate's own mapping), and which variable an error or a validation problem is
//! to be blamed on.
//!
//! Reads the process environment only in [`process_env`]; must never change it, and never
//! put a variable's value into an error (only its name).

use super::secrets::is_secret_key;
use crate::config::error::ConfigError;

/// Environment variables with this prefix (followed by [`ENV_SEPARATOR`]) override keys.
pub const ENV_PREFIX: &str = "MAILVALVE";
/// Separates the prefix and the key segments: `MAILVALVE__UPSTREAM__RATE__PER_MINUTE`.
pub const ENV_SEPARATOR: &str = "__";

/// The process's `MAILVALVE__*` variables. A value that is not UTF-8 is an error naming
/// the variable (not its value).
pub fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if env_key(name).is_none() {
            continue;
        }
        match value.into_string() {
            Ok(v) => out.push((name.to_owned(), v)),
            Err(_) => {
                return Err(ConfigError::Other {
                    origin: format!("environment variable {name}"),
                    message: "the value is not valid UTF-8".into(),
                })
            }
        }
    }
    Ok(out)
}

/// `MAILVALVE__UPSTREAM__RATE__PER_MINUTE` → `upstream.rate.per_minute`, the same
/// mapping the `config` crate applies (it lower-cases the whole name).
pub(super) fn env_key(name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    let prefix = format!("{}{}", ENV_PREFIX, ENV_SEPARATOR).to_ascii_lowercase();
    let rest = lower.strip_prefix(&prefix)?;
    Some(rest.replace(ENV_SEPARATOR, "."))
}

pub(super) struct EnvVar {
    pub(super) name: String,
    pub(super) key: String,
    pub(super) value: String,
}

pub(super) struct EnvVars {
    pub(super) vars: Vec<EnvVar>,
}

impl EnvVars {
    pub(super) fn new<I: IntoIterator<Item = (String, String)>>(env: I) -> Self {
        let mut vars: Vec<EnvVar> = env
            .into_iter()
            .filter_map(|(name, value)| env_key(&name).map(|key| EnvVar { name, key, value }))
            .collect();
        vars.sort_by(|a, b| a.name.cmp(&b.name));
        Self { vars }
    }

    pub(super) fn as_map(&self) -> ::config::Map<String, String> {
        self.vars
            .iter()
            .map(|v| (v.name.clone(), v.value.clone()))
            .collect()
    }

    pub(super) fn secrets(&self) -> Vec<String> {
        self.vars
            .iter()
            .filter(|v| is_secret_key(&v.key))
            .map(|v| v.value.clone())
            .collect()
    }

    /// `environment variable NAME` if a variable set `key` or a key below it; with
    /// `walk_up`, also a sibling or a parent's sibling — e.g. a missing `server.tls.key`
    /// when only `MAILVALVE__SERVER__TLS__CERT` created the table.
    pub(super) fn origin_of(&self, key: &str, walk_up: bool) -> Option<String> {
        let mut candidate = key;
        loop {
            let below = format!("{candidate}.");
            if let Some(v) = self
                .vars
                .iter()
                .find(|v| v.key == candidate || v.key.starts_with(&below))
            {
                return Some(format!("environment variable {}", v.name));
            }
            match candidate.rfind(['.', '[']) {
                Some(i) if i > 0 && walk_up => candidate = &candidate[..i],
                _ => return None,
            }
        }
    }
}

/// `upstream.rate.per_minute`: non-empty segments of `[a-z0-9_]`. Anything else would
/// be read by the `config` crate as a path expression (`a[0]`) or an empty key.
pub(super) fn is_plain_key(key: &str) -> bool {
    key.split('.').all(|seg| {
        !seg.is_empty()
            && seg
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    })
}
