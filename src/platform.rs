//! Platform seams: everything that is Unix-only today, in one place, each with its
//! stated path elsewhere (SuperMailer's users run Windows; no Windows build is made on
//! these machines, so the non-Unix paths are kept small and obvious).
//!
//! - **File modes**: files with addresses (spool, delivery log, suppression list) are
//!   created 0600 and directories 0700 ([`owner_only`], [`owner_only_async`],
//!   [`private_dir`]); a file found wider is tightened ([`tighten`]) or reported
//!   ([`is_shared`]). Elsewhere: the platform's default ACLs (on Windows a user's
//!   profile directory is already private); keep the spool in such a directory.
//! - **Directory fsync** ([`fsync_dir`]): Unix makes a rename or a new directory entry
//!   durable by fsyncing the directory. Elsewhere a no-op: Windows cannot open a
//!   directory as a file with `std`, and NTFS journals its directory entries itself.
//! - **The control socket** ([`bind_private_socket`]): a Unix socket, never wider than
//!   0600. Elsewhere there is none: stop the instance to use `mailvalve queue` and
//!   `mailvalve suppress` (they then open the files directly), or use the HTTP API
//!   (issue "See it and steer it").
//! - **Signals** ([`shutdown_requested`], [`hangups`]): SIGTERM or Ctrl-C stop the
//!   relay, SIGHUP resumes a paused account. Elsewhere: Ctrl-C only; resume through
//!   `mailvalve queue resume` or the HTTP API.
//!
//! It must never widen a permission, and never import anything of the crate: every floor
//! may use it.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::path::Path;

/// New files from `opts` are readable and writable by their owner only (0600).
pub fn owner_only(opts: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(opts, 0o600);
    opts
}

/// [`owner_only`] for tokio's `OpenOptions`.
pub fn owner_only_async(opts: &mut tokio::fs::OpenOptions) -> &mut tokio::fs::OpenOptions {
    #[cfg(unix)]
    opts.mode(0o600);
    opts
}

/// New directories from `b` are accessible by their owner only (0700).
pub fn private_dir(b: &mut DirBuilder) -> &mut DirBuilder {
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(b, 0o700);
    b
}

/// Whether others than the owner may access `meta`'s file (group or other bits).
pub fn is_shared(meta: &std::fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o077 != 0
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        false
    }
}

/// Makes an existing file 0600 if others may access it (a file an older version
/// created with the umask's mode).
pub fn tighten(file: &File) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if is_shared(&file.metadata()?) {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}

/// Makes the entries of `dir` (a file created, renamed or removed in it) durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Binds a Unix socket at `path` such that `path` never exists with permissions wider
/// than 0600: the socket is bound inside a fresh private (0700) directory next to `path`,
/// chmod 0600 there, and only then renamed to `path` (one atomic rename on the same file
/// system, which also replaces a stale socket left by a killed instance). Setting the
/// umask around `bind` would do the same, but the umask is per process and other threads
/// create files meanwhile.
///
/// Refuses (`AddrInUse`) when an instance already answers on `path`.
#[cfg(unix)]
pub fn bind_private_socket(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    use std::io::{Error, ErrorKind};
    use std::os::unix::fs::PermissionsExt;
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(Error::new(
            ErrorKind::AddrInUse,
            format!("another instance is listening on {}", path.display()),
        ));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "socket path has no file name"))?;
    // Short, so the temporary path fits sun_path whenever the final one does.
    let private = parent.join(format!(".cs{}", std::process::id()));
    // Left over by a crash of a process that had our pid: ours to remove (it is
    // not followed if it is a symlink).
    if std::fs::symlink_metadata(&private).is_ok() {
        std::fs::remove_dir_all(&private)?;
    }
    private_dir(&mut DirBuilder::new()).create(&private)?;
    let bound = (|| -> io::Result<_> {
        let tmp = private.join(name);
        let listener = std::os::unix::net::UnixListener::bind(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, path)?;
        Ok(listener)
    })();
    let cleaned = std::fs::remove_dir_all(&private);
    let listener = bound?;
    cleaned?;
    Ok(listener)
}

/// Returns when the process is asked to stop: SIGTERM or Ctrl-C (SIGINT); elsewhere
/// Ctrl-C.
pub async fn shutdown_requested() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!("cannot watch SIGTERM ({e}); Ctrl-C still works");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Calls `on_hangup` for every SIGHUP, for the life of the process. Elsewhere there is
/// no SIGHUP and this returns at once.
pub async fn hangups(on_hangup: impl Fn()) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            on_hangup();
        }
    }
    #[cfg(not(unix))]
    let _ = on_hangup;
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_and_dirs_are_created_private_and_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("d");
        private_dir(&mut DirBuilder::new()).create(&d).unwrap();
        assert_eq!(mode(&d), 0o700);
        let f = d.join("f");
        let file = owner_only(OpenOptions::new().write(true).create(true))
            .open(&f)
            .unwrap();
        assert_eq!(mode(&f), 0o600);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(is_shared(&file.metadata().unwrap()));
        tighten(&file).unwrap();
        assert_eq!(mode(&f), 0o600);
        fsync_dir(&d).unwrap();
    }
}
