//! `mailvalve profiles`: the built-in provider profiles and their limits, one line each,
//! each figure marked when it is a guess (unverified) rather than the provider's
//! published limit.
//!
//! It must never read the user's configuration or touch the network: built-ins only.

use crate::config::limits::LimitKey;
use crate::config::profile::{self, Profile};

/// One figure: `-` when unset, a trailing `*` when unverified.
fn figure<T: std::fmt::Display>(p: &Profile, key: LimitKey, v: Option<T>) -> String {
    match v {
        None => "-".into(),
        Some(v) if p.is_published(key) => v.to_string(),
        Some(v) => format!("{v}*"),
    }
}

/// The table `mailvalve profiles` prints.
pub fn table() -> anyhow::Result<String> {
    use std::fmt::Write;
    let mut out = String::new();
    writeln!(
        out,
        "{:<17} {:>5} {:>5} {:>6} {:>6} {:>6} {:>6} {:>7} {:>6}  description",
        "profile", "conns", "max", "msg/s", "msg/m", "msg/h", "msg/d", "rcpt/d", "rcpt/m"
    )?;
    for (name, p) in profile::all()? {
        let l = &p.limits;
        writeln!(
            out,
            "{:<17} {:>5} {:>5} {:>6} {:>6} {:>6} {:>6} {:>7} {:>6}  {}",
            name,
            figure(&p, LimitKey::InitialConnections, l.initial_connections),
            figure(&p, LimitKey::MaxConnections, l.max_connections),
            figure(&p, LimitKey::MessagesPerSecond, l.messages_per_second),
            figure(&p, LimitKey::MessagesPerMinute, l.messages_per_minute),
            figure(&p, LimitKey::MessagesPerHour, l.messages_per_hour),
            figure(&p, LimitKey::MessagesPerDay, l.messages_per_day),
            figure(&p, LimitKey::RecipientsPerDay, l.recipients_per_day),
            figure(&p, LimitKey::RecipientsPerMessage, l.recipients_per_message),
            p.description
        )?;
    }
    writeln!(
        out,
        "\nconns = initial connections, max = most connections, rcpt/d = recipients per day, \
         rcpt/m = recipients per message.\n\
         * = unverified (a guess): a starting point mailvalve learns upward from \
         (upstream.learn_above_profile); the others are published, hard caps. Hourly and \
         daily quotas are caps either way."
    )?;
    writeln!(
        out,
        "Sources for each figure: config/providers/<profile>.toml."
    )?;
    Ok(out)
}

pub fn run() -> anyhow::Result<()> {
    print!("{}", table()?);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn guesses_are_marked_and_published_figures_are_not() {
        let t = super::table().unwrap();
        let line = |name: &str| {
            t.lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap()
                .to_string()
        };
        let o = line("office365");
        assert!(
            o.contains(" 3 ") && o.contains(" 30 ") && o.contains(" 10000 "),
            "{o}"
        );
        assert!(o.contains(" 2* "), "{o}");
        let g = line("generic");
        assert!(g.contains(" 30* ") && g.contains(" 3* "), "{g}");
        let s = line("amazon-ses");
        assert!(s.contains(" 200 "), "SES counts recipients per day: {s}");
    }
}
