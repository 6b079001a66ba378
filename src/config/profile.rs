//! Provider profiles: the limits and reply rules of one provider, from
//! `config/providers/<name>.toml`, embedded in the binary at build time so a profile
//! needs no file at run time. The user's config selects one with `upstream.profile` and
//! may override any limit key by key (`[upstream.limits]`).
//!
//! A profile never holds credentials, and loading one never touches the network.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::limits::{LimitKey, Limits};
use super::schema::TlsMode;
use crate::policy::rules::RuleSpec;

/// One built-in profile: its name and the TOML text it was built from.
const BUILTIN: &[(&str, &str)] = &[
    (
        "generic",
        include_str!("../../config/providers/generic.toml"),
    ),
    (
        "t-online",
        include_str!("../../config/providers/t-online.toml"),
    ),
    ("gmx", include_str!("../../config/providers/gmx.toml")),
    ("web-de", include_str!("../../config/providers/web-de.toml")),
    ("ionos", include_str!("../../config/providers/ionos.toml")),
    ("strato", include_str!("../../config/providers/strato.toml")),
    ("gmail", include_str!("../../config/providers/gmail.toml")),
    (
        "google-workspace",
        include_str!("../../config/providers/google-workspace.toml"),
    ),
    (
        "office365",
        include_str!("../../config/providers/office365.toml"),
    ),
    (
        "outlook-com",
        include_str!("../../config/providers/outlook-com.toml"),
    ),
    (
        "amazon-ses",
        include_str!("../../config/providers/amazon-ses.toml"),
    ),
    ("brevo", include_str!("../../config/providers/brevo.toml")),
    ("local", include_str!("../../config/providers/local.toml")),
];

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    pub description: String,
    /// Suggested submission host, port and TLS mode (the user's `[upstream]` wins).
    pub host: Option<String>,
    /// Further host names the provider publishes for the same service (Workspace's
    /// `smtp-relay.gmail.com`); `check` warns about an `upstream.host` that is neither.
    #[serde(default)]
    pub hosts: Vec<String>,
    pub port: Option<u16>,
    pub tls: Option<TlsMode>,
    #[serde(default)]
    pub limits: Limits,
    /// `[limit_sources]`: which `[limits]` figures are published.
    ///
    /// The `[limits]` keys whose figure is not the provider's published one (a cautious
    /// guess): a starting point that probing may raise (unless
    /// `upstream.learn_above_profile = false`). Every other figure is published and a
    /// hard cap. A test checks this list against each line's source comment.
    #[serde(default)]
    pub limit_sources: LimitSources,
    /// Provider-specific reply rules, tried before the built-in defaults; the same
    /// schema as the user's `[[rules]]` (`hint` for defer, `until` for pause-*).
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// The provider's OAuth2 endpoints and scopes (`[upstream.oauth2]` fills in from
    /// here what it leaves out).
    #[serde(default)]
    pub oauth2: Option<super::oauth::ProfileOAuth2>,
    /// Nothing is paced before the server objects: with no rate figure, the rate starts
    /// unlimited instead of cautiously (a server the user runs, `local`). Replies are
    /// still obeyed and learned from.
    #[serde(default)]
    pub unpaced_start: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("built-in profile {name}: {source}")]
pub struct ProfileError {
    name: String,
    source: toml::de::Error,
}

/// `[limit_sources]` of a profile (right after its `[limits]`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSources {
    /// The `[limits]` keys whose figure is a guess (`# unverified` in its comment).
    pub unverified: Vec<LimitKey>,
}

impl Profile {
    /// Whether the profile's figure for `key` is the provider's published one (a hard
    /// cap), not a guess marked `unverified`.
    pub fn is_published(&self, key: LimitKey) -> bool {
        self.limits.is_set(key) && !self.limit_sources.unverified.contains(&key)
    }
}

/// Names of all built-in profiles, in display order.
pub fn names() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|(n, _)| *n)
}

/// The built-in profile `name`, or `None` if there is none by that name.
pub fn builtin(name: &str) -> Option<Result<Profile, ProfileError>> {
    BUILTIN
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(n, text)| parse(n, text))
}

/// All built-in profiles, parsed (for `mailvalve profiles`).
pub fn all() -> Result<BTreeMap<&'static str, Profile>, ProfileError> {
    BUILTIN
        .iter()
        .map(|(n, text)| parse(n, text).map(|p| (*n, p)))
        .collect()
}

fn parse(name: &str, text: &str) -> Result<Profile, ProfileError> {
    toml::from_str(text).map_err(|source| ProfileError {
        name: name.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_profile_parses_and_is_named_after_its_file() {
        let all = all().unwrap();
        assert_eq!(all.len(), 13);
        for (name, p) in &all {
            assert_eq!(*name, p.name);
            let l = &p.limits;
            assert!(
                l.max_connections.unwrap_or(1) >= l.initial_connections.unwrap_or(1),
                "{name}"
            );
        }
    }

    #[test]
    fn every_number_has_a_source_or_says_unverified() {
        for (name, text) in BUILTIN {
            for line in text.lines() {
                let code = line.split('#').next().unwrap_or("");
                if code.contains('=')
                    && code.chars().any(|c| c.is_ascii_digit())
                    && !code.contains('"')
                {
                    let comment = line.split_once('#').map(|x| x.1).unwrap_or("");
                    assert!(
                        comment.trim().len() > 3,
                        "{name}: number without a source: {line}"
                    );
                }
            }
        }
    }

    /// `[limit_sources] unverified` is the data the comments state: a key whose comment
    /// says "unverified" is listed, a key with a published source is not, and nothing
    /// is listed that the profile does not set.
    #[test]
    fn unverified_list_matches_the_source_comments() {
        for (name, text) in BUILTIN {
            let p = parse(name, text).unwrap();
            let mut in_limits = false;
            let mut said = std::collections::BTreeSet::new();
            for line in text.lines() {
                let line = line.trim();
                if line.starts_with('[') {
                    in_limits = line == "[limits]";
                    continue;
                }
                let Some((key, rest)) = line.split_once('=') else {
                    continue;
                };
                if !in_limits || key.trim_start().starts_with('#') {
                    continue;
                }
                let key: LimitKey = toml::Value::String(key.trim().to_string())
                    .try_into()
                    .unwrap_or_else(|e| panic!("{name}: {line}: {e}"));
                let comment = rest.split_once('#').map(|x| x.1).unwrap_or("");
                assert_eq!(
                    comment.contains("unverified"),
                    p.limit_sources.unverified.contains(&key),
                    "{name}: {} marked {}, comment: {comment}",
                    key.name(),
                    if p.is_published(key) {
                        "published"
                    } else {
                        "unverified"
                    },
                );
                said.insert(key);
            }
            for k in &p.limit_sources.unverified {
                assert!(said.contains(k), "{name}: {} listed but not set", k.name());
            }
        }
    }

    #[test]
    fn an_unknown_key_in_the_unverified_list_is_an_error_naming_it() {
        let e = toml::from_str::<Profile>(
            "name = \"x\"\ndescription = \"x\"\n[limit_sources]\nunverified = [\"messages_per_week\"]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("messages_per_week"), "{e}");
    }

    #[test]
    fn known_figures() {
        let o = builtin("office365").unwrap().unwrap();
        assert_eq!(o.limits.max_connections, Some(3));
        assert_eq!(o.limits.messages_per_minute, Some(30));
        let g = builtin("google-workspace").unwrap().unwrap();
        assert_eq!(g.limits.messages_per_day, Some(2000));
        let s = builtin("amazon-ses").unwrap().unwrap();
        assert_eq!(
            (s.limits.messages_per_second, s.limits.recipients_per_day),
            (Some(1), Some(200)),
            "SES's sending quota counts recipients"
        );
        assert!(s.is_published(LimitKey::MessagesPerSecond));
        assert!(!s.is_published(LimitKey::MaxConnections));
        assert!(o.is_published(LimitKey::RecipientsPerDay));
        assert!(builtin("nope").is_none());
    }

    #[test]
    fn overrides_key_by_key() {
        let base = builtin("office365").unwrap().unwrap().limits;
        let over = Limits {
            messages_per_minute: Some(10),
            ..Default::default()
        };
        let eff = base.overridden_by(&over);
        assert_eq!(eff.messages_per_minute, Some(10));
        assert_eq!(eff.max_connections, Some(3));
    }
}
