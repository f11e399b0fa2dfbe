//! `keywarden leaks scan|list`.
//!
//! `leaks scan` is a one-shot scan for live keys (every key-shaped string
//! confirmed by prefix lookup and Argon2): it reports what it finds and
//! exits 3 when a live key is found; with `--revoke` it acts as the daemon
//! does (`leaks.action`), recording, revoking and emailing. `leaks list`
//! shows what was found.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use diesel::prelude::*;

use super::{EXIT_DRIFT, EXIT_FAILURE};
use crate::db::schema::leak_findings;
use crate::leaks::act::{Finding, Mode, Outcome};
use crate::leaks::{deliver_now, log_finding, scan_once, Settings};
use crate::telemetry::printable;

#[derive(Debug, Subcommand)]
pub enum LeaksCommand {
    /// Scan files for live keys once (the configured roots, or PATHs); exit 3 if one is found
    Scan {
        /// Files or directories to scan instead of leaks.roots (symlinks are not followed)
        paths: Vec<PathBuf>,
        /// Act on live keys as the daemon does (leaks.action: revoke, or alert), and email
        #[arg(long)]
        revoke: bool,
        #[arg(long)]
        json: bool,
    },
    /// Keys found in files, newest first
    List {
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=100000))]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(path: &Path, cmd: LeaksCommand) -> ExitCode {
    match cmd {
        LeaksCommand::Scan { paths, revoke, json } => scan_command(path, &paths, revoke, json),
        LeaksCommand::List { limit, json } => list_command(path, limit, json),
    }
}

fn scan_command(path: &Path, paths: &[PathBuf], revoke: bool, json: bool) -> ExitCode {
    let (config, mut conn) = match super::connect_with_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let section = config.leaks.clone().unwrap_or_default();
    let settings = Settings::from_section(&config, &section);
    let targets: Vec<PathBuf> = if paths.is_empty() {
        settings.roots.clone()
    } else {
        paths
            .iter()
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
            .collect()
    };
    if targets.is_empty() {
        eprintln!("error: nothing to scan: give PATHs, or set leaks.roots (or permissions.roots)");
        return ExitCode::from(super::EXIT_USAGE);
    }
    let mode = if revoke {
        Mode::Act(settings.action)
    } else {
        Mode::Report
    };
    let (findings, tally) = match scan_once(&mut conn, &config, &settings, &targets, mode) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    if revoke {
        for f in &findings {
            log_finding(f);
        }
        if findings
            .iter()
            .any(|f| matches!(f.outcome, Outcome::Revoked | Outcome::Alerted))
        {
            deliver_now(&mut conn, &config);
        }
    }
    let live = findings.iter().any(Finding::was_live);
    if json {
        let out = serde_json::json!({"findings": findings, "scanned": tally, "live_keys_found": live});
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        for f in &findings {
            let what = match f.outcome {
                Outcome::Revoked => "LIVE, revoked",
                Outcome::Alerted => "LIVE, reported (leaks.action = \"alert\")",
                Outcome::Live => "LIVE (run with --revoke to revoke it)",
                Outcome::Recorded | Outcome::NotLive => "not live",
                Outcome::AlreadyKnown => "found here before",
            };
            println!(
                "{}:{}  {}  {} of {}  status {}: {}",
                printable(&f.path),
                f.line,
                f.prefix,
                printable(&f.name),
                printable(&f.owner),
                f.status,
                what
            );
        }
        eprintln!(
            "scanned {} files ({} bytes); skipped {} binary, {} over leaks.max_file_size, {} excluded; {} unreadable; {} keys found",
            tally.files,
            tally.bytes,
            tally.skipped_binary,
            tally.skipped_large,
            tally.excluded,
            tally.unreadable,
            findings.len()
        );
    }
    if live {
        ExitCode::from(EXIT_DRIFT)
    } else {
        ExitCode::SUCCESS
    }
}

#[derive(Queryable, serde::Serialize)]
struct Row {
    prefix: String,
    path: String,
    line: i64,
    host: String,
    key_status: String,
    action: String,
    found_at: chrono::NaiveDateTime,
}

/// The last `limit` findings, newest first.
fn recent(conn: &mut crate::db::DbConnection, limit: i64) -> QueryResult<Vec<Row>> {
    leak_findings::table
        .order((leak_findings::found_at.desc(), leak_findings::id.desc()))
        .limit(limit)
        .select((
            leak_findings::prefix,
            leak_findings::path,
            leak_findings::line,
            leak_findings::host,
            leak_findings::key_status,
            leak_findings::action,
            leak_findings::found_at,
        ))
        .load(conn)
}

/// Lines for `keywarden status`: the last findings, if any.
pub fn status_lines(conn: &mut crate::db::DbConnection) -> Vec<String> {
    recent(conn, 5)
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            format!(
                "{}  {} in {}:{} on {} ({} when found): {}",
                r.found_at.format("%Y-%m-%d %H:%M:%SZ"),
                r.prefix,
                printable(&r.path),
                r.line,
                printable(&r.host),
                r.key_status,
                r.action
            )
        })
        .collect()
}

fn list_command(path: &Path, limit: i64, json: bool) -> ExitCode {
    let mut conn = match super::connect_with_config(path) {
        Ok((_, c)) => c,
        Err(code) => return code,
    };
    match recent(&mut conn, limit) {
        Ok(rows) if json => {
            println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(rows) => {
            println!(
                "{:<20}  {:<8}  {:<28}  {:<16}  PATH:LINE",
                "FOUND", "ACTION", "KEY", "HOST"
            );
            for r in rows {
                println!(
                    "{:<20}  {:<8}  {:<28}  {:<16}  {}:{}",
                    r.found_at.format("%Y-%m-%d %H:%M:%SZ"),
                    r.action,
                    r.prefix,
                    printable(&r.host),
                    printable(&r.path),
                    r.line
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", crate::db::describe_error(&e));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
