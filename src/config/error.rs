//! Configuration errors: every message says where the bad value came from (the file, an
//! environment variable, or the built-in defaults) and which key it is.
//!
//! Nothing here may carry a secret: messages are built by `load.rs`, which redacts
//! password values before they reach this type. Never put a raw config value that could
//! be a password into a `ConfigError`.

use std::fmt;
use std::path::PathBuf;

/// Why a configuration could not be loaded or is not usable.
///
/// `Display` gives one line per problem, each of the form
/// `config error in <origin>: key <key>: <what is wrong>`.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file could not be read (missing, unreadable, not UTF-8).
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML. `line`/`column` are 1-based when known.
    Syntax {
        origin: String,
        location: Option<(usize, usize)>,
        message: String,
    },
    /// A key has a value of the wrong type, is unknown, or is missing.
    Key {
        /// The file path, `environment variable MAILVALVE__...` or `built-in defaults`.
        origin: String,
        /// Dotted key, e.g. `upstream.port` or `server.users[0].name`.
        key: String,
        message: String,
        /// 1-based line and column in the file, when known.
        location: Option<(usize, usize)>,
    },
    /// A problem that could not be tied to one key.
    Other { origin: String, message: String },
    /// The configuration parsed, but breaks one or more rules (see `validate.rs`). Each
    /// entry is a [`ConfigError::Key`].
    Invalid(Vec<ConfigError>),
}

impl ConfigError {
    /// All single problems: the entries of `Invalid`, or `self`.
    pub fn problems(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Invalid(all) => all.iter().collect(),
            other => vec![other],
        }
    }

    /// The dotted key this error is about, if it is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Key { key, .. } => Some(key),
            _ => None,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => write!(
                f,
                "config error in {}: cannot read the file: {source}",
                path.display()
            ),
            ConfigError::Syntax {
                origin,
                location,
                message,
            } => {
                write!(f, "config error in {origin}: invalid TOML: {message}")?;
                if let Some((line, column)) = location {
                    write!(f, " (line {line}, column {column})")?;
                }
                Ok(())
            }
            ConfigError::Key {
                origin,
                key,
                message,
                location,
            } => {
                write!(f, "config error in {origin}: key {key}: {message}")?;
                if let Some((line, column)) = location {
                    write!(f, " (line {line}, column {column})")?;
                }
                Ok(())
            }
            ConfigError::Other { origin, message } => {
                write!(f, "config error in {origin}: {message}")
            }
            ConfigError::Invalid(all) => {
                for (i, e) in all.iter().enumerate() {
                    if i > 0 {
                        f.write_str("\n")?;
                    }
                    write!(f, "{e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}
