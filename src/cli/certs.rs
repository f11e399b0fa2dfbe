//! `keywarden certs list|renew|check`.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use super::EXIT_FAILURE;
use crate::acme::renew::{run_pass, Mode, Outcome, Report};
use crate::acme::store;

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Every certificate: domains, issuer, days left, next check, last error
    List {
        #[arg(long)]
        json: bool,
    },
    /// Renew one certificate now if it is due (or whatever its state, with --force)
    Renew {
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// Read every configured and monitored certificate; exit 1 if one is expired or failing
    Check {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(path: &Path, cmd: CertsCommand) -> ExitCode {
    let config = match super::load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let database = match super::open_database(&config) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let mut conn = match super::connect_current(&database) {
        Ok(v) => v,
        Err(code) => return code,
    };
    match cmd {
        CertsCommand::List { json } => match store::list(&mut conn) {
            Ok(rows) if json => {
                println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Ok(rows) => {
                print_list(rows);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: database error: {}", crate::db::describe_error(&e));
                ExitCode::from(EXIT_FAILURE)
            }
        },
        CertsCommand::Renew { name, force } => {
            if !config.certificates.iter().any(|c| c.name == name) {
                eprintln!(
                    "error: no [[certificates]] entry named {name:?} in {}",
                    config.source.display()
                );
                return ExitCode::from(super::EXIT_USAGE);
            }
            let mode = if force { Mode::Force } else { Mode::Renew };
            // Under the renew-certs lock, as the job's runs are: a daemon on
            // another replica never renews the same certificate at once.
            let renewal =
                crate::jobs::with_lock_of(&crate::jobs::renew_certs::JOB, &database, &mut conn, &config, |conn| {
                    run_pass(conn, &config, Some(&name), mode)
                });
            match renewal {
                Ok(Some(Ok(reports))) => {
                    print_reports(&reports);
                    exit_for(&reports)
                }
                Ok(Some(Err(e))) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_FAILURE)
                }
                Ok(None) => {
                    eprintln!("skipped: another process is renewing certificates now (it holds the renew-certs lock); try again when it is done");
                    ExitCode::from(super::EXIT_TEMPFAIL)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_FAILURE)
                }
            }
        }
        CertsCommand::Check { json } => match run_pass(&mut conn, &config, None, Mode::CheckOnly) {
            Ok(reports) => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&reports).unwrap_or_default());
                } else {
                    print_reports(&reports);
                }
                exit_for(&reports)
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_FAILURE)
            }
        },
    }
}

/// 1 when a certificate is failing or expired, else 0.
fn exit_for(reports: &[Report]) -> ExitCode {
    let now = crate::db::now();
    let bad = reports
        .iter()
        .any(|r| r.outcome.is_failing() || r.not_after.is_some_and(|t| t <= now));
    if bad {
        ExitCode::from(EXIT_FAILURE)
    } else {
        ExitCode::SUCCESS
    }
}

fn print_reports(reports: &[Report]) {
    let now = crate::db::now();
    for r in reports {
        let left = r
            .not_after
            .map(|t| {
                if t <= now {
                    "EXPIRED".to_string()
                } else {
                    format!("{:.1} days left", (t - now).num_minutes() as f64 / 1440.0)
                }
            })
            .unwrap_or_else(|| "no certificate".into());
        let what = match &r.outcome {
            Outcome::Renewed => format!("renewed (serial {})", r.serial.as_deref().unwrap_or("?")),
            Outcome::Deployed => "ok, the deploy hook succeeded on a retry".to_string(),
            Outcome::NotDue { renew_at } => format!("ok, renewal due {} UTC", renew_at.format("%Y-%m-%d %H:%M")),
            Outcome::Waiting {
                next_attempt_at,
                last_error,
            } => format!(
                "FAILING, next attempt {} UTC: {last_error}",
                next_attempt_at.format("%Y-%m-%d %H:%M")
            ),
            Outcome::Failed { error } => format!("FAILED: {error}"),
            Outcome::DeployFailed {
                error,
                failures,
                next_attempt_at,
            } => format!(
                "installed, but the deploy hook FAILED ({failures} in a row, next attempt {} UTC): {error}",
                next_attempt_at.format("%Y-%m-%d %H:%M")
            ),
            Outcome::Monitored => "ok (monitored)".to_string(),
            Outcome::Stale {
                replaced_by,
                installed_at,
            } => format!(
                "STALE: serves serial {}, replaced by {replaced_by} at {} UTC",
                r.serial.as_deref().unwrap_or("?"),
                installed_at.format("%Y-%m-%d %H:%M")
            ),
            Outcome::Unreadable { error } => format!("UNREADABLE: {error}"),
        };
        println!("{} ({}): {left}; {what}", r.name, r.kind);
    }
}

/// The `certs list` table.
fn print_list(rows: Vec<store::CertRow>) {
    let now = crate::db::now();
    println!(
        "{:<20}  {:<9}  {:<32}  {:<28}  {:>9}  {:<17}  PROBLEM",
        "NAME", "KIND", "DOMAINS", "ISSUER", "DAYS LEFT", "NEXT CHECK"
    );
    for r in rows {
        let days = r
            .not_after
            .map(|t| format!("{:.1}", (t - now).num_minutes() as f64 / 1440.0))
            .unwrap_or_else(|| "-".into());
        let next = r
            .next_deploy_at
            .filter(|_| r.pending_deploy().is_some())
            .or(r.next_attempt_at)
            .or(r.renew_at);
        let problem = r.problem().unwrap_or_default();
        println!(
            "{:<20}  {:<9}  {:<32}  {:<28}  {:>9}  {:<17}  {}",
            r.name,
            r.kind,
            r.domains.chars().take(32).collect::<String>(),
            r.issuer.unwrap_or_default().chars().take(28).collect::<String>(),
            days,
            next.map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                .unwrap_or_else(|| "-".into()),
            problem.chars().take(100).collect::<String>()
        );
    }
}
