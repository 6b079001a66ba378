//! 2. Provider faults: 421 at MAIL, then 4xx at RCPT, then healthy.

use super::*;

/// One delivery-log line.
fn log_lines(spool: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(spool.join("delivery.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Queue ids with a `deferred` line whose reply code is `code`.
fn deferred_with(lines: &[serde_json::Value], code: u64) -> HashSet<String> {
    lines
        .iter()
        .filter(|l| l["action"] == "deferred" && l["reply"]["code"] == code)
        .filter_map(|l| l["queue_id"].as_str().map(String::from))
        .collect()
}

/// 50 messages queued while the provider (smtp-sink on one port, swapped in place)
/// answers `421` and disconnects at MAIL (`-Q MAIL`), then `450 4.3.0` at RCPT
/// (`-r RCPT`), then accepts. Each fault shows in the delivery log as `deferred` lines
/// with the provider's reply, `attempts` and a `next_attempt_ms` in the future; in the
/// end every message arrived exactly once and the spool is empty.
///
/// Timing: retries come on the controller's backoff (full jitter, base 30 s; throttles
/// and the first counted deferral are uniform in 1–30 s), so phase 2 waits until every
/// message was retried on its own (at most ~30 s after its 421). The second counted
/// deferral would wait up to 60 s, and nothing in the config shortens it; so before the
/// healthy phase mailvalve is stopped, the stopped spool is made due
/// (`Spool::retry_now(All)`, what `mailvalve queue retry --all` would do; that command
/// does not exist yet) and mailvalve restarted on it. Waits: ≤ 20 s + ≤ 45 s + ≤ 30 s.
#[test]
fn provider_faults_are_deferred_logged_and_delivered_once() {
    const T: &str = "provider_faults_are_deferred_logged_and_delivered_once";
    const MESSAGES: usize = 50;
    let Some(sink_bin) = need(T, "smtp-sink") else {
        return;
    };
    let started = Instant::now();
    let dir = keep(tempdir());
    let spool = dir.path().join("spool");
    let up = free_port();
    let port = free_port();
    let config = queue_config(port, up, &spool, "max_connections = 4");

    // Phase 1: 421 and disconnect at MAIL.
    let sink = start_sink(&sink_bin, dir.path(), "q-mail", &["-Q", "MAIL"], up, true);
    let mut mv = start_mv(dir.path(), 0, &config, port);
    let mut c = Client::session(port).expect("connect to mailvalve");
    let mut ids: HashMap<String, String> = HashMap::new(); // queue id → Message-ID
    for i in 0..MESSAGES {
        let mid = format!("fault-{i}@mailer.test");
        let r = c
            .send(
                "news@news.example",
                "reader@example.net",
                &message(&mid, 1024),
            )
            .expect("submit");
        let q = queued_as(&r).unwrap_or_else(|| panic!("not queued: {r:?}"));
        ids.insert(q, mid);
    }
    let _ = c.cmd("QUIT");
    let all: HashSet<String> = ids.keys().cloned().collect();
    let ok = wait_until(Duration::from_secs(20), || {
        deferred_with(&log_lines(&spool), 421).is_superset(&all)
    });
    assert_running(&mut mv);
    let lines = log_lines(&spool);
    let d421 = lines
        .iter()
        .filter(|l| l["action"] == "deferred" && l["reply"]["code"] == 421)
        .count();
    println!(
        "{T}: phase 1 (-Q MAIL): {d421} deferred lines with 421 for {} of {MESSAGES} \
         messages after {:?}",
        deferred_with(&lines, 421).intersection(&all).count(),
        started.elapsed()
    );
    assert!(ok, "not every message deferred with 421 within 20 s");
    let phase1_arrivals = Arrivals::scan(&[sink.dump_dir()]);
    drop(sink);

    // Phase 2: 4xx at RCPT; mailvalve retries on its own backoff.
    let sink = start_sink(&sink_bin, dir.path(), "r-rcpt", &["-r", "RCPT"], up, true);
    let t2 = Instant::now();
    let ok = wait_until(Duration::from_secs(45), || {
        deferred_with(&log_lines(&spool), 450).is_superset(&all)
    });
    assert_running(&mut mv);
    let lines = log_lines(&spool);
    let d450 = lines
        .iter()
        .filter(|l| l["action"] == "deferred" && l["reply"]["code"] == 450)
        .count();
    println!(
        "{T}: phase 2 (-r RCPT): {d450} deferred lines with 450 for {} of {MESSAGES} \
         messages after {:?}",
        deferred_with(&lines, 450).intersection(&all).count(),
        t2.elapsed()
    );
    assert!(
        ok,
        "not every message retried into the RCPT fault within 45 s"
    );
    let phase2_arrivals = Arrivals::scan(&[sink.dump_dir()]);
    drop(sink);

    // Every deferred line carries the attempt count and a future next attempt.
    let deferred: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["action"] == "deferred").collect();
    for l in &deferred {
        let ts = l["ts_ms"].as_u64().expect("ts_ms");
        let next = l["next_attempt_ms"].as_u64().expect("next_attempt_ms");
        let attempts = l["attempts"].as_u64().expect("attempts");
        // Full jitter in [1 s, 30 s · 2^(counted attempts before this one)].
        let cap = 30_000u64 << attempts.saturating_sub(1).min(8);
        assert!(
            next >= ts + 900 && next <= ts + cap + 1_000,
            "next attempt outside the backoff window (cap {cap} ms): {l}"
        );
    }
    let max_attempts_421 = deferred
        .iter()
        .filter(|l| l["reply"]["code"] == 421)
        .filter_map(|l| l["attempts"].as_u64())
        .max();
    let max_attempts_450 = deferred
        .iter()
        .filter(|l| l["reply"]["code"] == 450)
        .filter_map(|l| l["attempts"].as_u64())
        .max();
    let verdicts: HashSet<String> = deferred
        .iter()
        .map(|l| {
            format!(
                "{} {}",
                l["reply"]["code"],
                l["verdict"].as_str().unwrap_or("")
            )
        })
        .collect();
    println!(
        "{T}: {} deferred lines; max attempts after 421: {max_attempts_421:?}, after 450: \
         {max_attempts_450:?}; verdicts {verdicts:?}",
        deferred.len()
    );
    // A 421 is a connection throttle (our pacing, no attempt counted); a 450 at RCPT is
    // the message's deferral (counted).
    assert_eq!(
        max_attempts_421,
        Some(0),
        "a 421 must not count as an attempt"
    );
    assert!(
        deferred
            .iter()
            .filter(|l| l["reply"]["code"] == 450)
            .all(|l| l["attempts"].as_u64() >= Some(1)),
        "a 4xx at RCPT counts as an attempt"
    );

    // Phase 3: healthy provider; the stopped spool made due, mailvalve restarted.
    mv.terminate(Duration::from_secs(10));
    // (queued, made due: those not already due)
    let (queued, made_due) = with_spool(&spool, |s| {
        (
            s.len(),
            runtime().block_on(s.retry_now(Which::All)).unwrap(),
        )
    });
    let sink = start_sink(&sink_bin, dir.path(), "healthy", &[], up, true);
    let mut mv = start_mv(dir.path(), 1, &config, port);
    let t3 = Instant::now();
    let ok = wait_until(Duration::from_secs(30), || {
        Arrivals::scan(&[sink.dump_dir()]).distinct() >= MESSAGES && spool_bodies(&spool).is_empty()
    });
    // Late duplicates would show within this.
    sleep(Duration::from_millis(1500));
    assert_running(&mut mv);
    mv.terminate(Duration::from_secs(10));
    let healthy = Arrivals::scan(&[sink.dump_dir()]);
    let everything = Arrivals::scan(&[
        &dir.path().join("q-mail-dump"),
        &dir.path().join("r-rcpt-dump"),
        sink.dump_dir(),
    ]);
    let lines = log_lines(&spool);
    let delivered: HashSet<String> = lines
        .iter()
        .filter(|l| l["action"] == "delivered")
        .filter_map(|l| l["queue_id"].as_str().map(String::from))
        .collect();
    let left = with_spool(&spool, |s| s.len());
    println!(
        "{T}: phase 3 (healthy): {queued} queued, {made_due} made due, {} distinct arrived ({} in all, \
         {} duplicates) after {:?}; dumps at the faulty sinks: {} + {}; delivered lines for \
         {} messages; spool left {left}; total {:?}",
        healthy.distinct(),
        healthy.total(),
        healthy.duplicates(),
        t3.elapsed(),
        phase1_arrivals.total() + phase1_arrivals.partial,
        phase2_arrivals.total() + phase2_arrivals.partial,
        delivered.intersection(&all).count(),
        started.elapsed()
    );
    assert!(ok, "not all delivered within 30 s of the healthy phase");
    assert_eq!(
        queued, MESSAGES,
        "every message still queued before phase 3"
    );
    let expected: HashSet<&String> = ids.values().collect();
    assert_eq!(
        everything.count.keys().collect::<HashSet<_>>(),
        expected,
        "arrivals differ from the submitted Message-IDs"
    );
    assert!(
        everything.count.values().all(|&n| n == 1),
        "a message arrived more than once"
    );
    assert_eq!(everything.partial, 0);
    assert_eq!(delivered.intersection(&all).count(), MESSAGES);
    assert_eq!(left, 0, "spool not empty");
}
