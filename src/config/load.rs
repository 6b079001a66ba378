//! Loading: the TOML file, then `MAILVALVE__*` environment overrides on top (the `config`
//! crate does the merge), deserialised into [`Config`] with errors that name the file
//! (or the environment variable) and the key.
//!
//! It must never put a password into an error message: values at keys named like
//! `password` are redacted, and every message is scrubbed of every password value found
//! in the file or the environment before it leaves this module. It must never mutate the
//! process environment; tests inject variables through [`load_with_env`].
//!
//! How it works, and why in two passes:
//! 1. The file is deserialised strictly on its own (`toml` + `serde_path_to_error`).
//!    This gives exact key paths, line and column, strict types (the `config` crate
//!    would quietly accept `port = true` as 1) and a syntax error without the offending
//!    source line (which `toml`'s own `Display` would print, password and all).
//! 2. The same text and the environment are merged with the `config` crate and
//!    deserialised again. Environment values are kept as strings (no `try_parsing`):
//!    the `config` crate converts a string to a number or bool only where the schema
//!    wants one, so `MAILVALVE__UPSTREAM__PORT=465` becomes a `u16` while
//!    `MAILVALVE__UPSTREAM__PASSWORD=007` stays `"007"` (with `try_parsing(true)` it
//!    would become the integer 7 and then the string `"7"`).
//!
//! Relative paths (`queue.dir`, `queue.delivery_log`, `suppression.path`,
//! `server.tls.cert`, `server.tls.key`, `upstream.ca_file`, `upstream.oauth2.token_file`) — written in the file or left
//! at their defaults — are resolved against the directory of the file, so every command
//! given the same file finds the same spool from any working directory. A path set by a
//! `MAILVALVE__*` variable is the user's own typing and stays relative to the current
//! directory. Without a file, nothing is resolved: the current directory is the base.
//!
//! Beside this file: `env` (the `MAILVALVE__*` variables and whom an error is blamed on),
//! `secrets` (finding secret values and scrubbing them out of messages), `messages`
//! (third-party errors turned into key-named ones), `tests`.

mod env;
mod messages;
mod secrets;
#[cfg(test)]
mod tests;

pub use env::{process_env, ENV_PREFIX, ENV_SEPARATOR};

use super::error::ConfigError;
use super::schema::Config;
use super::validate;
use env::{is_plain_key, EnvVars};
use messages::{flatten_config_error, line_column, name_the_field};
use secrets::{is_secret_key, secrets_in_text, Secrets};
use std::path::{Path, PathBuf};

/// What errors name as the origin when no file was given.
pub const DEFAULTS_ORIGIN: &str = "built-in defaults";

/// A loaded configuration and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// The file that was read; `None` when the built-in defaults were the base.
    pub path: Option<PathBuf>,
    /// Names (never values) of the `MAILVALVE__*` variables that were applied.
    pub env_overrides: Vec<String>,
    /// Where each key's value came from (file, variable, provider profile, default).
    pub sources: super::provenance::Sources,
}

/// Load `path` with the process's `MAILVALVE__*` environment on top. Does not validate;
/// see [`load_validated`].
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    Ok(load_from(Some(path), process_env()?)?.config)
}

/// Load `path` with the given variables as the environment (the process environment is
/// not read). Pass any variables; only `MAILVALVE__*` ones are used.
pub fn load_with_env<I>(path: &Path, env: I) -> Result<Config, ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    Ok(load_from(Some(path), env)?.config)
}

/// Load from `path`, or from the built-in defaults when `path` is `None`, with `env`
/// on top. Does not validate.
pub fn load_from<I>(path: Option<&Path>, env: I) -> Result<Loaded, ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    let file = match path {
        Some(p) => Some(read_file(p)?),
        None => None,
    };
    load_text(
        file.as_ref().map(|f| f.text.as_str()),
        path,
        file_origin(path),
        env,
    )
}

/// Load from configuration text instead of a file (errors name `origin` where they
/// would name the file), with `env` on top. Does not validate; relative paths stay
/// relative. For tests and the fuzz target of the loader (`fuzz/`): the same code path
/// as [`load_from`] after the file is read.
pub fn load_str<I>(text: &str, origin: &str, env: I) -> Result<Loaded, ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    load_text(Some(text), None, origin.to_owned(), env)
}

fn load_text<I>(
    text: Option<&str>,
    path: Option<&Path>,
    origin: String,
    env: I,
) -> Result<Loaded, ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    let vars = EnvVars::new(env);
    let file = text.map(|text| FileText {
        text: text.to_owned(),
    });
    let mut secrets = vars.secrets();
    if let Some(f) = &file {
        secrets.extend(secrets_in_text(&f.text));
    }
    let ctx = Ctx {
        vars: &vars,
        file_origin: origin,
        secrets: Secrets::new(secrets),
    };

    if let Some(v) = vars.vars.iter().find(|v| !is_plain_key(&v.key)) {
        return Err(ConfigError::Key {
            origin: format!("environment variable {}", v.name),
            key: v.key.clone(),
            message: "not a key name: use MAILVALVE__<SECTION>__<KEY>, with letters, \
                      digits and single underscores between double ones"
                .to_owned(),
            location: None,
        });
    }
    if let Some(f) = &file {
        strict_file_pass(&ctx, &f.text)?;
    }

    let mut builder = ::config::Config::builder();
    if let Some(f) = &file {
        builder = builder.add_source(::config::File::from_str(
            &f.text,
            ::config::FileFormat::Toml,
        ));
    }
    builder = builder.add_source(
        ::config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator(ENV_SEPARATOR)
            .separator(ENV_SEPARATOR)
            .source(Some(vars.as_map())),
    );
    let merged = builder
        .build()
        .map_err(|e| ctx.map_config_crate_error(&e))?;
    let mut config: Config = merged
        .try_deserialize()
        .map_err(|e| ctx.map_config_crate_error(&e))?;

    let mut sources = super::provenance::Sources::new(
        file.as_ref().map(|f| f.text.as_str()),
        vars.vars.iter().map(|v| (v.key.clone(), v.name.clone())),
    );
    super::provenance::apply_profile_defaults(&mut config, &mut sources);
    if let Some(o) = config.upstream.oauth2.as_mut() {
        o.token_file
            .get_or_insert_with(|| PathBuf::from(super::oauth::DEFAULT_TOKEN_FILE));
    }

    if let Some(dir) = path.and_then(Path::parent) {
        // `m.toml` has the parent "": the current directory, made absolute so that
        // messages name the full path.
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        resolve_relative_paths(&mut config, &dir, |key| {
            vars.vars.iter().any(|v| v.key == key)
        });
    }

    Ok(Loaded {
        config,
        path: path.map(Path::to_path_buf),
        env_overrides: vars.vars.iter().map(|v| v.name.clone()).collect(),
        sources,
    })
}

/// [`load_from`], then [`validate::validate`]. Validation problems come back together
/// as [`ConfigError::Invalid`], each naming its key and where its value came from.
pub fn load_validated<I>(path: Option<&Path>, env: I) -> Result<Loaded, ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    let env: Vec<(String, String)> = env.into_iter().collect();
    let loaded = load_from(path, env.clone())?;
    let vars = EnvVars::new(env);
    match validate::validate(&loaded.config) {
        Ok(()) => Ok(loaded),
        Err(problems) => {
            let fallback = file_origin(path);
            Err(ConfigError::Invalid(
                problems
                    .into_iter()
                    .map(|p| ConfigError::Key {
                        origin: vars
                            .origin_of(&p.key, false)
                            .unwrap_or_else(|| fallback.clone()),
                        key: p.key,
                        message: p.message,
                        location: None,
                    })
                    .collect(),
            ))
        }
    }
}

fn file_origin(path: Option<&Path>) -> String {
    match path {
        Some(p) => p.display().to_string(),
        None => DEFAULTS_ORIGIN.to_owned(),
    }
}

struct FileText {
    text: String,
}

fn read_file(path: &Path) -> Result<FileText, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(FileText { text }),
        Err(source) => Err(ConfigError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

struct Ctx<'a> {
    vars: &'a EnvVars,
    file_origin: String,
    secrets: Secrets,
}

impl Ctx<'_> {
    /// A key error, with the message redacted for secret keys and scrubbed of secrets.
    fn key_error(
        &self,
        origin: String,
        key: String,
        message: &str,
        location: Option<(usize, usize)>,
    ) -> ConfigError {
        let message = if is_secret_key(&key) && message.starts_with("invalid") {
            "invalid value (not shown: it is a secret); expected a string".to_owned()
        } else {
            self.secrets.scrub(message)
        };
        ConfigError::Key {
            origin: self.secrets.scrub(&origin),
            key: self.secrets.scrub(&key),
            message,
            location,
        }
    }

    /// Maps an error of the `config` crate (merge of file and environment).
    fn map_config_crate_error(&self, e: &::config::ConfigError) -> ConfigError {
        let (key, message) = flatten_config_error(e);
        let (key, message) = name_the_field(key, message);
        match key {
            Some(key) => {
                // The file passed the strict pass alone, so a variable is involved:
                // look for one at the key, below it, or next to it.
                let origin = self
                    .vars
                    .origin_of(&key, true)
                    .unwrap_or_else(|| self.file_origin.clone());
                self.key_error(origin, key, &message, None)
            }
            None => ConfigError::Other {
                origin: self.file_origin.clone(),
                message: self.secrets.scrub(&message),
            },
        }
    }
}

/// Pass 1: the file alone, strictly typed, with exact paths and positions.
fn strict_file_pass(ctx: &Ctx<'_>, text: &str) -> Result<(), ConfigError> {
    let de = toml::Deserializer::new(text);
    let Err(err) = serde_path_to_error::deserialize::<_, Config>(de) else {
        return Ok(());
    };
    let path = err.path().to_string();
    let inner = err.into_inner();
    // `message()` is the bare message; `Display` would also quote the source line.
    let message = inner.message().trim().to_owned();
    let location = inner.span().map(|s| line_column(text, s.start));
    let key = (path != ".").then_some(path);
    let (key, message) = name_the_field(key, message);
    Err(match key {
        Some(key) => ctx.key_error(ctx.file_origin.clone(), key, &message, location),
        None => ConfigError::Syntax {
            origin: ctx.file_origin.clone(),
            location,
            message: ctx.secrets.scrub(&message.replace('\n', "; ")),
        },
    })
}

/// Joins every relative path onto `dir`, except those `from_env` says a variable set
/// (and an empty `queue.delivery_log`, which means "no log").
fn resolve_relative_paths(config: &mut Config, dir: &Path, from_env: impl Fn(&str) -> bool) {
    let fix = |key: &str, p: &mut PathBuf| {
        if p.is_relative() && !p.as_os_str().is_empty() && !from_env(key) {
            *p = dir.join(&*p);
        }
    };
    if let Some(tls) = config.server.tls.as_mut() {
        fix("server.tls.cert", &mut tls.cert);
        fix("server.tls.key", &mut tls.key);
    }
    if let Some(ca) = config.upstream.ca_file.as_mut() {
        fix("upstream.ca_file", ca);
    }
    if let Some(t) = config
        .upstream
        .oauth2
        .as_mut()
        .and_then(|o| o.token_file.as_mut())
    {
        fix("upstream.oauth2.token_file", t);
    }
    fix("queue.dir", &mut config.queue.dir);
    if let Some(log) = config.queue.delivery_log.as_mut() {
        fix("queue.delivery_log", log);
    }
    fix("suppression.path", &mut config.suppression.path);
}
