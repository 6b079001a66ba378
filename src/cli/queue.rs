//! `mailvalve queue ...`: the operator's view of queue mode — list, show, retry, delete,
//! pause, resume, status. Talks to the running instance over its control socket in the
//! spool directory, or its HTTP API where there is none ([`super::api_client`]: not on
//! Unix, no socket, or `--api URL`); with none running, opens the spool directly. Both run the same
//! `queue::control::execute`, so the output is the same either way.
//!
//! It must never change the spool except through those commands, and never print a
//! message body.

use crate::config::Config;
use crate::queue::control::{self, Command, Offline};
use crate::queue::{QueueId, Spool, Which};
use anyhow::Context;

#[derive(Debug, clap::Subcommand)]
pub enum QueueCmd {
    /// One line per queued message: id, age, pending recipients, next attempt, sender,
    /// last reply.
    List,
    /// One message's envelope and every recipient's state (never the body).
    Show { id: QueueId },
    /// Make one message (or, with --all, every message) due now.
    Retry {
        id: Option<QueueId>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Remove a message from the queue without delivering it (no bounce report).
    Delete { id: QueueId },
    /// Stop delivering (mail is still accepted and queued); survives restarts.
    Pause,
    /// Deliver again; also ends a pause after refused credentials.
    Resume,
    /// Queue size, pause state and, when running, delivery counters and limits.
    /// `--watch`: progress, ETA and limits from the running instance, redrawn until
    /// Ctrl-C.
    Status {
        #[arg(long)]
        watch: bool,
        /// Seconds between redraws with --watch.
        #[arg(long, default_value_t = 2, requires = "watch", value_parser = clap::value_parser!(u64).range(1..))]
        every: u64,
    },
}

impl QueueCmd {
    fn command(&self) -> anyhow::Result<Command> {
        Ok(match self {
            Self::List => Command::List,
            Self::Show { id } => Command::Show(*id),
            Self::Retry { id: Some(id), .. } => Command::Retry(Which::One(*id)),
            Self::Retry {
                id: None,
                all: true,
            } => Command::Retry(Which::All),
            Self::Retry {
                id: None,
                all: false,
            } => {
                anyhow::bail!("queue retry: give a queue id or --all")
            }
            Self::Delete { id } => Command::Delete(*id),
            Self::Pause => Command::Pause,
            Self::Resume => Command::Resume,
            Self::Status { .. } => Command::Status,
        })
    }
}

pub fn run(cmd: QueueCmd, cfg: &Config, api: Option<&str>) -> anyhow::Result<()> {
    if let QueueCmd::Status { watch: true, every } = cmd {
        return super::watch::run(cfg, std::time::Duration::from_secs(every));
    }
    let command = cmd.command()?;
    let dir = cfg.queue.dir.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let api = super::api_client::Api::locate(api, cfg);
    let answer = rt.block_on(async {
        if let Some(api) = api.as_ref().filter(|a| a.is_explicit()) {
            return match api.request(&command.to_line(), &[]).await? {
                Some(answer) => Ok(answer),
                None => anyhow::bail!("no instance answers on the HTTP API"),
            };
        }
        #[cfg(unix)]
        if let Some(answer) = control::request(&dir, command).await.with_context(|| {
            format!(
                "cannot talk to the running instance ({})",
                control::socket_path(&dir).display()
            )
        })? {
            return Ok::<_, anyhow::Error>(answer);
        }
        if let Some(api) = &api {
            if let Some(answer) = api.request(&command.to_line(), &[]).await? {
                return Ok(answer);
            }
        }
        if !dir.join("queue.redb").exists() {
            anyhow::bail!(
                "no spool in {} (config key queue.dir) and no instance running",
                dir.display()
            );
        }
        let d = dir.clone();
        let (spool, _) = tokio::task::spawn_blocking(move || Spool::open(&d))
            .await
            .context("spool open task failed")?
            .with_context(|| format!("cannot open the spool in {}", dir.display()))?;
        Ok(control::execute(&Offline::new(spool, &dir), command).await)
    })?;
    match answer {
        Ok(text) => {
            print!("{text}");
            Ok(())
        }
        Err(e) => anyhow::bail!("queue: {e}"),
    }
}
