//! Turns the configuration and the chosen provider profile into the policy's pieces:
//! the controller's parameters, the fixed quotas, and the classifier's rule table (user
//! rules, then the profile's, then the built-in defaults).
//!
//! The precedence of limits, in one place: the profile's limits, overridden key by key
//! by `[upstream.limits]`; `upstream.max_connections` and `[upstream.rate]` are hard caps
//! on top. It must never raise a limit above what the user configured.
//!
//! A profile figure's provenance decides what it becomes (issue 10): a *published*
//! per-second / per-minute rate or connection count is a hard cap; an *unverified* one
//! (a guess, e.g. every figure of `generic`) is where the controller starts, and probing
//! may go above it — up to `upstream.max_connections` and with no rate ceiling but the
//! user's — unless `upstream.learn_above_profile = false`. Hourly and daily quotas are
//! caps whatever their provenance: overrunning one can cost a day of sending.

use crate::config::limits::{LimitKey, Limits};
use crate::config::profile::Profile;
use crate::config::{Config, RateConfig};
use crate::policy::classify::Classifier;
use crate::policy::controller::ControllerParams;

/// The profile's limits with the user's overrides applied.
pub fn limits(cfg: &Config, profile: &Profile) -> Limits {
    profile.limits.overridden_by(&cfg.upstream.limits)
}

fn min_opt<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether the effective figure for `key` is a hard cap: the user set it in
/// `[upstream.limits]`, or the profile publishes it, or learning above the profile is
/// off. Otherwise it is an unverified guess: a starting point.
fn is_cap(cfg: &Config, profile: &Profile, key: LimitKey) -> bool {
    cfg.upstream.limits.is_set(key)
        || profile.is_published(key)
        || !cfg.upstream.learn_above_profile
}

/// The adaptive message rate's bounds, in messages per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateBounds {
    /// Where the rate starts: the tightest figure of all (`None`: unknown, the
    /// controller starts cautiously).
    pub start: Option<f64>,
    /// The hard ceiling, never exceeded: published figures, `[upstream.limits]`,
    /// `[upstream.rate]`, and every figure when `learn_above_profile = false`
    /// (`None`: no ceiling).
    pub cap: Option<f64>,
}

/// The per-second / per-minute figures, split into caps and starting points.
pub fn rate_bounds(cfg: &Config, profile: &Profile) -> RateBounds {
    let l = limits(cfg, profile);
    let u = &cfg.upstream.rate;
    let mut caps = Vec::new();
    let mut starts = Vec::new();
    for (key, figure, user, per) in [
        (
            LimitKey::MessagesPerSecond,
            l.messages_per_second,
            u.per_second,
            1.0,
        ),
        (
            LimitKey::MessagesPerMinute,
            l.messages_per_minute,
            u.per_minute,
            60.0,
        ),
    ] {
        if let Some(f) = figure {
            let f = f64::from(f) / per;
            if is_cap(cfg, profile, key) {
                caps.push(f);
            } else {
                starts.push(f);
            }
        }
        caps.extend(user.map(|f| f64::from(f) / per));
    }
    let cap = caps.into_iter().reduce(f64::min);
    let start = starts.into_iter().chain(cap).reduce(f64::min);
    // A server of one's own (`unpaced_start`) is not paced before it objects.
    let start = start.or(profile.unpaced_start.then_some(f64::INFINITY));
    RateBounds { start, cap }
}

/// The connection limit's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionBounds {
    /// Connections to start with (the profile's `initial_connections`, within the cap).
    pub initial: usize,
    /// An unverified `max_connections` figure (within `initial..=cap`): where the
    /// learned ceiling starts; probing may go above it. `None` when the figure is a cap
    /// or there is none.
    pub start_ceiling: Option<usize>,
    /// The hard cap: `upstream.max_connections`, and a published (or user-set, or —
    /// with `learn_above_profile = false` — any) `max_connections` below it.
    pub cap: usize,
}

/// The connection figures, split into the cap and the starting points.
pub fn connection_bounds(cfg: &Config, profile: &Profile) -> ConnectionBounds {
    let l = limits(cfg, profile);
    let user = cfg.upstream.max_connections.max(1);
    let hard = is_cap(cfg, profile, LimitKey::MaxConnections);
    let cap = match l.max_connections {
        Some(m) if hard => m.clamp(1, user),
        _ => user,
    };
    let initial = l.initial_connections.unwrap_or(1).clamp(1, cap);
    let start_ceiling = l
        .max_connections
        .filter(|_| !hard)
        .map(|m| m.clamp(initial, cap));
    ConnectionBounds {
        initial,
        start_ceiling,
        cap,
    }
}

/// What the limits mean, in one line for `mailvalve check`: where the rate and the
/// connections start and what caps them.
pub fn describe(cfg: &Config, profile: &Profile) -> String {
    let r = rate_bounds(cfg, profile);
    let c = connection_bounds(cfg, profile);
    let per_min = |v: f64| format!("{}/min", (v * 60.0 * 100.0).round() / 100.0);
    let rate = match (r.start, r.cap) {
        (None, None) => "rate learned from the provider's replies, no ceiling".to_string(),
        (Some(s), None) if s.is_infinite() => {
            "rate not paced until the server objects, then learned, no ceiling".to_string()
        }
        (Some(s), None) => format!("rate starts at {}, learned upward, no ceiling", per_min(s)),
        (Some(s), Some(c)) if s < c => {
            format!(
                "rate starts at {}, learned upward, at most {}",
                per_min(s),
                per_min(c)
            )
        }
        (_, Some(c)) => format!("rate at most {} (hard cap)", per_min(c)),
    };
    let conns = match c.start_ceiling {
        Some(s) if s < c.cap => format!(
            "connections start at {}, learned upward from {s} up to {}",
            c.initial, c.cap
        ),
        _ => format!("connections start at {}, at most {}", c.initial, c.cap),
    };
    let f = fixed_rates(cfg, profile);
    let quotas: Vec<String> = [
        (f.per_hour, "messages/hour"),
        (f.per_day, "messages/day"),
        (f.recipients_per_day, "recipients/day"),
    ]
    .into_iter()
    .filter_map(|(v, unit)| v.map(|v| format!("{v} {unit}")))
    .collect();
    let quotas = if quotas.is_empty() {
        "no quota".to_string()
    } else {
        format!("quotas {}", quotas.join(", "))
    };
    let learn = if cfg.upstream.learn_above_profile {
        "learn_above_profile = true"
    } else {
        "learn_above_profile = false: every profile figure is a cap"
    };
    format!("{rate}; {conns}; {quotas} ({learn})")
}

/// Controller parameters: connections from the profile's initial count up to the
/// [`connection_bounds`] cap; the adaptive rate from [`rate_bounds`].
pub fn controller_params(cfg: &Config, profile: &Profile) -> ControllerParams {
    let conns = connection_bounds(cfg, profile);
    let rate = rate_bounds(cfg, profile);
    let per_sec = rate.start;
    let defaults = ControllerParams::default();
    ControllerParams {
        initial_connections: conns.initial,
        max_connections: conns.cap,
        unverified_connections: conns.start_ceiling,
        rate_per_second: per_sec,
        rate_cap: rate.cap,
        rate_floor: defaults.rate_floor.min(per_sec.unwrap_or(f64::MAX)),
        // An unreachable provider is tried again at least every reachability_interval.
        connect_backoff_max: defaults
            .connect_backoff_max
            .min(cfg.upstream.reachability_interval),
        ..defaults
    }
}

/// The fixed limits enforced besides the adaptive rate: hourly and daily quotas (the
/// tighter of profile and user; caps whatever their provenance), the daily recipient
/// quota, and the user's own per-second / per-minute caps.
pub fn fixed_rates(cfg: &Config, profile: &Profile) -> RateConfig {
    let l = limits(cfg, profile);
    let u = &cfg.upstream.rate;
    RateConfig {
        per_second: u.per_second,
        per_minute: u.per_minute,
        per_hour: min_opt(l.messages_per_hour, u.per_hour),
        per_day: min_opt(l.messages_per_day, u.per_day),
        recipients_per_day: min_opt(l.recipients_per_day, u.recipients_per_day),
    }
}

/// Transactions per provider connection: the smaller of the profile's
/// `messages_per_connection` (or `[upstream.limits]`'s) and
/// `upstream.max_messages_per_connection`, at least 1.
pub fn messages_per_connection(cfg: &Config, profile: &Profile) -> usize {
    let l = limits(cfg, profile);
    min_opt(
        l.messages_per_connection,
        Some(cfg.upstream.max_messages_per_connection),
    )
    .unwrap_or(1)
    .max(1)
}

/// The largest message the provider takes as the profile (or `[upstream.limits]`) says;
/// the EHLO `SIZE` it announces is learned on top at run time.
pub fn provider_message_size(cfg: &Config, profile: &Profile) -> Option<usize> {
    limits(cfg, profile).max_message_size
}

/// The largest message mailvalve takes before it has talked to the provider: the smaller
/// of `server.max_message_size` and the profile's figure.
pub fn message_size(cfg: &Config, profile: &Profile) -> usize {
    min_opt(
        Some(cfg.server.max_message_size),
        provider_message_size(cfg, profile),
    )
    .unwrap_or(cfg.server.max_message_size)
}

/// The classifier: user rules, then the profile's, then the built-in defaults.
pub fn classifier(cfg: &Config, profile: &Profile) -> anyhow::Result<Classifier> {
    Classifier::new(&cfg.rules, &profile.rules).map_err(|e| match e.origin {
        crate::policy::rules::RuleSource::Profile => {
            anyhow::anyhow!("provider profile {}: {e}", profile.name)
        }
        _ => anyhow::anyhow!("config key {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::profile;
    use crate::policy::verdict::{Phase, Verdict};
    use crate::smtp::Reply;

    fn office() -> Profile {
        profile::builtin("office365").unwrap().unwrap()
    }

    fn named(name: &str) -> Profile {
        profile::builtin(name).unwrap().unwrap()
    }

    /// Published figures are caps; unverified ones are starts, with no rate ceiling and
    /// `upstream.max_connections` as the only connection cap.
    #[test]
    fn unverified_figures_are_starting_points() {
        let cfg = Config::default();
        let g = named("generic");
        let r = rate_bounds(&cfg, &g);
        assert_eq!(r.cap, None, "generic: no fixed rate ceiling");
        assert!((r.start.unwrap() - 0.5).abs() < 1e-9, "starts at 30/min");
        let c = connection_bounds(&cfg, &g);
        assert_eq!((c.initial, c.start_ceiling, c.cap), (1, Some(3), 10));
        let p = controller_params(&cfg, &g);
        assert_eq!(p.max_connections, 10, "up to upstream.max_connections");
        // Office 365: 30/min and 3 connections are published, so caps.
        let o = office();
        let r = rate_bounds(&cfg, &o);
        assert!((r.cap.unwrap() - 0.5).abs() < 1e-9);
        assert_eq!(r.start, r.cap);
        let c = connection_bounds(&cfg, &o);
        assert_eq!((c.initial, c.start_ceiling, c.cap), (2, None, 3));
        // SES: 1/s published; its connection figures are guesses.
        let ses = named("amazon-ses");
        assert_eq!(rate_bounds(&cfg, &ses).cap, Some(1.0));
        assert_eq!(connection_bounds(&cfg, &ses).cap, 10);
        // Gmail: 20/min unverified, so a start only.
        let r = rate_bounds(&cfg, &named("gmail"));
        assert_eq!(r.cap, None);
        assert!((r.start.unwrap() - 20.0 / 60.0).abs() < 1e-9);
    }

    #[test]
    fn a_server_of_ones_own_starts_unpaced_an_unknown_provider_cautiously() {
        let cfg = Config::default();
        let local = controller_params(&cfg, &named("local"));
        assert_eq!(local.rate_per_second, Some(f64::INFINITY));
        assert_eq!(local.rate_cap, None);
        let generic = controller_params(&cfg, &named("generic"));
        assert!(generic.rate_per_second.is_some_and(f64::is_finite));
        assert_eq!(
            generic.rate_cap, None,
            "generic learns upward without a ceiling"
        );
        assert!(generic.unverified_connections.is_some());
        let office = controller_params(&cfg, &named("office365"));
        assert_eq!(office.rate_cap, Some(0.5), "published: 30/min is a cap");
    }

    #[test]
    fn describe_says_what_is_learned_and_what_is_capped() {
        let mut cfg = Config::default();
        let d = describe(&cfg, &named("generic"));
        assert!(
            d.contains("rate starts at 30/min, learned upward, no ceiling"),
            "{d}"
        );
        assert!(
            d.contains("connections start at 1, learned upward from 3 up to 10"),
            "{d}"
        );
        let d = describe(&cfg, &office());
        assert!(d.contains("rate at most 30/min (hard cap)"), "{d}");
        assert!(d.contains("quotas 10000 recipients/day"), "{d}");
        cfg.upstream.learn_above_profile = false;
        let d = describe(&cfg, &named("generic"));
        assert!(d.contains("connections start at 1, at most 3"), "{d}");
    }

    /// `upstream.learn_above_profile = false`: every profile figure is a hard cap.
    #[test]
    fn learning_above_the_profile_can_be_turned_off() {
        let mut cfg = Config::default();
        cfg.upstream.learn_above_profile = false;
        let g = named("generic");
        let r = rate_bounds(&cfg, &g);
        assert!((r.cap.unwrap() - 0.5).abs() < 1e-9);
        assert_eq!(r.start, r.cap);
        let c = connection_bounds(&cfg, &g);
        assert_eq!((c.initial, c.start_ceiling, c.cap), (1, None, 3));
        assert_eq!(controller_params(&cfg, &g).max_connections, 3);
    }

    /// The user's own figures are caps on top, whatever the profile says.
    #[test]
    fn user_figures_are_caps() {
        let mut cfg = Config::default();
        cfg.upstream.rate.per_minute = Some(120);
        cfg.upstream.max_connections = 2;
        let g = named("generic");
        let r = rate_bounds(&cfg, &g);
        assert_eq!(r.cap, Some(2.0), "[upstream.rate] per_minute = 120");
        assert!(
            (r.start.unwrap() - 0.5).abs() < 1e-9,
            "still starts at the guess"
        );
        let c = connection_bounds(&cfg, &g);
        assert_eq!((c.initial, c.start_ceiling, c.cap), (1, Some(2), 2));
        let mut cfg = Config::default();
        cfg.upstream.limits.messages_per_minute = Some(90);
        cfg.upstream.limits.max_connections = Some(4);
        let r = rate_bounds(&cfg, &g);
        assert_eq!(r.cap, Some(1.5), "[upstream.limits] is the user's: a cap");
        assert_eq!(connection_bounds(&cfg, &g).cap, 4);
    }

    /// Hourly and daily quotas stay caps even when unverified; recipient quotas go to
    /// the fixed limits too.
    #[test]
    fn quotas_stay_caps_and_count_recipients_where_the_provider_does() {
        let cfg = Config::default();
        assert_eq!(fixed_rates(&cfg, &named("gmx")).per_hour, Some(100));
        assert_eq!(
            fixed_rates(&cfg, &office()).recipients_per_day,
            Some(10_000)
        );
        let ses = fixed_rates(&cfg, &named("amazon-ses"));
        assert_eq!((ses.per_day, ses.recipients_per_day), (None, Some(200)));
        let mut cfg = Config::default();
        cfg.upstream.rate.recipients_per_day = Some(50);
        assert_eq!(fixed_rates(&cfg, &office()).recipients_per_day, Some(50));
    }

    #[test]
    fn profile_limits_with_user_caps() {
        let mut cfg = Config::default();
        let p = controller_params(&cfg, &office());
        assert_eq!((p.initial_connections, p.max_connections), (2, 3));
        assert!((p.rate_per_second.unwrap() - 0.5).abs() < 1e-9, "30/min");
        cfg.upstream.max_connections = 1;
        cfg.upstream.limits.messages_per_minute = Some(12);
        let p = controller_params(&cfg, &office());
        assert_eq!((p.initial_connections, p.max_connections), (1, 1));
        assert!((p.rate_per_second.unwrap() - 0.2).abs() < 1e-9);
    }

    /// In simulated time (the controller's injected clock): a provider away for ten
    /// minutes is checked at least every reachability_interval, so the first check after
    /// it is back comes within that interval — not after a backoff grown to minutes.
    #[test]
    fn an_unreachable_provider_is_checked_within_the_interval() {
        use crate::policy::clock::{Clock, ManualClock};
        use crate::policy::controller::{Controller, Reachability};
        use std::time::Duration;
        for interval in [30, 5] {
            let mut cfg = Config::default();
            cfg.upstream.reachability_interval = Duration::from_secs(interval);
            let mut params = controller_params(&cfg, &office());
            params.seed = Some(7);
            let clock = ManualClock::new();
            let c = Controller::new(params, clock.clone());
            let back_at = Duration::from_secs(600);
            let mut checks = 0;
            let resumed = loop {
                checks += 1;
                assert!(checks < 10_000, "no end");
                if let Some(w) = c.connect_wait() {
                    assert!(w <= Duration::from_secs(interval), "{w:?}");
                    clock.advance(w);
                    continue;
                }
                if clock.now() >= back_at {
                    c.on_connect_success();
                    break clock.now();
                }
                c.on_connect_failure();
                let Reachability::Unreachable {
                    since_ms,
                    next_check,
                    ..
                } = c.reachability()
                else {
                    panic!("reachable after a failure");
                };
                assert!(since_ms <= clock.unix_ms() && next_check <= Duration::from_secs(interval));
            };
            assert!(
                resumed - back_at <= Duration::from_secs(interval),
                "resumed {:?} after the provider was back",
                resumed - back_at
            );
            assert_eq!(c.reachability(), Reachability::Reachable);
        }
    }

    /// `queue retry --all` ends the wait at once.
    #[test]
    fn try_now_ends_the_connect_wait() {
        use crate::policy::clock::ManualClock;
        use crate::policy::controller::{Controller, Reachability};
        let c = Controller::new(
            controller_params(&Config::default(), &office()),
            ManualClock::new(),
        );
        for _ in 0..8 {
            c.on_connect_failure();
        }
        assert!(c.connect_wait().is_some());
        c.try_connect_now();
        assert_eq!(c.connect_wait(), None);
        assert!(matches!(c.reachability(), Reachability::Unreachable { .. }));
    }

    #[test]
    fn messages_per_connection_is_the_smaller() {
        let mut cfg = Config::default();
        let generic = profile::builtin("generic").unwrap().unwrap();
        assert_eq!(
            messages_per_connection(&cfg, &generic),
            50,
            "profile 50 < 100"
        );
        cfg.upstream.max_messages_per_connection = 20;
        assert_eq!(messages_per_connection(&cfg, &generic), 20);
        cfg.upstream.max_messages_per_connection = 100;
        cfg.upstream.limits.messages_per_connection = Some(7);
        assert_eq!(messages_per_connection(&cfg, &generic), 7);
        assert_eq!(messages_per_connection(&Config::default(), &office()), 100);
    }

    #[test]
    fn message_size_is_the_smaller() {
        let mut cfg = Config::default();
        assert_eq!(
            message_size(&cfg, &office()),
            25 * 1024 * 1024,
            "own 25 MiB < 35 MB"
        );
        let outlook = profile::builtin("outlook-com").unwrap().unwrap();
        assert_eq!(message_size(&cfg, &outlook), 20_971_520);
        cfg.server.max_message_size = 1000;
        assert_eq!(message_size(&cfg, &outlook), 1000);
    }

    #[test]
    fn quotas_are_fixed_limits() {
        let cfg = Config::default();
        let ses = profile::builtin("amazon-ses").unwrap().unwrap();
        let r = fixed_rates(&cfg, &ses);
        assert_eq!(r.recipients_per_day, Some(200));
        assert_eq!(
            r.per_second, None,
            "per-second is the adaptive rate's ceiling"
        );
    }

    proptest::proptest! {
        /// With any built-in provider profile, a reply outside 2xx is never `Accept`,
        /// except the two intermediate replies the protocol asks for, each in its phase.
        #[test]
        fn no_profile_accepts_a_refusal(
            code in 300u16..=599,
            phase in proptest::sample::select(vec![
                Phase::Greeting, Phase::Ehlo, Phase::StartTls, Phase::Auth, Phase::Mail,
                Phase::Rcpt, Phase::Data, Phase::DataEnd, Phase::Rset,
            ]),
            text in proptest::sample::select(vec!["ok", "accepted", "queued as 1234", "", "Ok: queued"]),
        ) {
            static ALL: std::sync::OnceLock<Vec<Classifier>> = std::sync::OnceLock::new();
            let all = ALL.get_or_init(|| {
                let cfg = Config::default();
                profile::all()
                    .unwrap()
                    .into_values()
                    .map(|p| classifier(&cfg, &p).unwrap())
                    .collect()
            });
            let r = Reply::plain(code, text);
            let intermediate = (code, phase) == (354, Phase::Data) || (code, phase) == (334, Phase::Auth);
            for c in all {
                let v = c.classify(phase, &r).verdict;
                proptest::prop_assert!(v != Verdict::Accept || intermediate, "{} at {:?}: {:?}", code, phase, v);
            }
        }
    }

    #[test]
    fn password_sign_in_ended_pauses_the_account() {
        let cfg = Config::default();
        let pause = Verdict::Pause {
            scope: crate::policy::verdict::PauseScope::Auth,
            until: None,
        };
        let basic = Reply::parse(
            b"550 5.7.30 Basic authentication is not supported for Client Submission.\r\n",
        )
        .unwrap()
        .unwrap()
        .0;
        let disabled = Reply::parse(b"535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.\r\n").unwrap().unwrap().0;
        for name in ["office365", "outlook-com"] {
            let c = classifier(&cfg, &profile::builtin(name).unwrap().unwrap()).unwrap();
            for phase in [Phase::Auth, Phase::Mail, Phase::Rcpt, Phase::DataEnd] {
                assert_eq!(c.classify(phase, &basic).verdict, pause, "{name} {phase:?}");
            }
            assert_eq!(c.classify(Phase::Auth, &disabled).verdict, pause, "{name}");
        }
        let app_pw = Reply::parse(b"534-5.7.9 Application-specific password required. Learn more at\r\n534 5.7.9  https://support.google.com/mail/?p=InvalidSecondFactor\r\n").unwrap().unwrap().0;
        let browser = Reply::parse(b"534-5.7.14 <https://accounts.google.com/signin/continue?...>\r\n534 5.7.14 Please log in via your web browser and then try again.\r\n").unwrap().unwrap().0;
        for name in ["gmail", "google-workspace"] {
            let c = classifier(&cfg, &profile::builtin(name).unwrap().unwrap()).unwrap();
            for r in [&app_pw, &browser] {
                for phase in [Phase::Auth, Phase::Mail] {
                    assert_eq!(c.classify(phase, r).verdict, pause, "{name} {phase:?} {r}");
                }
            }
        }
    }

    #[test]
    fn every_profile_compiles_into_a_classifier() {
        let cfg = Config::default();
        for (name, p) in profile::all().unwrap() {
            classifier(&cfg, &p).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
