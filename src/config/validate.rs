//! Validation: the rules a configuration must meet beyond its types, each problem
//! naming the key. All problems are reported at once.
//!
//! It compiles the reply-rule table (`[[rules]]`, then the chosen provider profile's,
//! then the built-in defaults) exactly as `run` will, so `check` and `run` refuse the
//! same rules — a bad regex, an unknown verdict, a `suppress` outside 5xx, an `accept`
//! for a code outside 2xx — each named by its index and fields.
//!
//! It must never put a secret into a message (only say that a password is set or
//! missing), and never do more than cheap checks: files named by the config are opened
//! and their PEM sections decoded, nothing is connected to and no certificate is
//! verified here.

use super::profile;
use super::schema::{Config, TlsMode};
use crate::policy::classify::Classifier;
use crate::policy::rules::{RuleSource, RuleSpec};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

/// One broken rule: the dotted key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key {}: {}", self.key, self.message)
    }
}

#[derive(Default)]
struct Problems(Vec<ValidationError>);

impl Problems {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ValidationError {
            key: key.into(),
            message: message.into(),
        });
    }
}

/// Checks every rule; `Err` holds all problems found, in key order of the schema.
pub fn validate(config: &Config) -> Result<(), Vec<ValidationError>> {
    let mut p = Problems::default();
    server(config, &mut p);
    upstream(config, &mut p);
    queue(config, &mut p);
    rules(config, &mut p);
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&config.log.level) {
        p.push(
            "log.level",
            format!("not a valid tracing filter ({e}); use e.g. \"info\" or \"mailvalve=debug\""),
        );
    }
    if p.0.is_empty() {
        Ok(())
    } else {
        Err(p.0)
    }
}

fn queue(c: &Config, p: &mut Problems) {
    let q = &c.queue;
    if q.dir.as_os_str().is_empty() {
        p.push("queue.dir", "must name a directory for the spool");
    }
    if q.max_age.is_zero() {
        p.push("queue.max_age", "must be longer than 0s (e.g. \"4days\")");
    }
    if !q.bounce_from.is_empty() && !q.bounce_from.contains('@') {
        p.push(
            "queue.bounce_from",
            "must be an address (user@domain) or empty for the null sender",
        );
    }
    if let Some(w) = &q.webhook {
        if let Err(e) = w.check() {
            p.push("queue.webhook.url", e);
        }
    }
}

/// The rule table `run` would compile: the user's `[[rules]]` with the profile's.
fn rules(c: &Config, p: &mut Problems) {
    let name = c.upstream.profile.trim();
    if name.is_empty() {
        return; // reported by `upstream`
    }
    let prof = match profile::builtin(name) {
        Some(Ok(prof)) => prof,
        Some(Err(e)) => {
            p.push("upstream.profile", e.to_string());
            return;
        }
        None => {
            p.push(
                "upstream.profile",
                format!(
                    "no provider profile {name:?} (known: {})",
                    profile::names().collect::<Vec<_>>().join(", ")
                ),
            );
            return;
        }
    };
    for e in Classifier::problems(&c.rules, &prof.rules) {
        match e.origin {
            RuleSource::User => {
                let fields = c.rules.get(e.index).map(rule_fields).unwrap_or_default();
                p.push(
                    format!("rules[{}].{}", e.index, e.field),
                    format!("{} (the rule: {fields})", e.message),
                );
            }
            RuleSource::Profile => {
                p.push("upstream.profile", format!("provider profile {name}: {e}"))
            }
            RuleSource::Builtin => p.push("rules", e.message),
        }
    }
}

/// A rule's fields as written, for messages: `code = "550", verdict = "accept"`.
fn rule_fields(r: &RuleSpec) -> String {
    let mut out = Vec::new();
    if let Some(ph) = &r.phase {
        out.push(format!("phase = {ph:?}"));
    }
    for (key, v) in [
        ("code", &r.code),
        ("enhanced", &r.enhanced),
        ("text", &r.text),
    ] {
        if let Some(v) = v {
            out.push(format!("{key} = {v:?}"));
        }
    }
    out.push(format!("verdict = {:?}", r.verdict));
    for (key, v) in [
        ("hint", &r.hint),
        ("until", &r.until),
        ("description", &r.description),
    ] {
        if let Some(v) = v {
            out.push(format!("{key} = {v:?}"));
        }
    }
    out.join(", ")
}

/// Settings that are allowed but risky; `check` prints them, `run` logs them.
pub fn warnings(config: &Config) -> Vec<ValidationError> {
    let mut p = Problems::default();
    let up = &config.upstream;
    if !up.tls_verify && up.tls != TlsMode::None {
        p.push(
            "upstream.tls_verify",
            "is false: the provider's certificate is not checked, anyone on the path can \
             read the mail and the password; use only with test servers",
        );
    }
    if up.tls == TlsMode::None && !is_loopback_host(&up.host) {
        p.push(
            "upstream.tls",
            format!(
                "is \"none\" and upstream.host ({}) is not loopback: mail crosses the \
                 network unencrypted",
                up.host
            ),
        );
    }
    p.0
}

/// `localhost`, `*.localhost`, `127.0.0.0/8`, `::1` (with or without brackets).
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim().trim_end_matches('.');
    if h.eq_ignore_ascii_case("localhost") || h.to_ascii_lowercase().ends_with(".localhost") {
        return true;
    }
    let h = h.trim_start_matches('[').trim_end_matches(']');
    h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn server(config: &Config, p: &mut Problems) {
    let s = &config.server;
    if s.max_recipients < 100 {
        p.push(
            "server.max_recipients",
            format!(
                "must be at least 100 (RFC 5321 section 4.5.3.1.8), is {}",
                s.max_recipients
            ),
        );
    }
    if s.max_sessions < 1 {
        p.push("server.max_sessions", "must be at least 1");
    }
    if s.max_message_size < 1 {
        p.push("server.max_message_size", "must be at least 1 (bytes)");
    }
    non_zero(p, "server.idle_timeout", s.idle_timeout);
    non_zero(p, "server.command_timeout", s.command_timeout);
    non_zero(p, "server.data_block_timeout", s.data_block_timeout);
    non_zero(p, "server.pre_mail_timeout", s.pre_mail_timeout);
    if s.listen_backlog < 1 || s.listen_backlog > i32::MAX as u32 {
        p.push(
            "server.listen_backlog",
            format!("must be between 1 and {}", i32::MAX),
        );
    }
    if s.max_sessions_per_ip < 1 {
        p.push("server.max_sessions_per_ip", "must be at least 1");
    }
    wire_name(p, "server.hostname", &s.hostname);
    if config.mode == crate::config::Mode::Passthrough && s.passthrough_buffer < s.max_message_size
    {
        p.push(
            "server.passthrough_buffer",
            format!(
                "must be at least server.max_message_size ({} bytes), is {}: a message of \
                 the largest allowed size could never be buffered",
                s.max_message_size, s.passthrough_buffer
            ),
        );
    }

    if !s.listen.ip().is_loopback() {
        if s.users.is_empty() {
            p.push(
                "server.users",
                format!(
                    "must list at least one user: server.listen ({}) is not loopback, and \
                     off loopback every mailer must authenticate",
                    s.listen
                ),
            );
        }
        if s.tls.is_none() {
            p.push(
                "server.tls",
                format!(
                    "must be set (cert and key): server.listen ({}) is not loopback, and \
                     off loopback AUTH is only allowed over TLS",
                    s.listen
                ),
            );
        }
    } else if s.require_auth && s.users.is_empty() {
        p.push(
            "server.require_auth",
            "is true but server.users is empty: no mailer could send",
        );
    }

    for (i, u) in s.users.iter().enumerate() {
        if u.name.is_empty() || u.name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            p.push(
                format!("server.users[{i}].name"),
                "must be non-empty, without spaces or control characters",
            );
        } else if s.users[..i].iter().any(|o| o.name == u.name) {
            p.push(
                format!("server.users[{i}].name"),
                format!("duplicate user name {:?}", u.name),
            );
        }
        if u.password.expose().is_empty() {
            p.push(format!("server.users[{i}].password"), "must not be empty");
        }
    }

    if let Some(tls) = &s.tls {
        certificates(p, "server.tls.cert", &tls.cert);
        private_key(p, "server.tls.key", &tls.key);
    }
}

fn upstream(config: &Config, p: &mut Problems) {
    let u = &config.upstream;
    let host = u.host.trim();
    if host.is_empty() {
        p.push("upstream.host", "must not be empty");
    } else if u.host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        p.push(
            "upstream.host",
            format!("{:?} is not a host name or address", u.host),
        );
    }
    if u.port == 0 {
        p.push("upstream.port", "must be between 1 and 65535");
    }
    if u.max_connections < 1 {
        p.push("upstream.max_connections", "must be at least 1");
    }
    if u.max_messages_per_connection < 1 {
        p.push("upstream.max_messages_per_connection", "must be at least 1");
    }
    for (name, value) in [
        ("per_second", u.rate.per_second),
        ("per_minute", u.rate.per_minute),
        ("per_hour", u.rate.per_hour),
        ("per_day", u.rate.per_day),
    ] {
        if value == Some(0) {
            p.push(
                format!("upstream.rate.{name}"),
                "must be at least 1 when set (leave it out for no limit)",
            );
        }
    }
    wire_name(p, "upstream.helo_name", &u.helo_name);
    if u.profile.trim().is_empty() {
        p.push("upstream.profile", "must not be empty (e.g. \"generic\")");
    }

    match (&u.username, &u.password) {
        (None, Some(_)) => p.push(
            "upstream.password",
            "is set but upstream.username is not: AUTH needs both",
        ),
        (Some(_), None) => p.push(
            "upstream.username",
            "is set but upstream.password is not: AUTH needs both",
        ),
        (Some(name), Some(_)) if name.is_empty() => {
            p.push("upstream.username", "must not be empty")
        }
        _ => {}
    }
    if u.tls == TlsMode::None && u.password.is_some() && !is_loopback_host(&u.host) {
        p.push(
            "upstream.tls",
            format!(
                "is \"none\" but a password is set and upstream.host ({}) is not loopback: \
                 the credentials would cross the network in clear text; use \"starttls\" \
                 (port 587) or \"implicit\" (port 465)",
                u.host
            ),
        );
    }
    if let Some(ca) = &u.ca_file {
        certificates(p, "upstream.ca_file", ca);
    }

    non_zero(p, "upstream.idle_timeout", u.idle_timeout);
    let t = &u.timeouts;
    for (name, d) in [
        ("connect", t.connect),
        ("greeting", t.greeting),
        ("command", t.command),
        ("mail", t.mail),
        ("rcpt", t.rcpt),
        ("data", t.data),
        ("data_block", t.data_block),
        ("data_end", t.data_end),
    ] {
        non_zero(p, &format!("upstream.timeouts.{name}"), d);
    }
}

fn non_zero(p: &mut Problems, key: &str, d: Duration) {
    if d.is_zero() {
        p.push(key, "must be longer than 0s");
    }
}

/// A name that goes into the greeting / EHLO line: a CR or LF would inject commands.
fn wire_name(p: &mut Problems, key: &str, name: &str) {
    if name.is_empty() {
        p.push(key, "must not be empty");
    } else if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || !c.is_ascii())
    {
        p.push(
            key,
            format!("{name:?} must be a plain host name (ASCII, no spaces or control characters)"),
        );
    }
}

/// The file must be readable and hold at least one PEM certificate.
fn certificates(p: &mut Problems, key: &str, path: &Path) {
    let iter = match CertificateDer::pem_file_iter(path) {
        Ok(iter) => iter,
        Err(e) => return p.push(key, pem_problem(path, &e, "certificate")),
    };
    let mut count = 0usize;
    for item in iter {
        match item {
            Ok(_) => count += 1,
            Err(e) => return p.push(key, pem_problem(path, &e, "certificate")),
        }
    }
    if count == 0 {
        p.push(
            key,
            pem_problem(path, &pem::Error::NoItemsFound, "certificate"),
        );
    }
}

/// The file must be readable and hold a PEM private key.
fn private_key(p: &mut Problems, key: &str, path: &Path) {
    if let Err(e) = PrivateKeyDer::from_pem_file(path) {
        p.push(key, pem_problem(path, &e, "private key"));
    }
}

/// Never the pem error's own `Display`: some variants quote lines of the file, and this
/// file may be a private key.
fn pem_problem(path: &Path, e: &pem::Error, what: &str) -> String {
    let path = path.display();
    match e {
        pem::Error::Io(io) => format!("cannot read {path}: {io}"),
        pem::Error::NoItemsFound => format!("{path} contains no PEM {what}"),
        _ => format!("{path} is not a valid PEM file (expected a {what})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Secret, ServerTls, User};
    use std::path::PathBuf;

    fn keys(c: &Config) -> Vec<String> {
        match validate(c) {
            Ok(()) => vec![],
            Err(v) => v.into_iter().map(|e| e.key).collect(),
        }
    }

    struct Pem {
        _dir: tempfile::TempDir,
        cert: PathBuf,
        key: PathBuf,
    }

    fn pem_files() -> Pem {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
        Pem {
            _dir: dir,
            cert,
            key,
        }
    }

    fn user(name: &str, pw: &str) -> User {
        User {
            name: name.into(),
            password: Secret::new(pw),
        }
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(validate(&Config::default()), Ok(()));
    }

    #[test]
    fn queue_keys_are_checked() {
        let mut c = Config::default();
        c.queue.dir = std::path::PathBuf::new();
        c.queue.max_age = Duration::ZERO;
        c.queue.bounce_from = "postmaster".into();
        c.queue.webhook = Some(crate::config::webhook::WebhookConfig {
            url: "ftp://example.org/hook".into(),
            ..Default::default()
        });
        assert_eq!(
            keys(&c),
            vec![
                "queue.dir",
                "queue.max_age",
                "queue.bounce_from",
                "queue.webhook.url"
            ]
        );
    }

    #[test]
    fn slow_client_and_listener_keys_are_checked() {
        let mut c = Config::default();
        c.server.command_timeout = Duration::ZERO;
        c.server.data_block_timeout = Duration::ZERO;
        c.server.pre_mail_timeout = Duration::ZERO;
        c.server.listen_backlog = 0;
        c.server.max_sessions_per_ip = 0;
        c.server.auth_failure_delay = Duration::ZERO;
        assert_eq!(
            keys(&c),
            vec![
                "server.command_timeout",
                "server.data_block_timeout",
                "server.pre_mail_timeout",
                "server.listen_backlog",
                "server.max_sessions_per_ip"
            ]
        );
        c.server.listen_backlog = u32::MAX;
        assert!(keys(&c).contains(&"server.listen_backlog".to_string()));
    }

    #[test]
    fn passthrough_buffer_holds_the_largest_message() {
        let mut c = Config {
            mode: crate::config::Mode::Passthrough,
            ..Config::default()
        };
        assert!(keys(&c).is_empty());
        c.server.passthrough_buffer = c.server.max_message_size - 1;
        assert_eq!(keys(&c), vec!["server.passthrough_buffer"]);
        // Queue mode does not buffer messages in memory: the key is not used there.
        c.mode = crate::config::Mode::Queue;
        assert!(keys(&c).is_empty());
    }

    #[test]
    fn max_recipients_at_least_100() {
        let mut c = Config::default();
        c.server.max_recipients = 99;
        assert_eq!(keys(&c), vec!["server.max_recipients"]);
        c.server.max_recipients = 100;
        assert_eq!(validate(&c), Ok(()));
    }

    #[test]
    fn non_loopback_listen_needs_users_and_tls() {
        let mut c = Config::default();
        c.server.listen = "0.0.0.0:2525".parse().unwrap();
        assert_eq!(keys(&c), vec!["server.users", "server.tls"]);

        c.server.users.push(user("mailer", "pw"));
        assert_eq!(keys(&c), vec!["server.tls"]);

        let pem = pem_files();
        c.server.tls = Some(ServerTls {
            cert: pem.cert.clone(),
            key: pem.key.clone(),
        });
        assert_eq!(validate(&c), Ok(()));

        c.server.users.clear();
        assert_eq!(keys(&c), vec!["server.users"]);

        c.server.listen = "[::1]:2525".parse().unwrap();
        assert_eq!(validate(&c), Ok(()));
    }

    #[test]
    fn require_auth_needs_users() {
        let mut c = Config::default();
        c.server.require_auth = true;
        assert_eq!(keys(&c), vec!["server.require_auth"]);
        c.server.users.push(user("a", "b"));
        assert_eq!(validate(&c), Ok(()));
    }

    #[test]
    fn users_must_be_well_formed() {
        let mut c = Config::default();
        c.server.users = vec![
            user("a", "x"),
            user("a", "y"),
            user("b c", ""),
            user("", "z"),
        ];
        assert_eq!(
            keys(&c),
            vec![
                "server.users[1].name",
                "server.users[2].name",
                "server.users[2].password",
                "server.users[3].name"
            ]
        );
    }

    #[test]
    fn server_tls_files_must_exist_and_hold_pem() {
        let pem = pem_files();
        let mut c = Config::default();
        c.server.tls = Some(ServerTls {
            cert: pem.cert.clone(),
            key: pem.key.clone(),
        });
        assert_eq!(validate(&c), Ok(()));

        c.server.tls = Some(ServerTls {
            cert: pem.cert.with_file_name("missing.pem"),
            key: pem.key.with_file_name("missing-key.pem"),
        });
        let errs = validate(&c).unwrap_err();
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].key, "server.tls.cert");
        assert!(errs[0].message.contains("missing.pem"), "{}", errs[0]);
        assert!(errs[0].message.contains("cannot read"), "{}", errs[0]);
        assert_eq!(errs[1].key, "server.tls.key");

        // Swapped: the key file holds no certificate, the cert file no key.
        c.server.tls = Some(ServerTls {
            cert: pem.key.clone(),
            key: pem.cert.clone(),
        });
        let errs = validate(&c).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].message.contains("no PEM certificate"),
            "{}",
            errs[0]
        );
        assert!(
            errs[1].message.contains("no PEM private key"),
            "{}",
            errs[1]
        );
    }

    #[test]
    fn broken_pem_does_not_quote_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nTOPSECRETMATERIAL!!\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let mut c = Config::default();
        c.server.tls = Some(ServerTls {
            cert: key.clone(),
            key: key.clone(),
        });
        let errs = validate(&c).unwrap_err();
        let all: String = errs.iter().map(|e| e.to_string()).collect();
        assert!(all.contains("server.tls.key"), "{all}");
        assert!(!all.contains("TOPSECRET"), "{all}");
    }

    #[test]
    fn upstream_numbers_and_host() {
        let mut c = Config::default();
        c.upstream.host = "  ".into();
        c.upstream.port = 0;
        c.upstream.max_connections = 0;
        c.upstream.max_messages_per_connection = 0;
        c.upstream.rate.per_second = Some(0);
        c.upstream.rate.per_day = Some(0);
        c.upstream.rate.per_minute = Some(1);
        assert_eq!(
            keys(&c),
            vec![
                "upstream.host",
                "upstream.port",
                "upstream.max_connections",
                "upstream.max_messages_per_connection",
                "upstream.rate.per_second",
                "upstream.rate.per_day",
            ]
        );
    }

    #[test]
    fn names_on_the_wire_cannot_inject() {
        let mut c = Config::default();
        c.upstream.helo_name = "me\r\nRSET".into();
        c.server.hostname = String::new();
        assert_eq!(keys(&c), vec!["server.hostname", "upstream.helo_name"]);
    }

    #[test]
    fn password_needs_username_and_vice_versa() {
        let mut c = Config::default();
        c.upstream.password = Some(Secret::new("pw"));
        assert_eq!(keys(&c), vec!["upstream.password"]);
        c.upstream.password = None;
        c.upstream.username = Some("me".into());
        assert_eq!(keys(&c), vec!["upstream.username"]);
        c.upstream.password = Some(Secret::new("pw"));
        assert_eq!(validate(&c), Ok(()));
    }

    #[test]
    fn no_clear_text_credentials_off_loopback() {
        let mut c = Config::default();
        c.upstream.tls = TlsMode::None;
        c.upstream.username = Some("me".into());
        c.upstream.password = Some(Secret::new("pw"));
        for host in ["127.0.0.1", "localhost", "::1", "[::1]", "127.9.9.9"] {
            c.upstream.host = host.into();
            assert_eq!(validate(&c), Ok(()), "{host}");
        }
        c.upstream.host = "smtp.example.org".into();
        let errs = validate(&c).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].key, "upstream.tls");
        assert!(errs[0].message.contains("clear text"), "{}", errs[0]);
        assert!(!errs[0].message.contains("pw"), "{}", errs[0]);
        // Without a password it is allowed, with a warning.
        c.upstream.password = None;
        c.upstream.username = None;
        assert_eq!(validate(&c), Ok(()));
        assert_eq!(warnings(&c)[0].key, "upstream.tls");
    }

    #[test]
    fn ca_file_must_exist() {
        let pem = pem_files();
        let mut c = Config::default();
        c.upstream.ca_file = Some(pem.cert.clone());
        assert_eq!(validate(&c), Ok(()));
        c.upstream.ca_file = Some(pem.cert.with_file_name("nope.pem"));
        assert_eq!(keys(&c), vec!["upstream.ca_file"]);
    }

    #[test]
    fn zero_timeouts_and_bad_log_level() {
        let mut c = Config::default();
        c.upstream.timeouts.data_end = Duration::ZERO;
        c.server.idle_timeout = Duration::ZERO;
        c.log.level = "info,=[".into();
        assert_eq!(
            keys(&c),
            vec![
                "server.idle_timeout",
                "upstream.timeouts.data_end",
                "log.level"
            ]
        );
    }

    #[test]
    fn accept_outside_2xx_is_refused_naming_the_rule() {
        let rule = |code: Option<&str>, verdict: &str| RuleSpec {
            code: code.map(Into::into),
            text: Some("whatever".into()),
            verdict: verdict.into(),
            ..RuleSpec::default()
        };
        let c = Config {
            rules: vec![
                rule(Some("250"), "accept"),
                rule(Some("550"), "accept"),
                rule(Some("2xx"), "accept"),
                rule(None, "accept"),
                rule(Some("3xx"), "accept"),
                rule(Some("250, 354"), "accept"),
                rule(Some("550"), "reject-message"),
            ],
            ..Config::default()
        };
        let errs = validate(&c).unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "rules[1].code",
                "rules[3].code",
                "rules[4].code",
                "rules[5].code"
            ],
            "{errs:?}"
        );
        let msg = errs[0].to_string();
        assert!(msg.contains("2xx"), "{msg}");
        assert!(
            msg.contains(r#"code = "550""#) && msg.contains(r#"verdict = "accept""#),
            "the message names the rule's fields: {msg}"
        );
    }

    #[test]
    fn rule_table_is_compiled_by_validation() {
        let c = Config {
            rules: vec![RuleSpec {
                text: Some("(unclosed".into()),
                verdict: "defer".into(),
                ..RuleSpec::default()
            }],
            ..Config::default()
        };
        assert_eq!(keys(&c), ["rules[0].text"]);
        let mut c = Config::default();
        c.upstream.profile = "no-such-provider".into();
        assert_eq!(keys(&c), ["upstream.profile"]);
    }

    #[test]
    fn tls_verify_off_is_a_warning() {
        let mut c = Config::default();
        c.upstream.tls_verify = false;
        assert_eq!(validate(&c), Ok(()));
        assert_eq!(warnings(&c)[0].key, "upstream.tls_verify");
        assert!(warnings(&Config::default()).is_empty());
    }
}
