//! Turns the configuration and the chosen provider profile into the policy's pieces:
//! the controller's parameters, the fixed quotas, and the classifier's rule table (user
//! rules, then the profile's, then the built-in defaults).
//!
//! The precedence of limits, in one place: the profile's limits, overridden key by key
//! by `[upstream.limits]`; `upstream.max_connections` and `[upstream.rate]` are hard caps
//! on top. It must never raise a limit above what the user configured.

use crate::config::limits::Limits;
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

/// Controller parameters: connections between the profile's initial and maximum (never
/// above `upstream.max_connections`); the adaptive rate's ceiling from the tightest
/// per-second / per-minute limit.
pub fn controller_params(cfg: &Config, profile: &Profile) -> ControllerParams {
    let l = limits(cfg, profile);
    let cap = cfg.upstream.max_connections.max(1);
    let max = l.max_connections.unwrap_or(cap).clamp(1, cap);
    let initial = l.initial_connections.unwrap_or(1).clamp(1, max);
    let per_sec = [
        min_opt(l.messages_per_second, cfg.upstream.rate.per_second).map(f64::from),
        min_opt(l.messages_per_minute, cfg.upstream.rate.per_minute).map(|m| f64::from(m) / 60.0),
    ]
    .into_iter()
    .flatten()
    .reduce(f64::min);
    let defaults = ControllerParams::default();
    ControllerParams {
        initial_connections: initial,
        max_connections: max,
        rate_per_second: per_sec,
        rate_floor: defaults.rate_floor.min(per_sec.unwrap_or(f64::MAX)),
        // An unreachable provider is tried again at least every reachability_interval.
        connect_backoff_max: defaults
            .connect_backoff_max
            .min(cfg.upstream.reachability_interval),
        ..defaults
    }
}

/// The fixed limits enforced besides the adaptive rate: hourly and daily quotas (the
/// tighter of profile and user), and the user's own per-second / per-minute caps.
pub fn fixed_rates(cfg: &Config, profile: &Profile) -> RateConfig {
    let l = limits(cfg, profile);
    let u = &cfg.upstream.rate;
    RateConfig {
        per_second: u.per_second,
        per_minute: u.per_minute,
        per_hour: min_opt(l.messages_per_hour, u.per_hour),
        per_day: min_opt(l.messages_per_day, u.per_day),
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
        assert_eq!(r.per_day, Some(200));
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
