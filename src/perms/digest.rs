//! Drift emails for the admins, digested: at most one per
//! `permissions.alert_interval` and host, listing every event since the
//! previous one. The outbox row's generation is the last event id it
//! covers, so the next digest starts after it and two processes building
//! the same digest enqueue it once.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::store::{action, Event};
use crate::config::Config;
use crate::db::schema::{notifications, permission_events};
use crate::db::DbConnection;
use crate::notify::alerts::enqueue_admin_alert;
use crate::notify::kind;
use crate::notify::render::AdminAlert;

/// Lines listed in one email; the rest are counted.
const MAX_LINES: usize = 200;

/// Enqueues a digest if one is due and there is something new. Returns the
/// number of events it covers (0 when nothing was enqueued).
pub fn enqueue_if_due(conn: &mut DbConnection, config: &Config, host: &str, now: NaiveDateTime) -> QueryResult<usize> {
    let admins = &config.notifications.admin_emails;
    if admins.is_empty() {
        return Ok(0);
    }
    let subjects: Vec<String> = admins.iter().map(|a| format!("{host}:{a}")).collect();
    let last: Option<(String, NaiveDateTime)> = notifications::table
        .filter(notifications::subject_kind.eq(kind::PERMISSION_DRIFT))
        .filter(notifications::subject_id.eq_any(&subjects))
        .order(notifications::created_at.desc())
        .select((notifications::generation, notifications::created_at))
        .first(conn)
        .optional()?;
    let after_id = match &last {
        Some((generation, at)) => {
            if now - *at < config.permissions.alert_interval.as_time_delta() {
                return Ok(0);
            }
            generation.parse::<i64>().unwrap_or(0)
        }
        None => 0,
    };
    let new = permission_events::table
        .filter(permission_events::host.eq(host))
        .filter(permission_events::id.gt(after_id))
        .filter(permission_events::action.ne(action::RESOLVED));
    // How many new events, and the last one, in one aggregate.
    let (count, max_id): (i64, Option<i64>) = new
        .select((diesel::dsl::count_star(), diesel::dsl::max(permission_events::id)))
        .first(conn)?;
    if count == 0 {
        return Ok(0);
    }
    let rows: Vec<Event> = new
        .order(permission_events::id)
        .limit(MAX_LINES as i64)
        .select(Event::as_select())
        .load(conn)?;
    let mut lines: Vec<String> = rows
        .into_iter()
        .map(|e| {
            let found = format!(
                "mode {}, uid {}, gid {}",
                e.found_mode.map(|m| format!("{m:04o}")).unwrap_or_else(|| "?".into()),
                e.found_uid.map(|u| u.to_string()).unwrap_or_else(|| "?".into()),
                e.found_gid.map(|g| g.to_string()).unwrap_or_else(|| "?".into())
            );
            let (path, detail) = (e.path, e.detail.unwrap_or_default());
            match e.action.as_str() {
                action::DETECTED => format!("{path}: found {found}; expected {} [{}]", e.expected, e.rules),
                action::REMEDIATED => format!("{path}: put back ({detail})"),
                _ => format!("{path}: remediation refused: {detail}"),
            }
        })
        .collect();
    let count = count as usize;
    if count > MAX_LINES {
        lines.push(format!(
            "… and {} more; see `keywarden perms events`",
            count - MAX_LINES
        ));
    }
    let alert = AdminAlert {
        title: format!("Permission drift on {host}: {count} new event(s)"),
        lines,
        action: Some(format!(
            "Run `keywarden perms scan` on {host} for the current state and `journalctl -u keywarden MESSAGE_ID={}` for the history.",
            crate::telemetry::message_ids::PERMISSION_DRIFT
        )),
    };
    let generation = max_id.unwrap_or(after_id).to_string();
    let n = enqueue_admin_alert(
        conn,
        &config.notifications,
        kind::PERMISSION_DRIFT,
        host,
        &generation,
        "digest",
        &alert,
        now,
    )?;
    Ok(if n > 0 { count } else { 0 })
}
