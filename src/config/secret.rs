//! [`Secret`]: a password, client secret or token in the configuration. Its own file
//! because the schema and the tables that hold secrets (`oauth`, `webhook`) all use it.
//!
//! It must never show its value: `Debug`, `Display` and `Serialize` write `***`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A password. Shown as `***` by `Debug`, `Display` and `Serialize`, so printing a
/// config (or an error holding one) can never leak it. Use `expose()` only where the
/// value is put on the wire.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}
