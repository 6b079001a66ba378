//! Interop against a real throttling provider: a private Postfix `smtpd` that allows two
//! connections per client (anvil, `smtpd_client_connection_count_limit = 2`) and relays
//! everything it accepts to `smtp-sink`.
//!
//! ```text
//! smtp-source -s 20 -m 2000 ──▶ mailvalve (passthrough, starts at 4 connections)
//!     ──▶ Postfix smtpd (421 4.7.0 "too many connections" above 2) ──▶ smtp-sink -d
//! ```
//!
//! The check (from the issue): all 2000 messages arrive at smtp-sink, and the Postfix log
//! shows at most 3 refused connections — mailvalve learns the limit of 2 from the first
//! refusals and does not run into it again within `probe_interval` (10 min).
//!
//! Postfix is set up by the test itself in a temporary directory (its own `main.cf`,
//! `master.cf`, queue and data directories, and log file) and stopped when the guard
//! drops, also when the test panics. Starting Postfix needs root; without root (or
//! without the tools) the test prints `SKIPPED: ...` and passes, unless
//! `MAILVALVE_REQUIRE_TOOLS` is set (CI), then it fails.
//!
//! Facts about a private Postfix that this file relies on (Postfix 3.7, Debian):
//! - `queue_directory` must be owned by root (Postfix creates its subdirectories owned
//!   by `postfix`); `data_directory` owned by `postfix`. The Debian `master.cf` runs most
//!   services chrooted (`y`); a private instance must say `n`, there is no chroot
//!   skeleton in a temp directory.
//! - anvil's refusal answers the client `421 4.7.0 <host> Error: too many connections
//!   from 127.0.0.1`, but the *log* says `warning: Connection concurrency limit
//!   exceeded: 3 from localhost[127.0.0.1] for service ...` — the reply text is not
//!   logged. Refusals are counted by that warning.
//! - By default loopback clients are exempt from anvil (`smtpd_client_event_limit_
//!   exceptions = $mynetworks`); it must be set empty.

mod support;

use support::client::Client;
use support::harness::*;
use support::sink::start_sink;

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Bound for one `postfix` command.
const SHORT_RUN: Duration = Duration::from_secs(60);
/// Bound for the 2000-message run (debug build, 2 cores in CI).
const LOAD_RUN: Duration = Duration::from_secs(240);
/// Postfix relays asynchronously: how long the last messages may take to reach the sink
/// after smtp-source is done.
const DRAIN: Duration = Duration::from_secs(120);

// ------------------------------------------------------------------------------------
// Tools
// ------------------------------------------------------------------------------------

/// Panics under `MAILVALVE_REQUIRE_TOOLS`, else says SKIPPED.
fn skip(test: &str, why: &str) {
    if tools_required() {
        panic!("{test}: {why} and MAILVALVE_REQUIRE_TOOLS is set");
    }
    eprintln!("SKIPPED: {test}: {why}");
}

// ------------------------------------------------------------------------------------
// A private Postfix
// ------------------------------------------------------------------------------------

/// The services of Debian's `/etc/postfix/master.cf`, without chroot (a temp directory
/// has no chroot skeleton) and without the pipe transports; `postlog` for
/// `maillog_file`. The one smtpd line is added in front. Shared with
/// `benches/relay-throughput.sh`.
const MASTER_CF_SERVICES: &str = include_str!("data/postfix-master-services.cf");

/// What anvil's refusal looks like in the Postfix log (the 421 reply text itself is not
/// logged).
const REFUSAL_LOG: &str = "Connection concurrency limit exceeded";

struct Postfix {
    bin: PathBuf,
    script: Option<PathBuf>,
    conf: PathBuf,
    queue: PathBuf,
    log: PathBuf,
    work: PathBuf,
    port: u16,
}

impl Postfix {
    /// Writes the configuration into `<dir>/postfix-*` and starts the instance.
    fn start(bin: PathBuf, script: Option<PathBuf>, dir: &Path, relay_to: u16) -> Postfix {
        let conf = dir.join("postfix-conf");
        let queue = dir.join("postfix-queue");
        let data = dir.join("postfix-data");
        let log = dir.join("postfix.log");
        for d in [&conf, &queue, &data] {
            fs::create_dir_all(d).unwrap();
        }
        // The queue directory belongs to root (Postfix creates its subdirectories for
        // user `postfix`); the data directory to `postfix`.
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
relayhost = [127.0.0.1]:{relay_to}
mynetworks = 127.0.0.0/8
smtputf8_enable = no
maillog_file = {log}
maillog_file_prefixes = {dir}
# The throttling provider: two connections per client; loopback is not exempt.
smtpd_client_connection_count_limit = 2
smtpd_client_event_limit_exceptions =
# Room for the sink relaying; a provider would not be short of processes either.
default_process_limit = 100
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
            bin,
            script,
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
        // `postfix start` returns once master runs; wait for the smtpd socket.
        let deadline = Instant::now() + STARTUP;
        while TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_millis(200),
        )
        .is_err()
        {
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
    fn command(&self, verb: &str) -> (ExitStatus, String) {
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

    fn log_text(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Log lines from byte `from` on that contain `needle`.
    fn log_count(&self, from: usize, needle: &str) -> usize {
        let text = self.log_text();
        text.get(from..)
            .unwrap_or("")
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    fn log_len(&self) -> usize {
        fs::metadata(&self.log)
            .map(|m| m.len() as usize)
            .unwrap_or(0)
    }

    /// Messages in Postfix's queue (incoming, active, deferred, hold).
    fn queued(&self) -> usize {
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
    fn wait_sessions_closed(&self, limit: Duration) {
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

/// Opens three raw connections to Postfix, one after the other, and returns the
/// greetings: anvil must greet the third with `421 4.7.0 ... too many connections`.
fn three_raw_greetings(port: u16) -> Vec<String> {
    let mut conns = Vec::new();
    let mut greetings = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(port).expect("connect to Postfix");
        greetings.push(c.reply().expect("Postfix greeting").1);
        conns.push(c);
    }
    for mut c in conns {
        let _ = c.write_line("QUIT");
    }
    greetings
}

// ------------------------------------------------------------------------------------
// mailvalve
// ------------------------------------------------------------------------------------

/// Passthrough to the Postfix smtpd, starting above its limit of 2 (4 connections,
/// at most 20), so that mailvalve has to learn the limit from Postfix's replies.
fn config(postfix_port: u16) -> String {
    format!(
        r#"mode = "passthrough"

[server]
listen = "{{LISTEN}}"
hostname = "mailvalve.test"

[http]
listen = "127.0.0.1:0"

[upstream]
host = "127.0.0.1"
port = {postfix_port}
tls = "none"
# A server we run ourselves: its replies are the only limits.
profile = "local"
max_connections = 20
# smtp-source aborts on any 4xx at MAIL, and mailvalve answers 451 when admission
# waits longer than this: 20 sessions sharing 2 connections must never get there.
admission_wait = "60s"

[upstream.limits]
initial_connections = 4
max_connections = 20
"#
    )
}

// ------------------------------------------------------------------------------------
// The test
// ------------------------------------------------------------------------------------

#[test]
fn postfix_with_two_connections_2000_messages_at_most_3_refusals() {
    const T: &str = "postfix_with_two_connections_2000_messages_at_most_3_refusals";
    const MESSAGES: usize = 2000;
    const MAX_REFUSALS: usize = 3;
    let (Some(postfix_bin), Some(sink_bin), Some(source)) = (
        need(T, "postfix"),
        need(T, "smtp-sink"),
        need(T, "smtp-source"),
    ) else {
        return;
    };
    if !is_root() {
        skip(T, "starting a private Postfix needs root");
        return;
    }
    let dir = tempdir();
    let sink = start_sink(&sink_bin, dir.path(), "sink", &[], free_port(), true);
    let postfix = Postfix::start(postfix_bin, tool("script"), dir.path(), sink.port);

    // The provider really throttles: a third simultaneous client is refused by anvil.
    let greetings = three_raw_greetings(postfix.port);
    assert!(
        greetings[0].starts_with("220") && greetings[1].starts_with("220"),
        "first two clients must be greeted: {greetings:?}\nlog:\n{}",
        postfix.log_text()
    );
    assert!(
        greetings[2].starts_with("421 4.7.0") && greetings[2].contains("too many connections"),
        "third client must be refused by anvil: {greetings:?}\nlog:\n{}",
        postfix.log_text()
    );
    postfix.wait_sessions_closed(Duration::from_secs(10));
    assert_eq!(
        postfix.log_count(0, REFUSAL_LOG),
        1,
        "anvil's refusal must be logged as {REFUSAL_LOG:?}:\n{}",
        postfix.log_text()
    );
    let log_start = postfix.log_len();

    let relay = start_mailvalve(
        dir.path(),
        &config(postfix.port),
        &[("RUST_LOG", "mailvalve=info")],
    );
    let started = Instant::now();
    let (st, out) = run(
        "smtp-source",
        Command::new(&source)
            .args(["-s", "20", "-m", &MESSAGES.to_string(), "-l", "2048"])
            .args(["-M", "client.test"])
            .args(["-f", "from@example.org", "-t", "to@example.net"])
            .arg(format!("127.0.0.1:{}", relay.port)),
        dir.path(),
        LOAD_RUN,
    );
    let sent_in = started.elapsed();
    let refusals = postfix.log_count(log_start, REFUSAL_LOG);
    let mv_log = relay.proc.output();
    let limit_changes: Vec<&str> = mv_log
        .lines()
        .filter(|l| l.contains("concurrency limit changed"))
        .collect();
    assert!(
        st.success(),
        "smtp-source through mailvalve failed ({st}) after {sent_in:?}, \
         {refusals} refusals in the Postfix log:\n{out}\nmailvalve:\n{mv_log}"
    );

    // Postfix relays asynchronously: wait (bounded) until the sink has everything.
    let deadline = Instant::now() + DRAIN;
    while sink.count() < MESSAGES && Instant::now() < deadline {
        sleep(Duration::from_millis(200));
    }
    let delivered_in = started.elapsed();
    // Anything still to come would show up now.
    sleep(Duration::from_millis(500));
    let delivered = sink.count();
    let refusals = postfix.log_count(log_start, REFUSAL_LOG);
    eprintln!(
        "{T}: smtp-source done in {sent_in:?}; {delivered}/{MESSAGES} at smtp-sink after \
         {delivered_in:?}; Postfix refused {refusals} connection(s) (at most {MAX_REFUSALS}); \
         Postfix accepted {} connection(s); mailvalve limit changes: {limit_changes:#?}",
        postfix.log_count(log_start, ": connect from "),
    );
    assert_eq!(
        delivered,
        MESSAGES,
        "messages at smtp-sink ({} still in the Postfix queue); Postfix log tail:\n{}",
        postfix.queued(),
        tail(&postfix.log_text(), 40)
    );
    assert!(
        refusals <= MAX_REFUSALS,
        "Postfix refused {refusals} connections (at most {MAX_REFUSALS} allowed)\n\
         mailvalve limit changes: {limit_changes:#?}\nmailvalve log tail:\n{}",
        tail(&mv_log, 60)
    );
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
