//! The mailer of `mailvalve demo`: a newsletter tool in miniature. A few sender tasks
//! ("threads"), each over its own SMTP session to mailvalve, send one message per reader;
//! a 4xx puts the message back in the queue for 1–3 s (like a mailer would: no backoff,
//! no hint honoured), a 5xx marks it failed.
//!
//! It must never connect anywhere but the loopback address it is given, and never wait
//! without a bound: every read has a timeout and every loop watches the stop token.

use super::provider::reader;
use rand::Rng;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

/// No reply in this long: the session is given up (and the message retried).
const REPLY_WAIT: Duration = Duration::from_secs(30);
/// Longest reply line we read; anything longer is a broken peer.
const MAX_LINE: usize = 4096;
/// The text mailvalve puts in its local answer for a suppressed address.
const SUPPRESSED_LOCALLY: &str = "suppressed by mailvalve";

/// What one campaign sends, and how.
#[derive(Debug, Clone)]
pub struct CampaignSpec {
    /// mailvalve's address (loopback).
    pub relay: SocketAddr,
    /// Reader numbers, one message each.
    pub readers: Vec<u64>,
    /// Concurrent sessions ("threads").
    pub senders: usize,
    /// A deferred message waits a random time in this range.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

/// Counters the live line reads while the campaign runs.
#[derive(Debug, Default)]
pub struct Counters {
    /// Accepted with 250 after DATA.
    pub sent: AtomicU64,
    /// 4xx replies seen (each one a retry), by kind.
    pub deferred_rate: AtomicU64,
    pub deferred_greylist: AtomicU64,
    pub deferred_refused: AtomicU64,
    pub deferred_held: AtomicU64,
    /// 5xx: the message is given up.
    pub failed: AtomicU64,
    /// ... of which mailvalve answered locally (a suppressed address).
    pub answered_locally: AtomicU64,
    /// Sessions to mailvalve that could not be opened or broke.
    pub session_errors: AtomicU64,
}

impl Counters {
    pub fn deferred(&self) -> u64 {
        self.deferred_rate.load(Ordering::Relaxed)
            + self.deferred_greylist.load(Ordering::Relaxed)
            + self.deferred_refused.load(Ordering::Relaxed)
            + self.deferred_held.load(Ordering::Relaxed)
    }
}

/// The end of a campaign.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Messages neither sent nor failed when it stopped (0 unless stopped early).
    pub unfinished: usize,
}

/// One reply: code and text (lines joined).
#[derive(Debug, Clone)]
struct Reply {
    code: u16,
    text: String,
}

impl Reply {
    fn class(&self) -> u16 {
        self.code / 100
    }
}

#[derive(Debug)]
enum ClientError {
    Io(std::io::Error),
    Timeout,
    Closed,
    Garbage,
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::Timeout => f.write_str("no reply in time"),
            Self::Closed => f.write_str("connection closed"),
            Self::Garbage => f.write_str("malformed reply"),
        }
    }
}

/// A minimal SMTP client session (PIPELINING for MAIL + RCPT).
struct Session {
    io: BufReader<TcpStream>,
    line: String,
}

impl Session {
    async fn open(relay: SocketAddr) -> Result<Self, ClientError> {
        let tcp = timeout(REPLY_WAIT, TcpStream::connect(relay))
            .await
            .map_err(|_| ClientError::Timeout)??;
        let _ = tcp.set_nodelay(true);
        let mut s = Self {
            io: BufReader::new(tcp),
            line: String::new(),
        };
        let greeting = s.reply().await?;
        if greeting.class() != 2 {
            return Err(ClientError::Closed);
        }
        s.send("EHLO mailer.demo.test\r\n").await?;
        if s.reply().await?.class() != 2 {
            return Err(ClientError::Garbage);
        }
        Ok(s)
    }

    async fn send(&mut self, wire: &str) -> Result<(), ClientError> {
        timeout(REPLY_WAIT, self.io.get_mut().write_all(wire.as_bytes()))
            .await
            .map_err(|_| ClientError::Timeout)??;
        Ok(())
    }

    /// Reads one (possibly multi-line) reply.
    async fn reply(&mut self) -> Result<Reply, ClientError> {
        let mut text = String::new();
        loop {
            self.line.clear();
            let n = timeout(REPLY_WAIT, self.read_line())
                .await
                .map_err(|_| ClientError::Timeout)??;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            let line = self.line.trim_end_matches(['\r', '\n']);
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .filter(|c| (200..600).contains(c))
                .ok_or(ClientError::Garbage)?;
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(line.get(4..).unwrap_or(""));
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(Reply { code, text });
            }
        }
    }

    async fn read_line(&mut self) -> Result<usize, ClientError> {
        let mut limited = (&mut self.io).take(MAX_LINE as u64);
        let n = limited.read_line(&mut self.line).await?;
        if n == MAX_LINE && !self.line.ends_with('\n') {
            return Err(ClientError::Garbage);
        }
        Ok(n)
    }

    async fn quit(mut self) {
        if self.send("QUIT\r\n").await.is_ok() {
            let _ = timeout(Duration::from_secs(2), self.reply()).await;
        }
    }
}

/// What became of one attempt.
enum Attempt {
    Sent,
    Failed { local: bool },
    Deferred { reply: Reply, keep_session: bool },
}

fn body(n: u64) -> String {
    format!(
        "From: Demo Newsletter <news@demo.test>\r\n\
         To: <{to}>\r\n\
         Subject: mailvalve demo, issue 1\r\n\
         Message-ID: <demo-{n}@demo.test>\r\n\
         \r\n\
         Hello reader {n},\r\n\
         this newsletter was sent through mailvalve to a simulated provider.\r\n\
         .\r\n",
        to = reader(n)
    )
}

/// MAIL + RCPT (pipelined), then DATA and the message.
async fn attempt(s: &mut Session, n: u64) -> Result<Attempt, ClientError> {
    s.send(&format!(
        "MAIL FROM:<news@demo.test>\r\nRCPT TO:<{}>\r\n",
        reader(n)
    ))
    .await?;
    let mail = s.reply().await?;
    let rcpt = s.reply().await?;
    let refused = if mail.class() != 2 {
        Some(mail)
    } else if rcpt.class() != 2 {
        Some(rcpt)
    } else {
        s.send("DATA\r\n").await?;
        let go = s.reply().await?;
        if go.code != 354 {
            Some(go)
        } else {
            s.send(&body(n)).await?;
            let done = s.reply().await?;
            if done.class() == 2 {
                return Ok(Attempt::Sent);
            }
            Some(done)
        }
    };
    let Some(r) = refused else {
        return Ok(Attempt::Sent);
    };
    // Leave the session clean for the next message.
    let mut keep_session = r.code != 421;
    if keep_session {
        s.send("RSET\r\n").await?;
        keep_session = s.reply().await?.class() == 2;
    }
    Ok(match r.class() {
        5 => Attempt::Failed {
            local: r.text.contains(SUPPRESSED_LOCALLY),
        },
        _ => Attempt::Deferred {
            reply: r,
            keep_session,
        },
    })
}

/// The retry queue: reader numbers ordered by when they may be tried.
struct Queue {
    heap: Mutex<BinaryHeap<Reverse<(Instant, u64)>>>,
    remaining: AtomicUsize,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, BinaryHeap<Reverse<(Instant, u64)>>> {
        self.heap.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next message that is due, or how long to wait for one.
    fn next(&self) -> Result<u64, Duration> {
        let now = Instant::now();
        let mut heap = self.lock();
        match heap.peek() {
            Some(Reverse((at, _))) if *at <= now => match heap.pop() {
                Some(Reverse((_, n))) => Ok(n),
                None => Err(Duration::from_millis(20)),
            },
            Some(Reverse((at, _))) => Err((*at - now).min(Duration::from_millis(100))),
            None => Err(Duration::from_millis(20)),
        }
    }

    fn later(&self, n: u64, delay: Duration) {
        self.lock().push(Reverse((Instant::now() + delay, n)));
    }

    fn done(&self) {
        self.remaining.fetch_sub(1, Ordering::AcqRel);
    }
}

fn retry_delay(spec: &CampaignSpec) -> Duration {
    let lo = spec.retry_min.as_millis() as u64;
    let hi = (spec.retry_max.as_millis() as u64).max(lo + 1);
    Duration::from_millis(rand::rng().random_range(lo..hi))
}

fn count_deferral(c: &Counters, r: &Reply) {
    let t = r.text.to_ascii_lowercase();
    let which = if t.contains("too much mail") {
        &c.deferred_rate
    } else if t.contains("greylist") {
        &c.deferred_greylist
    } else if t.contains("refused the connection") {
        &c.deferred_refused
    } else {
        &c.deferred_held
    };
    which.fetch_add(1, Ordering::Relaxed);
}

/// Runs the campaign until every message is sent or failed, or `stop` fires.
pub async fn run(spec: CampaignSpec, counters: Arc<Counters>, stop: CancellationToken) -> Outcome {
    let now = Instant::now();
    let queue = Arc::new(Queue {
        heap: Mutex::new(spec.readers.iter().map(|&n| Reverse((now, n))).collect()),
        remaining: AtomicUsize::new(spec.readers.len()),
    });
    let spec = Arc::new(spec);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..spec.senders.max(1) {
        tasks.spawn(sender(
            spec.clone(),
            queue.clone(),
            counters.clone(),
            stop.clone(),
        ));
    }
    while tasks.join_next().await.is_some() {}
    Outcome {
        unfinished: queue.remaining.load(Ordering::Acquire),
    }
}

async fn pause(d: Duration, stop: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.cancelled() => {}
    }
}

/// One "thread" of the mailer: one session at a time, one message at a time.
async fn sender(
    spec: Arc<CampaignSpec>,
    queue: Arc<Queue>,
    c: Arc<Counters>,
    stop: CancellationToken,
) {
    let mut session: Option<Session> = None;
    while !stop.is_cancelled() && queue.remaining.load(Ordering::Acquire) > 0 {
        let n = match queue.next() {
            Ok(n) => n,
            Err(wait) => {
                pause(wait, &stop).await;
                continue;
            }
        };
        let s = match session.as_mut() {
            Some(s) => s,
            None => match Session::open(spec.relay).await {
                Ok(s) => session.insert(s),
                Err(e) => {
                    tracing::debug!("demo mailer: cannot open a session: {e}");
                    c.session_errors.fetch_add(1, Ordering::Relaxed);
                    queue.later(n, Duration::ZERO);
                    pause(Duration::from_millis(500), &stop).await;
                    continue;
                }
            },
        };
        let outcome = tokio::select! {
            r = attempt(s, n) => r,
            // Abandon the attempt: the session is dropped below.
            _ = stop.cancelled() => Err(ClientError::Closed),
        };
        match outcome {
            Ok(Attempt::Sent) => {
                c.sent.fetch_add(1, Ordering::Relaxed);
                queue.done();
            }
            Ok(Attempt::Failed { local }) => {
                c.failed.fetch_add(1, Ordering::Relaxed);
                if local {
                    c.answered_locally.fetch_add(1, Ordering::Relaxed);
                }
                queue.done();
            }
            Ok(Attempt::Deferred {
                reply,
                keep_session,
            }) => {
                count_deferral(&c, &reply);
                if !keep_session {
                    session = None;
                }
                queue.later(n, retry_delay(&spec));
            }
            Err(e) => {
                tracing::debug!("demo mailer: session failed: {e}");
                c.session_errors.fetch_add(1, Ordering::Relaxed);
                session = None;
                queue.later(n, retry_delay(&spec));
            }
        }
    }
    if let Some(s) = session {
        let _ = timeout(Duration::from_secs(3), s.quit()).await;
    }
}
