//! Tests of validation: every rule names its key, secrets stay out of messages.

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

fn warning_keys(c: &Config) -> Vec<String> {
    warnings(c).into_iter().map(|w| w.key).collect()
}

/// Suspicious but legal: each is a warning (not an error) naming the key.
#[test]
fn port_and_tls_mismatches_warn() {
    let mut c = Config::default();
    assert!(warnings(&c).is_empty(), "{:?}", warnings(&c));
    c.upstream.port = 465;
    assert_eq!(warning_keys(&c), ["upstream.tls"]);
    assert!(warnings(&c)[0].message.contains("implicit"));
    c.upstream.tls = TlsMode::Implicit;
    assert!(warnings(&c).is_empty());
    c.upstream.port = 587;
    assert_eq!(warning_keys(&c), ["upstream.tls"]);
    assert!(warnings(&c)[0].message.contains("starttls"));
    assert_eq!(validate(&c), Ok(()));
}

#[test]
fn a_host_outside_the_profile_warns() {
    let mut c = Config::default();
    c.upstream.profile = "gmail".into();
    c.upstream.host = "smtp.example.org".into();
    assert_eq!(warning_keys(&c), ["upstream.host"]);
    assert!(warnings(&c)[0].message.contains("smtp.gmail.com"));
    c.upstream.host = "SMTP.gmail.com".into();
    assert!(warnings(&c).is_empty());
    // A profile may list several hosts: Workspace's SMTP relay is one of its own.
    c.upstream.profile = "google-workspace".into();
    c.upstream.host = "smtp-relay.gmail.com".into();
    assert!(warnings(&c).is_empty(), "{:?}", warnings(&c));
    // A profile without a host (SES: one per region) says nothing.
    c.upstream.profile = "amazon-ses".into();
    c.upstream.host = "email-smtp.eu-west-1.amazonaws.com".into();
    assert!(warnings(&c).is_empty());
}

/// `learn_above_profile = false` with a profile whose rate or connection figures are
/// guesses warns, naming them; set in `[upstream.limits]`, a figure is the user's own.
#[test]
fn strict_caps_on_guessed_figures_warn() {
    let mut c = Config::default();
    c.upstream.learn_above_profile = false;
    assert_eq!(warning_keys(&c), ["upstream.learn_above_profile"]);
    let w = &warnings(&c)[0].message;
    assert!(
        w.contains("generic") && w.contains("max_connections") && w.contains("messages_per_minute"),
        "{w}"
    );
    c.upstream.limits.max_connections = Some(3);
    c.upstream.limits.messages_per_minute = Some(30);
    assert!(warnings(&c).is_empty(), "{:?}", warnings(&c));
    // Office 365 publishes its rate and connections: nothing is a guess there.
    let mut c = Config::default();
    c.upstream.learn_above_profile = false;
    c.upstream.profile = "office365".into();
    c.upstream.host = "smtp.office365.com".into();
    assert!(warnings(&c).is_empty(), "{:?}", warnings(&c));
    assert_eq!(validate(&c), Ok(()));
}

/// What `run` would refuse when opening its files: a file where a directory must
/// be. A missing directory is fine (created at start).
#[test]
fn data_paths_that_cannot_be_opened_are_problems() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("afile");
    std::fs::write(&file, b"x").unwrap();
    let mut c = Config::default();
    c.queue.dir = dir.path().join("new/spool");
    c.suppression.path = dir.path().join("new/lists/s.redb");
    assert_eq!(validate(&c), Ok(()));
    c.queue.dir = file.join("spool");
    c.suppression.path = file.join("s.redb");
    assert_eq!(keys(&c), ["queue.dir", "suppression.path"]);
    c.suppression.path = dir.path().to_path_buf();
    let e = validate(&c).unwrap_err();
    assert!(e[1].message.contains("is a directory"), "{e:?}");
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
    c.upstream.rate.recipients_per_day = Some(0);
    assert_eq!(
        keys(&c),
        vec![
            "upstream.host",
            "upstream.port",
            "upstream.max_connections",
            "upstream.max_messages_per_connection",
            "upstream.rate.per_second",
            "upstream.rate.per_day",
            "upstream.rate.recipients_per_day",
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

#[test]
fn oauth2_needs_a_mailbox_one_sign_in_and_a_complete_table() {
    use crate::config::oauth::OAuth2Config;
    let mut c = Config::default();
    c.upstream.profile = "office365".into();
    c.upstream.host = "smtp.office365.com".into();
    c.upstream.oauth2 = Some(OAuth2Config {
        client_id: Some("app".into()),
        ..Default::default()
    });
    assert_eq!(keys(&c), ["upstream.username"]);
    c.upstream.username = Some("news@example.org".into());
    assert!(
        keys(&c).is_empty(),
        "the profile supplies endpoints and scopes"
    );
    c.upstream.password = Some(Secret::new("pw-hunter2"));
    assert_eq!(keys(&c), ["upstream.password"], "password and OAuth2 both");
    c.upstream.password = None;

    c.upstream.profile = "generic".into();
    assert_eq!(
        keys(&c),
        ["upstream.oauth2.token_endpoint"],
        "generic has none"
    );
    c.upstream.oauth2.as_mut().unwrap().token_endpoint = Some("http://login.example/t".into());
    assert_eq!(
        keys(&c),
        ["upstream.oauth2.token_endpoint"],
        "plain http off loopback"
    );
    c.upstream.oauth2.as_mut().unwrap().token_endpoint = Some("https://login.example/t".into());
    assert!(keys(&c).is_empty());

    c.upstream.tls = TlsMode::None;
    assert_eq!(
        keys(&c),
        ["upstream.tls"],
        "a token in clear text off loopback"
    );
    c.upstream.host = "127.0.0.1".into();
    assert!(keys(&c).is_empty());

    c.upstream.oauth2.as_mut().unwrap().client_id = None;
    c.upstream.oauth2.as_mut().unwrap().refresh_token = Some(Secret::new("rt-hunter2"));
    let msgs = format!("{:?}", validate(&c).unwrap_err());
    assert!(msgs.contains("upstream.oauth2.client_id"), "{msgs}");
    assert!(!msgs.contains("hunter2"), "{msgs}");
}
