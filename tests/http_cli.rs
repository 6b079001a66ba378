//! The HTTP listener as `mailvalve run` starts it (the real binary): it prints the
//! dashboard's address; `queue status --watch` draws progress from the API; SIGHUP and `mailvalve reload` re-read the configuration (an
//! invalid one is refused, visible in the API, the running one stays); off loopback
//! without a token and TLS it refuses to start, naming the keys.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};
use support::harness::{free_port, mailvalve, Proc, STARTUP};

const WAIT: Duration = Duration::from_secs(15);

fn config(dir: &Path, smtp: u16, http: &str, max_connections: usize, profile: &str) -> String {
    format!(
        r#"mode = "queue"

[server]
listen = "127.0.0.1:{smtp}"

[http]
listen = "{http}"

[upstream]
host = "127.0.0.1"
port = {up}
tls = "none"
profile = "{profile}"
max_connections = {max_connections}

[queue]
dir = "{dir}/spool"

[suppression]
path = "{dir}/suppression.redb"
"#,
        up = free_port(),
        dir = dir.display()
    )
}

/// GET `path`; the body.
fn get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// `mailvalve run` on a fresh config in `dir` (profile local, 4 connections), once both
/// its SMTP and HTTP ports answer: the process, its config file and the two ports.
fn run_in(dir: &std::path::Path) -> (Proc, std::path::PathBuf, u16, u16) {
    let (smtp, http) = (free_port(), free_port());
    let file = dir.join("mailvalve.toml");
    let listen = format!("127.0.0.1:{http}");
    std::fs::write(&file, config(dir, smtp, &listen, 4, "local")).unwrap();
    let mut proc = Proc::spawn(
        "mailvalve",
        Command::new(mailvalve())
            .env_remove("RUST_LOG")
            .arg("run")
            .arg("-c")
            .arg(&file),
        dir.join("mailvalve.log"),
    );
    proc.wait_listening(smtp, STARTUP);
    proc.wait_listening(http, STARTUP);
    (proc, file, smtp, http)
}

fn status(port: u16) -> serde_json::Value {
    serde_json::from_str(&get(port, "/api/v1/status")).unwrap()
}

#[cfg(unix)]
#[test]
fn run_prints_the_dashboard_and_sighup_and_reload_reread_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let (mut proc, file, smtp, http) = run_in(dir.path());
    let listen = format!("127.0.0.1:{http}");
    // The line is printed just after the port is bound: wait for it (bounded), the port
    // may answer a moment before the line is written.
    let line = format!("dashboard http://127.0.0.1:{http}/");
    let deadline = Instant::now() + STARTUP;
    while !proc.output().contains(&line) && Instant::now() < deadline {
        sleep(Duration::from_millis(50));
    }
    let out = proc.output();
    assert!(
        out.contains(&line),
        "run prints the dashboard's address: {out}"
    );
    assert!(get(http, "/metrics").contains("mailvalve_build_info"));
    assert_eq!(status(http)["upstreams"][0]["connections"]["max"], 4);

    // `queue status --watch` draws the same progress from the API.
    let mut watch = Proc::spawn(
        "queue status --watch",
        Command::new(mailvalve())
            .args(["queue", "-c"])
            .arg(&file)
            .args(["status", "--watch", "--every", "1"]),
        dir.path().join("watch.log"),
    );
    let deadline = Instant::now() + WAIT;
    while !watch.output().contains("ETA") {
        assert!(
            Instant::now() < deadline,
            "watch drew nothing: {}",
            watch.output()
        );
        sleep(Duration::from_millis(50));
    }
    let drawn = watch.output();
    assert!(
        drawn.contains("received 0  queued 0  delivered 0"),
        "{drawn}"
    );
    assert!(drawn.contains("connections 0/"), "{drawn}");
    watch.terminate(Duration::from_secs(5));

    // SIGHUP with a broken file: refused, visible in the API, the old config stays.
    std::fs::write(&file, config(dir.path(), smtp, &listen, 1, "gmial")).unwrap();
    let ok = Command::new("kill")
        .arg("-HUP")
        .arg(proc.id().to_string())
        .status()
        .unwrap();
    assert!(ok.success());
    let deadline = Instant::now() + WAIT;
    let s = loop {
        let s = status(http);
        if !s["reload"].is_null() {
            break s;
        }
        assert!(Instant::now() < deadline, "no reload seen after SIGHUP");
        sleep(Duration::from_millis(50));
    };
    assert_eq!(s["reload"]["ok"], false, "{s}");
    assert!(
        s["reload"]["error"]
            .as_str()
            .unwrap()
            .contains("upstream.profile"),
        "{s}"
    );
    assert_eq!(s["upstreams"][0]["connections"]["max"], 4);

    // `mailvalve reload` with a valid file: applied, the log level too.
    let valid = config(dir.path(), smtp, &listen, 1, "local") + "\n[log]\nlevel = \"debug\"\n";
    std::fs::write(&file, valid).unwrap();
    let r = Command::new(mailvalve())
        .arg("reload")
        .arg("-c")
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(
        stdout.contains("applied: connections: at most 1"),
        "{stdout}"
    );
    assert_eq!(status(http)["upstreams"][0]["connections"]["max"], 1);
    proc.terminate(Duration::from_secs(10));
    assert!(proc.output().contains("configuration reload refused"));
}

#[test]
fn off_loopback_without_token_and_tls_run_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mailvalve.toml");
    let smtp = free_port();
    std::fs::write(&file, config(dir.path(), smtp, "0.0.0.0:2580", 4, "local")).unwrap();
    let r = Command::new(mailvalve())
        .arg("run")
        .arg("-c")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("http.token") && stderr.contains("MAILVALVE__HTTP__TOKEN"),
        "{stderr}"
    );
    assert!(stderr.contains("http.tls"), "{stderr}");
}

/// `mailvalve ARGS -c FILE [--api URL]`: (exit success, stdout, stderr).
fn cli(file: &Path, api: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut c = Command::new(mailvalve());
    c.env_remove("MAILVALVE_API").args(args).arg("-c").arg(file);
    if let Some(url) = api {
        c.args(["--api", url]);
    }
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn queue_and_suppress_print_the_same_through_the_api_as_through_the_control_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (mut proc, file, _smtp, http) = run_in(dir.path());
    let listen = format!("127.0.0.1:{http}");
    let api = format!("http://127.0.0.1:{http}");
    let api = Some(api.as_str());

    // Steer through the API; read through both.
    let (ok, out, err) = cli(&file, api, &["suppress", "add", "Gone@Example.org"]);
    assert!(ok, "{out}{err}");
    assert_eq!(out, "suppressed gone@example.org\n");
    let (ok, out, err) = cli(&file, api, &["queue", "pause"]);
    assert!(ok, "{out}{err}");
    for args in [
        &["queue", "status"][..],
        &["queue", "list"],
        &["suppress", "list"],
        &["suppress", "export"],
    ] {
        // `status` can show a passing state (e.g. the first moments after start) in
        // one answer and not the next: asked again, a bounded number of times.
        let mut tries = 0;
        loop {
            let by_socket = cli(&file, None, args);
            let by_api = cli(&file, api, args);
            assert!(by_socket.0, "{args:?}: {by_socket:?}");
            tries += 1;
            if by_api == by_socket || tries == 10 {
                assert_eq!(by_api, by_socket, "{args:?}");
                break;
            }
            sleep(Duration::from_millis(200));
        }
    }
    let (_, said, _) = cli(&file, None, &["queue", "status"]);
    assert!(said.contains("operator pause: on"), "{said}");
    assert!(cli(&file, None, &["suppress", "list"])
        .1
        .contains("gone@example.org"));

    // An unknown id: the same error either way.
    let (ok, _, by_api) = cli(&file, api, &["queue", "show", "0123456789abcdef"]);
    let (_, _, by_socket) = cli(&file, None, &["queue", "show", "0123456789abcdef"]);
    assert!(!ok);
    assert_eq!(by_api, by_socket);

    // With the control socket gone, the commands find the API at http.listen.
    std::fs::remove_file(dir.path().join("spool/control.sock")).unwrap();
    let (ok, out, err) = cli(&file, None, &["queue", "resume"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = cli(&file, None, &["suppress", "remove", "gone@example.org"]);
    assert!(ok, "{out}{err}");
    assert_eq!(out, "removed gone@example.org\n");
    let s = status(http);
    assert_eq!(s["operator_paused"], false, "{s}");
    assert_eq!(
        cli(&file, api, &["suppress", "list"]).1,
        "",
        "removed through the API"
    );

    // Another configuration (another spool) whose http.listen this instance holds is
    // not steered through it: the instance refuses, the CLI works on its own spool.
    let other = tempfile::tempdir().unwrap();
    let other_file = other.path().join("mailvalve.toml");
    std::fs::write(
        &other_file,
        config(other.path(), free_port(), &listen, 4, "local"),
    )
    .unwrap();
    let (ok, out, err) = cli(&other_file, None, &["queue", "pause"]);
    assert!(!ok, "{out}{err}");
    assert!(err.contains("no spool in"), "{err}");
    assert_eq!(
        status(http)["operator_paused"],
        false,
        "not paused by the other"
    );

    // A wrong --api is an error naming it, not a silent fallback to the spool.
    let (ok, _, err) = cli(&file, Some("http://127.0.0.1:9"), &["queue", "status"]);
    assert!(!ok);
    assert!(err.contains("HTTP API at http://127.0.0.1:9"), "{err}");
    proc.terminate(Duration::from_secs(5));
}
