//! Where each effective value came from: the file, a `MAILVALVE__*` variable, the
//! provider profile, or the built-in default — and the profile's `host`, `port` and
//! `tls` applied as defaults ([`apply_profile_defaults`]), so `profile` plus credentials
//! is a complete `[upstream]`.
//!
//! The loader fills [`Sources`]; `check` prints it. It must never hold a value, only
//! key names, variable names and the profile's name (so it can never show a secret).

use super::profile;
use super::schema::Config;
use std::collections::{BTreeMap, BTreeSet};

/// Where one key's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// The configuration file.
    File,
    /// The named `MAILVALVE__*` variable.
    Environment(String),
    /// The named provider profile.
    Profile(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File => f.write_str("file"),
            Origin::Environment(v) => write!(f, "environment ({v})"),
            Origin::Profile(p) => write!(f, "profile {p}"),
        }
    }
}

/// The keys the file and the environment set, and the ones the profile filled in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    /// Dotted keys present in the file (tables and values).
    file: BTreeSet<String>,
    /// Dotted key → variable name.
    env: BTreeMap<String, String>,
    /// Dotted key → profile name, for the values the profile supplied.
    profile: BTreeMap<String, String>,
}

impl Sources {
    /// From the file's text (if it parses; the loader has checked that it does) and
    /// the applied variables as (key, name).
    pub fn new(text: Option<&str>, env: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut file = BTreeSet::new();
        if let Some(Ok(t)) = text.map(|t| t.parse::<toml::Table>()) {
            collect("", &toml::Value::Table(t), &mut file);
        }
        Self {
            file,
            env: env.into_iter().collect(),
            profile: BTreeMap::new(),
        }
    }

    /// Where `key` (dotted, e.g. `upstream.port`) came from. A variable wins over the
    /// file, the file over the profile.
    pub fn origin(&self, key: &str) -> Origin {
        if let Some(v) = self.env.get(key) {
            return Origin::Environment(v.clone());
        }
        if self.file.contains(key) {
            return Origin::File;
        }
        if let Some(p) = self.profile.get(key) {
            return Origin::Profile(p.clone());
        }
        Origin::Default
    }

    /// Whether the file or a variable set `key`.
    pub fn given(&self, key: &str) -> bool {
        self.env.contains_key(key) || self.file.contains(key)
    }

    /// Records that the profile supplied `key`.
    pub fn from_profile(&mut self, key: &str, profile: &str) {
        self.profile.insert(key.to_string(), profile.to_string());
    }
}

fn collect(prefix: &str, v: &toml::Value, out: &mut BTreeSet<String>) {
    if let toml::Value::Table(t) = v {
        for (k, v) in t {
            let full = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            collect(&full, v, out);
            out.insert(full);
        }
    }
}

/// The profile's `host`, `port` and `tls` where neither the file nor a variable set the
/// key. An unknown profile changes nothing (validation reports it).
pub fn apply_profile_defaults(config: &mut Config, sources: &mut Sources) {
    let Some(Ok(p)) = profile::builtin(&config.upstream.profile) else {
        return;
    };
    let u = &mut config.upstream;
    if let (Some(host), false) = (&p.host, sources.given("upstream.host")) {
        u.host = host.clone();
        sources.from_profile("upstream.host", &p.name);
    }
    if let (Some(port), false) = (p.port, sources.given("upstream.port")) {
        u.port = port;
        sources.from_profile("upstream.port", &p.name);
    }
    if let (Some(tls), false) = (p.tls, sources.given("upstream.tls")) {
        u.tls = tls;
        sources.from_profile("upstream.tls", &p.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TlsMode;

    #[test]
    fn profile_fills_only_what_is_not_given() {
        let text = "[upstream]\nprofile = \"gmail\"\nport = 465\n";
        let mut c: Config = toml::from_str(text).unwrap();
        let mut s = Sources::new(
            Some(text),
            [(
                "upstream.tls".to_string(),
                "MAILVALVE__UPSTREAM__TLS".to_string(),
            )],
        );
        c.upstream.tls = TlsMode::Implicit; // as the variable said
        apply_profile_defaults(&mut c, &mut s);
        assert_eq!(c.upstream.host, "smtp.gmail.com");
        assert_eq!(c.upstream.port, 465);
        assert_eq!(c.upstream.tls, TlsMode::Implicit);
        assert_eq!(s.origin("upstream.host"), Origin::Profile("gmail".into()));
        assert_eq!(s.origin("upstream.port"), Origin::File);
        assert_eq!(
            s.origin("upstream.tls"),
            Origin::Environment("MAILVALVE__UPSTREAM__TLS".into())
        );
        assert_eq!(s.origin("upstream.max_connections"), Origin::Default);
    }

    #[test]
    fn a_profile_without_host_leaves_the_defaults() {
        let mut c = Config::default();
        let mut s = Sources::default();
        apply_profile_defaults(&mut c, &mut s);
        assert_eq!(c.upstream.host, "127.0.0.1");
        assert_eq!(s.origin("upstream.host"), Origin::Default);
    }
}
