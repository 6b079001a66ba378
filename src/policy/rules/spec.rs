//! A reply rule as written: the `[[rules]]` tables of the config and of provider
//! profiles ([`RuleSpec`]), where a rule comes from ([`RuleSource`]) and what is wrong with
//! one ([`RuleError`]). Only the shape: nothing here checks a value (see `compile`).

use serde::{Deserialize, Serialize};
use std::fmt;

/// One rule as written in TOML:
///
/// ```toml
/// [[rules]]
/// code = "450"                       # "421", "4xx", "45x", or a list "450, 451"
/// enhanced = "4.7.*"                 # wildcards per component, ranges "5.2.251-255",
///                                    # "none" = the reply carries no enhanced code
/// text = "Mail send limit exceeded"  # case-insensitive regex over the reply text
/// phase = ["mail", "rcpt"]           # greeting ehlo starttls auth mail rcpt data data-end rset
/// verdict = "throttle-rate"
/// hint = "10m"                       # defer: used when the text carries no retry hint
/// until = "24h"                      # pause-*: likewise
/// description = "IONOS hourly limit"
/// ```
///
/// Every matcher is optional; a rule with none matches every reply. The verdicts are
/// `accept`, `throttle-connections`, `throttle-rate`, `defer`, `suppress`,
/// `soft-bounce`, `reject-message`, `policy-block`, `pause-auth`, `pause-quota`,
/// `pause-policy`, `protocol-error`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enhanced: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    pub verdict: String,
    /// For `defer`: how long to wait when the reply text names no time itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// For `pause-*`: how long to pause when the reply text names no time itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Shown by `mailvalve explain`; generated from the matchers when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Where a rule comes from; earlier sources win.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleSource {
    User,
    Profile,
    Builtin,
}

impl fmt::Display for RuleSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuleSource::User => "user",
            RuleSource::Profile => "profile",
            RuleSource::Builtin => "built-in",
        })
    }
}

/// A rule that cannot be compiled. `index` is the position in its `[[rules]]` array
/// (0-based, as in `rules[2]`), `field` the key that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin} rules[{index}].{field}: {message}")]
pub struct RuleError {
    pub origin: RuleSource,
    pub index: usize,
    pub field: &'static str,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use crate::policy::classify::tests::*;
    use crate::policy::classify::Classifier;
    use crate::policy::rules::RuleSpec;
    use crate::policy::verdict::Phase::*;

    #[test]
    fn rules_deserialize_from_toml() {
        #[derive(serde::Deserialize)]
        struct File {
            rules: Vec<RuleSpec>,
        }
        let f: File = toml::from_str(
            r#"
            [[rules]]
            code = "450"
            text = "Mail send limit exceeded"
            verdict = "throttle-rate"

            [[rules]]
            phase = ["rcpt", "data-end"]
            enhanced = "5.2.251-255"
            verdict = "pause-quota"
            until = "24h"
            description = "Microsoft sender throttled"
            "#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f.rules.len(), 2);
        let c = Classifier::new(&[], &f.rules).unwrap_or_else(|e| panic!("{e}"));
        let got = c.classify(Rcpt, &reply(550, "5.2.253", "x"));
        assert_eq!((got.verdict, got.index), (pq(24 * H), 1));
        let unknown_key: Result<File, _> =
            toml::from_str("[[rules]]\nverdict = \"defer\"\ncolour = 1\n");
        assert!(unknown_key.is_err());
    }
}
