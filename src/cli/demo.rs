//! `mailvalve demo`: the whole idea in under a minute, without an account. The engine is
//! the library's `demo` (a simulated provider, mailvalve in front of it, a campaign);
//! here are the arguments, the live status line and the summary in words.
//!
//! It must never run the demo anywhere but loopback (the engine's promise) and never
//! exit the process: [`main`] returns the error.

use crate::config::Mode;
use crate::demo::{run_demo_watched, DemoOptions, DemoReport, Progress, Watch};
use anyhow::Context;
use std::io::{IsTerminal, Write};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Which show `mailvalve demo` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoMode {
    /// Store-and-forward, as `mailvalve run` does by default: the mailer hands the whole
    /// campaign over in seconds, mailvalve paces it out to a provider that counts in
    /// fixed windows.
    Queue,
    /// Every transaction relayed live: mailvalve slows the mailer's threads down.
    Passthrough,
}

/// `mailvalve demo` options.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// queue (the default mode of `mailvalve run`) or passthrough.
    #[arg(long, value_enum, default_value_t = DemoMode::Queue)]
    pub mode: DemoMode,
    /// Messages in the campaign (one reader each). Default: 1000 in queue mode, 2000 in
    /// passthrough.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub messages: Option<u64>,
    /// Stop the campaign after this many seconds even if it is not finished (the
    /// suppression check and shutdown take a few seconds more). Default: 120 in queue
    /// mode, 90 in passthrough.
    #[arg(long, value_parser = clap::value_parser!(u64).range(5..=3600))]
    pub seconds_max: Option<u64>,
}

/// How the live status line is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    /// Not at all (tests).
    Off,
    /// Redrawn in place (`\r`) every 250 ms.
    Terminal,
    /// One line every 2 s (stderr is a file or a pipe).
    Lines,
}

impl Live {
    /// `Terminal` when stderr is a terminal, else `Lines`.
    pub fn for_stderr() -> Self {
        if std::io::stderr().is_terminal() {
            Live::Terminal
        } else {
            Live::Lines
        }
    }
}

fn per_minute(rate: Option<f64>) -> String {
    match rate {
        Some(r) => format!("{:.0}/min", r * 60.0),
        None => "unlimited".into(),
    }
}

/// The live status line.
fn line(p: &Progress) -> String {
    let queued = p
        .queued
        .map_or_else(String::new, |q| format!("  queued {q}"));
    format!(
        "[{:5.1}s] sent {}/{}{queued}  deferred {}  suppressed {}  connections {}/{}  rate {}  pauses {}  refused {}",
        p.elapsed.as_secs_f64(),
        p.delivered,
        p.messages,
        p.deferred,
        p.suppressed,
        p.connections_in_use,
        p.connection_limit,
        per_minute(p.rate),
        p.pauses,
        p.refused,
    )
}

/// Draws the live line until `stop`, then once more (final numbers).
async fn live_line(watch: Watch, mode: Live, stop: CancellationToken) {
    let period = match mode {
        Live::Off => return,
        Live::Terminal => Duration::from_millis(250),
        Live::Lines => Duration::from_secs(2),
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut width: usize = 0;
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
        };
        let line = line(&watch.progress());
        let mut err = std::io::stderr().lock();
        let _ = match mode {
            Live::Terminal => {
                let pad = width.saturating_sub(line.len());
                width = line.len();
                write!(err, "\r{line}{:pad$}", "")
            }
            _ => writeln!(err, "{line}"),
        };
        if last {
            if mode == Live::Terminal {
                let _ = writeln!(err);
            }
            let _ = err.flush();
            return;
        }
        let _ = err.flush();
    }
}

/// The summary printed at the end.
pub fn summary(r: &DemoReport) -> String {
    let o = &r.options;
    let c = &r.campaign;
    let s = &r.controller;
    let mut out = String::new();
    let status = if r.completed() {
        "finished"
    } else {
        "STOPPED at --seconds-max"
    };
    out.push_str(&format!(
        "\nmailvalve demo {status} in {:.1} s\n\n",
        r.elapsed.as_secs_f64()
    ));
    out.push_str(&format!(
        "  provider (simulated)  {} connections at once, {}, {} unknown recipients, greylisting\n",
        o.provider_connections,
        provider_limit(o),
        r.unknown
    ));
    match o.mode {
        Mode::Queue => {
            out.push_str(&format!(
                "  campaign              {} messages from {} sender threads, handed over to mailvalve's queue in {:.1} s\n",
                c.messages,
                o.senders,
                c.elapsed.as_secs_f64()
            ));
            out.push_str(&format!(
                "  queue                 {}\n",
                r.drained.map_or_else(
                    || format!(
                        "{} messages still queued when the demo stopped after {:.1} s",
                        r.left_in_queue,
                        r.delivering.as_secs_f64()
                    ),
                    |d| format!(
                        "empty after {:.1} s: every message delivered or failed",
                        d.as_secs_f64()
                    )
                )
            ));
        }
        Mode::Passthrough => out.push_str(&format!(
            "  campaign              {} messages from {} sender threads, in {:.1} s\n",
            c.messages,
            o.senders,
            c.elapsed.as_secs_f64()
        )),
    }
    out.push_str(&format!(
        "  delivered             {} of {} valid addresses exactly once ({} twice or more, {} missing)\n",
        r.delivered_once, r.valid, r.delivered_twice_or_more, r.missing
    ));
    out.push_str(&format!(
        "  achieved rate         {:.0}/min ({:.0}% of the provider's {}/min)\n",
        r.achieved_per_minute(),
        100.0 * r.achieved_per_minute() / f64::from(o.provider_rate_per_minute.max(1)),
        o.provider_rate_per_minute
    ));
    out.push_str(&format!(
        "  deferred (4xx)        {} = {} rate 450 4.7.1 + {} greylisting 451 + {} refused connection + {} held back by mailvalve\n",
        c.deferred(),
        c.deferred_rate,
        c.deferred_greylist,
        c.deferred_refused,
        c.deferred_held
    ));
    out.push_str(&format!(
        "  failed (5xx)          {} unknown recipients; suppression list now holds {}\n",
        match o.mode {
            Mode::Queue => r.provider.unknown_rcpts,
            Mode::Passthrough => c.failed,
        },
        r.suppressed
    ));
    out.push_str(&format!(
        "  second campaign       {} messages to the unknown addresses: {} answered by mailvalve, {} reached the provider\n",
        r.second.messages, r.second.answered_locally, r.second_reached_provider
    ));
    out.push_str(&format!(
        "  provider saw          at most {} sessions at once, {} refused with 421, {} MAIL refused with 450\n",
        r.provider_max_sessions, r.provider_refused, r.provider.rate_refusals
    ));
    out.push_str(&format!(
        "  mailvalve ended at    {} connections allowed (ceiling {}; at most {} open or being opened at once), rate {} (ceiling {}); {} connection decreases, {} rate decreases, {} pauses\n",
        s.concurrency_limit,
        s.concurrency_ceiling
            .map_or_else(|| "none".to_string(), |c| c.to_string()),
        r.max_connections_used,
        per_minute(r.final_rate),
        s.rate_ceiling
            .map_or_else(|| "none".to_string(), |c| per_minute(Some(c))),
        s.connection_decreases,
        s.rate_decreases,
        s.pauses
    ));
    out.push_str(&format!("  learned               {}\n", learned(r)));
    out.push('\n');
    out.push_str(&match o.mode {
        Mode::Queue => explain_queue(r),
        Mode::Passthrough => explain(r),
    });
    out.push('\n');
    out
}

/// The provider's message limit, in words.
fn provider_limit(o: &DemoOptions) -> String {
    match o.provider_window {
        Some(w) => {
            let per = (f64::from(o.provider_rate_per_minute) * w.as_secs_f64() / 60.0).floor();
            format!(
                "{per:.0} messages per {} s window ({}/min, counted like Postfix's anvil)",
                w.as_secs(),
                o.provider_rate_per_minute
            )
        }
        None => format!("{}/min", o.provider_rate_per_minute),
    }
}

/// What mailvalve learned, as it would save it for a restart.
pub fn learned(r: &DemoReport) -> String {
    let l = &r.learned;
    let rate = l.rate.as_ref();
    let mut parts = vec![format!(
        "rate {} (ceiling {})",
        per_minute(rate.and_then(|m| m.rate)),
        rate.and_then(|m| m.ceiling)
            .map_or_else(|| "none".to_string(), |c| per_minute(Some(c)))
    )];
    parts.push(match rate.and_then(|m| m.window_ms) {
        Some(ms) => format!("provider's window {:.1} s", ms as f64 / 1000.0),
        None => "provider's window not inferred".to_string(),
    });
    if let Some(c) = &l.connections {
        parts.push(format!(
            "connections {} (ceiling {})",
            c.limit,
            c.ceiling
                .map_or_else(|| "none".to_string(), |c| c.to_string())
        ));
        if let Some(ms) = c.open_interval_ms {
            parts.push(format!(
                "a new connection at most every {:.1} s",
                ms as f64 / 1000.0
            ));
        }
    }
    parts.join(", ")
}

/// Queue mode's paragraph: what happened, in words.
fn explain_queue(r: &DemoReport) -> String {
    let o = &r.options;
    let c = &r.campaign;
    let s = &r.controller;
    let mut p = format!(
        "What happened: the mailer opened {} sessions to mailvalve and handed over all {} \
         messages in {:.1} s: mailvalve answered each with 250 once it was safe in its \
         queue on disk, so the mailer was done long before the provider had seen them. \
         Then mailvalve paced the queue out to the provider. ",
        o.senders,
        c.messages,
        c.elapsed.as_secs_f64()
    );
    if r.provider.rate_refusals > 0 {
        p.push_str(&format!(
            "The provider counts in fixed windows: it accepted a burst, then answered \
             \"450 4.7.1 too much mail\" until its window was over ({} refusals in all). \
             mailvalve took each one as a rate limit ({} rate decrease{}), kept the refused \
             messages in the queue and retried them at its own pace, paced by the same limit. ",
            r.provider.rate_refusals,
            s.rate_decreases,
            if s.rate_decreases == 1 { "" } else { "s" }
        ));
    }
    p.push_str(&format!(
        "The provider accepted {:.0} messages a minute of the {} it allows. What mailvalve \
         learned — {} — is what it saves for a restart. The {} unknown addresses were \
         rejected by the provider once each with 550 5.1.1 and went on the suppression \
         list, so in the second campaign mailvalve answered {} of {} of them itself.",
        r.achieved_per_minute(),
        o.provider_rate_per_minute,
        learned(r),
        r.suppressed,
        r.second.answered_locally,
        r.second.messages
    ));
    wrap(&p, 88)
}

/// One paragraph: what happened, in words.
fn explain(r: &DemoReport) -> String {
    let o = &r.options;
    let c = &r.campaign;
    let s = &r.controller;
    let plural = |n: u64| if n == 1 { "" } else { "s" };
    let mut p = format!(
        "What happened: the mailer opened {} sessions to mailvalve and sent as fast as it \
         could. mailvalve started with {} connection{} to the provider and added one after \
         each run of successful messages; ",
        o.senders,
        o.initial_connections,
        plural(o.initial_connections as u64)
    );
    if r.provider_refused > 0 {
        p.push_str(&format!(
            "when the provider refused a connection with 421 ({} time{} in all, probes \
             included) it dropped back at once to the connections that were working, and \
             tried one more only after {} s. The provider never saw more than its {} \
             sessions. ",
            r.provider_refused,
            plural(r.provider_refused),
            o.probe_interval.as_secs(),
            o.provider_connections
        ));
    } else {
        p.push_str("the provider never had to refuse a connection. ");
    }
    if s.rate_decreases > 0 {
        p.push_str(&format!(
            "It knew no rate limit to begin with: the provider's \"450 4.7.1 too much mail\" \
             replies ({} in all) made it halve its rate {} time{}, after which it ramped back \
             up in 10% steps to just below the rate that had been refused. Over the whole \
             campaign the provider accepted {:.0} messages a minute of the {} it allows. ",
            r.provider.rate_refusals,
            s.rate_decreases,
            plural(s.rate_decreases),
            r.achieved_per_minute(),
            o.provider_rate_per_minute
        ));
    }
    p.push_str(&format!(
        "The mailer saw {} 4xx replies ({} rate, {} greylisting, {} refused connection, {} \
         held back by mailvalve because no connection or rate slot was free within 2 s) and \
         retried each after 1-3 s; the greylisted addresses went through on their second \
         try. The {} unknown addresses were rejected by the provider once each with 550 \
         5.1.1 and went on the suppression list, so in the second campaign mailvalve \
         answered {} of {} of them itself and the provider never saw those addresses again.",
        c.deferred(),
        c.deferred_rate,
        c.deferred_greylist,
        c.deferred_refused,
        c.deferred_held,
        r.suppressed,
        r.second.answered_locally,
        r.second.messages
    ));
    wrap(&p, 88)
}

fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut col = 0;
    for word in text.split_whitespace() {
        if col > 0 && col + 1 + word.len() > width {
            out.push('\n');
            col = 0;
        } else if col > 0 {
            out.push(' ');
            col += 1;
        }
        out.push_str(word);
        col += word.len();
    }
    out.push('\n');
    out
}

/// `mailvalve demo`: runs the demo on its own runtime and prints the summary.
pub fn main(args: &DemoArgs) -> anyhow::Result<()> {
    // Quiet by default: the live line and the summary tell the story. RUST_LOG=info
    // shows every provider reply and every policy decision.
    super::logging::init_tracing("error");
    let base = match args.mode {
        DemoMode::Queue => DemoOptions::default(),
        DemoMode::Passthrough => DemoOptions::passthrough(),
    };
    let opts = DemoOptions {
        messages: args
            .messages
            .map_or(base.messages, |n| usize::try_from(n).unwrap_or(usize::MAX)),
        max_time: args.seconds_max.map_or(base.max_time, Duration::from_secs),
        ..base
    };
    let seconds_max = opts.max_time.as_secs();
    eprintln!(
        "mailvalve demo ({} mode): a simulated provider ({} connections, {}, unknown \
         recipients, greylisting) on 127.0.0.1, mailvalve in front of it, {} messages from \
         {} sender threads.",
        match opts.mode {
            Mode::Queue => "queue",
            Mode::Passthrough => "passthrough",
        },
        opts.provider_connections,
        provider_limit(&opts),
        opts.messages,
        opts.senders
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = rt.block_on(async {
        let stop = CancellationToken::new();
        let mut live = None;
        let report = run_demo_watched(opts, |w| {
            live = Some(tokio::spawn(live_line(w, Live::for_stderr(), stop.clone())));
        })
        .await;
        stop.cancel();
        if let Some(live) = live {
            let _ = tokio::time::timeout(Duration::from_secs(2), live).await;
        }
        report
    })?;
    print!("{}", summary(&report));
    let _ = std::io::stdout().flush();
    if !report.completed() {
        anyhow::bail!(
            "the demo stopped after --seconds-max={} with {} messages unfinished",
            seconds_max,
            report.campaign.unfinished + report.second.unfinished + report.left_in_queue
        );
    }
    Ok(())
}
