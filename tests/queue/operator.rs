//! The operator's `mailvalve queue` commands, offline and against the running instance.

use super::*;

/// `mailvalve queue -c FILE ARGS...`: (exit status success, stdout + stderr).
fn queue_cli(file: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(support::harness::mailvalve())
        .arg("queue")
        .arg("-c")
        .arg(file)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `queue_cli` on a blocking thread, so that an instance running on this test's runtime
/// keeps serving while the CLI talks to it over the control socket.
async fn queue_cli_off_thread(file: &Path, args: &[&str]) -> (bool, String) {
    let file = file.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        queue_cli(&file, &args)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn operator_commands_offline_and_against_the_running_instance() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let p = Provider::builder().start().await;
    let mut down = p.upstream_config();
    down.port = port;
    let cfg = config(dir.path(), down);
    let file = dir.path().join("mailvalve.toml");
    std::fs::write(
        &file,
        format!(
            "[queue]\ndir = {:?}\n[suppression]\npath = {:?}\n",
            cfg.queue.dir, cfg.suppression.path
        ),
    )
    .unwrap();
    let cli = |args: &[&str]| queue_cli(&file, args);
    let mv = start(cfg.clone()).await;
    let r = mv.campaign(&["ok@example.org"], 1).await;
    let id = r[5].rsplit(' ').next().unwrap().to_string();
    // The running instance answers over its control socket.
    let (ok, out) = queue_cli_off_thread(&file, &["list"]).await;
    assert!(
        ok && out.contains(&id) && out.contains("1 message(s)"),
        "{out}"
    );
    let (ok, out) = queue_cli_off_thread(&file, &["status"]).await;
    assert!(ok && out.contains("instance: running"), "{out}");
    let (ok, out) = queue_cli_off_thread(&file, &["pause"]).await;
    assert!(ok && out.contains("paused"), "{out}");
    mv.stop().await;

    // Offline: the spool is opened directly; the pause survived.
    let (ok, out) = cli(&["show", &id]);
    assert!(ok && out.contains("ok@example.org  pending"), "{out}");
    let (ok, out) = cli(&["status"]);
    assert!(
        ok && out.contains("operator pause: on") && out.contains("not running"),
        "{out}"
    );
    let (ok, out) = cli(&["show", "0000000000000"]);
    assert!(!ok && out.contains("no message"), "{out}");
    let (ok, out) = cli(&["retry"]);
    assert!(!ok && out.contains("--all"), "{out}");

    // Restarted with the provider up, still paused: nothing goes out until resume.
    let mv = start(config(dir.path(), p.upstream_config())).await;
    mv.spool
        .retry_now(mailvalve::queue::Which::All)
        .await
        .unwrap();
    sleep(Duration::from_millis(700)).await;
    assert!(p.messages().is_empty(), "operator pause survives a restart");
    let (ok, out) = queue_cli_off_thread(&file, &["resume"]).await;
    assert!(ok, "{out}");
    eventually("delivered after resume", || p.messages().len() == 1).await;
    mv.stop().await;
}

/// What the operator sees while the provider is down (issue 15, point 5): `status` says
/// the provider is unreachable and since when, `list` shows the recipient and the
/// subject and, as "next", that it waits for the provider — not "now"; paused, it says
/// so; and `retry --all` says the provider is tried at once.
#[tokio::test]
async fn status_and_list_tell_the_state_during_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let p = Provider::builder().start().await;
    let mut down = p.upstream_config();
    down.port = closed_port();
    let cfg = config(dir.path(), down);
    let file = dir.path().join("mailvalve.toml");
    std::fs::write(
        &file,
        format!(
            "[queue]\ndir = {:?}\n[suppression]\npath = {:?}\n",
            cfg.queue.dir, cfg.suppression.path
        ),
    )
    .unwrap();
    let mv = start(cfg).await;
    mv.campaign(&["reader@example.org", "second@example.org"], 3)
        .await;
    let mut status = String::new();
    for _ in 0..150 {
        status = queue_cli_off_thread(&file, &["status"]).await.1;
        if status.contains("provider: UNREACHABLE since ") {
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    assert!(
        status.contains("provider: UNREACHABLE since 20"),
        "{status}"
    );
    assert!(status.contains("2 recipient(s) pending"), "{status}");
    assert!(status.contains("pace: "), "{status}");
    assert!(status.contains("today: 0 delivered"), "{status}");
    assert!(
        !status.contains("Quota") && !status.contains("Some("),
        "{status}"
    );

    let (ok, list) = queue_cli_off_thread(&file, &["list"]).await;
    assert!(ok, "{list}");
    assert!(list.contains("reader@example.org (+1)"), "{list}");
    assert!(list.contains("Spring news 3"), "{list}");
    assert!(list.contains("waiting for the provider"), "{list}");

    let (ok, out) = queue_cli_off_thread(&file, &["retry", "--all"]).await;
    assert!(ok && out.contains("tried at once"), "{out}");

    let (ok, _) = queue_cli_off_thread(&file, &["pause"]).await;
    assert!(ok);
    let (_, list) = queue_cli_off_thread(&file, &["list"]).await;
    assert!(list.contains("paused (queue resume)"), "{list}");
    mv.stop().await;
}
