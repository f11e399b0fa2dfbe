//! The figures read from the database, in aggregate statements whose cost
//! follows the number of groups, not of rows returned (the counts by status
//! use the `(status, …)` indexes).

use chrono::NaiveDateTime;
use diesel::dsl::{count_star, max, min, sql};
use diesel::prelude::*;
use diesel::sql_types::BigInt;

use crate::acme::store::{self as certs, CertRow};
use crate::config::Config;
use crate::db::schema::{api_key_events, api_keys, job_runs, notifications, permission_drift, permission_events};
use crate::db::DbConnection;

/// One job's last runs, from the shared history (every replica's).
#[derive(Debug, Clone, PartialEq)]
pub struct JobFigures {
    pub job: &'static str,
    pub last_start: Option<NaiveDateTime>,
    pub last_end: Option<NaiveDateTime>,
    pub last_outcome: Option<String>,
    pub last_rows: Option<i64>,
    pub last_success: Option<NaiveDateTime>,
}

/// Everything [`super::render`] writes but the process's own counters.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub taken_at: NaiveDateTime,
    /// How long reading it took, in seconds.
    pub took: f64,
    pub certificates: Vec<CertRow>,
    pub keys_by_status: Vec<(String, i64)>,
    /// Active keys expiring within each notification window ("7d"), widest first.
    pub keys_expiring: Vec<(String, i64)>,
    /// Successful verifications ever (the keys' usage counts).
    pub verifications_valid: i64,
    /// Refused verifications in the last hour, by reason class.
    pub refusals_last_hour: Vec<(&'static str, i64)>,
    pub jobs: Vec<JobFigures>,
    pub outbox_by_status: Vec<(String, i64)>,
    pub outbox_oldest_pending: Option<NaiveDateTime>,
    pub drift_open: i64,
    /// Permission events in the last 24 hours, by action.
    pub drift_events_last_day: Vec<(String, i64)>,
}

/// The reason classes refusals are counted by: a bounded label set, since
/// the stored reasons carry details (a scope's name).
pub const REFUSAL_CLASSES: [(&str, &str); 10] = [
    ("malformed", "malformed"),
    ("unknown prefix", "unknown_key"),
    ("wrong secret", "wrong_secret"),
    ("key revoked", "revoked"),
    ("key expired", "expired"),
    ("grace period ended", "grace_ended"),
    ("address not in the allow-list", "ip_not_allowed"),
    ("missing scope", "missing_scope"),
    ("owner disabled", "owner_disabled"),
    ("cannot be read", "unreadable_restriction"),
];

fn refusal_class(reason: &str) -> &'static str {
    REFUSAL_CLASSES
        .iter()
        .find(|(text, _)| reason.starts_with(text) || (*text == "cannot be read" && reason.contains(text)))
        .map(|(_, class)| *class)
        .unwrap_or("other")
}

fn grouped<T: Ord>(mut rows: Vec<(T, i64)>) -> Vec<(T, i64)> {
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows
}

impl Snapshot {
    pub fn read(conn: &mut DbConnection, config: &Config, now: NaiveDateTime) -> QueryResult<Snapshot> {
        let started = std::time::Instant::now();
        let certificates = certs::list(conn)?;
        let keys_by_status = grouped(
            api_keys::table
                .group_by(api_keys::status)
                .select((api_keys::status, count_star()))
                .load::<(String, i64)>(conn)?,
        );
        let mut keys_expiring = Vec::new();
        for window in config.notifications.sorted_windows() {
            let n: i64 = api_keys::table
                .filter(api_keys::status.eq(crate::keys::status::ACTIVE))
                .filter(api_keys::expires_at.gt(now))
                .filter(api_keys::expires_at.le(now + window.as_time_delta()))
                .count()
                .get_result(conn)?;
            keys_expiring.push((window.to_string(), n));
        }
        // SUM of a BIGINT is NUMERIC on PostgreSQL: cast back, in fixed text.
        let verifications_valid: i64 = api_keys::table
            .select(sql::<BigInt>("CAST(COALESCE(SUM(usage_count), 0) AS BIGINT)"))
            .first(conn)?;
        let reasons: Vec<(Option<String>, i64)> = api_key_events::table
            .filter(api_key_events::created_at.ge(now - chrono::TimeDelta::hours(1)))
            .filter(api_key_events::event.eq(crate::keys::event::VERIFY_FAILED))
            .group_by(api_key_events::reason)
            .select((api_key_events::reason, count_star()))
            .load(conn)?;
        let mut refusals: std::collections::BTreeMap<&'static str, i64> = Default::default();
        for (reason, n) in reasons {
            *refusals
                .entry(refusal_class(reason.as_deref().unwrap_or("")))
                .or_default() += n;
        }
        let jobs = config
            .jobs
            .keys()
            .map(|job| job_figures(conn, job))
            .collect::<QueryResult<Vec<_>>>()?;
        let outbox_by_status = grouped(
            notifications::table
                .group_by(notifications::status)
                .select((notifications::status, count_star()))
                .load::<(String, i64)>(conn)?,
        );
        let outbox_oldest_pending: Option<NaiveDateTime> = notifications::table
            .filter(notifications::status.eq(crate::notify::status::PENDING))
            .select(min(notifications::created_at))
            .first(conn)?;
        let drift_open: i64 = permission_drift::table.count().get_result(conn)?;
        let drift_events_last_day = grouped(
            permission_events::table
                .filter(permission_events::created_at.ge(now - chrono::TimeDelta::days(1)))
                .group_by(permission_events::action)
                .select((permission_events::action, count_star()))
                .load::<(String, i64)>(conn)?,
        );
        Ok(Snapshot {
            taken_at: now,
            took: started.elapsed().as_secs_f64(),
            certificates,
            keys_by_status,
            keys_expiring,
            verifications_valid,
            refusals_last_hour: refusals.into_iter().collect(),
            jobs,
            outbox_by_status,
            outbox_oldest_pending,
            drift_open,
            drift_events_last_day,
        })
    }
}

fn job_figures(conn: &mut DbConnection, job: &'static str) -> QueryResult<JobFigures> {
    let last = crate::jobs::history::last_run(conn, job)?;
    let last_success: Option<NaiveDateTime> = job_runs::table
        .filter(job_runs::job.eq(job))
        .filter(job_runs::outcome.eq("ok"))
        .select(max(job_runs::finished_at))
        .first(conn)?;
    // The outcome and rows are the last *finished* run's: a run in progress
    // has neither yet, and the gauges should not vanish while it works.
    let finished: Option<(String, i64)> = match &last {
        Some(r) if r.finished_at.is_some() => Some((r.outcome.clone(), r.rows_affected)),
        _ => job_runs::table
            .filter(job_runs::job.eq(job))
            .filter(job_runs::finished_at.is_not_null())
            .order((job_runs::started_at.desc(), job_runs::id.desc()))
            .select((job_runs::outcome, job_runs::rows_affected))
            .first(conn)
            .optional()?,
    };
    Ok(JobFigures {
        job,
        last_start: last.as_ref().map(|r| r.started_at),
        last_end: last.as_ref().and_then(|r| r.finished_at),
        last_outcome: finished.as_ref().map(|(o, _)| o.clone()),
        last_rows: finished.map(|(_, n)| n),
        last_success,
    })
}

#[cfg(test)]
mod tests {
    use super::refusal_class;

    #[test]
    fn stored_reasons_fall_into_a_bounded_set_of_classes() {
        assert_eq!(refusal_class("missing scope billing:write"), "missing_scope");
        assert_eq!(refusal_class("malformed: too short"), "malformed");
        assert_eq!(
            refusal_class("allowed_ips cannot be read; the key is refused"),
            "unreadable_restriction"
        );
        assert_eq!(refusal_class("wrong secret"), "wrong_secret");
        assert_eq!(refusal_class("something new"), "other");
    }
}
