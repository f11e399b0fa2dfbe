//! Drift in the database: `permission_drift` (what is wrong now, one row
//! per host and path) and `permission_events` (the history).
//!
//! Every change is a conditional statement whose row count decides whether
//! an event is written: the insert of a new drift row does nothing if one
//! exists, the update only touches a row whose fingerprint differs, the
//! delete only finds a row that is there. So the watcher and a scheduled
//! rescan, racing on the same path, never record one change twice.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::Serialize;
use tracing::{info, warn};

use super::policy::Verdict;
use super::remediate::Remedy;
use super::scan::ScanReport;
use crate::db::schema::{permission_drift, permission_events};
use crate::db::DbConnection;
use crate::sys::inode::Inode;
use crate::telemetry::message_ids;

/// Event actions as stored.
pub mod action {
    pub const DETECTED: &str = "detected";
    pub const REMEDIATED: &str = "remediated";
    pub const REFUSED: &str = "remediation-refused";
    pub const RESOLVED: &str = "resolved";
}

/// Paths are stored as text; a name that is not UTF-8 is shown lossily
/// (consistently, so its drift row is still found again).
pub fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = permission_events, treat_none_as_default_value = false)]
pub struct NewEvent {
    pub host: String,
    pub path: String,
    pub rules: String,
    pub expected: String,
    pub found_mode: Option<i32>,
    pub found_uid: Option<i64>,
    pub found_gid: Option<i64>,
    pub action: String,
    pub detail: Option<String>,
    pub created_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = permission_events)]
pub struct Event {
    pub id: i64,
    pub host: String,
    pub path: String,
    pub rules: String,
    pub expected: String,
    pub found_mode: Option<i32>,
    pub found_uid: Option<i64>,
    pub found_gid: Option<i64>,
    pub action: String,
    pub detail: Option<String>,
    pub created_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = permission_drift)]
pub struct Drift {
    pub id: i64,
    pub host: String,
    pub path: String,
    pub rules: String,
    pub expected: String,
    pub found_mode: i32,
    pub found_uid: i64,
    pub found_gid: i64,
    pub fingerprint: String,
    pub refused: Option<String>,
    pub detected_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = permission_drift)]
struct NewDrift<'a> {
    host: &'a str,
    path: &'a str,
    rules: &'a str,
    expected: &'a str,
    found_mode: i32,
    found_uid: i64,
    found_gid: i64,
    fingerprint: &'a str,
    refused: Option<&'a str>,
    detected_at: NaiveDateTime,
    updated_at: NaiveDateTime,
}

/// What was seen at one path.
#[derive(Debug, Clone)]
pub enum Observation {
    /// The path does not comply; `remedy` is set when remediation was tried.
    Drift {
        path: PathBuf,
        found: Inode,
        verdict: Verdict,
        remedy: Option<Remedy>,
    },
    /// The path complies (`Some`) or no longer exists (`None`).
    Clean { path: PathBuf, found: Option<Inode> },
}

/// Counts of events written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub detected: u64,
    pub remediated: u64,
    pub refused: u64,
    pub resolved: u64,
}

impl Tally {
    fn add(&mut self, action: &str) {
        match action {
            action::DETECTED => self.detected += 1,
            action::REMEDIATED => self.remediated += 1,
            action::REFUSED => self.refused += 1,
            _ => self.resolved += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.detected + self.remediated + self.refused + self.resolved
    }
}

fn fingerprint(found: &Inode, verdict: &Verdict) -> String {
    format!(
        "{:o}:{}:{}|{}|{}",
        found.mode,
        found.uid,
        found.gid,
        verdict.rules(),
        verdict.expected()
    )
}

fn event(
    host: &str,
    path: &str,
    v: Option<&Verdict>,
    found: Option<&Inode>,
    act: &str,
    detail: Option<String>,
    now: NaiveDateTime,
) -> NewEvent {
    NewEvent {
        host: host.to_string(),
        path: path.to_string(),
        rules: v.map(Verdict::rules).unwrap_or_default(),
        expected: v.map(Verdict::expected).unwrap_or_default(),
        found_mode: found.map(|f| f.perm() as i32),
        found_uid: found.map(|f| i64::from(f.uid)),
        found_gid: found.map(|f| i64::from(f.gid)),
        action: act.to_string(),
        detail,
        created_at: now,
    }
}

/// Records observations, in transactions of up to 500, writing an event for
/// each change and logging each event to journald after its commit.
pub fn record(
    conn: &mut DbConnection,
    host: &str,
    observations: &[Observation],
    now: NaiveDateTime,
) -> QueryResult<Tally> {
    let mut tally = Tally::default();
    for chunk in observations.chunks(500) {
        let events = conn.write_transaction(|conn| {
            let mut events = Vec::new();
            for obs in chunk {
                record_one(conn, host, obs, now, &mut events)?;
            }
            insert_events(conn, &events)?;
            QueryResult::Ok(events)
        })?;
        for e in &events {
            tally.add(&e.action);
            log_event(e);
        }
    }
    Ok(tally)
}

fn insert_events(conn: &mut DbConnection, events: &[NewEvent]) -> QueryResult<()> {
    // 10 columns a row: chunks stay under SQLite's bound-parameter limit.
    for chunk in events.chunks(1000) {
        crate::on_backend!(conn, c => diesel::insert_into(permission_events::table)
            .values(chunk)
            .execute(c))?;
    }
    Ok(())
}

fn record_one(
    conn: &mut DbConnection,
    host: &str,
    obs: &Observation,
    now: NaiveDateTime,
    events: &mut Vec<NewEvent>,
) -> QueryResult<()> {
    match obs {
        Observation::Clean { path, found } => record_clean(conn, host, &path_text(path), found.as_ref(), now, events),
        Observation::Drift {
            path,
            found,
            verdict,
            remedy,
        } => {
            let p = path_text(path);
            match remedy {
                Some(Remedy::Fixed(after) | Remedy::AlreadyCompliant(after)) => {
                    let fixed = matches!(remedy, Some(Remedy::Fixed(_)));
                    record_put_back(conn, host, &p, found, verdict, after, fixed, now, events)
                }
                Some(Remedy::Refused(why)) => record_open(conn, host, &p, found, verdict, Some(why), now, events),
                _ => record_open(conn, host, &p, found, verdict, None, now, events),
            }
        }
    }
}

/// A path that complies: its open drift, if any, is resolved.
fn record_clean(
    conn: &mut DbConnection,
    host: &str,
    p: &str,
    found: Option<&Inode>,
    now: NaiveDateTime,
    events: &mut Vec<NewEvent>,
) -> QueryResult<()> {
    if let Some(d) = delete_drift(conn, host, p)? {
        let detail = if found.is_some() {
            "fixed by someone else".to_string()
        } else {
            "the path no longer exists".to_string()
        };
        let mut e = event(host, p, None, found, action::RESOLVED, Some(detail), now);
        e.rules = d.rules;
        e.expected = d.expected;
        events.push(e);
    }
    Ok(())
}

/// Drift that remediation put back (or found already put back): no open
/// drift remains; the detection is recorded too unless it was earlier.
#[allow(clippy::too_many_arguments)]
fn record_put_back(
    conn: &mut DbConnection,
    host: &str,
    p: &str,
    found: &Inode,
    verdict: &Verdict,
    after: &Inode,
    fixed: bool,
    now: NaiveDateTime,
    events: &mut Vec<NewEvent>,
) -> QueryResult<()> {
    let was_open = delete_drift(conn, host, p)?.is_some();
    if !was_open {
        events.push(event(host, p, Some(verdict), Some(found), action::DETECTED, None, now));
    }
    events.push(event(
        host,
        p,
        Some(verdict),
        Some(after),
        if fixed { action::REMEDIATED } else { action::RESOLVED },
        Some(format!(
            "now mode {:04o}, uid {}, gid {}",
            after.perm(),
            after.uid,
            after.gid
        )),
        now,
    ));
    Ok(())
}

/// Drift that stays open: recorded once when it appears or changes, and a
/// refusal to remediate reported once.
#[allow(clippy::too_many_arguments)]
fn record_open(
    conn: &mut DbConnection,
    host: &str,
    p: &str,
    found: &Inode,
    verdict: &Verdict,
    refusal: Option<&str>,
    now: NaiveDateTime,
    events: &mut Vec<NewEvent>,
) -> QueryResult<()> {
    let fp = fingerprint(found, verdict);
    let rules = verdict.rules();
    let expected = verdict.expected();
    let row = NewDrift {
        host,
        path: p,
        rules: &rules,
        expected: &expected,
        found_mode: found.perm() as i32,
        found_uid: i64::from(found.uid),
        found_gid: i64::from(found.gid),
        fingerprint: &fp,
        refused: refusal.map(|_| fp.as_str()),
        detected_at: now,
        updated_at: now,
    };
    let inserted = crate::on_backend!(conn, c => diesel::insert_into(permission_drift::table)
        .values(&row)
        .on_conflict_do_nothing()
        .execute(c))?;
    let changed = if inserted == 1 {
        1
    } else {
        diesel::update(permission_drift::table)
            .filter(permission_drift::host.eq(host))
            .filter(permission_drift::path.eq(p))
            .filter(permission_drift::fingerprint.ne(&fp))
            .set((
                permission_drift::rules.eq(&rules),
                permission_drift::expected.eq(&expected),
                permission_drift::found_mode.eq(row.found_mode),
                permission_drift::found_uid.eq(row.found_uid),
                permission_drift::found_gid.eq(row.found_gid),
                permission_drift::fingerprint.eq(&fp),
                permission_drift::refused.eq(row.refused),
                permission_drift::updated_at.eq(now),
            ))
            .execute(conn)?
    };
    let refused_event = |why: &str| {
        event(
            host,
            p,
            Some(verdict),
            Some(found),
            action::REFUSED,
            Some(why.to_string()),
            now,
        )
    };
    if changed == 1 {
        events.push(event(host, p, Some(verdict), Some(found), action::DETECTED, None, now));
        if let Some(why) = refusal {
            events.push(refused_event(why));
        }
    } else if let Some(why) = refusal {
        // Same drift, newly refused: report the refusal once.
        let marked = diesel::update(permission_drift::table)
            .filter(permission_drift::host.eq(host))
            .filter(permission_drift::path.eq(p))
            .filter(
                permission_drift::refused
                    .is_null()
                    .or(permission_drift::refused.ne(&fp)),
            )
            .set(permission_drift::refused.eq(&fp))
            .execute(conn)?;
        if marked == 1 {
            events.push(refused_event(why));
        }
    }
    Ok(())
}

fn delete_drift(conn: &mut DbConnection, host: &str, path: &str) -> QueryResult<Option<Drift>> {
    let q = diesel::delete(permission_drift::table)
        .filter(permission_drift::host.eq(host))
        .filter(permission_drift::path.eq(path));
    crate::on_backend!(conn, c => q.returning(Drift::as_returning()).get_result(c).optional())
}

/// Journald gets every event as a structured warning (or notice, once put
/// back), with the same fields as the table.
pub fn log_event(e: &NewEvent) {
    let mode = e.found_mode.map(|m| format!("{m:04o}")).unwrap_or_default();
    let uid = e.found_uid.map(|u| u.to_string()).unwrap_or_default();
    let gid = e.found_gid.map(|g| g.to_string()).unwrap_or_default();
    let detail = e.detail.as_deref().unwrap_or("");
    match e.action.as_str() {
        action::DETECTED => warn!(
            message_id = message_ids::PERMISSION_DRIFT,
            path = %e.path, rule = %e.rules, expected = %e.expected,
            found_mode = %mode, found_uid = %uid, found_gid = %gid, action = %e.action, host = %e.host,
            "permission drift at {}: found mode {mode} uid {uid} gid {gid}, expected {} ({})",
            e.path, e.expected, e.rules
        ),
        action::REFUSED => warn!(
            message_id = message_ids::PERMISSION_REFUSED,
            path = %e.path, rule = %e.rules, expected = %e.expected,
            found_mode = %mode, found_uid = %uid, found_gid = %gid, action = %e.action, host = %e.host,
            detail = %detail,
            "remediation refused at {}: {detail}", e.path
        ),
        _ => info!(
            message_id = message_ids::PERMISSION_RESOLVED,
            path = %e.path, rule = %e.rules, expected = %e.expected,
            found_mode = %mode, found_uid = %uid, found_gid = %gid, action = %e.action, host = %e.host,
            detail = %detail,
            "permission drift at {} {}: {detail}", e.path, e.action
        ),
    }
}

/// Open drift of a host.
pub fn open_drift(conn: &mut DbConnection, host: &str) -> QueryResult<Vec<Drift>> {
    permission_drift::table
        .filter(permission_drift::host.eq(host))
        .order(permission_drift::path)
        .select(Drift::as_select())
        .load(conn)
}

/// Records a full or partial scan: every violation found, and every open
/// drift under `scopes` that the scan did not find again (now clean, or
/// gone) as resolved; drift below a directory the scan could not read is
/// left as it is.
pub fn reconcile(
    conn: &mut DbConnection,
    host: &str,
    scopes: &[PathBuf],
    report: &ScanReport,
    remedies: &HashMap<PathBuf, Remedy>,
    now: NaiveDateTime,
) -> QueryResult<Tally> {
    let seen: HashSet<String> = report.violations.iter().map(|v| path_text(&v.path)).collect();
    let mut observations: Vec<Observation> = report
        .violations
        .iter()
        .map(|v| Observation::Drift {
            path: v.path.clone(),
            found: v.found,
            verdict: v.verdict.clone(),
            remedy: remedies.get(&v.path).cloned(),
        })
        .collect();
    for d in open_drift(conn, host)? {
        let path = PathBuf::from(&d.path);
        if seen.contains(&d.path) || !scopes.iter().any(|s| path.starts_with(s)) || report.was_unreadable(&path) {
            continue;
        }
        observations.push(Observation::Clean {
            found: Inode::lstat(&path).ok(),
            path,
        });
    }
    record(conn, host, &observations, now)
}

/// Events, newest first, optionally since a time and for one host.
pub fn events(
    conn: &mut DbConnection,
    host: Option<&str>,
    since: Option<NaiveDateTime>,
    limit: i64,
) -> QueryResult<Vec<Event>> {
    let mut q = permission_events::table.into_boxed();
    if let Some(h) = host {
        q = q.filter(permission_events::host.eq(h.to_string()));
    }
    if let Some(s) = since {
        q = q.filter(permission_events::created_at.ge(s));
    }
    q.order(permission_events::id.desc())
        .limit(limit)
        .select(Event::as_select())
        .load(conn)
}

/// Deletes events older than `cutoff`, in batches; returns how many.
pub fn purge_events(conn: &mut DbConnection, cutoff: NaiveDateTime, batch: i64) -> QueryResult<u64> {
    let ids: Vec<i64> = permission_events::table
        .filter(permission_events::created_at.lt(cutoff))
        .order(permission_events::id)
        .limit(batch)
        .select(permission_events::id)
        .load(conn)?;
    if ids.is_empty() {
        return Ok(0);
    }
    let n = diesel::delete(permission_events::table.filter(permission_events::id.eq_any(&ids))).execute(conn)?;
    Ok(n as u64)
}
