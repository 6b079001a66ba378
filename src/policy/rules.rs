//! Reply rules: the `[[rules]]` tables of the config and of provider profiles
//! (`RuleSpec`), their compiled form (`Rule`), and the built-in defaults that encode
//! DESIGN "The reply policy".
//!
//! What a rule must never do: suppress an address on a reply that is not the address's
//! fault, or take a refusal for acceptance. Every rule whose verdict is `suppress` is
//! therefore confined, when compiled, to 5xx replies in the RCPT or DATA-end phase;
//! `soft-bounce` to 4xx/5xx in the same phases. A rule whose verdict is `accept` must
//! name codes that are all 2xx (`code = "250"`, `"2xx"`); one that could match anything
//! else is refused, naming the rule — an `accept` for a 5xx would count a refusal as
//! delivered. (The built-in table alone also accepts the two intermediate replies the
//! protocol asks for: `354` after DATA and `334` during AUTH, each only in its phase.)
//! A user rule cannot widen any of that. Compiling happens once (config load); the
//! matching in `classify.rs` does no parsing and no regex compilation.
//!
//! - `spec`: [`RuleSpec`] as written in TOML, where a rule comes from, and its error.
//! - `matchers`: verdict names, phases, code and enhanced-code patterns.
//! - `compile`: a spec (or a built-in entry) into a [`Rule`], with the confinements
//!   above.
//! - `builtin`: the built-in table ([`BUILTIN`]).

mod builtin;
mod compile;
mod matchers;
mod spec;

pub(crate) use builtin::BUILTIN;
pub(crate) use compile::{compile, enhanced_matches, Rule, RuleParts};
pub(crate) use matchers::{phase_bit, EnhPat};
pub use spec::{RuleError, RuleSource, RuleSpec};
