//! Alerts for admins (`notifications.admin_emails`): enqueued into the same
//! outbox, once per (subject, generation, window), and delivered by
//! `notify-expiry` as one digest per admin. Certificates and permission
//! drift enqueue through [`enqueue_admin_alert`]; failing jobs through
//! [`alert_on_repeated_failures`].

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::outbox::{self, NewNotification};
use super::render::AdminAlert;
use super::{kind, status};
use crate::config::NotificationsConfig;
use crate::db::schema::job_runs;
use crate::db::DbConnection;

/// Consecutive failed runs of a job before the admins hear of it.
pub const FAILURES_BEFORE_ALERT: i64 = 3;

/// Enqueues `alert` for every admin; returns how many rows were new.
#[allow(clippy::too_many_arguments)]
pub fn enqueue_admin_alert(
    conn: &mut DbConnection,
    cfg: &NotificationsConfig,
    subject_kind: &str,
    subject_id: &str,
    generation: &str,
    window: &str,
    alert: &AdminAlert,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    let payload = serde_json::to_string(alert).unwrap_or_else(|_| "{}".into());
    let rows: Vec<NewNotification> = cfg
        .admin_emails
        .iter()
        .map(|admin| NewNotification {
            subject_kind: subject_kind.to_string(),
            // The admin is part of the subject: each admin has a row of their own.
            subject_id: format!("{subject_id}:{admin}"),
            generation: generation.to_string(),
            notice_window: window.to_string(),
            recipient: admin.clone(),
            recipient_name: None,
            payload: payload.clone(),
            status: status::PENDING.to_string(),
            attempts: 0,
            next_attempt_at: now,
            created_at: now,
            updated_at: now,
        })
        .collect();
    outbox::enqueue(conn, &rows)
}

/// After a failed run: when the job's last [`FAILURES_BEFORE_ALERT`] runs
/// all failed, the admins get one alert for this streak of failures (the
/// streak is named by the last successful run before it).
pub fn alert_on_repeated_failures(
    conn: &mut DbConnection,
    cfg: &NotificationsConfig,
    job: &str,
    host: &str,
    last_error: &str,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    if cfg.admin_emails.is_empty() {
        return Ok(0);
    }
    let recent: Vec<String> = job_runs::table
        .filter(job_runs::job.eq(job))
        .filter(job_runs::outcome.ne("running"))
        .order((job_runs::started_at.desc(), job_runs::id.desc()))
        .limit(FAILURES_BEFORE_ALERT)
        .select(job_runs::outcome)
        .load(conn)?;
    if (recent.len() as i64) < FAILURES_BEFORE_ALERT || recent.iter().any(|o| o != "failed") {
        return Ok(0);
    }
    let last_ok: Option<String> = job_runs::table
        .filter(job_runs::job.eq(job))
        .filter(job_runs::outcome.eq("ok"))
        .order((job_runs::started_at.desc(), job_runs::id.desc()))
        .select(job_runs::run_id)
        .first(conn)
        .optional()?;
    let alert = AdminAlert {
        title: format!("Job {job} has failed {FAILURES_BEFORE_ALERT} times in a row"),
        lines: vec![format!("Host: {host}"), format!("Last error: {last_error}")],
        action: Some(format!(
            "Check `journalctl -u keywarden JOB={job}` and `keywarden jobs list`; the job is retried at every tick."
        )),
    };
    enqueue_admin_alert(
        conn,
        cfg,
        kind::JOB_FAILURE,
        job,
        &format!("after:{}", last_ok.unwrap_or_else(|| "never".into())),
        "repeated-failures",
        &alert,
        now,
    )
}
