//! Configuration: the TOML schema, loading (file + `MAILVALVE__*` environment via the
//! `config` crate) and validation with errors that name the file and the key.
//!
//! Secrets are wrapped in [`schema::Secret`] and never printed: not in errors, not in
//! `check` output, not in logs. Nothing here opens sockets or starts tasks.
//!
//! - [`load()`] / [`load_with_env`] / [`load_from`]: read and merge, no semantic checks.
//! - [`validate()`]: the rules beyond types (loopback, TLS, limits), all problems at once.
//! - [`load_validated`]: both, with each problem attributed to the file or the variable.
//! - [`schema`], [`queue`], [`webhook`]: every table of the file, its shape and defaults
//!   (`config` owns them all; the floors that act on a table import it from here).
//! - [`profile`]: the built-in provider profiles, whose `[[rules]]` are the one rule
//!   schema, `policy::rules::RuleSpec`.

pub mod error;
pub mod limits;
pub mod load;
pub mod oauth;
pub mod profile;
pub mod provenance;
pub mod queue;
pub mod schema;
pub mod secret;
pub mod validate;
pub mod webhook;

pub use error::ConfigError;
pub use load::{load, load_from, load_validated, load_with_env, process_env, Loaded};
pub use queue::QueueConfig;
pub use schema::*;
pub use validate::{validate, warnings, ValidationError};

#[cfg(test)]
mod shipped_file_tests {
    //! `config/mailvalve.toml` must load, validate, document every key and state the
    //! same defaults as the schema (except the test-sink upstream it ships with).
    use super::*;
    use std::path::PathBuf;

    const SHIPPED: &str = include_str!("../../config/mailvalve.toml");

    fn shipped_path() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/mailvalve.toml")
    }

    #[test]
    fn shipped_file_loads_and_validates() {
        let loaded = load_validated(Some(&shipped_path()), Vec::new()).unwrap();
        let c = loaded.config;
        assert_eq!(c.mode, Mode::Queue);
        assert_eq!(c.server.listen, "127.0.0.1:2525".parse().unwrap());
        assert_eq!(c.upstream.host, "127.0.0.1");
        assert_eq!(c.upstream.port, 2526);
        assert_eq!(c.upstream.tls, TlsMode::None);
        assert!(warnings(&c).is_empty());
    }

    #[test]
    fn shipped_values_are_the_schema_defaults() {
        let c = load_with_env(&shipped_path(), Vec::new()).unwrap();
        let mut expected = Config::default();
        expected.upstream.port = 2526;
        expected.upstream.tls = TlsMode::None;
        // Relative paths are resolved against the file's directory.
        let dir = shipped_path().parent().unwrap().to_path_buf();
        expected.queue.dir = dir.join(&expected.queue.dir);
        expected.suppression.path = dir.join(&expected.suppression.path);
        assert_eq!(
            toml::to_string(&c).unwrap(),
            toml::to_string(&expected).unwrap()
        );
    }

    /// A config with every optional key set, so serialisation shows every key.
    fn everything() -> Config {
        let mut c = Config::default();
        c.server.tls = Some(ServerTls {
            cert: "c".into(),
            key: "k".into(),
        });
        c.server.users.push(User {
            name: "n".into(),
            password: Secret::new("p"),
        });
        c.upstream.ca_file = Some("ca".into());
        c.upstream.username = Some("u".into());
        c.upstream.password = Some(Secret::new("p"));
        c.upstream.oauth2 = Some(oauth::OAuth2Config {
            mechanism: Some(oauth::Mechanism::Xoauth2),
            token_endpoint: Some("https://t".into()),
            device_endpoint: Some("https://d".into()),
            authorization_endpoint: Some("https://a".into()),
            client_id: Some("c".into()),
            client_secret: Some(Secret::new("s")),
            refresh_token: Some(Secret::new("r")),
            token_file: Some("f".into()),
            scopes: Some(vec!["s".into()]),
        });
        c.upstream.rate = RateConfig {
            per_second: Some(1),
            per_minute: Some(1),
            per_hour: Some(1),
            per_day: Some(1),
            recipients_per_day: Some(1),
        };
        c
    }

    fn keys(prefix: &str, v: &toml::Value, out: &mut Vec<(String, String)>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let full = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    out.push((full.clone(), k.clone()));
                    keys(&full, v, out);
                }
            }
            toml::Value::Array(a) => {
                for v in a {
                    keys(prefix, v, out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn shipped_file_documents_every_key() {
        let all = toml::Value::try_from(everything()).unwrap();
        let mut found = Vec::new();
        keys("", &all, &mut found);
        assert!(found.len() > 30, "{found:?}");
        let lines: Vec<String> = SHIPPED
            .lines()
            .map(|l| l.trim().trim_start_matches('#').trim().replace(' ', ""))
            .collect();
        for (full, leaf) in found {
            let header = format!("[{full}]");
            let array_header = format!("[[{full}]]");
            let assignment = format!("{leaf}=");
            let documented = lines
                .iter()
                .any(|l| l == &header || l == &array_header || l.starts_with(&assignment));
            assert!(documented, "config/mailvalve.toml does not document {full}");
        }
    }
}
