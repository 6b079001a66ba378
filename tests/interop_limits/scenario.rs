//! One scenario: a private Postfix provider with one anvil limit that discards what it
//! accepts, mailvalve in queue mode in front of it, a campaign submitted at once, and a
//! bounded wait until the provider has delivered every recipient. Produces an
//! [`Outcome`]; judging it is `report`'s job. Never contacts anything but 127.0.0.1.

use super::support::client::Client;
use super::support::harness::{start_mailvalve, tool};
use super::support::postfix::Postfix;
use super::watch::{Tally, Watch, POLL};

use std::fs;
use std::path::Path;
use std::thread::{self, sleep};
use std::time::{Duration, Instant};

/// The anvil limit a scenario's provider enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `smtpd_client_message_rate_limit`: MAIL commands per unit.
    MessageRate,
    /// `smtpd_client_recipient_rate_limit`: RCPT commands per unit.
    RecipientRate,
    /// `smtpd_client_connection_count_limit`: simultaneous sessions (no time unit).
    ConnectionCount,
    /// `smtpd_client_connection_rate_limit`: connection attempts per unit.
    ConnectionRate,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::MessageRate => "message rate",
            Kind::RecipientRate => "recipient rate",
            Kind::ConnectionCount => "connection count",
            Kind::ConnectionRate => "connection rate",
        }
    }

    fn parameter(self) -> &'static str {
        match self {
            Kind::MessageRate => "smtpd_client_message_rate_limit",
            Kind::RecipientRate => "smtpd_client_recipient_rate_limit",
            Kind::ConnectionCount => "smtpd_client_connection_count_limit",
            Kind::ConnectionRate => "smtpd_client_connection_rate_limit",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub kind: Kind,
    /// The anvil limit (per `window` for the rate kinds).
    pub limit: u32,
    /// `anvil_rate_time_unit`.
    pub window: Duration,
    /// mailvalve's `upstream.profile`.
    pub profile: &'static str,
    pub messages: usize,
    pub rcpts_per_message: usize,
    /// `upstream.max_messages_per_connection`, standing in for a provider that also
    /// limits messages per connection: with a connection-rate limit, it makes the
    /// campaign need many connections, so the connection rate limits delivery.
    pub per_connection: Option<usize>,
}

impl Scenario {
    pub fn name(&self) -> String {
        format!(
            "{} {} {}",
            self.kind.label(),
            self.limit_label(),
            self.profile
        )
    }

    pub fn limit_label(&self) -> String {
        match self.kind {
            Kind::ConnectionCount => format!("{}", self.limit),
            _ => format!(
                "{}/{}s{}",
                self.limit,
                self.window.as_secs(),
                self.per_connection
                    .map(|m| format!(" ×{m}"))
                    .unwrap_or_default()
            ),
        }
    }

    /// Recipients to deliver.
    pub fn units(&self) -> usize {
        self.messages * self.rcpts_per_message
    }

    /// The most recipients per second the provider's limit lets through, when it is a
    /// rate: messages or recipients per window, or connections per window times the
    /// messages a connection may carry — per *effective* window, one second longer than
    /// `anvil_rate_time_unit`. anvil keeps whole-second timestamps and starts a new unit
    /// only at the first event with `start + unit < now`: a client hammering a limit of
    /// 5 per 5 s got 5 accepted every 6.0 s, for 40 s on end (Postfix 3.7.11, measured
    /// here with one MAIL every 0.1 s). So a limit of L per W really is L per (W + 1) s
    /// — 91% of the nominal rate for W = 10 s, 95% for W = 20 s — and that is what a
    /// client can get, whatever the window's length.
    pub fn limit_per_second(&self) -> Option<f64> {
        let per_window = match (self.kind, self.per_connection) {
            (Kind::MessageRate, _) => f64::from(self.limit) * self.rcpts_per_message as f64,
            (Kind::RecipientRate, _) => f64::from(self.limit),
            (Kind::ConnectionRate, Some(m)) => {
                f64::from(self.limit) * (m * self.rcpts_per_message) as f64
            }
            (Kind::ConnectionRate, None) | (Kind::ConnectionCount, _) => return None,
        };
        Some(per_window / self.effective_window().as_secs_f64())
    }

    /// anvil's unit as it works out: a second longer than configured (see
    /// `limit_per_second`).
    pub fn effective_window(&self) -> Duration {
        self.window + Duration::from_secs(1)
    }

    /// How long the units take at exactly the provider's limit, evenly paced (rate
    /// kinds), else zero.
    pub fn at_limit(&self) -> Duration {
        match self.limit_per_second() {
            Some(r) => Duration::from_secs_f64(self.units() as f64 / r),
            None => Duration::ZERO,
        }
    }

    /// How long the scenario may run before it gives up waiting (and fails): twice the
    /// time at the limit and a minute, or two minutes where there is no rate.
    pub fn bound(&self) -> Duration {
        match self.limit_per_second() {
            Some(_) => Duration::from_secs(60) + self.at_limit() * 2,
            None => Duration::from_secs(120),
        }
    }

    fn main_cf(&self) -> String {
        format!(
            "# The limited provider: one anvil limit, loopback not exempt, mail discarded.
default_transport = discard
smtpd_client_event_limit_exceptions =
anvil_rate_time_unit = {window}s
{param} = {limit}
",
            window = self.window.as_secs(),
            param = self.kind.parameter(),
            limit = self.limit,
        )
    }
}

/// What a scenario produced.
#[derive(Debug)]
pub struct Outcome {
    pub scenario: Scenario,
    /// From the first submission to the last delivery seen (or to giving up).
    pub elapsed: Duration,
    /// The provider's log, read at the end (times since the first submission).
    pub tally: Tally,
    /// Submission took this long (queue mode answers once a message is on disk).
    pub submitted_in: Duration,
    /// Whether every recipient arrived within `Scenario::bound`.
    pub complete: bool,
    /// mailvalve's log lines about limits (for a failure message).
    pub mailvalve_notes: Vec<String>,
}

/// Mailer sessions submitting the campaign in parallel.
const SUBMITTERS: usize = 4;

/// Queue mode in front of the provider; `{LISTEN}` is filled in by `start_mailvalve`.
fn config(sc: &Scenario, provider: u16, spool: &Path) -> String {
    format!(
        r#"mode = "queue"

[server]
listen = "{{LISTEN}}"
hostname = "mailvalve.test"
shutdown_grace = "2s"

[http]
listen = "127.0.0.1:0"

[upstream]
host = "127.0.0.1"
port = {provider}
tls = "none"
profile = "{profile}"
# A user's cap on connections; what the provider allows is learned below it.
max_connections = 10
{per_connection}
[queue]
dir = "{spool}"
"#,
        profile = sc.profile,
        spool = spool.display(),
        per_connection = sc
            .per_connection
            .map(|m| format!("max_messages_per_connection = {m}\n"))
            .unwrap_or_default(),
    )
}

/// About 1 KB with a unique Message-ID; no line starts with a dot.
fn message(id: &str) -> String {
    let mut m = format!(
        "Message-ID: <{id}>\r\nFrom: news@news.example\r\nTo: reader@example.net\r\n\
         Subject: limited provider {id}\r\n\r\n"
    );
    while m.len() < 1000 {
        m.push_str("0123456789abcdefghijklmnopqrstuvwxyz-limited-provider-filler\r\n");
    }
    m
}

/// Runs `sc` in `dir` (its own subdirectory).
pub fn run(sc: &Scenario, postfix_bin: &Path, dir: &Path) -> Outcome {
    let postfix = Postfix::start(postfix_bin, tool("script").as_deref(), dir, &sc.main_cf());
    let spool = dir.join("spool");
    let mut relay = start_mailvalve(dir, &config(sc, postfix.port, &spool), &[]);
    // Postfix was started without connecting to it (`support::postfix::listening`), so
    // anvil's first unit starts with mailvalve's first connection.
    let epoch = Instant::now();
    let watch = Watch::start(postfix.log.clone(), postfix.log_len() as u64, epoch);

    let slug: String = sc
        .name()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    // A few mailer sessions at once, as a mailing-list server hands a campaign over.
    let submitters: Vec<_> = (0..SUBMITTERS)
        .map(|k| {
            let (slug, name, port) = (slug.clone(), sc.name(), relay.port);
            let (messages, rcpts) = (sc.messages, sc.rcpts_per_message);
            thread::spawn(move || {
                let mut mailer = Client::session(port).expect("mailer session with mailvalve");
                for i in (k..messages).step_by(SUBMITTERS) {
                    let id = format!("{slug}-{i}@mailvalve.test");
                    let to: Vec<String> = (0..rcpts)
                        .map(|r| format!("r{r}-{i}@example.net"))
                        .collect();
                    let reply = mailer
                        .send_many("news@news.example", &to, &message(&id))
                        .expect("submit to mailvalve");
                    assert_eq!(
                        reply.0, 250,
                        "{name}: mailvalve (queue mode) refused message {i}: {reply:?}"
                    );
                }
                let _ = mailer.cmd("QUIT");
            })
        })
        .collect();
    for s in submitters {
        if let Err(e) = s.join() {
            std::panic::resume_unwind(e);
        }
    }
    let submitted_in = epoch.elapsed();

    // Bounded wait until the provider has delivered every recipient.
    let deadline = epoch + sc.bound();
    let complete = loop {
        relay.assert_alive();
        let t = watch.snapshot();
        if t.delivered.len() >= sc.units() {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        sleep(POLL);
    };
    let last = watch.snapshot().delivered_at.last().copied();
    // A copy delivered twice would show up now.
    sleep(Duration::from_secs(2));
    let tally = watch.snapshot();
    drop(watch);
    let elapsed = if complete {
        last.unwrap_or_default()
    } else {
        sc.bound()
    };
    let mailvalve_notes = relay
        .proc
        .output()
        .lines()
        .filter(|l| l.contains("limit") || l.contains("throttl") || l.contains("WARN"))
        .map(str::to_string)
        .collect();
    relay.proc.terminate(Duration::from_secs(5));
    let _ = fs::write(dir.join("tally.txt"), format!("{tally:#?}"));
    Outcome {
        scenario: sc.clone(),
        elapsed,
        tally,
        submitted_in,
        complete,
        mailvalve_notes,
    }
}
