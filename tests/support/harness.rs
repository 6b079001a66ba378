//! The harness for interop tests that drive the real binary and real tools (swaks,
//! smtp-source, smtp-sink, Postfix): finding tools (skipping, or failing under
//! `MAILVALVE_REQUIRE_TOOLS`), free loopback ports, child processes that are killed when
//! dropped, bounded runs. Shared by `tests/interop/` and `tests/interop_postfix.rs`.

use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The binary under test: the one cargo built for this test run, unless
/// `MAILVALVE_BIN` names another (a release build, or a stand-in while developing the
/// harness itself).
pub fn mailvalve() -> PathBuf {
    std::env::var_os("MAILVALVE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_mailvalve")))
}

// ------------------------------------------------------------------------------------
// Tools
// ------------------------------------------------------------------------------------

/// Finds an executable in PATH, then in /usr/sbin and /sbin (where Debian puts
/// smtp-sink and smtp-source, often not in a non-root PATH).
pub fn tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| {
        fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

pub fn tools_required() -> bool {
    std::env::var_os("MAILVALVE_REQUIRE_TOOLS").is_some_and(|v| !v.is_empty() && v != "0")
}

/// `tool(name)`, or: panic under `MAILVALVE_REQUIRE_TOOLS`, else say SKIPPED and `None`.
pub fn need(test: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = tool(name) {
        return Some(p);
    }
    if tools_required() {
        panic!(
            "{test}: required tool `{name}` not installed and MAILVALVE_REQUIRE_TOOLS is set \
             (apt-get install postfix swaks)"
        );
    }
    eprintln!("SKIPPED: {test}: {name} not installed (apt-get install postfix swaks)");
    None
}

/// For a precondition other than a tool (e.g. root): panics under
/// `MAILVALVE_REQUIRE_TOOLS`, else says `SKIPPED: ...` so the caller can return.
pub fn skip(test: &str, why: &str) {
    if tools_required() {
        panic!("{test}: {why} and MAILVALVE_REQUIRE_TOOLS is set");
    }
    eprintln!("SKIPPED: {test}: {why}");
}

// ------------------------------------------------------------------------------------
// Processes
// ------------------------------------------------------------------------------------

/// A port nobody listens on right now: bind to port 0, read the port, release it.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

pub fn is_root() -> bool {
    // Effective uid is the second field of the `Uid:` line.
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// A child process with stdout+stderr going to a log file; killed when dropped.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Proc {
        let out = File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc {
            name: name.into(),
            child,
            log,
        }
    }

    /// The process id (to signal it).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn output(&self) -> String {
        let bytes = fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits at most `limit`; `None` if still running.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.exited() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// Waits at most `limit`, panicking with the output if the process is still running.
    pub fn finish(&mut self, limit: Duration) -> ExitStatus {
        match self.wait_for(limit) {
            Some(st) => st,
            None => panic!(
                "{} still running after {limit:?}; output so far:\n{}",
                self.name,
                self.output()
            ),
        }
    }

    /// SIGTERM (so a graceful shutdown gets to log), then SIGKILL after `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if self.wait_for(grace).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Waits until something accepts on `port`, panicking if this process exits first.
    pub fn wait_listening(&mut self, port: u16, limit: Duration) {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.exited() {
                panic!(
                    "{} exited ({st}) before listening on {port}; output:\n{}",
                    self.name,
                    self.output()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} not listening on {port} after {limit:?}; output:\n{}",
                    self.name,
                    self.output()
                );
            }
            sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `mailvalve ARGS -c DIR/mailvalve.toml` run in `dir` (bounded by a minute): whether it
/// succeeded, and its stdout + stderr. The one way the tests drive a CLI verb against a
/// configuration in a test directory.
pub fn mailvalve_cli(dir: &Path, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(mailvalve());
    cmd.current_dir(dir)
        .args(args)
        .arg("-c")
        .arg(dir.join("mailvalve.toml"));
    let name = format!("mailvalve-{}", args.first().copied().unwrap_or("cli"));
    let (st, out) = run(&name, &mut cmd, dir, Duration::from_secs(60));
    (st.success(), out)
}

/// Runs a command to completion (bounded), returning its status and combined output.
pub fn run(name: &str, cmd: &mut Command, dir: &Path, limit: Duration) -> (ExitStatus, String) {
    let log = dir.join(format!("{name}.{}.log", free_port()));
    let mut p = Proc::spawn(name, cmd, log);
    let st = p.finish(limit);
    (st, p.output())
}

pub fn tempdir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("mailvalve-interop-")
        .tempdir()
        .unwrap();
    // smtp-sink drops to `nobody` and must reach the dump directory inside.
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// How long the relay may take to start listening.
pub const STARTUP: Duration = Duration::from_secs(20);

/// A running `mailvalve run`, killed when dropped.
pub struct Relay {
    pub proc: Proc,
    pub port: u16,
}

/// Writes `config` (with `{LISTEN}` replaced by a free loopback address) and runs
/// `mailvalve run -c FILE` until it accepts connections.
pub fn start_mailvalve(dir: &Path, config: &str, env: &[(&str, &str)]) -> Relay {
    let port = free_port();
    let path = dir.join("mailvalve.toml");
    fs::write(
        &path,
        config.replace("{LISTEN}", &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    let mut cmd = Command::new(mailvalve());
    // The suppression list's relative default path lands in the test's own directory.
    cmd.current_dir(dir);
    cmd.arg("run").arg("-c").arg(&path);
    cmd.env("NO_COLOR", "1");
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut proc = Proc::spawn("mailvalve", &mut cmd, dir.join("mailvalve.log"));
    proc.wait_listening(port, STARTUP);
    Relay { proc, port }
}

impl Relay {
    pub fn assert_alive(&mut self) {
        if let Some(st) = self.proc.exited() {
            panic!("mailvalve exited ({st}); output:\n{}", self.proc.output());
        }
    }
}
