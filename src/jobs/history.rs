//! `job_runs`: every run, failed ones too, for `jobs list`, `status` and
//! the admins' own queries.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::db::schema::job_runs;
use crate::db::DbConnection;

use super::Trigger;

/// Longest error text stored; the rest is cut.
const MAX_ERROR_CHARS: usize = 2000;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = job_runs)]
pub struct JobRun {
    pub run_id: String,
    pub job: String,
    pub host: String,
    pub trigger: String,
    pub started_at: NaiveDateTime,
    pub finished_at: Option<NaiveDateTime>,
    pub outcome: String,
    pub rows_affected: i64,
    pub error: Option<String>,
}

pub fn record_start(
    conn: &mut DbConnection,
    run_id: &str,
    job: &str,
    host: &str,
    trigger: Trigger,
    started_at: NaiveDateTime,
) -> QueryResult<()> {
    diesel::insert_into(job_runs::table)
        .values((
            job_runs::run_id.eq(run_id),
            job_runs::job.eq(job),
            job_runs::host.eq(host),
            job_runs::trigger.eq(trigger.as_str()),
            job_runs::started_at.eq(started_at),
            job_runs::outcome.eq("running"),
            job_runs::rows_affected.eq(0i64),
        ))
        .execute(conn)?;
    Ok(())
}

pub fn record_finish(
    conn: &mut DbConnection,
    run_id: &str,
    outcome: &str,
    rows: u64,
    error: Option<&str>,
    finished_at: NaiveDateTime,
) -> QueryResult<()> {
    let error = error.map(|e| e.chars().take(MAX_ERROR_CHARS).collect::<String>());
    diesel::update(job_runs::table.filter(job_runs::run_id.eq(run_id)))
        .set((
            job_runs::outcome.eq(outcome),
            job_runs::rows_affected.eq(i64::try_from(rows).unwrap_or(i64::MAX)),
            job_runs::error.eq(error),
            job_runs::finished_at.eq(Some(finished_at)),
        ))
        .execute(conn)?;
    Ok(())
}

/// Marks as `interrupted` the runs of `job` still shown as running. Called
/// under the job lock, so no such run can really be in progress: these were
/// left by a process that died or was stopped past its shutdown timeout.
/// A job locked per host passes its `host`: only that host's runs are under
/// the lock held, another host's may be live.
pub fn close_abandoned(
    conn: &mut DbConnection,
    job: &str,
    host: Option<&str>,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    let closed = (
        job_runs::outcome.eq("interrupted"),
        job_runs::finished_at.eq(Some(now)),
        job_runs::error.eq(Some("the process running it stopped before the run finished")),
    );
    let open = job_runs::table
        .filter(job_runs::job.eq(job))
        .filter(job_runs::outcome.eq("running"));
    match host {
        Some(host) => diesel::update(open.filter(job_runs::host.eq(host)))
            .set(closed)
            .execute(conn),
        None => diesel::update(open).set(closed).execute(conn),
    }
}

/// The most recent run of a job.
pub fn last_run(conn: &mut DbConnection, job: &str) -> QueryResult<Option<JobRun>> {
    job_runs::table
        .filter(job_runs::job.eq(job))
        .order((job_runs::started_at.desc(), job_runs::id.desc()))
        .select(JobRun::as_select())
        .first(conn)
        .optional()
}

/// Failures of a job since a moment.
pub fn failures_since(conn: &mut DbConnection, job: &str, since: NaiveDateTime) -> QueryResult<i64> {
    job_runs::table
        .filter(job_runs::job.eq(job))
        .filter(job_runs::outcome.eq("failed"))
        .filter(job_runs::started_at.ge(since))
        .count()
        .get_result(conn)
}
