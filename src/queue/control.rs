//! Operator commands on the queue (`mailvalve queue list | show | retry | delete | pause
//! | resume | status`), one implementation for both ways of reaching a spool:
//!
//! - a running instance listens on a Unix socket in its spool directory
//!   (`<dir>/control.sock`, mode 0600 like the spool itself); the CLI sends one command
//!   line and reads the answer until EOF — the first line is `ok` or `error: ...`;
//! - with no instance running, the CLI opens the spool itself (redb locks it, so the two
//!   can never write at once) and runs the same [`execute`].
//!
//! The operator's pause is a file, `<dir>/paused`, so it survives restarts and works
//! offline; the delivery engine sends nothing while it exists.
//!
//! This module must never change a recipient's state except through the spool's own
//! durable operations, never block the caller longer than one spool commit, and never
//! print message bodies (they may be personal data): only envelopes and replies.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::record::{Message, RcptState, StoredReply};
use super::spool::now_ms;
use super::{QueueId, Spool, Which};

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

/// What the running instance adds to the spool operations: live pause/resume and a
/// status line. Offline, [`Offline`] only writes the flag file.
pub trait Hooks: Send + Sync {
    /// The operator's pause flag changed (`true` = paused); the file is already written.
    fn set_paused(&self, paused: bool);
    /// Extra status lines (delivery counters, controller state).
    fn status(&self) -> String;
}

/// Hooks for a spool opened by the CLI with no instance running.
pub struct Offline;

impl Hooks for Offline {
    fn set_paused(&self, _paused: bool) {}
    fn status(&self) -> String {
        "instance: not running (spool opened directly)\n".into()
    }
}

/// Runs `cmd` against `spool` (in `dir`). `Ok` is the text for the operator, `Err` the
/// error message.
pub async fn execute(
    spool: &Spool,
    dir: &Path,
    cmd: Command,
    hooks: &dyn Hooks,
) -> Result<String, String> {
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
            Ok(out)
        }
        Command::Retry(which) => {
            if let Which::One(id) = which {
                if spool.get(id).map_err(|e| e.to_string())?.is_none() {
                    return Err(format!("no message {id} in the spool"));
                }
            }
            let n = spool.retry_now(which).await.map_err(|e| e.to_string())?;
            Ok(format!("{n} message(s) due now\n"))
        }
        Command::Delete(id) => {
            if spool.get(id).map_err(|e| e.to_string())?.is_none() {
                return Err(format!("no message {id} in the spool"));
            }
            spool.delete(id).await.map_err(|e| e.to_string())?;
            Ok(format!("deleted {id} (no bounce report is sent)\n"))
        }
        Command::Pause => {
            write_flag(&pause_flag(dir))
                .map_err(|e| format!("cannot write the pause flag: {e}"))?;
            hooks.set_paused(true);
            Ok("delivery paused; mail is still accepted and queued\n".into())
        }
        Command::Resume => {
            match std::fs::remove_file(pause_flag(dir)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot remove the pause flag: {e}")),
            }
            hooks.set_paused(false);
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
            out.push_str(&hooks.status());
            Ok(out)
        }
    }
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
        super::spool::fsync_dir(dir)?;
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

/// Serves operator commands on `<dir>/control.sock` until `shutdown`. A stale socket
/// file from a killed instance is replaced (the spool's lock proves no other instance
/// owns this directory).
#[cfg(unix)]
pub async fn serve(
    spool: std::sync::Arc<Spool>,
    dir: PathBuf,
    hooks: std::sync::Arc<dyn Hooks>,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // The socket is chmod 0600 right after bind; until then only the directory guards
    // it (the spool directory is created 0700).
    if let Ok(meta) = std::fs::metadata(&dir) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                dir = %dir.display(),
                "spool directory is accessible by other users; `chmod 700` it (messages and the control socket live there)"
            );
        }
    }
    let path = socket_path(&dir);
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
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
        let spool = spool.clone();
        let dir = dir.clone();
        let hooks = hooks.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = stream.into_split();
            let mut line = String::new();
            // One short command line; a client that sends nothing for 10 s is dropped.
            let mut rd = BufReader::new(rd.take(1024));
            let got = tokio::time::timeout(Duration::from_secs(10), rd.read_line(&mut line)).await;
            let answer = match got {
                Ok(Ok(_)) => match Command::parse(line.trim()) {
                    Ok(cmd) => execute(&spool, &dir, cmd, hooks.as_ref()).await,
                    Err(e) => Err(e),
                },
                _ => Err("no command received".into()),
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
    Ok(())
}

/// Sends `cmd` to the instance listening in `dir`. `Ok(None)`: no instance is running
/// (no socket, or nobody listening on it). `Ok(Some(Ok(text)))` / `Ok(Some(Err(msg)))`:
/// the instance's answer.
#[cfg(unix)]
pub async fn request(dir: &Path, cmd: Command) -> std::io::Result<Option<Result<String, String>>> {
    use std::io::ErrorKind;
    let path = socket_path(dir);
    let mut stream = match tokio::net::UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    stream
        .write_all(format!("{}\n", cmd.to_line()).as_bytes())
        .await?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_string(&mut text))
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
        let list = execute(&spool, dir.path(), Command::List, &Offline)
            .await
            .unwrap();
        assert!(list.contains(&id.to_string()), "{list}");
        assert!(
            list.contains("1 message(s), 1 recipient(s) pending"),
            "{list}"
        );
        let show = execute(&spool, dir.path(), Command::Show(id), &Offline)
            .await
            .unwrap();
        assert!(
            show.contains("a@example.org  pending, 0 attempt(s), next now"),
            "{show}"
        );
        assert!(!show.contains("body"), "never prints the message");

        execute(&spool, dir.path(), Command::Pause, &Offline)
            .await
            .unwrap();
        assert!(pause_flag(dir.path()).exists());
        let st = execute(&spool, dir.path(), Command::Status, &Offline)
            .await
            .unwrap();
        assert!(st.contains("operator pause: on"), "{st}");
        execute(&spool, dir.path(), Command::Resume, &Offline)
            .await
            .unwrap();
        assert!(!pause_flag(dir.path()).exists());

        let n = execute(&spool, dir.path(), Command::Retry(Which::All), &Offline)
            .await
            .unwrap();
        assert!(n.contains("due now"), "{n}");
        let other = QueueId::from_u64(42);
        let e = execute(&spool, dir.path(), Command::Delete(other), &Offline)
            .await
            .unwrap_err();
        assert!(e.contains("no message"), "{e}");
        execute(&spool, dir.path(), Command::Delete(id), &Offline)
            .await
            .unwrap();
        assert!(spool.is_empty());
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn commands_over_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        let spool = std::sync::Arc::new(spool);
        assert_eq!(
            request(dir.path(), Command::List).await.unwrap(),
            None,
            "nobody running"
        );
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(serve(
            spool.clone(),
            dir.path().to_path_buf(),
            std::sync::Arc::new(Offline),
            stop.clone(),
        ));
        // The listener binds asynchronously: bounded wait for the socket.
        for _ in 0..200 {
            if socket_path(dir.path()).exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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
            .unwrap()
            .unwrap();
        assert!(!socket_path(dir.path()).exists());
    }
}
