//! `keywarden perms scan|events`.
//!
//! `perms scan` is a one-shot audit that needs no database: it prints each
//! violation and exits 3 when any remains (so it can gate a deploy or run
//! from cron); `--fix` puts back everything fixable, through the same safe
//! remediation the daemon uses. `perms events` reads the recorded history.

use crate::telemetry::printable;
use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use serde::Serialize;

use super::{EXIT_DRIFT, EXIT_FAILURE};
use crate::config::duration::parse_duration;
use crate::perms::{scan, scan_and_fix, store, Fix, Policy, Remedy};
use crate::sys::inode::Inode;

#[derive(Debug, Subcommand)]
pub enum PermsCommand {
    /// Check every path under permissions.roots once; exit 3 if any violates the policy
    Scan {
        /// Put back every fixable violation (never through a symlink or a hard link)
        #[arg(long)]
        fix: bool,
        #[arg(long)]
        json: bool,
    },
    /// Recorded drift events, newest first
    Events {
        /// Only events this recent, as in 24h or 7d
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
        /// Only this host's events
        #[arg(long)]
        host: Option<String>,
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=100000))]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(path: &Path, cmd: PermsCommand) -> ExitCode {
    match cmd {
        PermsCommand::Scan { fix, json } => scan_command(path, fix, json),
        PermsCommand::Events {
            since,
            host,
            limit,
            json,
        } => events_command(path, since.as_deref(), host.as_deref(), limit, json),
    }
}

#[derive(Serialize)]
struct JsonFinding<'a> {
    check: String,
    rule: &'a str,
    expected: &'a str,
}

#[derive(Serialize)]
struct JsonViolation<'a> {
    path: String,
    found_type: String,
    found_mode: String,
    found_uid: u32,
    found_gid: u32,
    rules: String,
    expected: String,
    findings: Vec<JsonFinding<'a>>,
    /// `null` when no fix was tried, else "fixed", "already-compliant" or
    /// the reason it was refused.
    remedy: Option<String>,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    files: u64,
    directories: u64,
    violations: Vec<JsonViolation<'a>>,
    remaining: usize,
    errors: Vec<(String, &'a str)>,
}

fn describe(found: &Inode) -> String {
    format!(
        "{} {:04o} uid {} gid {}",
        found.kind(),
        found.perm(),
        found.uid,
        found.gid
    )
}

fn scan_command(path: &Path, fix: bool, json: bool) -> ExitCode {
    let config = match super::load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let policy = match Policy::of(&config.permissions) {
        Ok(p) => p,
        Err(errors) => {
            for e in errors {
                eprintln!("{}: {e}", config.source.display());
            }
            return ExitCode::from(super::EXIT_CONFIG);
        }
    };
    if policy.roots().is_empty() {
        eprintln!(
            "{}: permissions.roots is empty; there is nothing to scan",
            config.source.display()
        );
        return ExitCode::from(super::EXIT_CONFIG);
    }
    let roots = policy.roots().to_vec();
    let mode = if fix { Fix::Everything } else { Fix::Nothing };
    let (mut report, remedies) = scan_and_fix(&policy, &roots, scan::default_threads(), mode, &|_| {});
    report.violations.sort_by(|a, b| a.path.cmp(&b.path));
    let remedy_text = |p: &Path| {
        remedies.get(p).map(|r| match r {
            Remedy::Fixed(_) => "fixed".to_string(),
            Remedy::AlreadyCompliant(_) => "already-compliant".to_string(),
            Remedy::Refused(why) => format!("refused: {why}"),
        })
    };
    let remaining = report
        .violations
        .iter()
        .filter(|v| {
            !matches!(
                remedies.get(&v.path),
                Some(Remedy::Fixed(_) | Remedy::AlreadyCompliant(_))
            )
        })
        .count();
    if json {
        print_scan_json(&report, &remedy_text, remaining);
    } else {
        print_scan_text(&report, &remedy_text, remaining, fix);
    }
    if remaining > 0 {
        ExitCode::from(EXIT_DRIFT)
    } else if !report.errors.is_empty() {
        ExitCode::from(EXIT_FAILURE)
    } else {
        ExitCode::SUCCESS
    }
}

/// `perms scan --json`.
fn print_scan_json(report: &crate::perms::ScanReport, remedy_text: &dyn Fn(&Path) -> Option<String>, remaining: usize) {
    let out = JsonReport {
        files: report.files,
        directories: report.directories,
        violations: report
            .violations
            .iter()
            .map(|v| JsonViolation {
                path: store::path_text(&v.path),
                found_type: v.found.kind().to_string(),
                found_mode: format!("{:04o}", v.found.perm()),
                found_uid: v.found.uid,
                found_gid: v.found.gid,
                rules: v.verdict.rules(),
                expected: v.verdict.expected(),
                findings: v
                    .verdict
                    .findings
                    .iter()
                    .map(|f| JsonFinding {
                        check: format!("{:?}", f.check).to_lowercase(),
                        rule: &f.rule,
                        expected: &f.expected,
                    })
                    .collect(),
                remedy: remedy_text(&v.path),
            })
            .collect(),
        remaining,
        errors: report
            .errors
            .iter()
            .map(|(p, e)| (store::path_text(p), e.as_str()))
            .collect(),
    };
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
}

/// `perms scan` as one line per violation, then a summary.
fn print_scan_text(
    report: &crate::perms::ScanReport,
    remedy_text: &dyn Fn(&Path) -> Option<String>,
    remaining: usize,
    fix: bool,
) {
    for v in &report.violations {
        let mut line = format!(
            "{}: found {}; expected {} [{}]",
            v.path.display(),
            describe(&v.found),
            v.verdict.expected(),
            v.verdict.rules()
        );
        if let Some(r) = remedy_text(&v.path) {
            line.push_str(&format!(" -> {r}"));
        }
        // A file name may hold a newline or an escape sequence.
        println!("{}", printable(&line));
    }
    for (p, e) in &report.errors {
        eprintln!("warning: cannot examine {}: {e}", printable(&p.display().to_string()));
    }
    println!(
        "{} file(s) in {} director(ies) checked; {} violation(s){}",
        report.files,
        report.directories,
        report.violations.len(),
        if fix {
            format!(", {} left after fixing", remaining)
        } else {
            String::new()
        }
    );
}

fn events_command(path: &Path, since: Option<&str>, host: Option<&str>, limit: i64, json: bool) -> ExitCode {
    let since = match since.map(parse_duration).transpose() {
        Ok(d) => d.map(|d| crate::db::now() - chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::MAX)),
        Err(e) => {
            eprintln!("error: --since: {e}");
            return ExitCode::from(super::EXIT_USAGE);
        }
    };
    let mut conn = match super::connect_with_config(path) {
        Ok((_, c)) => c,
        Err(code) => return code,
    };
    match store::events(&mut conn, host, since, limit) {
        Ok(rows) if json => {
            println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(rows) => {
            println!(
                "{:<20}  {:<19}  {:<16}  {:<6}  {:<11}  PATH / EXPECTED",
                "TIME", "ACTION", "HOST", "MODE", "UID:GID"
            );
            for e in rows {
                let owner = match (e.found_uid, e.found_gid) {
                    (Some(u), Some(g)) => format!("{u}:{g}"),
                    _ => "-".into(),
                };
                println!(
                    "{:<20}  {:<19}  {:<16}  {:<6}  {:<11}  {}  ({}{})",
                    e.created_at.format("%Y-%m-%d %H:%M:%SZ"),
                    e.action,
                    e.host.chars().take(16).collect::<String>(),
                    e.found_mode.map(|m| format!("{m:04o}")).unwrap_or_else(|| "-".into()),
                    owner,
                    printable(&e.path),
                    e.expected,
                    e.detail.map(|d| format!("; {}", printable(&d))).unwrap_or_default()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: database error: {}", crate::db::describe_error(&e));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
