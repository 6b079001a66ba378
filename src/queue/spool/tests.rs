//! Tests of the spool: puts, commits, records, reopen, faults, throughput.

use super::*;
use crate::queue::record::StoredReply;
use std::time::Instant;

pub(super) fn env() -> Envelope {
    Envelope {
        from: "news@sender.example".into(),
        size: None,
        eight_bit: false,
        smtputf8: false,
    }
}

pub(super) fn rcpts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("r{i}@rcpt.example")).collect()
}

pub(super) fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

pub(super) fn delivered() -> RcptState {
    RcptState::Delivered {
        reply: StoredReply {
            code: 250,
            enhanced: Some("2.0.0".into()),
            text: "ok queued as 1".into(),
        },
    }
}

#[tokio::test]
async fn put_then_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, rec) = Spool::open(dir.path()).unwrap();
    assert_eq!(rec, Recovered::default());
    let body = b"Subject: hi\r\n\r\nhello\r\n";
    let id = spool.put(&env(), &rcpts(2), body).await.unwrap();
    assert_eq!(spool.read_body(id).await.unwrap(), body);
    assert_eq!(fs::read(spool.body_path(id)).unwrap(), body);
    let m = spool.get(id).unwrap().unwrap();
    assert_eq!(m.envelope, env());
    assert_eq!(m.body_len, body.len() as u64);
    assert_eq!(m.rcpts[1].address, "r1@rcpt.example");
    assert_eq!(m.rcpts[1].state, RcptState::new_pending());
    assert_eq!(spool.due(now_ms(), 10), vec![(id, vec![0, 1])]);
    assert!(files(&dir.path().join("tmp")).is_empty());
    assert_eq!(files(&dir.path().join("msg")), vec![id.to_string()]);
    assert!(matches!(
        spool.put(&env(), &[], body).await,
        Err(SpoolError::Invalid(_))
    ));
}

#[tokio::test]
async fn recipient_states_record_remove_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b);
    {
        let (spool, _) = Spool::open(dir.path()).unwrap();
        a = spool.put(&env(), &rcpts(3), b"a").await.unwrap();
        b = spool.put(&env(), &rcpts(1), b"b").await.unwrap();
        assert!(a < b);
        let later = now_ms() + 3_600_000;
        spool
            .record(
                a,
                vec![
                    (0, delivered()),
                    (
                        1,
                        RcptState::Pending {
                            attempts: 1,
                            next_attempt: later,
                            last_reply: None,
                        },
                    ),
                ],
            )
            .await
            .unwrap();
        // Only recipient 2 of `a` is due now.
        assert_eq!(spool.due(now_ms(), 10), vec![(a, vec![2]), (b, vec![0])]);
        // Not all final yet: remove refuses.
        assert!(!spool.remove(a).await.unwrap());
        // A final state stays final; a bad index is refused; all or nothing.
        let failed = RcptState::Failed {
            reply: StoredReply {
                code: 550,
                enhanced: None,
                text: "no".into(),
            },
        };
        assert!(matches!(
            spool.record(a, vec![(2, delivered()), (0, failed)]).await,
            Err(SpoolError::Invalid(_))
        ));
        assert!(matches!(
            spool.record(a, vec![(9, delivered())]).await,
            Err(SpoolError::Invalid(_))
        ));
        assert!(matches!(
            spool.record(QueueId::from_u64(1), vec![]).await,
            Err(SpoolError::NotFound(_))
        ));
        spool.record(b, vec![(0, delivered())]).await.unwrap();
        // The same final state again (a retried commit that had reached the disk)
        // is accepted and changes nothing.
        spool.record(b, vec![(0, delivered())]).await.unwrap();
        assert!(spool.remove(b).await.unwrap());
        assert!(!spool.body_path(b).exists());
        assert!(spool.get(b).unwrap().is_none());
    }
    let (spool, rec) = Spool::open(dir.path()).unwrap();
    assert_eq!(rec.messages, 1);
    assert_eq!(rec.pending_recipients, 2);
    let m = spool.get(a).unwrap().unwrap();
    assert_eq!(m.rcpts[0].state, delivered());
    assert!(matches!(
        m.rcpts[1].state,
        RcptState::Pending { attempts: 1, .. }
    ));
    assert_eq!(spool.due(now_ms(), 10), vec![(a, vec![2])]);
    // retry_now makes the deferred recipient due too, durably.
    assert_eq!(spool.retry_now(Which::All).await.unwrap(), 1);
    assert_eq!(spool.due(now_ms(), 10), vec![(a, vec![1, 2])]);
    drop(spool);
    let (spool, _) = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.due(now_ms(), 10), vec![(a, vec![1, 2])]);
    // A new id after reopen sorts after the old ones.
    let c = spool.put(&env(), &rcpts(1), b"c").await.unwrap();
    assert!(c > a && c > b);
    spool.delete(a).await.unwrap();
    assert!(matches!(
        spool.delete(a).await,
        Err(SpoolError::NotFound(_))
    ));
    assert_eq!(
        spool
            .list()
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect::<Vec<_>>(),
        vec![c]
    );
}

#[tokio::test]
async fn failed_body_write_leaves_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let ok = spool.put(&env(), &rcpts(1), b"ok").await.unwrap();
    // Root ignores permissions, so break the layout instead: tmp/ becomes a file.
    let tmp = dir.path().join("tmp");
    fs::remove_dir(&tmp).unwrap();
    fs::write(&tmp, b"not a directory").unwrap();
    let err = spool.put(&env(), &rcpts(1), b"lost").await.unwrap_err();
    assert!(matches!(err, SpoolError::Io(_)), "{err:?}");
    assert_eq!(err.smtp_reply().code, 452);
    assert_eq!(spool.len(), 1);
    assert_eq!(files(&dir.path().join("msg")), vec![ok.to_string()]);
    // And msg/ a file: the rename fails, the tmp body is removed.
    fs::remove_file(&tmp).unwrap();
    fs::create_dir(&tmp).unwrap();
    let msg = dir.path().join("msg");
    let moved = dir.path().join("msg.bak");
    fs::rename(&msg, &moved).unwrap();
    fs::write(&msg, b"not a directory").unwrap();
    assert!(spool.put(&env(), &rcpts(1), b"lost").await.is_err());
    assert!(files(&tmp).is_empty());
    fs::remove_file(&msg).unwrap();
    fs::rename(&moved, &msg).unwrap();
    assert_eq!(spool.list().unwrap().len(), 1);
    drop(spool);
    let (_, rec) = Spool::open(dir.path()).unwrap();
    assert_eq!(rec.messages, 1);
    assert_eq!(rec.removed_partial + rec.removed_orphan_bodies, 0);
}

#[tokio::test]
async fn failed_commit_acknowledges_nothing_and_cleans_the_round() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let a = spool.put(&env(), &rcpts(1), b"a").await.unwrap();
    spool.fail_next_commit();
    let err = spool.put(&env(), &rcpts(1), b"b").await.unwrap_err();
    assert!(err.is_storage(), "{err:?}");
    assert_eq!(spool.len(), 1);
    assert_eq!(files(&dir.path().join("msg")), vec![a.to_string()]);
    // A failed update changes neither disk nor index.
    spool.fail_next_commit();
    assert!(spool.record(a, vec![(0, delivered())]).await.is_err());
    assert_eq!(spool.due(now_ms(), 10), vec![(a, vec![0])]);
    // The spool keeps working afterwards.
    let c = spool.put(&env(), &rcpts(1), b"c").await.unwrap();
    assert_eq!(spool.len(), 2);
    drop(spool);
    let (spool, rec) = Spool::open(dir.path()).unwrap();
    assert_eq!(rec.messages, 2);
    assert_eq!(
        spool.get(a).unwrap().unwrap().rcpts[0].state,
        RcptState::new_pending()
    );
    assert!(spool.get(c).unwrap().is_some());
}

/// Issue 8.6: the database holds every queued address: owner only, also when an
/// older spool had it wider.
#[cfg(unix)]
#[tokio::test]
async fn the_database_is_created_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let db = dir.path().join(DB_FILE);
    drop(Spool::open(dir.path()).unwrap());
    assert_eq!(mode(&db), 0o600);
    fs::set_permissions(&db, fs::Permissions::from_mode(0o644)).unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    assert_eq!(mode(&db), 0o600);
    let id = spool.put(&env(), &rcpts(1), b"x").await.unwrap();
    assert_eq!(mode(&spool.body_path(id)), 0o600);
}

/// Issue 8.3: after a write error redb refuses everything ("Previous I/O error")
/// until reopened. The spool reopens it by itself once writes work again; nothing
/// acknowledged is lost, nothing half-done shows.
#[tokio::test]
async fn a_latched_database_is_reopened_when_writes_work_again() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let a = spool.put(&env(), &rcpts(2), b"a").await.unwrap();
    spool.set_disk_full(true);
    let err = spool.record(a, vec![(0, delivered())]).await.unwrap_err();
    assert!(err.is_storage(), "{err:?}");
    assert!(spool.put(&env(), &rcpts(1), b"b").await.is_err());
    assert!(spool.save_state().await.is_err());
    spool.set_disk_full(false);
    // Latched: it takes a reopen (at most every REOPEN_INTERVAL) to write again.
    let mut ok = false;
    for _ in 0..100 {
        if spool.save_state().await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(REOPEN_INTERVAL / 4).await;
    }
    assert!(ok, "never writable again");
    spool.record(a, vec![(0, delivered())]).await.unwrap();
    let b = spool.put(&env(), &rcpts(1), b"b").await.unwrap();
    assert_eq!(spool.len(), 2);
    assert_eq!(spool.due(now_ms(), 10), vec![(a, vec![1]), (b, vec![0])]);
    assert!(files(&dir.path().join("tmp")).is_empty());
    assert_eq!(files(&dir.path().join("msg")).len(), 2);
    drop(spool);
    let (spool, rec) = Spool::open(dir.path()).unwrap();
    assert_eq!(rec.messages, 2);
    assert_eq!(spool.get(a).unwrap().unwrap().rcpts[0].state, delivered());
}

/// Issue 8.6: the time spent paused is kept in the spool, so a restart after a
/// paused weekend does not expire the queue; a message only gets credit for pauses
/// after it arrived.
#[tokio::test]
async fn paused_time_survives_a_reopen_and_counts_from_arrival() {
    const DAY: u64 = 24 * 3600 * 1000;
    let max_age = Duration::from_millis(4 * DAY);
    let dir = tempfile::tempdir().unwrap();
    let (old, t0);
    {
        let (spool, _) = Spool::open(dir.path()).unwrap();
        old = spool.put(&env(), &rcpts(1), b"old").await.unwrap();
        t0 = spool.get(old).unwrap().unwrap().received;
        spool.add_paused(3 * DAY);
        spool.save_state().await.unwrap();
    }
    let (spool, _) = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.paused_ms(), 3 * DAY);
    let young = spool.put(&env(), &rcpts(1), b"young").await.unwrap();
    let m = spool.get(young).unwrap().unwrap();
    assert_eq!(m.paused_at_arrival, 3 * DAY);
    // Five days after `old` arrived, three of them paused: two days old.
    let later = t0 + 5 * DAY;
    assert_eq!(
        spool
            .get(old)
            .unwrap()
            .unwrap()
            .age_ms(later, spool.paused_ms()),
        2 * DAY
    );
    // `young` arrived (just) after the pause: no credit, five days old, expired.
    assert_eq!(spool.expired(later, max_age), vec![young]);
    // Seven days after, give or take an hour: `old` has four unpaused days, less or
    // more an hour.
    assert_eq!(
        spool.expired(t0 + 7 * DAY - 3_600_000, max_age),
        vec![young]
    );
    assert_eq!(
        spool.expired(t0 + 7 * DAY + 3_600_000, max_age),
        vec![old, young]
    );
}

/// Issue 8.4: a body is written to `tmp/` as it arrives; a refused one (the writer
/// dropped) leaves nothing behind, a committed one moves to `msg/`.
#[tokio::test]
async fn bodies_stream_to_tmp_and_leave_nothing_when_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let mut w = spool.create_body().await.unwrap();
    for _ in 0..64 {
        w.write(&[b'x'; 1024]).await.unwrap();
    }
    assert_eq!(w.len(), 65536);
    assert_eq!(files(&dir.path().join("tmp")).len(), 1);
    drop(w);
    assert!(files(&dir.path().join("tmp")).is_empty());
    let mut w = spool.create_body().await.unwrap();
    w.write(b"Subject: a\r\n\r\n").await.unwrap();
    w.write(b"body\r\n").await.unwrap();
    let id = spool.commit(w, &env(), &rcpts(1)).await.unwrap();
    assert!(files(&dir.path().join("tmp")).is_empty());
    assert_eq!(
        spool.read_body(id).await.unwrap(),
        b"Subject: a\r\n\r\nbody\r\n"
    );
    assert_eq!(spool.get(id).unwrap().unwrap().body_len, 20);
    // No recipients: refused, and nothing left either.
    let w = spool.create_body().await.unwrap();
    assert!(matches!(
        spool.commit(w, &env(), &[]).await,
        Err(SpoolError::Invalid(_))
    ));
    assert!(files(&dir.path().join("tmp")).is_empty());
    assert_eq!(spool.len(), 1);
}

#[tokio::test]
async fn open_refuses_a_broken_layout() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("msg"), b"file").unwrap();
    assert!(matches!(Spool::open(dir.path()), Err(SpoolError::Io(_))));
}

/// Not a benchmark with assertions: prints what this machine does. Run with
/// `cargo test --release --lib queue::spool::tests::throughput -- --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throughput_2000_puts_from_20_tasks() {
    // On the real disk, not a tmpfs, when MAILVALVE_SPOOL_BENCH_DIR says where.
    let base = std::env::var_os("MAILVALVE_SPOOL_BENCH_DIR").map(PathBuf::from);
    let dir = match &base {
        Some(b) => tempfile::tempdir_in(b).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let spool = Arc::new(Spool::open(dir.path()).unwrap().0);
    let mut body = b"Subject: newsletter\r\n\r\n".to_vec();
    body.resize(10 * 1024, b'x');
    let body = Arc::new(body);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let s = Arc::clone(&spool);
        let body = Arc::clone(&body);
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                s.put(&env(), &rcpts(1), &body).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(spool.len(), 2000);
    println!(
        "spool: 2000 puts of 10 KB from 20 tasks in {:.3} s = {:.0} messages/s ({})",
        secs,
        2000.0 / secs,
        dir.path().display()
    );
}
