//! Operator commands on a running instance, one implementation for both ways of reaching
//! its state:
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
use std::time::Duration;

use futures::future::BoxFuture;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::deliver::StatsSnapshot;
use super::record::{Message, RcptState, StoredReply};
use super::spool::now_ms;
use super::{QueueId, Spool, Which};
use crate::policy::suppression::{normalize, Entry, SuppressionStore, Suppressions};
use crate::policy::verdict::PauseScope;

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
}

impl LiveStatus {
    fn text(&self) -> String {
        let d = &self.delivery;
        let halted = if self.halted {
            "delivery: halted, the spool cannot be written (outcomes kept in memory)\n"
        } else {
            ""
        };
        format!(
            "instance: running\n{halted}since start: {} delivered, {} deferred, {} failed, {} bounce report(s), {} transaction(s)\nconnections: limit {} (ceiling {})\nrate: {}\naccount pause: {}\n",
            d.delivered,
            d.deferred,
            d.failed,
            d.bounces,
            d.transactions,
            self.concurrency_limit,
            self.concurrency_ceiling
                .map_or("none".into(), |n| n.to_string()),
            self.rate
                .map_or("unlimited".into(), |r| format!("{:.2} msg/s", r)),
            self.account_pause
                .map_or("off".into(), |scope| format!("{scope:?}"))
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
    let (spool, dir) = (hooks.spool().ok_or(NO_QUEUE)?, hooks.dir());
    let now = now_ms();
    match cmd {
        Command::List => {
            let msgs = off_runtime(|| spool.list()).map_err(|e| e.to_string())?;
            let mut out = String::new();
            let _ = writeln!(
                out,
                "{:<13}  {:>8}  {:>9}  {:<10}  {:<32}  last reply",
                "id", "age", "pending", "next", "from"
            );
            let mut pending_total = 0usize;
            for m in &msgs {
                let pending = m.rcpts.iter().filter(|r| !r.state.is_final()).count();
                pending_total += pending;
                let _ = writeln!(
                    out,
                    "{:<13}  {:>8}  {:>9}  {:<10}  {:<32}  {}",
                    m.id,
                    age(now, m.received),
                    format!("{pending}/{}", m.rcpts.len()),
                    next_attempt(now, m),
                    sender(&m.envelope.from),
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
            Ok(format!("{n} message(s) due now\n"))
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
            let pending: usize = msgs
                .iter()
                .map(|m| m.rcpts.iter().filter(|r| !r.state.is_final()).count())
                .sum();
            let mut out = format!(
                "queue: {} message(s), {} recipient(s) pending\noperator pause: {}\n",
                msgs.len(),
                pending,
                if pause_flag(dir).exists() {
                    "on"
                } else {
                    "off"
                }
            );
            match hooks.live() {
                Some(live) => out.push_str(&live.text()),
                None => out.push_str("instance: not running (spool opened directly)\n"),
            }
            Ok(out)
        }
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

fn next_attempt(now: u64, m: &Message) -> String {
    let next = m
        .rcpts
        .iter()
        .filter_map(|r| match r.state {
            RcptState::Pending { next_attempt, .. } => Some(next_attempt),
            _ => None,
        })
        .min();
    match next {
        Some(t) if t > now => format!("in {}", human(t - now)),
        Some(_) => "now".into(),
        None => "-".into(),
    }
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

// ---------------------------------------------------------------------------------------
// The suppression list over the socket (`mailvalve suppress ...`).

/// Largest `suppress add` body a running instance reads (JSON lines of entries): about
/// half a million addresses. A bigger import is refused with this figure in the error.
pub const MAX_SUPPRESS_BODY: u64 = 64 << 20;

/// What the control socket needs of the running instance's suppression list. The list's
/// own durable operations do the work; this adds nothing but the wire.
pub trait SuppressionList: Send + Sync {
    /// Every entry (suppressed ones and soft failures still being counted).
    fn entries(&self) -> Vec<Entry>;
    /// Adds `entries` all or nothing (durable before it returns).
    fn add(&self, entries: Vec<Entry>) -> Result<(), String>;
    /// `Ok(true)` when the address was on the list.
    fn remove(&self, address: &str) -> Result<bool, String>;
}

impl<S: SuppressionStore> SuppressionList for Suppressions<S> {
    fn entries(&self) -> Vec<Entry> {
        self.list()
    }
    fn add(&self, entries: Vec<Entry>) -> Result<(), String> {
        self.add_all(entries).map_err(|e| e.to_string())
    }
    fn remove(&self, address: &str) -> Result<bool, String> {
        Suppressions::remove(self, address).map_err(|e| e.to_string())
    }
}

/// One operation on the suppression list. The CLI builds it; a running instance (over
/// the socket) or the CLI itself (list opened directly) runs it with
/// [`execute_suppress`], so the answer is the same either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SuppressRequest {
    /// Answer: one JSON [`Entry`] per line.
    List,
    /// Add (or replace) these entries, all or nothing. Answer: the number added.
    Add(Vec<Entry>),
    /// Answer: `true` when the address was listed.
    Remove(String),
}

impl SuppressRequest {
    /// The command line, and for `Add` the body sent after it (one JSON entry per line).
    pub fn to_wire(&self) -> (String, Vec<u8>) {
        match self {
            Self::List => ("suppress list".into(), Vec::new()),
            Self::Add(entries) => {
                let mut body = Vec::new();
                for e in entries {
                    // Serialising a plain struct of strings and numbers cannot fail.
                    if serde_json::to_writer(&mut body, e).is_ok() {
                        body.push(b'\n');
                    }
                }
                ("suppress add".into(), body)
            }
            // JSON-quoted: an address may hold spaces (a quoted local part).
            Self::Remove(a) => (
                format!("suppress remove {}", serde_json::Value::String(a.clone())),
                Vec::new(),
            ),
        }
    }

    /// Parses a command line after `suppress `, and the body for `add`.
    fn parse(rest: &str, body: &[u8]) -> Result<Self, String> {
        let (verb, arg) = match rest.split_once(' ') {
            Some((v, a)) => (v, a.trim()),
            None => (rest, ""),
        };
        match (verb, arg) {
            ("list", "") => Ok(Self::List),
            ("remove", a) if !a.is_empty() => serde_json::from_str::<String>(a)
                .map(Self::Remove)
                .map_err(|e| format!("suppress remove: the address must be a JSON string: {e}")),
            ("add", "") => {
                let mut entries = Vec::new();
                for (i, line) in body.split(|&b| b == b'\n').enumerate() {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let mut e: Entry = serde_json::from_slice(line)
                        .map_err(|err| format!("suppress add: entry {}: {err}", i + 1))?;
                    e.address = normalize(&e.address);
                    if e.address.is_empty() || !e.address.contains('@') {
                        return Err(format!(
                            "suppress add: entry {}: {:?} is not an email address",
                            i + 1,
                            e.address
                        ));
                    }
                    entries.push(e);
                }
                Ok(Self::Add(entries))
            }
            _ => Err(format!("unknown command: \"suppress {rest}\"")),
        }
    }
}

/// Runs a suppression request against `list`; the text is what goes back over the
/// socket (see [`SuppressRequest`] for its shape per request). Blocking (a commit): call
/// it off the async workers.
pub fn execute_suppress(
    list: &dyn SuppressionList,
    req: SuppressRequest,
) -> Result<String, String> {
    match req {
        SuppressRequest::List => {
            let mut out = String::new();
            for e in list.entries() {
                if let Ok(line) = serde_json::to_string(&e) {
                    out.push_str(&line);
                    out.push('\n');
                }
            }
            Ok(out)
        }
        SuppressRequest::Add(entries) => {
            let n = entries.len();
            list.add(entries)?;
            Ok(format!("{n}\n"))
        }
        SuppressRequest::Remove(address) => Ok(format!("{}\n", list.remove(&address)?)),
    }
}

// ---------------------------------------------------------------------------------------
// The socket.

/// What a running instance serves on its control socket.
#[derive(Clone, Default)]
pub struct Instance {
    /// What queue commands act on (the running relay's handle). In passthrough mode, or
    /// `None`, queue commands are refused with a message saying so.
    pub queue: Option<std::sync::Arc<dyn Hooks>>,
    /// The instance's open suppression list: `mailvalve suppress ...` cannot open the
    /// database while the instance holds it, so it asks the instance.
    pub suppressions: Option<std::sync::Arc<dyn SuppressionList>>,
}

impl Instance {
    /// A queue-mode instance.
    pub fn queue(hooks: std::sync::Arc<dyn Hooks>) -> Self {
        Self {
            queue: Some(hooks),
            suppressions: None,
        }
    }

    /// Also serve `mailvalve suppress ...` against `list`.
    pub fn with_suppressions(mut self, list: std::sync::Arc<dyn SuppressionList>) -> Self {
        self.suppressions = Some(list);
        self
    }

    /// Runs one request (`line` without its line end; `body` what followed it).
    async fn answer(&self, line: &str, body: &[u8]) -> Result<String, String> {
        if let Some(rest) = line.strip_prefix("suppress ") {
            let req = SuppressRequest::parse(rest.trim(), body)?;
            let list = self
                .suppressions
                .clone()
                .ok_or("this instance serves no suppression list")?;
            return tokio::task::spawn_blocking(move || execute_suppress(list.as_ref(), req))
                .await
                .map_err(|e| format!("suppression task failed: {e}"))?;
        }
        let cmd = Command::parse(line)?;
        match &self.queue {
            Some(hooks) => execute(hooks.as_ref(), cmd).await,
            None => Err(NO_QUEUE.into()),
        }
    }
}

/// Longest command line read from a client.
const MAX_LINE: u64 = 4096;

/// Creates `dir` (0700) if missing: in passthrough mode nothing else creates it.
#[cfg(unix)]
fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    crate::platform::private_dir(std::fs::DirBuilder::new().recursive(true)).create(dir)
}

/// Binds `<dir>/control.sock` now (so a caller that goes on to accept mail is reachable
/// by the CLI from then on) and returns the task that serves operator commands on it
/// until `shutdown`: queue commands (when `instance` has a queue) and suppression-list
/// requests (when it has a list). The socket is bound with
/// [`crate::platform::bind_private_socket`], so it is
/// never reachable with wider permissions than 0600; `dir` is created (0700) if
/// missing. The task removes the socket when it ends.
#[cfg(unix)]
pub fn serve(
    instance: Instance,
    dir: PathBuf,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    ensure_dir(&dir)?;
    if let Ok(meta) = std::fs::metadata(&dir) {
        if crate::platform::is_shared(&meta) {
            tracing::warn!(
                dir = %dir.display(),
                "spool directory is accessible by other users; `chmod 700` it (messages and the control socket live there)"
            );
        }
    }
    let path = socket_path(&dir);
    let std_listener = crate::platform::bind_private_socket(&path)?;
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(std_listener)?;
    let instance = std::sync::Arc::new(instance);
    Ok(async move {
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!("control socket accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => break,
            };
            let instance = instance.clone();
            tokio::spawn(async move {
                let (rd, mut wr) = stream.into_split();
                let answer = match read_request(rd).await {
                    Ok((line, body)) => instance.answer(&line, &body).await,
                    Err(e) => Err(e),
                };
                let text = match answer {
                    Ok(t) => format!("ok\n{t}"),
                    Err(e) => format!("error: {e}\n"),
                };
                let _ = wr.write_all(text.as_bytes()).await;
                let _ = wr.shutdown().await;
            });
        }
        let _ = std::fs::remove_file(&path);
    })
}

/// One command line (a client that sends nothing for 10 s is dropped) and, for `suppress
/// add`, the body after it, up to EOF (bounded in size and time).
#[cfg(unix)]
async fn read_request(rd: tokio::net::unix::OwnedReadHalf) -> Result<(String, Vec<u8>), String> {
    let mut rd = BufReader::new(rd);
    let mut line = Vec::new();
    let got = tokio::time::timeout(
        Duration::from_secs(10),
        (&mut rd).take(MAX_LINE).read_until(b'\n', &mut line),
    )
    .await;
    match got {
        Ok(Ok(n)) if n > 0 => {}
        _ => return Err("no command received".into()),
    }
    if line.last() != Some(&b'\n') && line.len() as u64 >= MAX_LINE {
        return Err(format!("command line longer than {MAX_LINE} bytes"));
    }
    let line = String::from_utf8(line)
        .map_err(|_| "the command line is not UTF-8".to_string())?
        .trim()
        .to_string();
    let mut body = Vec::new();
    if line == "suppress add" {
        let got = tokio::time::timeout(
            Duration::from_secs(120),
            (&mut rd).take(MAX_SUPPRESS_BODY + 1).read_to_end(&mut body),
        )
        .await;
        match got {
            Ok(Ok(_)) if body.len() as u64 > MAX_SUPPRESS_BODY => {
                return Err(format!(
                    "suppress add: more than {} MiB of entries; split the file",
                    MAX_SUPPRESS_BODY >> 20
                ))
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("suppress add: reading the entries: {e}")),
            Err(_) => return Err("suppress add: the entries did not arrive within 120 s".into()),
        }
    }
    Ok((line, body))
}

/// Sends `cmd` to the instance listening in `dir`. `Ok(None)`: no instance is running
/// (no socket, or nobody listening on it). `Ok(Some(Ok(text)))` / `Ok(Some(Err(msg)))`:
/// the instance's answer.
#[cfg(unix)]
pub async fn request(dir: &Path, cmd: Command) -> std::io::Result<Option<Result<String, String>>> {
    request_raw(dir, &cmd.to_line(), &[]).await
}

/// [`request`] for the suppression list.
#[cfg(unix)]
pub async fn request_suppress(
    dir: &Path,
    req: &SuppressRequest,
) -> std::io::Result<Option<Result<String, String>>> {
    let (line, body) = req.to_wire();
    request_raw(dir, &line, &body).await
}

#[cfg(unix)]
async fn request_raw(
    dir: &Path,
    line: &str,
    body: &[u8],
) -> std::io::Result<Option<Result<String, String>>> {
    use std::io::ErrorKind;
    let path = socket_path(dir);
    let mut stream = match tokio::net::UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    if body.len() as u64 > MAX_SUPPRESS_BODY {
        // Said here rather than by the instance, which stops reading at its limit.
        return Ok(Some(Err(format!(
            "{} MiB of entries is more than a running instance takes at once ({} MiB): split the file",
            body.len() >> 20,
            MAX_SUPPRESS_BODY >> 20
        ))));
    }
    let mut out = Vec::with_capacity(line.len() + 1 + body.len());
    out.extend_from_slice(line.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(body);
    stream.write_all(&out).await?;
    // EOF ends a body; the instance answers after it.
    stream.shutdown().await?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(120), stream.read_to_string(&mut text))
        .await
        .map_err(|_| std::io::Error::new(ErrorKind::TimedOut, "no answer from the instance"))??;
    Ok(Some(match text.strip_prefix("ok\n") {
        Some(t) => Ok(t.to_string()),
        None => Err(text
            .trim_end()
            .strip_prefix("error: ")
            .unwrap_or(text.trim_end())
            .to_string()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::Envelope;

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

    #[cfg(unix)]
    #[tokio::test]
    async fn commands_over_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        assert_eq!(
            request(dir.path(), Command::List).await.unwrap(),
            None,
            "nobody running"
        );
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(
            serve(
                Instance::queue(std::sync::Arc::new(Offline::new(spool, dir.path()))),
                dir.path().to_path_buf(),
                stop.clone(),
            )
            .unwrap(),
        );
        // Bound before `serve` returned.
        assert!(socket_path(dir.path()).exists());
        let list = request(dir.path(), Command::List)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(list.contains("0 message(s)"), "{list}");
        let err = request(dir.path(), Command::Show(QueueId::from_u64(7)))
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert!(err.contains("no message"), "{err}");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert!(!socket_path(dir.path()).exists());
    }

    fn entry(address: &str) -> Entry {
        Entry {
            address: address.into(),
            code: 550,
            enhanced: Some("5.1.1".into()),
            text: "gone".into(),
            first_seen: 1,
            last_seen: 2,
            count: 1,
            source: crate::policy::suppression::Source::Manual,
            suppressed: true,
            soft_times: Vec::new(),
            soft_marks: Vec::new(),
        }
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn suppression_requests_over_the_socket_change_the_open_list() {
        use crate::policy::suppression::{MemoryStore, SoftPolicy};
        let dir = tempfile::tempdir().unwrap();
        let sock_dir = dir.path().join("not-yet-there");
        let list = std::sync::Arc::new(
            Suppressions::open(MemoryStore::default(), SoftPolicy::default()).unwrap(),
        );
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(
            serve(
                Instance::default().with_suppressions(list.clone()),
                sock_dir.clone(),
                stop.clone(),
            )
            .unwrap(),
        );
        let ask = |req: SuppressRequest| {
            let d = sock_dir.clone();
            async move { request_suppress(&d, &req).await.unwrap().unwrap() }
        };
        // A quoted local part with a space survives the wire.
        let added = ask(SuppressRequest::Add(vec![
            entry("A@Example.org"),
            entry("\"x y\"@example.org"),
        ]))
        .await
        .unwrap();
        assert_eq!(added.trim(), "2");
        assert!(
            list.is_suppressed("a@example.org"),
            "added to the open list"
        );
        assert!(list.is_suppressed("\"x y\"@example.org"));
        let listed = ask(SuppressRequest::List).await.unwrap();
        assert_eq!(
            listed,
            execute_suppress(list.as_ref(), SuppressRequest::List).unwrap()
        );
        assert_eq!(listed.lines().count(), 2, "{listed}");
        let removed = ask(SuppressRequest::Remove("\"x y\"@example.org".into()))
            .await
            .unwrap();
        assert_eq!(removed.trim(), "true");
        assert!(!list.is_suppressed("\"x y\"@example.org"));
        let again = ask(SuppressRequest::Remove("\"x y\"@example.org".into()))
            .await
            .unwrap();
        assert_eq!(again.trim(), "false");

        // Bad input gets an error naming the problem, and changes nothing.
        let mut bad = entry("no-at-sign");
        bad.address = "no-at-sign".into();
        let e = ask(SuppressRequest::Add(vec![entry("ok@example.org"), bad]))
            .await
            .unwrap_err();
        assert!(
            e.contains("entry 2") && e.contains("not an email address"),
            "{e}"
        );
        assert!(!list.is_suppressed("ok@example.org"), "all or nothing");
        // No queue in passthrough mode: said plainly.
        let e = request(&sock_dir, Command::List)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert!(e.contains("passthrough mode"), "{e}");

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn suppress_wire_round_trips_and_refuses_garbage() {
        for req in [
            SuppressRequest::List,
            SuppressRequest::Remove("a b@c".into()),
            SuppressRequest::Add(vec![entry("a@b.example"), entry("c@d.example")]),
        ] {
            let (line, body) = req.to_wire();
            let rest = line.strip_prefix("suppress ").unwrap();
            assert_eq!(SuppressRequest::parse(rest, &body), Ok(req));
        }
        assert!(
            SuppressRequest::parse("remove a@b", b"").is_err(),
            "not JSON"
        );
        assert!(SuppressRequest::parse("remove", b"").is_err());
        assert!(SuppressRequest::parse("list extra", b"").is_err());
        assert!(SuppressRequest::parse("add", b"{not json}\n").is_err());
        assert!(SuppressRequest::parse("frobnicate", b"").is_err());
    }

    /// The socket must never be reachable with wider permissions than 0600, not even for
    /// an instant: watched with inotify, the name `control.sock` must first appear by a
    /// rename (of a socket already 0600) and never be created in place or chmod-ed there
    /// (bind-then-chmod shows as IN_CREATE then IN_ATTRIB). A stale socket file is
    /// replaced the same way.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn control_socket_never_exists_wider_than_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // A stale socket left by a killed instance (bound, then its listener dropped).
        drop(std::os::unix::net::UnixListener::bind(socket_path(dir.path())).unwrap());
        let watch = inotify::Watch::new(dir.path());
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(
            serve(Instance::default(), dir.path().to_path_buf(), stop.clone()).unwrap(),
        );
        let events = watch.events();
        let ours: Vec<u32> = events
            .iter()
            .filter(|(_, name)| name == "control.sock")
            .map(|(mask, _)| *mask)
            .collect();
        assert!(!ours.is_empty(), "no event for control.sock: {events:?}");
        assert!(
            ours.iter().all(|m| m & inotify::MOVED_TO != 0),
            "control.sock was created or changed in place: {events:?}"
        );
        let mode = std::fs::metadata(socket_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Nothing left behind but the socket.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["control.sock"]);
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    /// Just enough inotify for the test above (std links libc; the `libc` crate is not a
    /// dependency of this crate).
    #[cfg(target_os = "linux")]
    mod inotify {
        use std::ffi::CString;
        use std::io::Read;
        use std::os::fd::FromRawFd;
        use std::os::unix::ffi::OsStrExt;

        pub const MOVED_TO: u32 = 0x80;
        const ATTRIB: u32 = 0x4;
        const CREATE: u32 = 0x100;
        const NONBLOCK: i32 = 0o4000;

        extern "C" {
            fn inotify_init1(flags: i32) -> i32;
            fn inotify_add_watch(fd: i32, path: *const std::ffi::c_char, mask: u32) -> i32;
        }

        pub struct Watch(std::fs::File);

        impl Watch {
            pub fn new(dir: &std::path::Path) -> Self {
                let path = CString::new(dir.as_os_str().as_bytes()).unwrap();
                // SAFETY: plain syscalls; the fd is checked and then owned by the File.
                unsafe {
                    let fd = inotify_init1(NONBLOCK);
                    assert!(fd >= 0, "inotify_init1 failed");
                    let wd = inotify_add_watch(fd, path.as_ptr(), CREATE | ATTRIB | MOVED_TO);
                    assert!(wd >= 0, "inotify_add_watch failed");
                    Watch(std::fs::File::from_raw_fd(fd))
                }
            }

            /// The events queued so far: (mask, name).
            pub fn events(mut self) -> Vec<(u32, String)> {
                let mut buf = vec![0u8; 64 * 1024];
                let n = match self.0.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                    Err(e) => panic!("inotify read: {e}"),
                };
                let mut out = Vec::new();
                let mut pos = 0;
                // struct inotify_event { int wd; u32 mask; u32 cookie; u32 len; char name[]; }
                while pos + 16 <= n {
                    let word = |i: usize| {
                        u32::from_ne_bytes(buf[pos + i..pos + i + 4].try_into().unwrap())
                    };
                    let (mask, len) = (word(4), word(12) as usize);
                    let name = &buf[pos + 16..pos + 16 + len];
                    let name = name.split(|&b| b == 0).next().unwrap_or_default();
                    out.push((mask, String::from_utf8_lossy(name).into_owned()));
                    pos += 16 + len;
                }
                out
            }
        }
    }
}
