//! Retention: audit events and job runs older than `keys.audit_retention`
//! (never below 90 days) are deleted in batches, oldest first.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::db::schema::{api_key_events, job_runs};
use crate::db::DbConnection;

/// Deletes up to `batch` audit events created before `cutoff`.
pub fn purge_events_batch(conn: &mut DbConnection, cutoff: NaiveDateTime, batch: u32) -> QueryResult<usize> {
    let old = diesel::alias!(api_key_events as old_events);
    let ids = old
        .select(old.field(api_key_events::id))
        .filter(old.field(api_key_events::created_at).lt(cutoff))
        .order(old.field(api_key_events::id).asc())
        .limit(i64::from(batch));
    diesel::delete(api_key_events::table.filter(api_key_events::id.eq_any(ids))).execute(conn)
}

/// Deletes up to `batch` finished job runs started before `cutoff`.
pub fn purge_runs_batch(conn: &mut DbConnection, cutoff: NaiveDateTime, batch: u32) -> QueryResult<usize> {
    let old = diesel::alias!(job_runs as old_runs);
    let ids = old
        .select(old.field(job_runs::id))
        .filter(old.field(job_runs::started_at).lt(cutoff))
        .filter(old.field(job_runs::outcome).ne("running"))
        .order(old.field(job_runs::id).asc())
        .limit(i64::from(batch));
    diesel::delete(job_runs::table.filter(job_runs::id.eq_any(ids))).execute(conn)
}
