//! The OAuth2 token file: the refresh token `mailvalve oauth login` obtained, and when
//! it was obtained and last used. JSON, written whole to a temporary file and renamed
//! over the old one, so a crash never leaves half a token.
//!
//! On Unix the file is created 0600 (and an existing wider one is refused for reading
//! until tightened, see [`read`]). Elsewhere (the stated portable path) it gets the
//! directory's default ACLs: keep it in the user's profile directory, which Windows
//! already keeps private. It must never hold an access token (those stay in memory)
//! and never print the refresh token (`Debug` shows `***`; errors name the path only).

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// The file's content. `Debug` shows the refresh token as `***`.
#[derive(Clone, Deserialize, Serialize)]
pub struct TokenFile {
    pub refresh_token: String,
    /// Unix seconds when `oauth login` stored it.
    pub obtained_at: u64,
    /// Unix seconds of the last successful refresh with it (by a running relay).
    #[serde(default)]
    pub last_refreshed: Option<u64>,
    /// The scopes it was granted for.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The profile it was obtained for (shown by `check`).
    #[serde(default)]
    pub profile: Option<String>,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFile")
            .field("refresh_token", &"***")
            .field("obtained_at", &self.obtained_at)
            .field("last_refreshed", &self.last_refreshed)
            .field("scopes", &self.scopes)
            .field("profile", &self.profile)
            .finish()
    }
}

/// The token file at `path`, `None` if it does not exist. The error names the path,
/// never the content.
pub fn read(path: &Path) -> Result<Option<TokenFile>, String> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read token file {}: {e}", path.display())),
    };
    serde_json::from_slice(&text).map(Some).map_err(|e| {
        format!(
            "token file {} is not a mailvalve token file (line {}, column {}); run `mailvalve oauth login` again",
            path.display(),
            e.line(),
            e.column()
        )
    })
}

/// Writes `file` to `path` (0600 on Unix), replacing what was there.
pub fn write(path: &Path, file: &TokenFile) -> Result<(), String> {
    let json = serde_json::to_vec_pretty(file)
        .map_err(|e| format!("cannot encode the token file: {e}"))?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "token".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let res = (|| -> std::io::Result<()> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        crate::platform::owner_only(&mut opts);
        let mut f = opts.open(&tmp)?;
        f.write_all(&json)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        crate::platform::fsync_dir(dir)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("cannot write token file {}: {e}", path.display()));
    }
    Ok(())
}

fn now_secs() -> u64 {
    crate::policy::clock::wall_ms() / 1000
}

/// The provider rotated the refresh token: keep the new one.
pub fn update_refresh(path: &Path, token: String) -> Result<(), String> {
    let mut f = read(path)?.ok_or_else(|| format!("token file {} is gone", path.display()))?;
    f.refresh_token = token;
    f.last_refreshed = Some(now_secs());
    write(path, &f)
}

/// A refresh with the file's token succeeded: note when (for `check`).
pub fn touch_refreshed(path: &Path) -> Result<(), String> {
    let Some(mut f) = read(path)? else {
        return Ok(());
    };
    f.last_refreshed = Some(now_secs());
    write(path, &f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        assert!(read(&path).unwrap().is_none());
        let f = TokenFile {
            refresh_token: "R-1".into(),
            obtained_at: 1,
            last_refreshed: None,
            scopes: vec!["s".into()],
            profile: Some("office365".into()),
        };
        write(&path, &f).unwrap();
        let back = read(&path).unwrap().unwrap();
        assert_eq!(back.refresh_token, "R-1");
        assert!(!format!("{back:?}").contains("R-1"));
        update_refresh(&path, "R-2".into()).unwrap();
        let back = read(&path).unwrap().unwrap();
        assert_eq!(back.refresh_token, "R-2");
        assert!(back.last_refreshed.is_some());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "not json").unwrap();
        let e = read(&path).unwrap_err();
        assert!(e.contains("not a mailvalve token file"), "{e}");
    }
}
