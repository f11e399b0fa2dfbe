//! Retention: audit events and job runs older than `keys.audit_retention`
//! (never below 90 days) are deleted in batches, oldest first.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::db::schema::{api_key_events, job_runs};
use crate::db::DbConnection;

/// Deletes up to `batch` audit events created before `cutoff`, oldest
/// first. `cursor` carries the last creation time deleted, so each batch's
/// index scan starts past the entries of rows already deleted.
pub fn purge_events_batch(
    conn: &mut DbConnection,
    cutoff: NaiveDateTime,
    batch: u32,
    cursor: &mut Option<NaiveDateTime>,
) -> QueryResult<usize> {
    let from = cursor.unwrap_or_else(crate::db::beginning_of_time);
    let old = diesel::alias!(api_key_events as old_events);
    let ids = old
        .select(old.field(api_key_events::id))
        .filter(old.field(api_key_events::created_at).ge(from))
        .filter(old.field(api_key_events::created_at).lt(cutoff))
        .order(old.field(api_key_events::created_at).asc())
        .limit(i64::from(batch));
    let deleted: Vec<NaiveDateTime> = diesel::delete(api_key_events::table.filter(api_key_events::id.eq_any(ids)))
        .returning(api_key_events::created_at)
        .get_results(conn)?;
    if let Some(latest) = deleted.iter().max() {
        *cursor = Some(*latest);
    }
    Ok(deleted.len())
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
