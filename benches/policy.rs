//! criterion benches of the per-message policy hot path: suppression lookup, admission
//! (pause gate + rate check + concurrency permit), classification of the provider's
//! reply, controller feedback, and the whole loop — plus governor's own `check()` in the
//! same run as the floor. Targets (DESIGN.md / issue 3): classify ≤ 300 ns, feedback
//! ≤ 100 ns, whole loop ≤ 1 µs uncontended.
//!
//! Run: `cargo bench --bench policy`. Timings are short on purpose (2-core machine).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use futures::FutureExt;
use governor::{Quota, RateLimiter};
use mailvalve::policy::classify::Classifier;
use mailvalve::policy::clock::SystemClock;
use mailvalve::policy::controller::{Controller, ControllerParams, FeedbackCtx};
use mailvalve::policy::suppression::{MemoryStore, SoftPolicy, Suppressions};
use mailvalve::policy::verdict::{Phase, Verdict};
use mailvalve::smtp::Reply;
use mailvalve::upstream::ConcurrencyLimit;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn reply(s: &str) -> Reply {
    Reply::parse(s.as_bytes()).unwrap().unwrap().0
}

const REPLIES: &[(&str, Phase, &str)] = &[
    ("250_ok", Phase::DataEnd, "250 2.0.0 Ok: queued as 4Xyz\r\n"),
    ("250_rcpt", Phase::Rcpt, "250 2.1.5 Ok\r\n"),
    ("421_conns", Phase::Greeting, "421 4.7.0 Error: too many connections from 127.0.0.1\r\n"),
    ("450_rate", Phase::Mail, "450 4.7.1 Error: too much mail from 127.0.0.1\r\n"),
    ("451_grey", Phase::Rcpt, "451 4.7.1 Greylisted, please try again in 300 seconds\r\n"),
    ("550_unknown", Phase::Rcpt, "550 5.1.1 <x@example.org>: Recipient address rejected: User unknown in local recipient table\r\n"),
    ("550_quota", Phase::DataEnd, "550 5.4.5 Daily user sending quota exceeded\r\n"),
];

/// A controller that never makes the loop wait: high limits, no rate ceiling.
fn controller() -> Controller {
    Controller::new(
        ControllerParams {
            initial_connections: 64,
            max_connections: 64,
            rate_per_second: None,
            ..ControllerParams::default()
        },
        SystemClock::new(),
    )
}

fn ctx() -> FeedbackCtx {
    FeedbackCtx {
        in_flight_connections: 1,
        working_connections: 1,
    }
}

fn suppression_list(n: usize) -> Suppressions<MemoryStore> {
    let list = Suppressions::open(MemoryStore::default(), SoftPolicy::default()).unwrap();
    let bad = reply("550 5.1.1 user unknown\r\n");
    for i in 0..n {
        list.record_hard(&format!("gone{i}@example.org"), &bad, 1)
            .unwrap();
    }
    list
}

fn classify(c: &mut Criterion) {
    let classifier = Classifier::builtin().unwrap();
    let mut g = c.benchmark_group("classify");
    for (name, phase, wire) in REPLIES {
        let r = reply(wire);
        g.bench_with_input(BenchmarkId::from_parameter(name), &r, |b, r| {
            b.iter(|| black_box(classifier.classify(*phase, black_box(r)).verdict))
        });
    }
    g.finish();
}

fn reply_parse(c: &mut Criterion) {
    let one = b"250 2.1.5 Ok\r\n".as_slice();
    let three = b"550-5.1.1 The email account that you tried to reach does\r\n550-5.1.1 not exist. Please try double-checking the recipient's\r\n550 5.1.1 email address for typos.\r\n".as_slice();
    c.bench_function("reply_parse/one_line", |b| {
        b.iter(|| Reply::parse(black_box(one)))
    });
    c.bench_function("reply_parse/three_lines", |b| {
        b.iter(|| Reply::parse(black_box(three)))
    });
}

fn feedback(c: &mut Criterion) {
    let ctl = controller();
    c.bench_function("controller/on_reply_accept", |b| {
        b.iter(|| ctl.on_reply(Phase::Rcpt, black_box(&Verdict::Accept), ctx()))
    });
    c.bench_function("controller/on_transaction_success", |b| {
        b.iter(|| ctl.on_transaction_success(ctx()))
    });
}

/// The connection limit as admission enforces it: following the controller's.
fn permits(ctl: &Controller) -> Arc<ConcurrencyLimit> {
    ConcurrencyLimit::following(ctl.watch_limit())
}

fn admission(c: &mut Criterion) {
    let ctl = controller();
    let pool = permits(&ctl);
    c.bench_function("admission/uncontended", |b| {
        b.iter(|| {
            let _ = black_box(ctl.admit());
            black_box(pool.acquire().now_or_never())
        })
    });
    // 8 tasks on a 2-worker runtime, each doing `per_task` admit + acquire + release.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ctl = Arc::new(Controller::new(
        ControllerParams {
            initial_connections: 4,
            max_connections: 4,
            rate_per_second: None,
            ..ControllerParams::default()
        },
        SystemClock::new(),
    ));
    let pool = permits(&ctl);
    c.bench_function("admission/8_tasks", |b| {
        b.iter_custom(|iters| {
            let per_task = iters.div_ceil(8).max(1);
            let start = Instant::now();
            rt.block_on(async {
                let mut tasks = Vec::new();
                for _ in 0..8 {
                    let (ctl, pool) = (ctl.clone(), pool.clone());
                    tasks.push(tokio::spawn(async move {
                        for _ in 0..per_task {
                            let _ = ctl.admit();
                            let permit = pool.acquire().await;
                            drop(black_box(permit));
                        }
                    }));
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
            // Per operation across all tasks.
            start
                .elapsed()
                .mul_f64(iters as f64 / (per_task * 8) as f64)
        })
    });
}

fn suppression(c: &mut Criterion) {
    let list = suppression_list(100_000);
    c.bench_function("suppression/lookup_hit", |b| {
        b.iter(|| black_box(list.lookup(black_box("gone77777@example.org"))))
    });
    c.bench_function("suppression/lookup_miss", |b| {
        b.iter(|| black_box(list.lookup(black_box("fine@example.org"))))
    });
}

fn whole_loop(c: &mut Criterion) {
    let classifier = Classifier::builtin().unwrap();
    let ctl = controller();
    let pool = permits(&ctl);
    let list = suppression_list(10_000);
    let mail = reply("250 2.1.0 Ok\r\n");
    let rcpt = reply("250 2.1.5 Ok\r\n");
    let done = reply("250 2.0.0 Ok: queued as 4Xyz\r\n");
    c.bench_function("loop/per_message", |b| {
        b.iter(|| {
            if list.is_suppressed(black_box("reader42@example.org")) {
                return;
            }
            let _ = ctl.admit();
            let permit = pool.acquire().now_or_never();
            for (phase, r) in [
                (Phase::Mail, &mail),
                (Phase::Rcpt, &rcpt),
                (Phase::DataEnd, &done),
            ] {
                let v = classifier.classify(phase, r).verdict;
                ctl.on_reply(phase, &v, ctx());
            }
            ctl.on_transaction_success(ctx());
            drop(black_box(permit));
        })
    });
}

fn governor_floor(c: &mut Criterion) {
    let lim = RateLimiter::direct(Quota::per_second(
        NonZeroU32::new(u32::MAX).unwrap_or(NonZeroU32::MIN),
    ));
    c.bench_function("governor/raw_check", |b| b.iter(|| black_box(lim.check())));
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = classify, reply_parse, feedback, admission, suppression, whole_loop, governor_floor
}
criterion_main!(benches);
