//! Command-line entry point: parses the arguments (clap derive) and dispatches to one
//! file per subcommand (`run.rs`, `check.rs`, `demo.rs`, ...). Argument parsing and
//! printing only: the running relay is `relay`, the demo's engine is `demo`. Nothing
//! imports `cli`.
//!
//! It must never print a secret (errors come redacted from `config`) and never exit the
//! process from inside the library: [`main`] returns the exit code.
//!
//! Exit codes: 0 success, 1 configuration error (or the relay failed), 2 usage error.
//!
//! The configuration file is given with `-c FILE` (or `MAILVALVE_CONFIG`), before or after
//! any subcommand (`mailvalve -c F queue status` = `mailvalve queue status -c F`): it is
//! one global option. Without one, every command uses the built-in defaults plus the
//! `MAILVALVE__*` environment, so a container can be configured by environment alone;
//! `check` says which source it used.

pub mod api_client;
pub mod check;
pub mod demo;
pub mod explain;
pub mod logging;
pub mod oauth;
pub mod profiles;
pub mod queue;
pub mod reload;
mod rules_de;
pub mod run;
pub mod suppress;
pub mod watch;

use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit code for a configuration that cannot be loaded or is invalid.
pub const EXIT_CONFIG: u8 = 1;
/// Exit code for bad command-line usage (clap's own).
pub const EXIT_USAGE: u8 = 2;

/// mailvalve: a local SMTP relay that reads every reply of the mail provider and paces
/// bulk mail to match.
#[derive(Debug, Parser)]
#[command(name = "mailvalve", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay (listens on 127.0.0.1:2525 unless configured otherwise).
    Run,
    /// Validate the configuration and print the effective settings (passwords as ***).
    Check,
    /// List the built-in provider profiles and their limits.
    Profiles,
    /// Watch mailvalve tame a simulated provider, on loopback, in under a minute.
    Demo(demo::DemoArgs),
    /// Explain a provider reply: what it means and what mailvalve does about it.
    Explain {
        /// The reply, e.g. "421 4.7.0 Too many connections" (multi-line: one per line).
        reply: String,
        /// The phase it answered: greeting, ehlo, starttls, auth, mail, rcpt, data,
        /// data-end. Default: rcpt (data for 354, auth for 334).
        #[arg(long)]
        phase: Option<String>,
        /// Apply this provider profile's reply rules (see `mailvalve profiles`).
        #[arg(long)]
        profile: Option<String>,
        /// Language of the explanation: en or de.
        #[arg(long, default_value = "en")]
        lang: String,
    },
    /// Look at and steer the queue (queue mode): list, show, retry, delete, pause,
    /// resume, status. Works against the running instance or, if none, its spool.
    Queue {
        #[command(subcommand)]
        cmd: queue::QueueCmd,
    },
    /// Make the running instance re-read its configuration (like SIGHUP): a valid one
    /// takes effect for the next transaction, an invalid one is refused and the running
    /// one stays.
    Reload,
    /// Manage the suppression list (addresses the provider rejected for good).
    Suppress {
        #[command(subcommand)]
        cmd: suppress::SuppressCmd,
    },
    /// OAuth2 sign-in at the provider: `oauth login --profile office365` runs the
    /// device-code flow, `--profile gmail` the browser sign-in (back to 127.0.0.1);
    /// either stores the refresh token in the token file.
    Oauth {
        #[command(subcommand)]
        cmd: oauth::OauthCmd,
    },
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Configuration file (TOML; see config/mailvalve.toml), before or after the
    /// subcommand. Relative paths inside it are relative to the file's directory.
    /// Without it the built-in defaults are used. Either way MAILVALVE__SECTION__KEY
    /// environment variables override single keys, e.g. MAILVALVE__UPSTREAM__PASSWORD
    /// (a relative path given that way is relative to the current directory).
    #[arg(
        short = 'c',
        long = "config",
        value_name = "FILE",
        env = "MAILVALVE_CONFIG",
        global = true
    )]
    pub config: Option<PathBuf>,
    /// `queue` and `suppress`: reach the running instance through its HTTP API at this
    /// URL (e.g. http://127.0.0.1:2580) instead of the control socket. Without it they
    /// use the control socket on Unix and, where there is none, the API at
    /// `http.listen`. The token, if any, is `http.token` (MAILVALVE__HTTP__TOKEN).
    #[arg(long, value_name = "URL", env = "MAILVALVE_API", global = true)]
    pub api: Option<String>,
}

/// Parses `std::env::args` and runs the subcommand.
pub fn main() -> ExitCode {
    match Cli::try_parse() {
        Ok(cli) => dispatch(cli),
        Err(e) => {
            // --help and --version land here too, with exit code 0.
            let _ = e.print();
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(EXIT_USAGE))
        }
    }
}

/// Runs a parsed command line.
pub fn dispatch(cli: Cli) -> ExitCode {
    let config = cli.config.config.as_deref();
    let api = cli.config.api.as_deref();
    match cli.command {
        Command::Check => check::main(config),
        Command::Run => run_command(config),
        Command::Profiles => report(profiles::run()),
        Command::Demo(args) => report(demo::main(&args)),
        Command::Explain {
            reply,
            phase,
            profile,
            lang,
        } => explain_command(&reply, phase.as_deref(), profile.as_deref(), &lang),
        Command::Queue { cmd } => match load(config) {
            Ok(cfg) => report(queue::run(cmd, &cfg, api)),
            Err(code) => code,
        },
        Command::Reload => match load(config) {
            Ok(cfg) => report(reload::run(&cfg)),
            Err(code) => code,
        },
        Command::Suppress { cmd } => match load(config) {
            Ok(cfg) => report(suppress::run(cmd, &cfg, api)),
            Err(code) => code,
        },
        // Not validated: before the first sign-in the configuration may be incomplete.
        Command::Oauth { cmd } => match crate::config::process_env()
            .and_then(|env| crate::config::load_from(config, env))
        {
            Ok(loaded) => report(oauth::run(cmd, &loaded)),
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
    }
}

/// Loads and validates the configuration, printing the error (redacted) on failure.
fn load(path: Option<&Path>) -> Result<crate::config::Config, ExitCode> {
    crate::config::process_env()
        .and_then(|env| crate::config::load_validated(path, env))
        .map(|l| l.config)
        .map_err(|e| {
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG)
        })
}

fn explain_command(
    reply: &str,
    phase: Option<&str>,
    profile: Option<&str>,
    lang: &str,
) -> ExitCode {
    let Some(lang) = crate::smtp::codes::Lang::from_tag(lang) else {
        eprintln!("mailvalve explain: --lang {lang:?}: expected en or de");
        return ExitCode::from(EXIT_USAGE);
    };
    let phase = match phase.map(explain::parse_phase).transpose() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("mailvalve explain: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match explain::explain(reply, phase, profile, lang) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mailvalve explain: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailvalve: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_command(path: Option<&Path>) -> ExitCode {
    match load(path) {
        Ok(cfg) => report(run::run(cfg, path)),
        Err(code) => code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_run_and_check() {
        let cli = Cli::try_parse_from(["mailvalve", "check", "-c", "x.toml"]).unwrap();
        assert!(matches!(cli.command, Command::Check));
        assert_eq!(cli.config.config.as_deref(), Some(Path::new("x.toml")));
        let cli = Cli::try_parse_from(["mailvalve", "run", "--config", "y.toml"]).unwrap();
        assert!(matches!(cli.command, Command::Run));
        assert_eq!(cli.config.config.as_deref(), Some(Path::new("y.toml")));
    }

    /// `-c` is one global option: before the subcommand, after it, and after a nested
    /// subcommand (`queue status -c F` used to be a usage error).
    #[test]
    fn config_option_works_anywhere() {
        let placements: &[&[&str]] = &[
            &["mailvalve", "-c", "f.toml", "queue", "status"],
            &["mailvalve", "queue", "-c", "f.toml", "status"],
            &["mailvalve", "queue", "status", "-c", "f.toml"],
            &["mailvalve", "queue", "status", "--config", "f.toml"],
            &["mailvalve", "--config=f.toml", "run"],
            &["mailvalve", "run", "-c", "f.toml"],
            &["mailvalve", "check", "--config", "f.toml"],
            &["mailvalve", "suppress", "list", "-c", "f.toml"],
            &["mailvalve", "-c", "f.toml", "suppress", "list"],
            &["mailvalve", "queue", "retry", "--all", "-c", "f.toml"],
            &["mailvalve", "oauth", "login", "-c", "f.toml"],
            &["mailvalve", "oauth", "-c", "f.toml", "login"],
            &[
                "mailvalve",
                "-c",
                "f.toml",
                "oauth",
                "login",
                "--profile",
                "gmail",
            ],
        ];
        for args in placements {
            let cli = Cli::try_parse_from(*args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(
                cli.config.config.as_deref(),
                Some(Path::new("f.toml")),
                "{args:?}"
            );
        }
    }

    #[test]
    fn parses_demo() {
        let cli = Cli::try_parse_from(["mailvalve", "demo"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Demo(demo::DemoArgs {
                mode: demo::DemoMode::Queue,
                messages: None,
                seconds_max: None
            })
        ));
        let cli = Cli::try_parse_from([
            "mailvalve",
            "demo",
            "--messages",
            "300",
            "--seconds-max",
            "30",
            "--mode",
            "passthrough",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Demo(demo::DemoArgs {
                mode: demo::DemoMode::Passthrough,
                messages: Some(300),
                seconds_max: Some(30)
            })
        ));
        assert!(Cli::try_parse_from(["mailvalve", "demo", "--mode", "live"]).is_err());
        assert!(Cli::try_parse_from(["mailvalve", "demo", "--messages", "0"]).is_err());
    }

    #[test]
    fn usage_errors_exit_2() {
        let err = Cli::try_parse_from(["mailvalve", "frobnicate"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(EXIT_USAGE));
        let err = Cli::try_parse_from(["mailvalve"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(EXIT_USAGE));
        let err = Cli::try_parse_from(["mailvalve", "check", "-c"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(EXIT_USAGE));
    }
}
