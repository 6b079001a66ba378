//! A provider's limits (connections, messages per time, recipients, sizes): the table a
//! profile states and `[upstream.limits]` overrides key by key. Its own file because
//! both the profile and the schema use it. Only the shape; `relay::limits` applies the
//! precedence.
//!
//! It must never hold anything but numbers.

use serde::{Deserialize, Serialize};

/// A provider's limits. Every field is optional: unset means "not limited by the
/// provider as far as we know" except where `Limits::effective` supplies a cautious
/// default.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub initial_connections: Option<usize>,
    pub max_connections: Option<usize>,
    pub messages_per_second: Option<u32>,
    pub messages_per_minute: Option<u32>,
    pub messages_per_hour: Option<u32>,
    pub messages_per_day: Option<u32>,
    pub recipients_per_day: Option<u32>,
    pub recipients_per_message: Option<usize>,
    pub messages_per_connection: Option<usize>,
    pub max_message_size: Option<usize>,
}

impl Limits {
    /// `self` with every key that `over` sets replaced (the user's overrides).
    pub fn overridden_by(&self, over: &Limits) -> Limits {
        macro_rules! pick {
            ($($f:ident),*) => { Limits { $($f: over.$f.or(self.$f)),* } };
        }
        pick!(
            initial_connections,
            max_connections,
            messages_per_second,
            messages_per_minute,
            messages_per_hour,
            messages_per_day,
            recipients_per_day,
            recipients_per_message,
            messages_per_connection,
            max_message_size
        )
    }
}
