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

/// The name of one [`Limits`] key, for data about the keys (a profile's `unverified`
/// list). Parsing a name that is not a key is an error naming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKey {
    InitialConnections,
    MaxConnections,
    MessagesPerSecond,
    MessagesPerMinute,
    MessagesPerHour,
    MessagesPerDay,
    RecipientsPerDay,
    RecipientsPerMessage,
    MessagesPerConnection,
    MaxMessageSize,
}

impl LimitKey {
    /// Every key, in the order of the table.
    pub const ALL: [LimitKey; 10] = [
        LimitKey::InitialConnections,
        LimitKey::MaxConnections,
        LimitKey::MessagesPerSecond,
        LimitKey::MessagesPerMinute,
        LimitKey::MessagesPerHour,
        LimitKey::MessagesPerDay,
        LimitKey::RecipientsPerDay,
        LimitKey::RecipientsPerMessage,
        LimitKey::MessagesPerConnection,
        LimitKey::MaxMessageSize,
    ];

    /// The key as written in TOML.
    pub fn name(self) -> &'static str {
        match self {
            LimitKey::InitialConnections => "initial_connections",
            LimitKey::MaxConnections => "max_connections",
            LimitKey::MessagesPerSecond => "messages_per_second",
            LimitKey::MessagesPerMinute => "messages_per_minute",
            LimitKey::MessagesPerHour => "messages_per_hour",
            LimitKey::MessagesPerDay => "messages_per_day",
            LimitKey::RecipientsPerDay => "recipients_per_day",
            LimitKey::RecipientsPerMessage => "recipients_per_message",
            LimitKey::MessagesPerConnection => "messages_per_connection",
            LimitKey::MaxMessageSize => "max_message_size",
        }
    }
}

impl Limits {
    /// Whether `key` is set.
    pub fn is_set(&self, key: LimitKey) -> bool {
        match key {
            LimitKey::InitialConnections => self.initial_connections.is_some(),
            LimitKey::MaxConnections => self.max_connections.is_some(),
            LimitKey::MessagesPerSecond => self.messages_per_second.is_some(),
            LimitKey::MessagesPerMinute => self.messages_per_minute.is_some(),
            LimitKey::MessagesPerHour => self.messages_per_hour.is_some(),
            LimitKey::MessagesPerDay => self.messages_per_day.is_some(),
            LimitKey::RecipientsPerDay => self.recipients_per_day.is_some(),
            LimitKey::RecipientsPerMessage => self.recipients_per_message.is_some(),
            LimitKey::MessagesPerConnection => self.messages_per_connection.is_some(),
            LimitKey::MaxMessageSize => self.max_message_size.is_some(),
        }
    }

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
