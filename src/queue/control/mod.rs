//! Operator commands on a running instance, one implementation for both ways of reaching
//! its state (the commands here, [`suppress`] for the suppression list, [`socket`] for
//! the control socket):
//!
//! - `mailvalve queue list | show | retry | delete | pause | resume | status` (queue
//!   mode) and `mailvalve suppress list | add | remove | import | export` (both modes);
//! - a running instance listens on a Unix socket, `<queue.dir>/control.sock` (the spool
//!   directory; in passthrough mode the directory is created for the socket alone). The
//!   socket is bound so that it never exists with permissions wider than 0600
//!   (`platform::bind_private_socket`). The CLI sends one command line (and, for `suppress add`, a body
//!   up to EOF) and reads the answer until EOF — the first line is `ok` or `error: ...`;
//! - with no instance running, the CLI opens the spool or the suppression database
//!   itself (redb locks both, so the two can never write at once) and runs the same
//!   [`execute`] / [`execute_suppress`].
//!
//! Every queue command goes through a [`Hooks`]: the running relay's handle
//! (`relay::RelayHandle`, which also steers the delivery engine) or [`Offline`].
//!
//! The operator's pause is a file, `<dir>/paused`, so it survives restarts and works
//! offline; the delivery engine sends nothing while it exists.
//!
//! On systems without Unix sockets there is no control socket (see `platform`): stop the
//! instance to use these commands (they then open the files directly).
//!
//! This module must never change a recipient's state except through the spool's own
//! durable operations, never change the suppression list except through the list's own
//! durable operations, never block the caller longer than one commit, and never print
//! message bodies (they may be personal data): only envelopes and replies.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use futures::future::BoxFuture;

use super::deliver::StatsSnapshot;
use super::record::{Message, RcptState, StoredReply};
use super::spool::now_ms;
use super::{QueueId, Spool, Which};
use crate::policy::controller::Reachability;
use crate::policy::verdict::PauseScope;

mod socket;
mod suppress;

pub use socket::Instance;
#[cfg(unix)]
pub use socket::{request, request_suppress, serve};
pub use suppress::{execute_suppress, SuppressRequest, SuppressionList, MAX_SUPPRESS_BODY};

/// The socket a running instance listens on.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("control.sock")
}

/// The operator's pause flag file.
pub fn pause_flag(dir: &Path) -> PathBuf {
    dir.join("paused")
}

/// One operator command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    List,
    Show(QueueId),
    Retry(Which),
    Delete(QueueId),
    Pause,
    Resume,
    Status,
    /// Re-read and apply the configuration (`mailvalve reload`; both modes).
    Reload,
}

impl Command {
    /// The wire form (one line).
    pub fn to_line(self) -> String {
        match self {
            Self::List => "list".into(),
            Self::Show(id) => format!("show {id}"),
            Self::Retry(Which::One(id)) => format!("retry {id}"),
            Self::Retry(Which::All) => "retry --all".into(),
            Self::Delete(id) => format!("delete {id}"),
            Self::Pause => "pause".into(),
            Self::Resume => "resume".into(),
            Self::Status => "status".into(),
            Self::Reload => "reload".into(),
        }
    }

    /// Parses the wire form.
    pub fn parse(line: &str) -> Result<Self, String> {
        let mut words = line.split_whitespace();
        let verb = words.next().unwrap_or("");
        let arg = words.next();
        if words.next().is_some() {
            return Err(format!("too many arguments: {line:?}"));
        }
        let id = |a: Option<&str>| -> Result<QueueId, String> {
            a.ok_or_else(|| format!("{verb}: a queue id is required"))?
                .parse::<QueueId>()
                .map_err(|e| e.to_string())
        };
        Ok(match (verb, arg) {
            ("list", None) => Self::List,
            ("status", None) => Self::Status,
            ("pause", None) => Self::Pause,
            ("resume", None) => Self::Resume,
            ("reload", None) => Self::Reload,
            ("show", a) => Self::Show(id(a)?),
            ("delete", a) => Self::Delete(id(a)?),
            ("retry", Some("--all")) => Self::Retry(Which::All),
            ("retry", a) => Self::Retry(Which::One(id(a)?)),
            _ => return Err(format!("unknown command: {line:?}")),
        })
    }
}

/// What operator commands act on: the running relay (`relay::RelayHandle` implements
/// this) or, with no instance running, the spool the CLI opened ([`Offline`]). Reads go
/// to the spool; every change goes through here, so a running instance's delivery engine
/// hears of it at once.
pub trait Hooks: Send + Sync {
    /// The spool (list, show, status read it); `None` in passthrough mode.
    fn spool(&self) -> Option<&Spool>;
    /// The spool directory (the operator's pause flag lives there).
    fn dir(&self) -> &Path;
    /// Pauses (`true`) or resumes delivery: the flag file, and in a running instance the
    /// delivery engine (a resume also ends an account pause).
    fn set_paused(&self, paused: bool) -> Result<(), String>;
    /// Makes one message (or all) due now; returns how many.
    fn retry(&self, which: Which) -> BoxFuture<'_, Result<usize, String>>;
    /// Removes a message without delivering it (no bounce report).
    fn delete(&self, id: QueueId) -> BoxFuture<'_, Result<(), String>>;
    /// The running instance's counters and limits; `None` offline.
    fn live(&self) -> Option<LiveStatus>;
    /// Re-reads and applies the configuration; the text for the operator. Offline there
    /// is nothing running to reload.
    fn reload(&self) -> Result<String, String> {
        Err("no instance is running: there is nothing to reload".into())
    }
}

/// The answer to a queue command in passthrough mode.
pub const NO_QUEUE: &str = "this instance runs in passthrough mode: there is no queue";

/// What `status` shows of a running instance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LiveStatus {
    pub delivery: StatsSnapshot,
    /// Dispatching halted: the spool cannot be written (outcomes kept in memory).
    pub halted: bool,
    pub concurrency_limit: usize,
    pub concurrency_ceiling: Option<usize>,
    /// Messages per second; `None` = unlimited.
    pub rate: Option<f64>,
    /// Why the account is paused, if it is.
    pub account_pause: Option<PauseScope>,
    /// Whether the provider can be reached (since when not, next check).
    pub reachability: Reachability,
}

impl LiveStatus {
    fn text(&self) -> String {
        let d = &self.delivery;
        let halted = if self.halted {
            "delivery: halted, the spool cannot be written (outcomes kept in memory)\n"
        } else {
            ""
        };
        let provider = match self.reachability {
            Reachability::Reachable => "provider: reachable\n".to_owned(),
            Reachability::Unreachable {
                since_ms,
                next_check,
                failures,
            } => format!(
                "provider: UNREACHABLE since {} ({failures} failed connection attempt(s) in a row); next check in {}s (`mailvalve queue retry --all` checks at once)\n",
                super::delivery_log::rfc3339(since_ms),
                next_check.as_secs()
            ),
        };
        let t = &d.today;
        format!(
            "instance: running\n{provider}{halted}today: {} delivered, {} deferred, {} failed\nsince start: {} delivered, {} deferred, {} failed, {} bounce report(s), {} transaction(s)\nconnections: limit {} (ceiling {})\npace: {}\naccount pause: {}\n",
            t.delivered,
            t.deferred,
            t.failed,
            d.delivered,
            d.deferred,
            d.failed,
            d.bounces,
            d.transactions,
            self.concurrency_limit,
            self.concurrency_ceiling
                .map_or("none".into(), |n| n.to_string()),
            self.rate.map_or("unlimited".into(), |r| format!(
                "{:.2} msg/s ({:.0} per minute, {:.0} per hour)",
                r,
                r * 60.0,
                r * 3600.0
            )),
            self.account_pause.map_or("off".into(), |scope| format!(
                "on: {} (`mailvalve queue resume` ends it)",
                pause_words(scope)
            ))
        )
    }
}

/// A spool opened by the CLI with no instance running.
pub struct Offline {
    spool: Spool,
    dir: PathBuf,
}

impl Offline {
    pub fn new(spool: Spool, dir: &Path) -> Self {
        Self {
            spool,
            dir: dir.to_path_buf(),
        }
    }
}

impl Hooks for Offline {
    fn spool(&self) -> Option<&Spool> {
        Some(&self.spool)
    }
    fn dir(&self) -> &Path {
        &self.dir
    }
    fn set_paused(&self, paused: bool) -> Result<(), String> {
        set_pause_flag(&self.dir, paused)
    }
    fn retry(&self, which: Which) -> BoxFuture<'_, Result<usize, String>> {
        Box::pin(retry(&self.spool, which))
    }
    fn delete(&self, id: QueueId) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(delete(&self.spool, id))
    }
    fn live(&self) -> Option<LiveStatus> {
        None
    }
}

/// Writes (`true`) or removes the operator's pause flag in `dir`, durably.
pub fn set_pause_flag(dir: &Path, paused: bool) -> Result<(), String> {
    if paused {
        return write_flag(&pause_flag(dir))
            .map_err(|e| format!("cannot write the pause flag: {e}"));
    }
    match std::fs::remove_file(pause_flag(dir)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove the pause flag: {e}")),
    }
}

/// `retry`: one message (which must exist) or all made due now; how many.
pub async fn retry(spool: &Spool, which: Which) -> Result<usize, String> {
    if let Which::One(id) = which {
        if spool.get(id).map_err(|e| e.to_string())?.is_none() {
            return Err(format!("no message {id} in the spool"));
        }
    }
    spool.retry_now(which).await.map_err(|e| e.to_string())
}

/// `delete`: removes a message that exists.
pub async fn delete(spool: &Spool, id: QueueId) -> Result<(), String> {
    if spool.get(id).map_err(|e| e.to_string())?.is_none() {
        return Err(format!("no message {id} in the spool"));
    }
    spool.delete(id).await.map_err(|e| e.to_string())
}

/// Runs `cmd` through `hooks`. `Ok` is the text for the operator, `Err` the error
/// message.
pub async fn execute(hooks: &dyn Hooks, cmd: Command) -> Result<String, String> {
    if cmd == Command::Reload {
        return off_runtime(|| hooks.reload());
    }
    if cmd == Command::Status && hooks.spool().is_none() {
        // Passthrough: no queue, but the state file says what was learned.
        return Ok(format!(
            "{NO_QUEUE}\n{}",
            learned_text(hooks.dir(), now_ms())
        ));
    }
    let (spool, dir) = (hooks.spool().ok_or(NO_QUEUE)?, hooks.dir());
    let now = now_ms();
    match cmd {
        Command::List => {
            let msgs = off_runtime(|| spool.list()).map_err(|e| e.to_string())?;
            let mut out = String::new();
            let _ = writeln!(
                out,
                "{:<13}  {:>6}  {:>7}  {:<24}  {:<32}  {:<32}  last reply",
                "id", "age", "pending", "next", "recipient", "subject"
            );
            let held = why_held(hooks, dir);
            let rate = hooks.live().and_then(|l| l.rate);
            let mut pending_total = 0usize;
            // Due messages go out one after another at the current pace: the k-th due
            // one is about k / rate seconds away, not "now".
            let mut due_before = 0usize;
            let mut rows: Vec<&Message> = msgs.iter().collect();
            rows.sort_by_key(|m| (first_due(m).unwrap_or(u64::MAX), m.id));
            for m in rows {
                let pending: Vec<&str> = m
                    .rcpts
                    .iter()
                    .filter(|r| !r.state.is_final())
                    .map(|r| r.address.as_str())
                    .collect();
                pending_total += pending.len();
                let next = match (&held, first_due(m)) {
                    (_, None) => "-".to_owned(),
                    (Some(why), _) => why.clone(),
                    (None, Some(t)) if t > now => format!("in {}", human(t - now)),
                    (None, Some(_)) => {
                        let wait = rate.filter(|r| *r > 0.0).map(|r| due_before as f64 / r);
                        due_before += 1;
                        match wait {
                            Some(s) if s >= 1.0 => {
                                format!("in ~{} (paced)", human((s * 1000.0) as u64))
                            }
                            _ => "now".to_owned(),
                        }
                    }
                };
                let recipient = match pending.as_slice() {
                    [] => "-".to_owned(),
                    [one] => (*one).to_owned(),
                    [one, rest @ ..] => format!("{one} (+{})", rest.len()),
                };
                let _ = writeln!(
                    out,
                    "{:<13}  {:>6}  {:>7}  {:<24}  {:<32}  {:<32}  {}",
                    m.id,
                    age(now, m.received),
                    format!("{}/{}", pending.len(), m.rcpts.len()),
                    next,
                    clip(&recipient, 32),
                    clip(m.subject.as_deref().unwrap_or("-"), 32),
                    last_reply(m).map(ToString::to_string).unwrap_or_default()
                );
            }
            let _ = writeln!(
                out,
                "{} message(s), {} recipient(s) pending{}",
                msgs.len(),
                pending_total,
                if pause_flag(dir).exists() {
                    "; delivery paused by operator"
                } else {
                    ""
                }
            );
            Ok(out)
        }
        Command::Show(id) => {
            let m = spool
                .get(id)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no message {id} in the spool"))?;
            Ok(show(&m, now))
        }
        Command::Retry(which) => {
            let n = hooks.retry(which).await?;
            let total = off_runtime(|| spool.list())
                .map(|m| {
                    m.iter()
                        .filter(|m| m.rcpts.iter().any(|r| !r.state.is_final()))
                        .count()
                })
                .unwrap_or(n);
            let live = if hooks.live().is_some() {
                "; the provider is tried at once, any wait after connection failures ends"
            } else {
                "; delivered when mailvalve runs"
            };
            Ok(format!(
                "{n} message(s) moved forward, {total} message(s) due now{live}\n"
            ))
        }
        Command::Delete(id) => {
            hooks.delete(id).await?;
            Ok(format!("deleted {id} (no bounce report is sent)\n"))
        }
        Command::Pause => {
            hooks.set_paused(true)?;
            Ok("delivery paused; mail is still accepted and queued\n".into())
        }
        Command::Resume => {
            hooks.set_paused(false)?;
            Ok("delivery resumed\n".into())
        }
        Command::Status => {
            let msgs = off_runtime(|| spool.list()).map_err(|e| e.to_string())?;
            let (mut due, mut waiting) = (0usize, 0usize);
            for r in msgs.iter().flat_map(|m| &m.rcpts) {
                if let RcptState::Pending { next_attempt, .. } = r.state {
                    if next_attempt > now {
                        waiting += 1;
                    } else {
                        due += 1;
                    }
                }
            }
            let mut out = format!(
                "queue: {} message(s), {} recipient(s) pending: {due} due now, {waiting} deferred (waiting for a retry)\noperator pause: {}\n",
                msgs.len(),
                due + waiting,
                if pause_flag(dir).exists() {
                    "on (`mailvalve queue resume` ends it)"
                } else {
                    "off"
                }
            );
            match hooks.live() {
                Some(live) => out.push_str(&live.text()),
                None => out.push_str("instance: not running (spool opened directly)\n"),
            }
            out.push_str(&learned_text(dir, now));
            Ok(out)
        }
        Command::Reload => hooks.reload(),
    }
}

/// `mailvalve queue show`: one message's envelope and every recipient's state, never the
/// body. Pure (`now` in unix ms), so any stored record can be shown.
pub fn show(m: &Message, now: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "id:        {}", m.id);
    let _ = writeln!(out, "from:      {}", sender(&m.envelope.from));
    let _ = writeln!(out, "received:  {} ago", age(now, m.received));
    let _ = writeln!(out, "size:      {} bytes", m.body_len);
    for r in &m.rcpts {
        let state = match &r.state {
            RcptState::Pending {
                attempts,
                next_attempt,
                last_reply,
            } => format!(
                "pending, {attempts} attempt(s), next {}{}",
                if *next_attempt <= now {
                    "now".to_string()
                } else {
                    format!("in {}", human(next_attempt - now))
                },
                last_reply
                    .as_ref()
                    .map(|r| format!(", last reply: {}", r))
                    .unwrap_or_default()
            ),
            RcptState::Delivered { reply } => format!("delivered: {}", reply),
            RcptState::Failed { reply } => format!("failed: {}", reply),
        };
        let _ = writeln!(out, "rcpt:      {}  {}", r.address, state);
    }
    out
}

/// Runs a long synchronous read (decoding every record of a big spool) without stalling
/// the SMTP sessions that share the runtime's worker threads.
fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn write_flag(path: &Path) -> std::io::Result<()> {
    let f = std::fs::File::create(path)?;
    f.sync_all()?;
    if let Some(dir) = path.parent() {
        crate::platform::fsync_dir(dir)?;
    }
    Ok(())
}

fn sender(from: &str) -> &str {
    if from.is_empty() {
        "<>"
    } else {
        from
    }
}

fn last_reply(m: &Message) -> Option<&StoredReply> {
    m.rcpts.iter().find_map(|r| match &r.state {
        RcptState::Pending { last_reply, .. } => last_reply.as_ref(),
        _ => None,
    })
}

/// When the first pending recipient of `m` is due (Unix ms).
fn first_due(m: &Message) -> Option<u64> {
    m.rcpts
        .iter()
        .filter_map(|r| match r.state {
            RcptState::Pending { next_attempt, .. } => Some(next_attempt),
            _ => None,
        })
        .min()
}

/// Why nothing is sent now, for `list`'s "next" column: the operator's pause, the
/// account's pause, or a provider that cannot be reached. `None`: delivery runs.
fn why_held(hooks: &dyn Hooks, dir: &Path) -> Option<String> {
    if pause_flag(dir).exists() {
        return Some("paused (queue resume)".into());
    }
    let live = hooks.live()?;
    if let Some(scope) = live.account_pause {
        return Some(format!("paused: {}", pause_words(scope)));
    }
    match live.reachability {
        Reachability::Unreachable { .. } => Some("waiting for the provider".into()),
        Reachability::Reachable => None,
    }
}

fn pause_words(scope: PauseScope) -> &'static str {
    match scope {
        PauseScope::Auth => "login refused",
        PauseScope::Quota => "quota used up",
        PauseScope::Policy => "policy refusals",
    }
}

/// At most `n` characters, with "…" when cut.
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// What the state file says was learned, and when (for `status`; running or not).
pub fn learned_text(dir: &Path, now: u64) -> String {
    let saved = match super::quota::Ledger::peek(dir) {
        Ok(Some(l)) => l.learned,
        Ok(None) => None,
        Err(e) => return format!("learned: state file {e}\n"),
    };
    let Some(saved) = saved else {
        return "learned: nothing saved yet\n".into();
    };
    let since = now.saturating_sub(saved.saved_unix_ms);
    let ago = |age: Option<u64>| {
        age.map_or_else(String::new, |a| {
            format!(", learned {} ago", human(a.saturating_add(since)))
        })
    };
    let per_min = |r: f64| format!("{:.1}/min", r * 60.0);
    let mut out = format!("learned (saved {} ago):\n", human(since));
    for (name, r) in [
        ("rate", &saved.state.rate),
        ("recipient rate", &saved.state.recipient_rate),
    ] {
        let Some(r) = r else { continue };
        let _ = writeln!(
            out,
            "  {name}: {}; ceiling {}{}{}",
            r.rate.map_or("unlimited".into(), per_min),
            r.ceiling.map_or("none".into(), per_min),
            ago(r.ceiling_age_ms),
            r.window_ms
                .map_or_else(String::new, |w| format!("; provider's window {}", human(w)))
        );
    }
    if let Some(c) = &saved.state.connections {
        let _ = writeln!(
            out,
            "  connections: {}; ceiling {}{}{}",
            c.limit,
            c.ceiling.map_or("none".into(), |c| c.to_string()),
            ago(c.ceiling_age_ms),
            c.open_interval_ms.map_or_else(String::new, |i| format!(
                "; a new connection at most every {}",
                human(i)
            ))
        );
    }
    if let Some(p) = saved.state.pause {
        let scope = match p.scope {
            crate::policy::memory::PausedFor::Auth => "sign-in refused",
            crate::policy::memory::PausedFor::Quota => "quota spent",
            crate::policy::memory::PausedFor::Policy => "policy block",
        };
        let until = match p.remaining_ms {
            None => "until `mailvalve queue resume`".to_string(),
            Some(left) if left > since => format!("ends in {}", human(left - since)),
            Some(_) => "ended".to_string(),
        };
        let _ = writeln!(out, "  pause: {scope}, {until}");
    }
    out
}

fn age(now: u64, then: u64) -> String {
    human(now.saturating_sub(then))
}

/// Milliseconds as "45s", "12m", "3h 5m", "2d 4h".
fn human(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::Envelope;

    /// A passthrough instance: no spool.
    struct NoQueue(PathBuf);

    impl Hooks for NoQueue {
        fn spool(&self) -> Option<&Spool> {
            None
        }
        fn dir(&self) -> &Path {
            &self.0
        }
        fn set_paused(&self, _: bool) -> Result<(), String> {
            Err(NO_QUEUE.into())
        }
        fn retry(&self, _: Which) -> BoxFuture<'_, Result<usize, String>> {
            Box::pin(async { Err(NO_QUEUE.into()) })
        }
        fn delete(&self, _: QueueId) -> BoxFuture<'_, Result<(), String>> {
            Box::pin(async { Err(NO_QUEUE.into()) })
        }
        fn live(&self) -> Option<LiveStatus> {
            None
        }
    }

    /// `status` says what the state file holds, with ages, in passthrough too; other
    /// queue commands are refused there.
    #[tokio::test]
    async fn status_shows_what_was_learned_and_when() {
        use crate::policy::memory::{
            ConnectionMemory, LearnedState, PauseMemory, PausedFor, RateMemory,
        };
        use crate::queue::quota::{Ledger, SavedLearning};
        let dir = tempfile::tempdir().unwrap();
        let hooks = NoQueue(dir.path().to_path_buf());
        let out = execute(&hooks, Command::Status).await.unwrap();
        assert!(out.contains("learned: nothing saved yet"), "{out}");
        assert_eq!(execute(&hooks, Command::Pause).await.unwrap_err(), NO_QUEUE);
        let now = now_ms();
        let mut ledger = Ledger::default();
        ledger.learned = Some(SavedLearning {
            saved_unix_ms: now - 120_000,
            credentials: None,
            state: LearnedState {
                rate: Some(RateMemory {
                    rate: Some(0.5),
                    ceiling: Some(1.0),
                    ceiling_age_ms: Some(60_000),
                    window_ms: Some(60_000),
                }),
                connections: Some(ConnectionMemory {
                    limit: 2,
                    ceiling: Some(3),
                    ceiling_age_ms: None,
                    open_interval_ms: None,
                    ..ConnectionMemory::default()
                }),
                pause: Some(PauseMemory {
                    scope: PausedFor::Quota,
                    // 62.5 min at the save, 2 min ago: 60.5 min left, shown as 1h 0m
                    // however many milliseconds the test takes.
                    remaining_ms: Some(3_750_000),
                }),
                ..LearnedState::default()
            },
        });
        ledger.save(dir.path()).unwrap();
        let out = execute(&hooks, Command::Status).await.unwrap();
        assert!(out.contains("learned (saved 2m ago):"), "{out}");
        assert!(
            out.contains("rate: 30.0/min; ceiling 60.0/min, learned 3m ago; provider's window 1m"),
            "{out}"
        );
        assert!(out.contains("connections: 2; ceiling 3"), "{out}");
        assert!(out.contains("pause: quota spent, ends in 1h 0m"), "{out}");
        std::fs::write(Ledger::path(dir.path()), b"nope").unwrap();
        let out = execute(&hooks, Command::Status).await.unwrap();
        assert!(out.contains("quota.json is unreadable"), "{out}");
        assert!(Ledger::path(dir.path()).exists(), "status only reads");
    }

    #[test]
    fn command_lines_round_trip_and_bad_ones_are_refused() {
        let id: QueueId = QueueId::from_u64(123_456_789);
        for c in [
            Command::List,
            Command::Show(id),
            Command::Retry(Which::One(id)),
            Command::Retry(Which::All),
            Command::Delete(id),
            Command::Pause,
            Command::Resume,
            Command::Status,
            Command::Reload,
        ] {
            assert_eq!(Command::parse(&c.to_line()), Ok(c));
        }
        assert!(Command::parse("show").unwrap_err().contains("queue id"));
        assert!(Command::parse("show nope").is_err());
        assert!(Command::parse("frobnicate").is_err());
        assert!(Command::parse("list extra").is_err());
    }

    #[tokio::test]
    async fn offline_commands_against_a_spool() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        let env = Envelope {
            from: "news@example.org".into(),
            ..Envelope::default()
        };
        let id = spool
            .put(
                &env,
                &["a@example.org".into()],
                b"Subject: x\r\n\r\nbody\r\n",
            )
            .await
            .unwrap();
        let offline = Offline::new(spool, dir.path());
        let spool = offline.spool().unwrap();
        let list = execute(&offline, Command::List).await.unwrap();
        assert!(list.contains(&id.to_string()), "{list}");
        assert!(
            list.contains("1 message(s), 1 recipient(s) pending"),
            "{list}"
        );
        let show = execute(&offline, Command::Show(id)).await.unwrap();
        assert!(
            show.contains("a@example.org  pending, 0 attempt(s), next now"),
            "{show}"
        );
        assert!(!show.contains("body"), "never prints the message");

        execute(&offline, Command::Pause).await.unwrap();
        assert!(pause_flag(dir.path()).exists());
        let st = execute(&offline, Command::Status).await.unwrap();
        assert!(st.contains("operator pause: on"), "{st}");
        execute(&offline, Command::Resume).await.unwrap();
        assert!(!pause_flag(dir.path()).exists());

        let n = execute(&offline, Command::Retry(Which::All)).await.unwrap();
        assert!(n.contains("due now"), "{n}");
        let other = QueueId::from_u64(42);
        let e = execute(&offline, Command::Delete(other)).await.unwrap_err();
        assert!(e.contains("no message"), "{e}");
        execute(&offline, Command::Delete(id)).await.unwrap();
        assert!(spool.is_empty());
    }
}
