//! `mailvalve profiles`: the built-in provider profiles and their limits, one line each.
//!
//! It must never read the user's configuration or touch the network: built-ins only.

use crate::config::profile;

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

pub fn run() -> anyhow::Result<()> {
    println!(
        "{:<17} {:>5} {:>5} {:>6} {:>6} {:>6} {:>6} {:>6}  description",
        "profile", "conns", "max", "msg/s", "msg/m", "msg/h", "msg/d", "rcpt/m"
    );
    for (name, p) in profile::all()? {
        let l = &p.limits;
        println!(
            "{:<17} {:>5} {:>5} {:>6} {:>6} {:>6} {:>6} {:>6}  {}",
            name,
            opt(l.initial_connections),
            opt(l.max_connections),
            opt(l.messages_per_second),
            opt(l.messages_per_minute),
            opt(l.messages_per_hour),
            opt(l.messages_per_day),
            opt(l.recipients_per_message),
            p.description
        );
    }
    println!(
        "\nconns = initial connections, max = most connections, rcpt/m = recipients per message."
    );
    println!("Sources for each figure: config/providers/<profile>.toml.");
    Ok(())
}
