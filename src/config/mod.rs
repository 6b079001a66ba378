//! Configuration: the TOML schema, loading (file + `MAILVALVE__*` environment via the
//! `config` crate) and validation with errors that name the file and the key.
//! Secrets are wrapped in [`schema::Secret`] and never printed.

pub mod schema;

pub use schema::*;
pub mod profile;
