//! `mailvalve suppress ...`: list, add, remove, import and export the suppression list
//! (the redb file named by `suppression.path`). An import checks the whole file first
//! and changes nothing if any line is bad.
//!
//! While an instance runs it holds the database (redb locks it), so the command goes to
//! the instance over its control socket (`<queue.dir>/control.sock`, both modes) and the
//! instance changes its open list — a `suppress add` takes effect for the next RCPT.
//! With no instance running the database is opened directly. Both ways run
//! `queue::control::execute_suppress`, so the output is the same.
//!
//! It must never write a half-checked import, and never open the database while an
//! instance holds it (the instance does the change).

use crate::config::Config;
use crate::policy::suppression::{normalize, Entry, Source};
use crate::queue::control::{self, SuppressRequest};
use crate::store::suppression_csv;
use anyhow::{bail, Context};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, clap::Subcommand)]
pub enum SuppressCmd {
    /// Print every suppressed address with the reply that caused it.
    List,
    /// Suppress an address by hand.
    Add {
        address: String,
        /// Why (kept with the entry and shown to the mailer).
        #[arg(long, default_value = "added by operator")]
        reason: String,
    },
    /// Remove an address from the list (it will be sent to again).
    Remove { address: String },
    /// Import a CSV (`address[,code,enhanced,text,first_seen,last_seen,count,source]`).
    Import { file: PathBuf },
    /// Export the list as CSV to stdout or a file.
    Export {
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

pub fn run(cmd: SuppressCmd, cfg: &Config, api: Option<&str>) -> anyhow::Result<()> {
    match cmd {
        SuppressCmd::List => {
            let entries: Vec<Entry> = entries(cfg, api)?
                .into_iter()
                .filter(|e| e.suppressed)
                .collect();
            for e in &entries {
                println!(
                    "{}\t{} {}\t{}\t{}\tcount={}",
                    e.address,
                    e.code,
                    e.enhanced.as_deref().unwrap_or("-"),
                    e.text,
                    e.source.as_str(),
                    e.count
                );
            }
            eprintln!("{} suppressed", entries.len());
        }
        SuppressCmd::Add { address, reason } => {
            let address = normalize(&address);
            if !address.contains('@') || address.chars().any(char::is_control) {
                bail!("{address:?} is not an email address");
            }
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            perform(
                cfg,
                api,
                SuppressRequest::Add(vec![Entry {
                    address: address.clone(),
                    code: 550,
                    enhanced: Some("5.1.1".into()),
                    text: reason,
                    first_seen: now,
                    last_seen: now,
                    count: 1,
                    source: Source::Manual,
                    suppressed: true,
                    soft_times: Vec::new(),
                    soft_marks: Vec::new(),
                }]),
            )?;
            println!("suppressed {address}");
        }
        SuppressCmd::Remove { address } => {
            let answer = perform(cfg, api, SuppressRequest::Remove(address.clone()))?;
            if answer.trim() == "true" {
                println!("removed {}", normalize(&address));
            } else {
                bail!("{} is not on the suppression list", normalize(&address));
            }
        }
        SuppressCmd::Import { file } => {
            let f = std::fs::File::open(&file)
                .with_context(|| format!("cannot open {}", file.display()))?;
            match suppression_csv::import(f, SystemTime::now()) {
                Ok(entries) => {
                    let n = entries.len();
                    perform(cfg, api, SuppressRequest::Add(entries))?;
                    println!("imported {n} addresses from {}", file.display());
                }
                Err(errors) => {
                    for e in &errors {
                        eprintln!("{}: {e}", file.display());
                    }
                    bail!(
                        "{}: {} bad line(s); nothing was imported",
                        file.display(),
                        errors.len()
                    );
                }
            }
        }
        SuppressCmd::Export { output } => {
            let entries = entries(cfg, api)?;
            match output {
                Some(path) => {
                    let f = std::fs::File::create(&path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    suppression_csv::export(&entries, f)?;
                }
                None => suppression_csv::export(&entries, std::io::stdout().lock())?,
            }
        }
    }
    Ok(())
}

/// Every entry of the list, from the running instance or the database.
fn entries(cfg: &Config, api: Option<&str>) -> anyhow::Result<Vec<Entry>> {
    let text = perform(cfg, api, SuppressRequest::List)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Entry>(l).context("unreadable answer from the instance"))
        .collect()
}

/// Runs `req` on the running instance's list if one answers on the control socket, else
/// or its HTTP API where there is none (not on Unix, no socket, or `--api URL`), else on
/// the database opened directly. `Ok` is the answer text of `execute_suppress`.
fn perform(cfg: &Config, api: Option<&str>, req: SuppressRequest) -> anyhow::Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let api = super::api_client::Api::locate(api, cfg);
    let (line, body) = req.to_wire();
    let by_api = |api: &super::api_client::Api| rt.block_on(api.request(&line, &body));
    if let Some(api) = api.as_ref().filter(|a| a.is_explicit()) {
        return match by_api(api)? {
            Some(answer) => answer.map_err(|e| anyhow::anyhow!("suppress (running instance): {e}")),
            None => bail!("no instance answers on the HTTP API"),
        };
    }
    #[cfg(unix)]
    {
        let dir = &cfg.queue.dir;
        let answer = rt
            .block_on(control::request_suppress(dir, &req))
            .with_context(|| {
                format!(
                    "cannot talk to the running instance ({})",
                    control::socket_path(dir).display()
                )
            })?;
        if let Some(answer) = answer {
            return answer.map_err(|e| anyhow::anyhow!("suppress (running instance): {e}"));
        }
    }
    if let Some(api) = &api {
        if let Some(answer) = by_api(api)? {
            return answer.map_err(|e| anyhow::anyhow!("suppress (running instance): {e}"));
        }
    }
    let list = crate::relay::open_suppressions(cfg)?;
    control::execute_suppress(&list, req).map_err(|e| anyhow::anyhow!("suppress: {e}"))
}
