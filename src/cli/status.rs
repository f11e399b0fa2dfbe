//! `keywarden status`: the jobs (last outcome, last failure, next run) and
//! the database. Later sections (keys, certificates, permissions) add to it.

use std::path::Path;
use std::process::ExitCode;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Serialize;

use super::{load_config, open_database, EXIT_FAILURE};
use crate::config::Config;
use crate::db::{migrate, DbConnection, DbError};
use crate::jobs::history;
use crate::keys::service::{summary, KeysSummary};

/// One job as shown by `jobs list` and `status`.
#[derive(Debug, Serialize)]
pub struct JobStatus {
    pub job: String,
    pub enabled: bool,
    pub schedule: String,
    pub last_started_at: Option<String>,
    pub last_outcome: Option<String>,
    pub last_rows_affected: Option<i64>,
    pub last_error: Option<String>,
    pub last_host: Option<String>,
    pub failures_24h: i64,
    pub next_run_at: Option<String>,
}

fn ts(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

fn ts_utc(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

pub fn collect_jobs(config: &Config, conn: &mut DbConnection) -> Result<Vec<JobStatus>, DbError> {
    let now = Utc::now();
    let day_ago = now.naive_utc() - chrono::TimeDelta::hours(24);
    let mut rows = Vec::new();
    for (name, settings) in &config.jobs {
        let last = history::last_run(conn, name)?;
        let failures_24h = history::failures_since(conn, name, day_ago)?;
        let last_error = match &last {
            Some(run) if run.outcome == "failed" || run.outcome == "interrupted" => run.error.clone(),
            _ => None,
        };
        rows.push(JobStatus {
            job: name.to_string(),
            enabled: settings.enabled,
            schedule: settings.schedule.as_written().to_string(),
            last_started_at: last.as_ref().map(|r| ts(r.started_at)),
            last_outcome: last.as_ref().map(|r| r.outcome.clone()),
            last_rows_affected: last.as_ref().map(|r| r.rows_affected),
            last_error,
            last_host: last.as_ref().map(|r| r.host.clone()),
            failures_24h,
            next_run_at: if settings.enabled {
                settings.schedule.next_after(now).map(ts_utc)
            } else {
                None
            },
        });
    }
    Ok(rows)
}

pub fn print_jobs_table(rows: &[JobStatus]) {
    let dash = || "-".to_string();
    let table: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.job.clone(),
                if r.enabled { "yes".into() } else { "no".into() },
                r.schedule.clone(),
                r.last_started_at.clone().unwrap_or_else(dash),
                r.last_outcome.clone().unwrap_or_else(dash),
                r.last_rows_affected.map(|n| n.to_string()).unwrap_or_else(dash),
                r.next_run_at.clone().unwrap_or_else(dash),
            ]
        })
        .collect();
    let header = [
        "JOB",
        "ENABLED",
        "SCHEDULE (UTC)",
        "LAST RUN",
        "OUTCOME",
        "ROWS",
        "NEXT RUN",
    ];
    let mut widths = header.map(str::len);
    for row in &table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in &table {
        line(row.iter().map(String::as_str).collect());
    }
    for r in rows {
        if let Some(e) = &r.last_error {
            println!(
                "{}: last run {}: {e}",
                r.job,
                r.last_outcome.as_deref().unwrap_or("failed")
            );
        }
    }
}

#[derive(Debug, Serialize)]
struct Status {
    database: DatabaseStatus,
    jobs: Vec<JobStatus>,
    keys: Option<KeysSummary>,
    /// Outbox rows per status.
    notifications: Option<std::collections::BTreeMap<String, i64>>,
    permissions: Option<DriftStatus>,
    certificates: Option<Vec<crate::acme::store::CertRow>>,
    /// The last keys found in files (`[leaks]`), newest first.
    leaked_keys: Option<Vec<String>>,
}

/// Open permission drift, per host, and the most recent events.
#[derive(Debug, Serialize)]
struct DriftStatus {
    roots: Vec<String>,
    open: Vec<crate::perms::store::Drift>,
    last_event_at: Option<String>,
}

fn collect_drift(config: &Config, conn: &mut DbConnection) -> diesel::QueryResult<DriftStatus> {
    use crate::db::schema::{permission_drift, permission_events};
    use diesel::prelude::*;
    let open = permission_drift::table
        .order((permission_drift::host, permission_drift::path))
        .limit(1000)
        .select(crate::perms::store::Drift::as_select())
        .load(conn)?;
    let last: Option<NaiveDateTime> = permission_events::table
        .select(diesel::dsl::max(permission_events::created_at))
        .first(conn)?;
    Ok(DriftStatus {
        roots: config
            .permissions
            .roots
            .iter()
            .map(|r| r.display().to_string())
            .collect(),
        open,
        last_event_at: last.map(ts),
    })
}

#[derive(Debug, Serialize)]
struct DatabaseStatus {
    backend: &'static str,
    url: String,
    pending_migrations: Vec<String>,
}

pub fn run(path: &Path, json: bool) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let database = match open_database(&config) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let collected = collect(&config, &database);
    let status = match collected {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    print_text(&status);
    ExitCode::SUCCESS
}

/// Everything `status` reports, read in one connection.
fn collect(config: &crate::config::Config, database: &crate::db::Database) -> Result<Status, String> {
    let mut conn = database.connect().map_err(|e| e.to_string())?;
    let pending = migrate::pending(&mut conn).map_err(|e| e.to_string())?;
    let db_error = |e: diesel::result::Error| format!("database error: {}", crate::db::describe_error(&e));
    let leaked_keys = if pending.is_empty() {
        Some(super::leaks::status_lines(&mut conn))
    } else {
        None
    };
    let (jobs, keys, notifications, permissions, certificates) = if pending.is_empty() {
        (
            collect_jobs(config, &mut conn).map_err(|e| e.to_string())?,
            Some(summary(&mut conn).map_err(|e| e.to_string())?),
            Some(
                crate::notify::outbox::counts(&mut conn)
                    .map_err(|e| format!("database error: {}", crate::db::describe_error(&e)))?
                    .into_iter()
                    .collect(),
            ),
            Some(collect_drift(config, &mut conn).map_err(db_error)?),
            Some(crate::acme::store::list(&mut conn).map_err(db_error)?),
        )
    } else {
        (Vec::new(), None, None, None, None)
    };
    Ok(Status {
        database: DatabaseStatus {
            backend: config.database.url.backend_name(),
            url: database.describe(),
            pending_migrations: pending,
        },
        jobs,
        keys,
        notifications,
        permissions,
        certificates,
        leaked_keys,
    })
}

/// The status as text, one block per concern.
fn print_text(status: &Status) {
    println!("Database: {} ({})", status.database.url, status.database.backend);
    if status.database.pending_migrations.is_empty() {
        println!("Schema: up to date");
    } else {
        println!(
            "Schema: {} pending migration(s); the daemon applies them at start, or run `keywarden migrate`",
            status.database.pending_migrations.len()
        );
        return;
    }
    println!();
    println!("Jobs:");
    print_jobs_table(&status.jobs);
    if let Some(k) = &status.keys {
        print_keys(k);
    }
    if let Some(n) = &status.notifications {
        print_notifications(n);
    }
    if let Some(p) = &status.permissions {
        print_permissions(p);
    }
    if let Some(certs) = &status.certificates {
        print_certificates(certs);
    }
    if let Some(found) = &status.leaked_keys {
        println!();
        println!("Leaked keys:");
        if found.is_empty() {
            println!("  none found in files");
        }
        for line in found {
            println!("  {line}");
        }
    }
}

/// The keys block.
fn print_keys(k: &KeysSummary) {
    println!();
    println!("Keys:");
    println!(
        "  active {}, rotating {}, revoked {}, expired {}; {} active key(s) expire within 7 days",
        k.active, k.rotating, k.revoked, k.expired, k.expiring_within_7d
    );
    for (prefix, ends) in &k.in_grace {
        println!("  in grace: {prefix} until {}", ts(*ends));
    }
}

/// The outbox block.
fn print_notifications(n: &std::collections::BTreeMap<String, i64>) {
    let get = |k: &str| n.get(k).copied().unwrap_or(0);
    println!();
    println!("Notifications:");
    println!(
        "  pending {}, sending {}, sent {}, failed {}, cancelled {}, skipped {}",
        get("pending"),
        get("sending"),
        get("sent"),
        get("failed"),
        get("cancelled"),
        get("skipped")
    );
    if get("failed") > 0 {
        println!("  failed notifications: keywarden notifications list --status failed");
    }
}

/// The permission drift block.
fn print_permissions(p: &DriftStatus) {
    println!();
    println!("Permission drift:");
    if p.roots.is_empty() {
        println!("  no permissions.roots configured");
    } else {
        println!("  watching {}", p.roots.join(", "));
    }
    println!(
        "  {} open drift(s); last event {}",
        p.open.len(),
        p.last_event_at.as_deref().unwrap_or("never")
    );
    for d in p.open.iter().take(20) {
        println!(
            "  {} {}: found {:04o} uid {} gid {}; expected {}{}",
            d.host,
            d.path,
            d.found_mode,
            d.found_uid,
            d.found_gid,
            d.expected,
            if d.refused.is_some() {
                " (remediation refused)"
            } else {
                ""
            }
        );
    }
    if p.open.len() > 20 {
        println!("  … and {} more: keywarden perms events", p.open.len() - 20);
    }
}

/// The certificates block.
fn print_certificates(certs: &[crate::acme::store::CertRow]) {
    println!();
    println!("Certificates:");
    if certs.is_empty() {
        println!("  none configured");
    }
    let now = crate::db::now();
    for c in certs {
        let left = c
            .not_after
            .map(|t| format!("{:.1} days left", (t - now).num_minutes() as f64 / 1440.0))
            .unwrap_or_else(|| "not issued yet".into());
        println!(
            "  {} ({}): {left}{}",
            c.name,
            c.kind,
            c.problem()
                .map(|e| format!("; FAILING: {}", e.chars().take(120).collect::<String>()))
                .unwrap_or_default()
        );
    }
}
