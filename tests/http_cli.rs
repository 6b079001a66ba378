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

fn status(port: u16) -> serde_json::Value {
    serde_json::from_str(&get(port, "/api/v1/status")).unwrap()
}

#[cfg(unix)]
#[test]
fn run_prints_the_dashboard_and_sighup_and_reload_reread_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let (smtp, http) = (free_port(), free_port());
    let file = dir.path().join("mailvalve.toml");
    let listen = format!("127.0.0.1:{http}");
    std::fs::write(&file, config(dir.path(), smtp, &listen, 4, "local")).unwrap();
    let mut proc = Proc::spawn(
        "mailvalve",
        Command::new(mailvalve())
            .env_remove("RUST_LOG")
            .arg("run")
            .arg("-c")
            .arg(&file),
        dir.path().join("mailvalve.log"),
    );
    proc.wait_listening(smtp, STARTUP);
    proc.wait_listening(http, STARTUP);
    let out = proc.output();
    assert!(
        out.contains(&format!("dashboard http://127.0.0.1:{http}/")),
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
