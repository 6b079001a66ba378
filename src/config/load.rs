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
//! Relative paths in the file (`server.tls.cert`, `server.tls.key`, `upstream.ca_file`)
//! are resolved against the directory of the file.

use super::error::ConfigError;
use super::schema::Config;
use super::validate;
use std::path::{Path, PathBuf};

/// Environment variables with this prefix (followed by [`ENV_SEPARATOR`]) override keys.
pub const ENV_PREFIX: &str = "MAILVALVE";
/// Separates the prefix and the key segments: `MAILVALVE__UPSTREAM__RATE__PER_MINUTE`.
pub const ENV_SEPARATOR: &str = "__";
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

    if let Some(dir) = path.and_then(Path::parent) {
        resolve_relative_paths(&mut config, dir);
    }

    Ok(Loaded {
        config,
        path: path.map(Path::to_path_buf),
        env_overrides: vars.vars.iter().map(|v| v.name.clone()).collect(),
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

/// The process's `MAILVALVE__*` variables. A value that is not UTF-8 is an error naming
/// the variable (not its value).
pub fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if env_key(name).is_none() {
            continue;
        }
        match value.into_string() {
            Ok(v) => out.push((name.to_owned(), v)),
            Err(_) => {
                return Err(ConfigError::Other {
                    origin: format!("environment variable {name}"),
                    message: "the value is not valid UTF-8".into(),
                })
            }
        }
    }
    Ok(out)
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

/// `MAILVALVE__UPSTREAM__RATE__PER_MINUTE` → `upstream.rate.per_minute`, the same
/// mapping the `config` crate applies (it lower-cases the whole name).
fn env_key(name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    let prefix = format!("{}{}", ENV_PREFIX, ENV_SEPARATOR).to_ascii_lowercase();
    let rest = lower.strip_prefix(&prefix)?;
    Some(rest.replace(ENV_SEPARATOR, "."))
}

struct EnvVar {
    name: String,
    key: String,
    value: String,
}

struct EnvVars {
    vars: Vec<EnvVar>,
}

impl EnvVars {
    fn new<I: IntoIterator<Item = (String, String)>>(env: I) -> Self {
        let mut vars: Vec<EnvVar> = env
            .into_iter()
            .filter_map(|(name, value)| env_key(&name).map(|key| EnvVar { name, key, value }))
            .collect();
        vars.sort_by(|a, b| a.name.cmp(&b.name));
        Self { vars }
    }

    fn as_map(&self) -> ::config::Map<String, String> {
        self.vars
            .iter()
            .map(|v| (v.name.clone(), v.value.clone()))
            .collect()
    }

    fn secrets(&self) -> Vec<String> {
        self.vars
            .iter()
            .filter(|v| is_secret_key(&v.key))
            .map(|v| v.value.clone())
            .collect()
    }

    /// `environment variable NAME` if a variable set `key` or a key below it; with
    /// `walk_up`, also a sibling or a parent's sibling — e.g. a missing `server.tls.key`
    /// when only `MAILVALVE__SERVER__TLS__CERT` created the table.
    fn origin_of(&self, key: &str, walk_up: bool) -> Option<String> {
        let mut candidate = key;
        loop {
            let below = format!("{candidate}.");
            if let Some(v) = self
                .vars
                .iter()
                .find(|v| v.key == candidate || v.key.starts_with(&below))
            {
                return Some(format!("environment variable {}", v.name));
            }
            match candidate.rfind(['.', '[']) {
                Some(i) if i > 0 && walk_up => candidate = &candidate[..i],
                _ => return None,
            }
        }
    }
}

/// `upstream.rate.per_minute`: non-empty segments of `[a-z0-9_]`. Anything else would
/// be read by the `config` crate as a path expression (`a[0]`) or an empty key.
fn is_plain_key(key: &str) -> bool {
    key.split('.').all(|seg| {
        !seg.is_empty()
            && seg
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    })
}

/// Keys whose values are secrets: `upstream.password`, `server.users[3].password`, ...
fn is_secret_key(key: &str) -> bool {
    let last = key.rsplit(['.', ']']).next().unwrap_or(key);
    let last = last.to_ascii_lowercase();
    last.contains("password") || last.contains("secret")
}

/// Password values written in the file, found without trusting it to parse: every
/// `...password... = value` line, the value with and without its quotes, and (if the
/// file parses) every value at a password key, inline tables included.
fn secrets_in_text(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if !is_secret_key(k.trim().trim_start_matches('#').trim()) {
            continue;
        }
        let v = v.trim();
        out.push(v.to_owned());
        for q in ['"', '\''] {
            if let Some(inner) = v.strip_prefix(q).and_then(|s| s.split(q).next()) {
                out.push(inner.to_owned());
            }
        }
    }
    if let Ok(table) = text.parse::<toml::Table>() {
        collect_toml_secrets(&toml::Value::Table(table), false, &mut out);
    }
    out
}

fn collect_toml_secrets(value: &toml::Value, under_secret_key: bool, out: &mut Vec<String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                collect_toml_secrets(v, under_secret_key || is_secret_key(k), out);
            }
        }
        toml::Value::Array(a) => {
            for v in a {
                collect_toml_secrets(v, under_secret_key, out);
            }
        }
        toml::Value::String(s) if under_secret_key => out.push(s.clone()),
        other if under_secret_key => out.push(other.to_string()),
        _ => {}
    }
}

/// Replaces every known secret value in a message with `***`.
struct Secrets(Vec<String>);

impl Secrets {
    fn new(mut all: Vec<String>) -> Self {
        all.retain(|s| !s.is_empty());
        // Longest first, so a password that contains another is replaced whole.
        all.sort_by_key(|s| std::cmp::Reverse(s.len()));
        all.dedup();
        Self(all)
    }

    fn scrub(&self, message: &str) -> String {
        let mut out = message.to_owned();
        for s in &self.0 {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
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

/// serde reports an unknown field as an error of the *enclosing* table; name the field
/// itself: `upstream` + "unknown field `bogus`, ..." → `upstream.bogus`.
/// Likewise a missing field: `server.tls` + "missing field `key`" → `server.tls.key`.
fn name_the_field(key: Option<String>, message: String) -> (Option<String>, String) {
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|r| r.strip_suffix('`'))
    {
        let full = match key {
            Some(k) => format!("{k}.{field}"),
            None => field.to_owned(),
        };
        return (Some(full), "required key is missing".to_owned());
    }
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return (key, message);
    };
    let Some((field, expected)) = rest.split_once('`') else {
        return (key, message);
    };
    let already = key
        .as_deref()
        .is_some_and(|k| k == field || k.ends_with(&format!(".{field}")));
    let full = match key {
        Some(k) if already => k,
        Some(k) => format!("{k}.{field}"),
        None => field.to_owned(),
    };
    let expected = expected.trim_start_matches(',').trim();
    let message = if expected.is_empty() {
        "unknown key".to_owned()
    } else {
        format!("unknown key, {expected}")
    };
    (Some(full), message)
}

/// The key and a key-less message out of the `config` crate's nested error.
fn flatten_config_error(e: &::config::ConfigError) -> (Option<String>, String) {
    use ::config::ConfigError as E;
    match e {
        E::Type {
            unexpected,
            expected,
            key,
            ..
        } => (
            key.clone(),
            format!("invalid type: {unexpected}, expected {expected}"),
        ),
        E::At { error, key, .. } => {
            let (inner_key, message) = flatten_config_error(error);
            (key.clone().or(inner_key), message)
        }
        E::NotFound(key) => (Some(key.clone()), "required key is missing".to_owned()),
        // Pass 1 already parsed the file; never print the parser's cause (it can quote
        // the source line).
        E::FileParse { .. } => (None, "the file is not valid TOML".to_owned()),
        E::Message(m) => (None, enum_message(m).unwrap_or_else(|| m.clone())),
        other => (None, other.to_string()),
    }
}

/// The `config` crate says "enum TlsMode does not have variant constructor x" without
/// the allowed values; let serde say it the usual way ("unknown variant `x`, expected
/// one of ..."), for the enums of the schema.
fn enum_message(message: &str) -> Option<String> {
    use serde::de::value::{Error, StrDeserializer};
    use serde::Deserialize;
    let rest = message.strip_prefix("enum ")?;
    let (name, value) = rest.split_once(" does not have variant constructor ")?;
    let de = StrDeserializer::<Error>::new(value);
    let err = match name {
        "TlsMode" => super::schema::TlsMode::deserialize(de).err(),
        "Mode" => super::schema::Mode::deserialize(de).err(),
        _ => None,
    }?;
    Some(err.to_string())
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

fn resolve_relative_paths(config: &mut Config, dir: &Path) {
    let fix = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = dir.join(&*p);
        }
    };
    if let Some(tls) = config.server.tls.as_mut() {
        fix(&mut tls.cert);
        fix(&mut tls.key);
    }
    if let Some(ca) = config.upstream.ca_file.as_mut() {
        fix(ca);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Mode, TlsMode};
    use std::time::Duration;

    const PASSWORD: &str = "s3cr3t-Pa55w0rd";

    #[test]
    fn load_str_is_load_from_without_the_file() {
        let text = "[upstream]\nhost = \"smtp.example.org\"\nport = 587\n";
        let env = vec![("MAILVALVE__UPSTREAM__PORT".to_owned(), "465".to_owned())];
        let loaded = load_str(text, "fuzz input", env).unwrap();
        assert_eq!(loaded.config.upstream.host, "smtp.example.org");
        assert_eq!(loaded.config.upstream.port, 465);
        assert_eq!(loaded.env_overrides, ["MAILVALVE__UPSTREAM__PORT"]);
        let e = load_str(
            &format!("[upstream]\npassword = \"{PASSWORD}\"\nport = \"x\"\n"),
            "fuzz input",
            Vec::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("fuzz input") && e.contains("upstream.port"),
            "{e}"
        );
        assert!(!e.contains(PASSWORD), "{e}");
    }

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("mailvalve.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load_err(text: &str, vars: &[(&str, &str)]) -> (PathBuf, ConfigError) {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, text);
        let err = load_with_env(&path, env(vars)).unwrap_err();
        (path, err)
    }

    #[test]
    fn empty_file_gives_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "");
        let c = load_with_env(&path, env(&[])).unwrap();
        assert_eq!(c.mode, Mode::Queue);
        assert_eq!(c.server.listen, "127.0.0.1:2525".parse().unwrap());
        assert_eq!(c.upstream.port, 587);
    }

    #[test]
    fn file_values_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            r#"
mode = "passthrough"
[server]
listen = "127.0.0.1:2626"
idle_timeout = "2m"
[[server.users]]
name = "mailer"
password = "pw"
[upstream]
host = "smtp.example.org"
port = 465
tls = "implicit"
username = "me"
password = "pw2"
[upstream.rate]
per_minute = 30
[upstream.timeouts]
data_end = "10m 30s"
"#,
        );
        let c = load_with_env(&path, env(&[])).unwrap();
        assert_eq!(c.server.listen.port(), 2626);
        assert_eq!(c.server.idle_timeout, Duration::from_secs(120));
        assert_eq!(c.server.users[0].password.expose(), "pw");
        assert_eq!(c.upstream.tls, TlsMode::Implicit);
        assert_eq!(c.upstream.port, 465);
        assert_eq!(c.upstream.password.as_ref().unwrap().expose(), "pw2");
        assert_eq!(c.upstream.rate.per_minute, Some(30));
        assert_eq!(c.upstream.timeouts.data_end, Duration::from_secs(630));
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.toml");
        let err = load_with_env(&path, env(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("cannot read"), "{msg}");
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let (path, err) = load_err("[upstream]\nhost = \"x\"\nbogus = 1\n", &[]);
        let msg = err.to_string();
        assert_eq!(err.key(), Some("upstream.bogus"), "{msg}");
        assert!(
            msg.starts_with(&format!(
                "config error in {}: key upstream.bogus: unknown key",
                path.display()
            )),
            "{msg}"
        );
        assert!(msg.contains("line 3"), "{msg}");
        assert!(msg.contains("host"), "lists the expected keys: {msg}");
    }

    #[test]
    fn unknown_top_level_key_and_table() {
        let (_, err) = load_err("colour = \"blue\"\n", &[]);
        assert_eq!(err.key(), Some("colour"), "{err}");
        let (_, err) = load_err("[upstreams]\nhost = \"x\"\n", &[]);
        assert_eq!(err.key(), Some("upstreams"), "{err}");
        let (_, err) = load_err("[upstream.rate]\nper_week = 5\n", &[]);
        assert_eq!(err.key(), Some("upstream.rate.per_week"), "{err}");
        let (_, err) = load_err(
            "[[server.users]]\nname = \"a\"\npassword = \"b\"\nrole = 1\n",
            &[],
        );
        assert_eq!(err.key(), Some("server.users[0].role"), "{err}");
    }

    #[test]
    fn wrong_type_names_key_and_expectation() {
        let (path, err) = load_err("[upstream]\nport = \"abc\"\n", &[]);
        let msg = err.to_string();
        assert_eq!(err.key(), Some("upstream.port"), "{msg}");
        assert!(
            msg.starts_with(&format!(
                "config error in {}: key upstream.port: invalid type: string \"abc\", expected u16",
                path.display()
            )),
            "{msg}"
        );
        assert!(msg.contains("line 2"), "{msg}");

        // The config crate alone would take `true` as 1: the strict pass refuses it.
        let (_, err) = load_err("[upstream]\nmax_connections = true\n", &[]);
        assert_eq!(err.key(), Some("upstream.max_connections"), "{err}");

        let (_, err) = load_err("[upstream]\nport = 70000\n", &[]);
        assert_eq!(err.key(), Some("upstream.port"), "{err}");

        let (_, err) = load_err("[server]\nidle_timeout = \"5 parsecs\"\n", &[]);
        assert_eq!(err.key(), Some("server.idle_timeout"), "{err}");

        let (_, err) = load_err("[upstream]\ntls = \"sometimes\"\n", &[]);
        assert_eq!(err.key(), Some("upstream.tls"), "{err}");
        assert!(err.to_string().contains("starttls"), "{err}");

        let (_, err) = load_err("[server]\nlisten = \"localhost\"\n", &[]);
        assert_eq!(err.key(), Some("server.listen"), "{err}");

        let (_, err) = load_err("mode = \"stash\"\n", &[]);
        assert_eq!(err.key(), Some("mode"), "{err}");
        assert!(err.to_string().contains("queue"), "{err}");
    }

    #[test]
    fn missing_required_key_in_table() {
        let (_, err) = load_err("[server.tls]\ncert = \"a.pem\"\n", &[]);
        assert_eq!(err.key(), Some("server.tls.key"), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn syntax_error_has_position_but_no_source_line() {
        let (path, err) = load_err("[upstream]\nusername = \"me\"\npassword = \"hunter2\n", &[]);
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn password_type_error_does_not_echo_value() {
        let (_, err) = load_err("[upstream]\nusername = \"me\"\npassword = 918273645\n", &[]);
        let msg = err.to_string();
        assert_eq!(err.key(), Some("upstream.password"), "{msg}");
        assert!(!msg.contains("918273645"), "{msg}");

        let (_, err) = load_err(
            "[[server.users]]\nname = \"a\"\npassword = [\"hunter2\"]\n",
            &[],
        );
        let msg = err.to_string();
        assert_eq!(err.key(), Some("server.users[0].password"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn password_in_a_wrong_place_is_scrubbed() {
        // The password value ends up echoed by a type error of another key.
        let text =
            format!("[upstream]\npassword = \"{PASSWORD}\"\nhost = 5\nport = \"{PASSWORD}\"\n");
        let (_, err) = load_err(&text, &[]);
        let msg = err.to_string();
        assert_eq!(err.key(), Some("upstream.host"), "{msg}");
        let text = format!("[upstream]\npassword = \"{PASSWORD}\"\nport = \"{PASSWORD}\"\n");
        let (_, err) = load_err(&text, &[]);
        let msg = err.to_string();
        assert_eq!(err.key(), Some("upstream.port"), "{msg}");
        assert!(!msg.contains(PASSWORD), "{msg}");
        assert!(msg.contains("***"), "{msg}");

        // Same via the environment.
        let (_, err) = load_err(
            "",
            &[
                ("MAILVALVE__UPSTREAM__PASSWORD", PASSWORD),
                ("MAILVALVE__UPSTREAM__PORT", PASSWORD),
            ],
        );
        let msg = err.to_string();
        assert_eq!(err.key(), Some("upstream.port"), "{msg}");
        assert!(!msg.contains(PASSWORD), "{msg}");
    }

    #[test]
    fn env_overrides_typed_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "[upstream]\nhost = \"smtp.example.org\"\nport = 587\n[upstream.timeouts]\nconnect = \"5s\"\n",
        );
        let c = load_with_env(
            &path,
            env(&[
                ("MAILVALVE__UPSTREAM__PORT", "465"),
                ("MAILVALVE__UPSTREAM__TLS", "implicit"),
                ("MAILVALVE__UPSTREAM__USERNAME", "me"),
                ("MAILVALVE__UPSTREAM__PASSWORD", "x"),
                ("MAILVALVE__UPSTREAM__TLS_VERIFY", "false"),
                ("MAILVALVE__UPSTREAM__TIMEOUTS__CONNECT", "30s"),
                ("MAILVALVE__UPSTREAM__TIMEOUTS__DATA_END", "1h 5m"),
                ("MAILVALVE__UPSTREAM__RATE__PER_MINUTE", "30"),
                ("MAILVALVE__SERVER__LISTEN", "127.0.0.1:2626"),
                ("MAILVALVE__SERVER__MAX_RECIPIENTS", "500"),
                ("MAILVALVE__LOG__LEVEL", "debug"),
                ("UNRELATED", "1"),
                ("MAILVALVE_CONFIG", "not-a-key"),
            ]),
        )
        .unwrap();
        assert_eq!(c.upstream.host, "smtp.example.org");
        assert_eq!(c.upstream.port, 465);
        assert_eq!(c.upstream.tls, TlsMode::Implicit);
        assert!(!c.upstream.tls_verify);
        assert_eq!(c.upstream.username.as_deref(), Some("me"));
        assert_eq!(c.upstream.password.as_ref().unwrap().expose(), "x");
        assert_eq!(c.upstream.timeouts.connect, Duration::from_secs(30));
        assert_eq!(c.upstream.timeouts.data_end, Duration::from_secs(3900));
        assert_eq!(c.upstream.rate.per_minute, Some(30));
        assert_eq!(c.server.listen, "127.0.0.1:2626".parse().unwrap());
        assert_eq!(c.server.max_recipients, 500);
        assert_eq!(c.log.level, "debug");
    }

    #[test]
    fn env_password_stays_a_string_even_if_numeric() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "");
        for pw in [
            "007",
            "1234",
            "1.50",
            "1e3",
            "TRUE",
            "  spaced  ",
            "-0",
            "0x10",
        ] {
            let c = load_with_env(&path, env(&[("MAILVALVE__UPSTREAM__PASSWORD", pw)])).unwrap();
            assert_eq!(c.upstream.password.as_ref().unwrap().expose(), pw);
        }
        let c = load_with_env(&path, env(&[("MAILVALVE__UPSTREAM__USERNAME", "0042")])).unwrap();
        assert_eq!(c.upstream.username.as_deref(), Some("0042"));
    }

    #[test]
    fn env_without_file() {
        let loaded = load_from(
            None,
            env(&[("mailvalve__upstream__host", "smtp.example.org")]),
        )
        .unwrap();
        assert_eq!(loaded.config.upstream.host, "smtp.example.org");
        assert_eq!(loaded.path, None);
        assert_eq!(loaded.env_overrides, vec!["mailvalve__upstream__host"]);
    }

    #[test]
    fn env_errors_name_the_variable_and_key() {
        let (_, err) = load_err("", &[("MAILVALVE__UPSTREAM__PORT", "abc")]);
        let msg = err.to_string();
        assert_eq!(err.key(), Some("upstream.port"), "{msg}");
        assert!(
            msg.starts_with(
                "config error in environment variable MAILVALVE__UPSTREAM__PORT: key upstream.port: invalid type: string \"abc\""
            ),
            "{msg}"
        );

        let (_, err) = load_err("", &[("MAILVALVE__UPSTREAM__PASWORD", PASSWORD)]);
        let msg = err.to_string();
        assert_eq!(err.key(), Some("upstream.pasword"), "{msg}");
        assert!(msg.contains("MAILVALVE__UPSTREAM__PASWORD"), "{msg}");
        assert!(msg.contains("unknown key"), "{msg}");

        let (_, err) = load_err("", &[("MAILVALVE__SERVER__TLS__CERT", "/x.pem")]);
        let msg = err.to_string();
        assert_eq!(err.key(), Some("server.tls.key"), "{msg}");
        assert!(msg.contains("MAILVALVE__SERVER__TLS__CERT"), "{msg}");

        let (_, err) = load_err("", &[("MAILVALVE__UPSTREAM__TLS", "sometimes")]);
        assert_eq!(err.key(), Some("upstream.tls"), "{err}");
        assert!(
            err.to_string().contains(
                "unknown variant `sometimes`, expected one of `implicit`, `starttls`, `none`"
            ),
            "{err}"
        );

        let (_, err) = load_err("", &[("MAILVALVE__UPSTREAM__TIMEOUTS__DATA", "soon")]);
        assert_eq!(err.key(), Some("upstream.timeouts.data"), "{err}");
    }

    #[test]
    fn odd_variable_names_are_errors_not_panics() {
        for name in [
            "MAILVALVE__",
            "MAILVALVE____PORT",
            "MAILVALVE__UPSTREAM__RATE",
            "MAILVALVE__UPSTREAM__PORT__X",
            "MAILVALVE__UPSTREAM__",
            "MAILVALVE__SERVER__USERS__0__PASSWORD",
            "MAILVALVE__UPSTREAM[0]",
        ] {
            // Only a value at a password key is a secret; others may be echoed.
            let value = if name.contains("PASSWORD") {
                PASSWORD
            } else {
                "v"
            };
            let err = load_from(None, env(&[(name, value)])).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(name), "{msg}");
            assert!(!msg.contains(PASSWORD), "{name}: {msg}");
        }
    }

    #[test]
    fn validation_blames_a_variable_only_for_its_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "[upstream]\ntls = \"none\"\nusername = \"me\"\npassword = \"pw\"\n",
        );
        let err = load_validated(
            Some(&path),
            env(&[("MAILVALVE__UPSTREAM__HOST", "smtp.example.org")]),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.problems().len(), 1, "{msg}");
        assert!(
            msg.starts_with(&format!(
                "config error in {}: key upstream.tls:",
                path.display()
            )),
            "{msg}"
        );
    }

    #[test]
    fn relative_paths_resolve_against_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "[server.tls]\ncert = \"certs/c.pem\"\nkey = \"/abs/k.pem\"\n[upstream]\nca_file = \"ca.pem\"\n",
        );
        let c = load_with_env(&path, env(&[])).unwrap();
        let tls = c.server.tls.unwrap();
        assert_eq!(tls.cert, dir.path().join("certs/c.pem"));
        assert_eq!(tls.key, PathBuf::from("/abs/k.pem"));
        assert_eq!(c.upstream.ca_file.unwrap(), dir.path().join("ca.pem"));
    }

    #[test]
    fn secret_scan_finds_password_lines() {
        let found = secrets_in_text("password = \"a b\" # c\n[[x]]\nfoo = { password = 'q' }\n");
        assert!(found.iter().any(|s| s == "a b"), "{found:?}");
        assert!(found.iter().any(|s| s == "q"), "{found:?}");
    }

    #[test]
    fn validated_load_attributes_problems() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "[server]\nmax_recipients = 10\n");
        let err = load_validated(
            Some(&path),
            env(&[("MAILVALVE__UPSTREAM__MAX_CONNECTIONS", "0")]),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.problems().len(), 2, "{msg}");
        assert!(
            msg.contains(&format!(
                "config error in {}: key server.max_recipients:",
                path.display()
            )),
            "{msg}"
        );
        assert!(
            msg.contains(
                "config error in environment variable MAILVALVE__UPSTREAM__MAX_CONNECTIONS: key upstream.max_connections:"
            ),
            "{msg}"
        );
    }
}
