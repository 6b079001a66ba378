//! The control socket: a running instance serves queue commands (through its
//! [`Hooks`](super::Hooks)) and suppression requests on `<dir>/control.sock`, bound never
//! wider than 0600 (`platform::bind_private_socket`); the CLI sends one request and
//! reads the answer. Unix only (see `platform` for the other path).
//!
//! It must never read more than one bounded command line (and a bounded body for
//! `suppress add`), and never leave its socket behind when it stops.

use std::path::Path;
#[cfg(unix)]
use std::path::PathBuf;
#[cfg(unix)]
use std::time::Duration;

#[cfg(unix)]
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

#[cfg(unix)]
use super::suppress::MAX_SUPPRESS_BODY;
use super::suppress::{execute_suppress, SuppressRequest, SuppressionList};
use super::{execute, socket_path, Command, Hooks, NO_QUEUE};

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
    pub async fn answer(&self, line: &str, body: &[u8]) -> Result<String, String> {
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
    use crate::policy::suppression::Suppressions;
    use crate::queue::control::suppress::tests::entry;
    use crate::queue::control::Offline;
    use crate::queue::QueueId;
    use crate::queue::Spool;

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
