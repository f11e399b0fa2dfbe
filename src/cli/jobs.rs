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
        /// Print what the job would do (for notify-expiry: what would be sent to whom), without doing or recording it
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
            let Some(dry_run) = registry::find(&name).and_then(|spec| spec.dry_run) else {
                let with: Vec<&str> = registry::all()
                    .iter()
                    .filter(|j| j.dry_run.is_some())
                    .map(|j| j.name)
                    .collect();
                eprintln!("error: --dry-run is available for {} only", with.join(", "));
                return ExitCode::from(super::EXIT_USAGE);
            };
            match dry_run(&config, &mut conn) {
                Ok(lines) => {
                    for line in lines {
                        println!("{line}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_FAILURE)
                }
            }
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
