//! A private Postfix instance for interop tests: its own `main.cf`, `master.cf`, queue
//! and data directories and log file in a temporary directory, one `smtpd` on a free
//! loopback port, stopped when the guard drops (also when the test panics). Shared by
//! `tests/interop_postfix.rs` and `tests/interop_limits.rs`; the caller adds the lines
//! that make the instance what it needs (a relayhost, anvil limits, a discard transport).
//! It must never listen anywhere but 127.0.0.1, and needs root (see `is_root`).
//!
//! Facts about a private Postfix that this file relies on (Postfix 3.7, Debian):
//! - `queue_directory` must be owned by root (Postfix creates its subdirectories owned
//!   by `postfix`); `data_directory` owned by `postfix`. The Debian `master.cf` runs most
//!   services chrooted (`y`); a private instance must say `n`, there is no chroot
//!   skeleton in a temp directory.
//! - Postfix prints its errors only to a terminal: commands run under `script` when it
//!   is installed.
//! - anvil's refusals answer the client (`421 4.7.0 <host> Error: too many connections
//!   from 127.0.0.1`, `450 4.7.1 Error: too much mail from ...`), but the *log* says
//!   `warning: Connection concurrency limit exceeded: 3 from localhost[127.0.0.1] for
//!   service ...` and the like — the reply text is not logged. See [`anvil`].
//! - By default loopback clients are exempt from anvil (`smtpd_client_event_limit_
//!   exceptions = $mynetworks`); an instance that throttles must set it empty.

use super::harness::{free_port, run, STARTUP};

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Bound for one `postfix` command.
pub const SHORT_RUN: Duration = Duration::from_secs(60);

/// The services of Debian's `/etc/postfix/master.cf`, without chroot (a temp directory
/// has no chroot skeleton) and without the pipe transports; `postlog` for
/// `maillog_file`. The one smtpd line is added in front. Shared with the benches.
pub const MASTER_CF_SERVICES: &str = include_str!("../data/postfix-master-services.cf");

/// What anvil writes to the log when it refuses something (the reply text itself is not
/// logged), from Postfix 3.7's smtpd.
pub mod anvil {
    /// `smtpd_client_connection_count_limit`: `421 4.7.0 ... too many connections`.
    pub const CONNECTION_COUNT: &str = "Connection concurrency limit exceeded";
    /// `smtpd_client_connection_rate_limit`: the *same* 421 text as the count limit.
    pub const CONNECTION_RATE: &str = "Connection rate limit exceeded";
    /// `smtpd_client_message_rate_limit`: `450 4.7.1 Error: too much mail from ...`.
    pub const MESSAGE_RATE: &str = "Message delivery request rate limit exceeded";
    /// `smtpd_client_recipient_rate_limit`: `450 4.7.1 Error: too many recipients from`.
    pub const RECIPIENT_RATE: &str = "Recipient address rate limit exceeded";
}

pub struct Postfix {
    bin: PathBuf,
    script: Option<PathBuf>,
    conf: PathBuf,
    queue: PathBuf,
    pub log: PathBuf,
    work: PathBuf,
    pub port: u16,
}

impl Postfix {
    /// Writes the configuration into `<dir>/postfix-*` (one instance per `dir`) and
    /// starts the instance. `main_cf_extra` is appended to a base `main.cf` that accepts
    /// mail from 127.0.0.0/8 for any domain and has no local domains; it says where mail
    /// goes (`relayhost = ...` or `default_transport = discard`) and what is limited.
    pub fn start(bin: &Path, script: Option<&Path>, dir: &Path, main_cf_extra: &str) -> Postfix {
        let conf = dir.join("postfix-conf");
        let queue = dir.join("postfix-queue");
        let data = dir.join("postfix-data");
        let log = dir.join("postfix.log");
        for d in [&conf, &queue, &data] {
            fs::create_dir_all(d).unwrap();
        }
        // The queue directory belongs to root (Postfix creates its subdirectories for
        // user `postfix`); the data directory to `postfix`; every directory above them
        // must be searchable by `postfix`.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&queue, fs::Permissions::from_mode(0o755)).unwrap();
        let (st, out) = run(
            "chown",
            Command::new("chown").arg("postfix").arg(&data),
            dir,
            SHORT_RUN,
        );
        assert!(st.success(), "chown postfix {}: {out}", data.display());
        let port = free_port();
        let main_cf = format!(
            "\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = provider.test
mydestination =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
smtputf8_enable = no
maillog_file = {log}
maillog_file_prefixes = {dir}
# Room for the sink relaying; a provider would not be short of processes either.
default_process_limit = 100
{main_cf_extra}
",
            queue = queue.display(),
            data = data.display(),
            log = log.display(),
            dir = dir.display(),
        );
        fs::write(conf.join("main.cf"), main_cf).unwrap();
        fs::write(
            conf.join("master.cf"),
            format!("127.0.0.1:{port} inet n - n - - smtpd\n{MASTER_CF_SERVICES}"),
        )
        .unwrap();
        let pf = Postfix {
            bin: bin.to_path_buf(),
            script: script.map(Path::to_path_buf),
            conf,
            queue,
            log,
            work: dir.to_path_buf(),
            port,
        };
        let (st, out) = pf.command("start");
        assert!(
            st.success(),
            "postfix start failed ({st}):\n{out}\nlog:\n{}",
            pf.log_text()
        );
        // `postfix start` returns once master runs; wait for the smtpd socket. Without
        // connecting where the kernel says: a connection would count for anvil and
        // start a rate unit before the test's client makes its first move.
        let deadline = Instant::now() + STARTUP;
        while !listening(port) {
            assert!(
                Instant::now() < deadline,
                "Postfix not listening on {port}; log:\n{}",
                pf.log_text()
            );
            sleep(Duration::from_millis(100));
        }
        pf
    }

    /// `postfix -c CONF <verb>`, under `script` when available: postfix prints its
    /// errors only to a terminal.
    pub fn command(&self, verb: &str) -> (ExitStatus, String) {
        let line = format!("{} -c {} {verb}", self.bin.display(), self.conf.display());
        let mut cmd = match &self.script {
            Some(script) => {
                let mut c = Command::new(script);
                c.arg("-qec").arg(&line).arg("/dev/null");
                c
            }
            None => {
                let mut c = Command::new(&self.bin);
                c.arg("-c").arg(&self.conf).arg(verb);
                c
            }
        };
        run(&format!("postfix-{verb}"), &mut cmd, &self.work, SHORT_RUN)
    }

    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Log lines from byte `from` on that contain `needle`.
    pub fn log_count(&self, from: usize, needle: &str) -> usize {
        let text = self.log_text();
        text.get(from..)
            .unwrap_or("")
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn log_len(&self) -> usize {
        fs::metadata(&self.log)
            .map(|m| m.len() as usize)
            .unwrap_or(0)
    }

    /// Messages in Postfix's queue (incoming, active, deferred, hold).
    pub fn queued(&self) -> usize {
        fn files(p: &Path) -> usize {
            let Ok(rd) = fs::read_dir(p) else { return 0 };
            rd.filter_map(Result::ok)
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        files(&p)
                    } else {
                        1
                    }
                })
                .sum()
        }
        ["incoming", "active", "deferred", "hold"]
            .iter()
            .map(|d| files(&self.queue.join(d)))
            .sum()
    }

    /// Waits until every smtpd session seen so far has logged its disconnect (anvil is
    /// told about a disconnect just before that line is logged).
    pub fn wait_sessions_closed(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let connects = self.log_count(0, ": connect from ");
            let disconnects = self.log_count(0, ": disconnect from ");
            if connects == disconnects {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Postfix sessions still open ({connects} connects, {disconnects} disconnects)"
            );
            sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let (st, out) = self.command("stop");
        if !st.success() {
            eprintln!("postfix stop failed ({st}): {out}");
            // Last resort: the master we started, by its pid file.
            if let Ok(pid) = fs::read_to_string(self.queue.join("pid/master.pid")) {
                let pid = pid.trim();
                if !pid.is_empty() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
        }
    }
}

/// Whether something listens on 127.0.0.1:`port`: a LISTEN entry in Linux's
/// `/proc/net/tcp` (local address `0100007F:<port hex>`, state `0A`); where that file
/// cannot be read, by connecting (which anvil then counts as a connection).
pub fn listening(port: u16) -> bool {
    match fs::read_to_string("/proc/net/tcp") {
        Ok(table) => {
            let local = format!("0100007F:{port:04X}");
            table.lines().skip(1).any(|l| {
                let mut f = l.split_whitespace();
                f.nth(1) == Some(local.as_str()) && f.nth(1) == Some("0A")
            })
        }
        Err(_) => TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_millis(200),
        )
        .is_ok(),
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
