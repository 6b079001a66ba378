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

use super::limits::LimitKey;
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
    http(config, &mut p);
    data_paths(config, &mut p);
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

/// `[http]`: off loopback the API steers the relay, so it needs a token and TLS.
fn http(c: &Config, p: &mut Problems) {
    let h = &c.http;
    if h.token
        .as_ref()
        .is_some_and(|t| t.expose().trim().is_empty())
    {
        p.push("http.token", "must not be empty (or leave it out)");
    }
    if let Some(listen) = h.listen {
        if !listen.ip().is_loopback() {
            if h.token.is_none() {
                p.push(
                    "http.token",
                    format!(
                        "must be set: http.listen ({listen}) is not loopback, and off loopback \
                         every request needs a bearer token (set MAILVALVE__HTTP__TOKEN)"
                    ),
                );
            }
            if h.tls.is_none() {
                p.push(
                    "http.tls",
                    format!(
                        "must be set (cert and key): http.listen ({listen}) is not loopback, and \
                         off loopback the token must not cross the network in clear"
                    ),
                );
            }
        }
        if c.server.listen == listen {
            p.push(
                "http.listen",
                format!("is the same address as server.listen ({listen})"),
            );
        }
    }
    for (i, host) in h.allowed_hosts.iter().enumerate() {
        if host.is_empty()
            || host
                .chars()
                .any(|ch| ch.is_whitespace() || ch.is_control() || ch == ':' || ch == '/')
        {
            p.push(
                format!("http.allowed_hosts[{i}]"),
                format!("{host:?} is not a host name (no port, no scheme)"),
            );
        }
    }
    if let Some(tls) = &h.tls {
        certificates(p, "http.tls.cert", &tls.cert);
        private_key(p, "http.tls.key", &tls.key);
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

/// What opening the spool directory and the suppression database would refuse, found
/// without creating anything: a missing directory is fine (`run` creates it, owner
/// only), a file where a directory must be, or a directory where the database file must
/// be, is not.
fn data_paths(c: &Config, p: &mut Problems) {
    if !c.queue.dir.as_os_str().is_empty() {
        if let Some(why) = blocked_dir(&c.queue.dir) {
            p.push(
                "queue.dir",
                format!("cannot be created or used: {why}; choose another directory"),
            );
        }
    }
    let db = &c.suppression.path;
    if db.as_os_str().is_empty() {
        p.push(
            "suppression.path",
            "must name the database file (e.g. \"mailvalve-suppression.redb\")",
        );
    } else if db.is_dir() {
        p.push(
            "suppression.path",
            format!(
                "{} is a directory; name a file in it, e.g. \"{}\"",
                db.display(),
                db.join("suppression.redb").display()
            ),
        );
    } else if let Some(why) = db.parent().and_then(blocked_dir) {
        p.push(
            "suppression.path",
            format!("its directory cannot be created or used: {why}; choose another path"),
        );
    }
}

/// Why `dir` cannot become a directory: the nearest part of it that exists is not a
/// directory. `None` when it is one or can be created below one.
fn blocked_dir(dir: &Path) -> Option<String> {
    let mut at = Some(dir);
    while let Some(d) = at {
        if d.as_os_str().is_empty() {
            return None;
        }
        match std::fs::metadata(d) {
            Ok(m) if m.is_dir() => return None,
            Ok(_) => return Some(format!("{} is a file, not a directory", d.display())),
            Err(_) => at = d.parent(),
        }
    }
    None
}

/// Settings that are allowed but risky; `check` prints them, `run` logs them.
pub fn warnings(config: &Config) -> Vec<ValidationError> {
    let mut p = Problems::default();
    let up = &config.upstream;
    match (up.port, up.tls) {
        (465, TlsMode::Starttls) => p.push(
            "upstream.tls",
            "is \"starttls\" but upstream.port is 465, the port for implicit TLS: the \
             provider waits for a TLS handshake and the connection hangs; set tls = \
             \"implicit\" (or port = 587)",
        ),
        (587, TlsMode::Implicit) => p.push(
            "upstream.tls",
            "is \"implicit\" but upstream.port is 587, the port for STARTTLS: the TLS \
             handshake fails against the provider's plain greeting; set tls = \"starttls\" \
             (or port = 465)",
        ),
        _ => {}
    }
    if let Some(Ok(prof)) = profile::builtin(&config.upstream.profile) {
        if !up.learn_above_profile && !prof.limit_sources.unverified.is_empty() {
            let guesses: Vec<&str> = prof
                .limit_sources
                .unverified
                .iter()
                .filter(|k| {
                    matches!(
                        k,
                        LimitKey::MaxConnections
                            | LimitKey::MessagesPerSecond
                            | LimitKey::MessagesPerMinute
                    ) && !up.limits.is_set(**k)
                })
                .map(|k| k.name())
                .collect();
            if !guesses.is_empty() {
                p.push(
                    "upstream.learn_above_profile",
                    format!(
                        "is false: the guesses of profile {} ({}) are hard caps, and                          mailvalve never learns whether the provider allows more; set the                          provider's real figures in [upstream.limits] or leave this true",
                        prof.name,
                        guesses.join(", ")
                    ),
                );
            }
        }
        let known: Vec<&str> = prof
            .host
            .iter()
            .chain(prof.hosts.iter())
            .map(String::as_str)
            .collect();
        let host = up.host.trim().trim_end_matches('.');
        if !known.is_empty() && !known.iter().any(|k| k.eq_ignore_ascii_case(host)) {
            p.push(
                "upstream.host",
                format!(
                    "is {host}, which is none of the hosts of profile {} ({}): set \
                     upstream.host = \"{}\", or choose the profile of the provider you \
                     send through (see `mailvalve profiles`); ignore this for a test \
                     server or a tunnel",
                    prof.name,
                    known.join(", "),
                    known[0]
                ),
            );
        }
    }
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
        ("recipients_per_day", u.rate.recipients_per_day),
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

    if let Some(o) = &u.oauth2 {
        oauth2(config, o, p);
    } else {
        password_auth(u, p);
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
    non_zero(p, "upstream.reachability_interval", u.reachability_interval);
    if u.reachability_interval > super::schema::MAX_REACHABILITY_INTERVAL {
        p.push(
            "upstream.reachability_interval",
            format!(
                "is {}, more than the 30s allowed: an unreachable provider is checked at \
                 least every 30s so that delivery resumes soon after it is back",
                humantime::format_duration(u.reachability_interval)
            ),
        );
    }
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

/// Password sign-in: username and password both or neither.
fn password_auth(u: &crate::config::UpstreamConfig, p: &mut Problems) {
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
}

/// OAuth2 sign-in: a username (the mailbox), no password beside it, the table complete
/// once the profile's endpoints and scopes are filled in, and no token in clear text
/// over the network.
fn oauth2(config: &Config, o: &crate::config::oauth::OAuth2Config, p: &mut Problems) {
    let u = &config.upstream;
    match &u.username {
        None => p.push(
            "upstream.username",
            "is required with [upstream.oauth2]: the mailbox to sign in as",
        ),
        Some(name) if name.trim().is_empty() => p.push("upstream.username", "must not be empty"),
        Some(name) if name.contains(['\x01', '\r', '\n']) => {
            p.push("upstream.username", "must not contain control characters")
        }
        _ => {}
    }
    if u.password.is_some() {
        p.push(
            "upstream.password",
            "is set together with [upstream.oauth2]: choose one way to sign in (remove the \
             password to use OAuth2)",
        );
    }
    let profile = crate::config::profile::builtin(&u.profile).and_then(Result::ok);
    if let Err((key, msg)) = o.resolve(profile.as_ref().and_then(|p| p.oauth2.as_ref())) {
        p.push(key, msg);
    }
    if u.tls == TlsMode::None && !is_loopback_host(&u.host) {
        p.push(
            "upstream.tls",
            format!(
                "is \"none\" with [upstream.oauth2] and upstream.host ({}) is not loopback: \
                 the access token would cross the network in clear text; use \"starttls\" \
                 (port 587) or \"implicit\" (port 465)",
                u.host
            ),
        );
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
mod tests;
