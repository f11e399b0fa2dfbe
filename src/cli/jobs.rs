//! `keywarden jobs list` and `keywarden jobs run NAME`.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use tokio_util::sync::CancellationToken;

use super::status::{collect_jobs, print_jobs_table};
use super::{connect_current, load_config, open_database, EXIT_FAILURE, EXIT_TEMPFAIL};
use crate::jobs::{self, registry, RunOutcome, Trigger};
use crate::telemetry;

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Each job with its schedule, last run and outcome, and next run
    List {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Run one job once, now, with the same locking as the daemon
    Run {
        /// The job to run
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(registry::names()))]
        name: String,
        /// notify-expiry only: print what would be sent to whom, without sending or recording
        #[arg(long)]
        dry_run: bool,
    },
}

pub fn run(path: &Path, cmd: JobsCommand) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let database = match open_database(&config) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let mut conn = match connect_current(&database) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cmd {
        JobsCommand::List { json } => match collect_jobs(&config, &mut conn) {
            Ok(rows) => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
                } else {
                    print_jobs_table(&rows);
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_FAILURE)
            }
        },
        JobsCommand::Run { name, dry_run: true } => {
            if name != "notify-expiry" {
                eprintln!("error: --dry-run is available for notify-expiry only");
                return ExitCode::from(super::EXIT_USAGE);
            }
            dry_run_notify(&config, &mut conn)
        }
        JobsCommand::Run { name, dry_run: false } => {
            drop(conn);
            let Some(spec) = registry::find(&name) else {
                eprintln!(
                    "error: unknown job {name:?}; known jobs: {}",
                    registry::names().join(", ")
                );
                return ExitCode::from(super::EXIT_USAGE);
            };
            let _telemetry = telemetry::init(config.daemon.log_target, config.daemon.log_level);
            match jobs::execute(&database, &config, spec, Trigger::Manual, &CancellationToken::new()) {
                RunOutcome::Completed {
                    run_id,
                    report,
                    duration,
                } => {
                    println!(
                        "{name}: ok, {} row(s) affected in {} ms (run {run_id})",
                        report.rows_affected,
                        duration.as_millis()
                    );
                    ExitCode::SUCCESS
                }
                RunOutcome::Failed { run_id, error, .. } => {
                    eprintln!("{name}: failed (run {run_id}): {error}");
                    ExitCode::from(EXIT_FAILURE)
                }
                RunOutcome::Skipped => {
                    eprintln!("{name}: skipped: another process holds its lock (a daemon or another `jobs run` is running it now)");
                    ExitCode::from(EXIT_TEMPFAIL)
                }
            }
        }
    }
}

/// Prints the notices notify-expiry would enqueue now and what is waiting in
/// the outbox, grouped by recipient; changes nothing.
fn dry_run_notify(config: &crate::config::Config, conn: &mut crate::db::DbConnection) -> ExitCode {
    use std::collections::BTreeMap;
    let now = crate::db::now();
    let planned = match crate::notify::detect::plan_key_notices(conn, &config.notifications, now) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: database error: {}", crate::db::describe_error(&e));
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let mut by_recipient: BTreeMap<&str, Vec<&crate::notify::detect::PlannedNotice>> = BTreeMap::new();
    for p in &planned {
        by_recipient.entry(p.owner_email.as_str()).or_default().push(p);
    }
    if by_recipient.is_empty() {
        println!("no new notices are due");
    }
    for (recipient, notices) in by_recipient {
        let payloads: Vec<_> = notices.iter().map(|n| n.payload.clone()).collect();
        println!(
            "would send to {recipient}: {}",
            crate::notify::render::key_subject(&payloads, now)
        );
        for n in notices {
            println!(
                "  {} ({}) window {}, expires {}{}",
                crate::notify::render::clean(&n.payload.name, 80),
                n.payload.prefix,
                n.window,
                n.payload.expires_at.format("%Y-%m-%d %H:%M UTC"),
                if n.skipped.is_empty() {
                    String::new()
                } else {
                    format!("; wider windows skipped: {}", n.skipped.join(", "))
                }
            );
        }
    }
    match crate::notify::outbox::list(conn, Some(crate::notify::status::PENDING), 10_000) {
        Ok(pending) if !pending.is_empty() => println!("{} notice(s) already pending in the outbox", pending.len()),
        _ => {}
    }
    ExitCode::SUCCESS
}
