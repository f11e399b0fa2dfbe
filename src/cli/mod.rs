//! The command line: one module per command group. Commands load the
//! configuration the same way the daemon does and report errors with the
//! exit codes documented below (also in `keywarden --help`).
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | failure at run time (database unreachable, job failed) |
//! | 2 | bad command line |
//! | 3 | `perms scan`: a path violates the permission policy; `leaks scan`: a live key was found |
//! | 75 | `jobs run`: skipped, another process holds the job's lock (EX_TEMPFAIL) |
//! | 78 | bad configuration or unreadable secret (EX_CONFIG) |
//! | 128+n | the daemon was stopped by a second signal n while waiting for jobs |
//!
//! Imports: daemon, jobs, keys, notify, acme, perms, sys, db, telemetry,
//! config (the top floor: everything below it).

mod actor;
pub mod certs;
pub mod check_config;
pub mod docs;
pub mod jobs;
pub mod keys;
pub mod leaks;
pub mod metrics;
pub mod migrate;
pub mod notifications;
pub mod perms;
pub mod run_daemon;
pub mod status;
pub mod users;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::db::{Database, DbConnection};

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_DRIFT: u8 = 3;
pub const EXIT_TEMPFAIL: u8 = 75;
pub const EXIT_CONFIG: u8 = 78;

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    success
  1    failure at run time (database unreachable, job failed)
  2    bad command line
  3    perms scan: a path violates the permission policy; leaks scan: a live key was found
  75   jobs run: skipped because another process holds the job's lock
  78   bad configuration or unreadable secret
  128+n  run: stopped by a second signal n while waiting for jobs

The configuration is read from --config, else $KEYWARDEN_CONFIG, else /etc/keywarden/keywarden.toml.";

#[derive(Debug, Parser)]
#[command(name = "keywarden", version, about = "Keeps credentials healthy unattended: expires and retires API keys, warns owners, renews certificates, watches file permissions.", after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// Configuration file (default: $KEYWARDEN_CONFIG, else /etc/keywarden/keywarden.toml)
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (what systemd starts)
    Run,
    /// Validate the configuration without reading secrets; prints `ok` or every error
    CheckConfig,
    /// Apply pending database migrations
    Migrate,
    /// List or run scheduled jobs
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),
    /// Manage owners of keys
    #[command(subcommand)]
    Users(users::UsersCommand),
    /// Issue, list, rotate, revoke and verify API keys
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// The notification outbox
    #[command(subcommand)]
    Notifications(notifications::NotificationsCommand),
    /// Certificates: list, renew over ACME, check
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Permission drift: one-shot audit and recorded events
    #[command(subcommand)]
    Perms(perms::PermsCommand),
    /// Leaked keys: scan files for live keys once, list what was found
    #[command(subcommand)]
    Leaks(leaks::LeaksCommand),
    /// Print a shell completion script
    Completions {
        #[arg(value_enum)]
        shell: docs::Shell,
    },
    /// Print the man page (roff)
    #[command(hide = true)]
    Manpage,
    /// Show jobs, their last outcome and next run
    Status {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Print the metrics the daemon publishes (Prometheus text format)
    Metrics {
        /// OpenMetrics 1.0 text instead
        #[arg(long)]
        openmetrics: bool,
    },
}

impl Command {
    /// Commands that only read and print: piped into `head`, they should end
    /// quietly like other Unix tools instead of failing on a closed pipe.
    fn only_prints(&self) -> bool {
        match self {
            Command::Status { .. }
            | Command::Metrics { .. }
            | Command::Completions { .. }
            | Command::Manpage
            | Command::CheckConfig => true,
            Command::Jobs(c) => matches!(c, jobs::JobsCommand::List { .. }),
            Command::Users(c) => matches!(c, users::UsersCommand::List { .. }),
            Command::Keys(c) => matches!(
                c,
                keys::KeysCommand::List { .. } | keys::KeysCommand::Show { .. } | keys::KeysCommand::Usage { .. }
            ),
            Command::Notifications(c) => matches!(c, notifications::NotificationsCommand::List { .. }),
            Command::Perms(c) => matches!(c, perms::PermsCommand::Events { .. }),
            Command::Leaks(c) => matches!(c, leaks::LeaksCommand::List { .. }),
            Command::Certs(c) => matches!(c, certs::CertsCommand::List { .. }),
            Command::Run | Command::Migrate => false,
        }
    }
}

/// Rust ignores SIGPIPE so that writes report EPIPE; the daemon and
/// commands that talk to servers keep that. Printing commands get the
/// default back, so `keywarden keys list | head` just ends.
fn restore_default_sigpipe() {
    // SAFETY: called before any thread is started; SIG_DFL is always valid.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    forbid_core_dumps();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    let path = Config::locate(cli.config.as_deref());
    if cli.command.only_prints() {
        restore_default_sigpipe();
    }
    match cli.command {
        Command::Run => run_daemon::run(&path),
        Command::CheckConfig => check_config::run(&path),
        Command::Migrate => migrate::run(&path),
        Command::Jobs(cmd) => jobs::run(&path, cmd),
        Command::Users(cmd) => users::run(&path, cmd),
        Command::Keys(cmd) => keys::run(&path, cmd),
        Command::Notifications(cmd) => notifications::run(&path, cmd),
        Command::Perms(cmd) => perms::run(&path, cmd),
        Command::Leaks(cmd) => leaks::run(&path, cmd),
        Command::Certs(cmd) => certs::run(&path, cmd),
        Command::Completions { shell } => docs::completions(shell),
        Command::Manpage => docs::manpage(),
        Command::Status { json } => status::run(&path, json),
        Command::Metrics { openmetrics } => metrics::run(&path, openmetrics),
    }
}

/// Loads the configuration, or prints every error and gives exit code 78.
pub(crate) fn load_config(path: &Path) -> Result<Config, ExitCode> {
    crate::jobs::load_config(path).map_err(|errors| {
        for e in &errors.0 {
            eprintln!("{e}");
        }
        ExitCode::from(EXIT_CONFIG)
    })
}

/// Reads the secrets and builds the database handle (78 on a secret error).
pub(crate) fn open_database(config: &Config) -> Result<Database, ExitCode> {
    match config.load_secrets() {
        Ok(secrets) => Ok(Database::new(&config.database, &secrets)),
        Err(e) => {
            eprintln!("{}: {e}", config.source.display());
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

/// Loads the configuration and opens a checked connection: what most
/// commands start with.
pub(crate) fn connect_with_config(path: &Path) -> Result<(Config, DbConnection), ExitCode> {
    let config = load_config(path)?;
    let conn = open_database(&config).and_then(|db| connect_current(&db))?;
    Ok((config, conn))
}

/// Connects and checks the schema is current (commands other than `run` and
/// `migrate` do not change the schema).
pub(crate) fn connect_current(database: &Database) -> Result<DbConnection, ExitCode> {
    let mut conn = database.connect().map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_FAILURE)
    })?;
    match crate::db::migrate::pending(&mut conn) {
        Ok(p) if p.is_empty() => Ok(conn),
        Ok(p) => {
            eprintln!(
                "error: the database schema is not up to date ({} pending migration(s)); run `keywarden migrate`",
                p.len()
            );
            Err(ExitCode::from(EXIT_FAILURE))
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(EXIT_FAILURE))
        }
    }
}

/// Secrets (the database and SMTP passwords, API keys read from stdin) live
/// in this process's memory: no core file, and no ptrace or /proc/PID/mem
/// access by other processes of the same user. The unit adds `LimitCORE=0`.
fn forbid_core_dumps() {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes no pointers and only changes
    // this process's own dumpable flag.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc != 0 {
        eprintln!(
            "keywarden: warning: cannot mark the process non-dumpable: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod dumpable_tests {
    #[test]
    fn the_process_is_not_dumpable() {
        super::forbid_core_dumps();
        // SAFETY: PR_GET_DUMPABLE takes no arguments and returns the flag.
        let dumpable = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
        assert_eq!(dumpable, 0);
    }
}
