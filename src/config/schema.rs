//! The configuration schema: one struct per TOML table, every field with its default.
//! `config/mailvalve.toml` documents each key; keep the two in step.
//!
//! This module only describes shapes and defaults. Loading (file + `MAILVALVE__*`
//! environment) and validation live in `load.rs` / `validate.rs`. Nothing here may print
//! a secret: `Secret` redacts itself in `Debug` and `Display`.
//! It must never hold behaviour: no I/O, no checks beyond the types.

pub use super::secret::Secret;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// How mail flows: `queue` (store-and-forward, the default) or `passthrough`
    /// (each transaction relayed live).
    pub mode: Mode,
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub suppression: SuppressionConfig,
    /// Queue mode: the spool, retries, bounce reports, delivery log.
    pub queue: super::queue::QueueConfig,
    pub log: LogConfig,
    /// The HTTP listener: `/metrics`, the JSON API, the dashboard.
    pub http: HttpConfig,
    /// Your own reply rules, tried before the provider profile's and the built-in ones.
    pub rules: Vec<crate::policy::rules::RuleSpec>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: Mode::Queue,
            server: ServerConfig::default(),
            upstream: UpstreamConfig::default(),
            suppression: SuppressionConfig::default(),
            queue: super::queue::QueueConfig::default(),
            log: LogConfig::default(),
            http: HttpConfig::default(),
            rules: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The mailer gets 250 once the message is durable in the spool; delivery workers
    /// pace it out to the provider later and retry what was deferred.
    Queue,
    /// Each transaction is relayed live over a leased upstream connection.
    Passthrough,
}

/// `[http]`: the HTTP listener for `/metrics`, the JSON API and the dashboard.
/// `validate` insists on `token` and `tls` when `listen` is not loopback.
/// The HTTP listener's default address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:2580";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Where to listen; `""` turns the listener off.
    #[serde(
        serialize_with = "listen_to_string",
        deserialize_with = "listen_from_string"
    )]
    pub listen: Option<SocketAddr>,
    /// Bearer token (`Authorization: Bearer ...`); required off loopback. Best set by
    /// environment: `MAILVALVE__HTTP__TOKEN`.
    pub token: Option<Secret>,
    /// Certificate and key (PEM); required off loopback.
    pub tls: Option<ServerTls>,
    /// Host names (besides localhost and the listener's own address) that the Host
    /// header may carry, e.g. the name of a reverse proxy.
    pub allowed_hosts: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().ok(),
            token: None,
            tls: None,
            allowed_hosts: Vec::new(),
        }
    }
}

fn listen_to_string<S: Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(a) => s.serialize_str(&a.to_string()),
        None => s.serialize_str(""),
    }
}

fn listen_from_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "{s:?} is not an address with port, e.g. \"127.0.0.1:2580\" (or \"\" for off)"
        ))
    })
}

/// The inbound side: where the mailer connects.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Name used in the greeting and EHLO reply.
    pub hostname: String,
    /// Largest message accepted, in bytes (SIZE is advertised with it).
    pub max_message_size: usize,
    /// Recipients per transaction; at least 100 (RFC 5321 4.5.3.1.8).
    pub max_recipients: usize,
    /// Idle time allowed between commands (RFC 5321: 5 minutes).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// On shutdown, how long transactions in flight may take to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Most concurrent mailer sessions.
    pub max_sessions: usize,
    /// Certificate and key for STARTTLS. Without them STARTTLS is not offered.
    pub tls: Option<ServerTls>,
    /// Users for AUTH PLAIN / LOGIN. Required when `listen` is not loopback.
    pub users: Vec<User>,
    /// Require AUTH before MAIL even on loopback.
    pub require_auth: bool,
    /// A command line must arrive complete within this long after the server started
    /// waiting for it, however the bytes trickle in (RFC 5321 4.5.3.2.7: 5 minutes).
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Each 64 KiB block of a message (or its end) must arrive within this long
    /// (RFC 5321 4.5.3.2.5: 3 minutes per data block).
    #[serde(with = "humantime_serde")]
    pub data_block_timeout: Duration,
    /// From the greeting to the first MAIL FROM (so also through STARTTLS and AUTH) a
    /// session has at most this long in all.
    #[serde(with = "humantime_serde")]
    pub pre_mail_timeout: Duration,
    /// Connections the kernel queues for the accept loop (`listen(2)` backlog; Linux
    /// caps it at net.core.somaxconn).
    pub listen_backlog: u32,
    /// On a listener that is not loopback: most sessions open at once from one IP
    /// address; more get `421 4.7.0`.
    pub max_sessions_per_ip: usize,
    /// On a listener that is not loopback: pause before answering each failed AUTH.
    #[serde(with = "humantime_serde")]
    pub auth_failure_delay: Duration,
    /// Passthrough: bytes of message bodies all sessions together may hold in memory (a
    /// message is kept whole until its end, so a bad one is refused before any of it is
    /// relayed). At least `max_message_size`. Queue mode streams to disk instead.
    pub passthrough_buffer: usize,
    /// Passthrough: how long a session waits for room in `passthrough_buffer` before
    /// its message is refused with `451 4.3.1`.
    #[serde(with = "humantime_serde")]
    pub passthrough_buffer_wait: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 2525)),
            hostname: "mailvalve.localhost".into(),
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            idle_timeout: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(30),
            max_sessions: 200,
            tls: None,
            users: Vec::new(),
            require_auth: false,
            command_timeout: Duration::from_secs(300),
            data_block_timeout: Duration::from_secs(180),
            pre_mail_timeout: Duration::from_secs(300),
            listen_backlog: 1024,
            max_sessions_per_ip: 20,
            auth_failure_delay: Duration::from_secs(3),
            passthrough_buffer: 256 * 1024 * 1024,
            passthrough_buffer_wait: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub password: Secret,
}

/// How the upstream connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS from the first byte (port 465).
    Implicit,
    /// Plain connect, then STARTTLS, which must succeed (port 587).
    Starttls,
    /// No TLS at all. Only for local test servers.
    None,
}

/// The longest `upstream.reachability_interval` (and its default): an unreachable
/// provider is checked at least this often, however long it has been away.
pub const MAX_REACHABILITY_INTERVAL: Duration = Duration::from_secs(30);

/// The outbound side: the provider's submission server.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// Verify the provider's certificate. `false` is for test servers only and logs a
    /// warning at every connect.
    pub tls_verify: bool,
    /// Extra CA certificates (PEM) trusted besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// Name sent in EHLO.
    pub helo_name: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Provider profile (limits and reply rules).
    pub profile: String,
    /// Hard cap on simultaneous connections to the provider. The profile's (adaptive)
    /// limit applies below it.
    pub max_connections: usize,
    /// A connection is closed after this many transactions.
    pub max_messages_per_connection: usize,
    /// An unused pooled connection is closed after this long.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long a mailer's MAIL FROM may wait for an upstream connection before it gets
    /// `451 4.7.0`.
    #[serde(with = "humantime_serde")]
    pub admission_wait: Duration,
    /// While the provider cannot be reached (connection refused, timeout, TLS failure),
    /// it is checked again at least this often (connect, greeting, QUIT), so delivery
    /// resumes within this time after it is back. At most 30 s.
    #[serde(with = "humantime_serde")]
    pub reachability_interval: Duration,
    pub rate: RateConfig,
    pub timeouts: UpstreamTimeouts,
    /// Overrides of the provider profile's limits, key by key (each one you set is a
    /// hard cap).
    pub limits: super::limits::Limits,
    /// `true` (default): a profile figure marked unverified (a guess: every figure of
    /// `generic` and `local`) for messages per second / minute or connections is where
    /// mailvalve starts, and probing may go above it (never above
    /// `upstream.max_connections`, `[upstream.rate]`, `[upstream.limits]` or a published
    /// figure). `false`: every profile figure is a hard cap.
    pub learn_above_profile: bool,
    /// Sign in with OAuth2 (XOAUTH2 / OAUTHBEARER) instead of a password.
    pub oauth2: Option<super::oauth::OAuth2Config>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 587,
            tls: TlsMode::Starttls,
            tls_verify: true,
            ca_file: None,
            helo_name: "mailvalve.localhost".into(),
            username: None,
            password: None,
            profile: "generic".into(),
            max_connections: 10,
            max_messages_per_connection: 100,
            idle_timeout: Duration::from_secs(60),
            admission_wait: Duration::from_secs(30),
            reachability_interval: MAX_REACHABILITY_INTERVAL,
            rate: RateConfig::default(),
            timeouts: UpstreamTimeouts::default(),
            limits: super::limits::Limits::default(),
            learn_above_profile: true,
            oauth2: None,
        }
    }
}

/// Message rate limits; each is optional, all that are set apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateConfig {
    pub per_second: Option<u32>,
    pub per_minute: Option<u32>,
    pub per_hour: Option<u32>,
    pub per_day: Option<u32>,
    /// A daily quota counted in recipients (a message to 3 recipients takes 3), as
    /// Amazon SES and Microsoft 365 count theirs.
    pub recipients_per_day: Option<u32>,
}

/// RFC 5321 4.5.3.2 client timeouts, plus connect.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTimeouts {
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    #[serde(with = "humantime_serde")]
    pub greeting: Duration,
    #[serde(with = "humantime_serde")]
    pub command: Duration,
    #[serde(with = "humantime_serde")]
    pub mail: Duration,
    #[serde(with = "humantime_serde")]
    pub rcpt: Duration,
    #[serde(with = "humantime_serde")]
    pub data: Duration,
    #[serde(with = "humantime_serde")]
    pub data_block: Duration,
    #[serde(with = "humantime_serde")]
    pub data_end: Duration,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(30),
            greeting: Duration::from_secs(300),
            command: Duration::from_secs(300),
            mail: Duration::from_secs(300),
            rcpt: Duration::from_secs(300),
            data: Duration::from_secs(120),
            data_block: Duration::from_secs(180),
            data_end: Duration::from_secs(600),
        }
    }
}

/// The suppression list: addresses the provider rejected for good.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SuppressionConfig {
    /// The redb database file (created if missing, with its directory). Relative to the
    /// config file's directory (see `load`).
    pub path: PathBuf,
    /// Mailbox-full replies suppress an address after this many occurrences ...
    pub soft_threshold: u32,
    /// ... within this window.
    #[serde(with = "humantime_serde")]
    pub soft_window: Duration,
}

impl Default for SuppressionConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("mailvalve-suppression.redb"),
            soft_threshold: 3,
            soft_window: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter, e.g. `info` or `mailvalve=debug`. `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
        }
    }
}

#[cfg(test)]
mod http_tests {
    use super::*;

    #[test]
    fn listen_parses_and_empty_is_off() {
        let c: HttpConfig = toml::from_str("listen = \"\"").unwrap();
        assert_eq!(c.listen, None);
        let c: HttpConfig = toml::from_str("listen = \"127.0.0.1:0\"").unwrap();
        assert_eq!(c.listen, Some("127.0.0.1:0".parse().unwrap()));
        let e = toml::from_str::<HttpConfig>("listen = \"nowhere\"").unwrap_err();
        assert!(e.to_string().contains("not an address"), "{e}");
        assert_eq!(
            HttpConfig::default().listen,
            Some(DEFAULT_LISTEN.parse().unwrap())
        );
    }
}
