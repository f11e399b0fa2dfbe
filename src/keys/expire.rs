//! Expiry: active keys whose `expires_at` has passed become `expired`.
//!
//! Set-based and batched: each batch is one transaction that flips up to
//! `batch` rows with a single `UPDATE … WHERE id IN (SELECT … LIMIT n)` over
//! the `(status, expires_at)` index and writes their audit rows. Running it
//! again changes nothing, because the `WHERE` only matches active keys.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::db::schema::api_keys;
use crate::db::DbConnection;

use super::{event, record_events_for, status};

/// Expires one batch of keys past `now`; returns the prefixes expired.
pub fn expire_batch(conn: &mut DbConnection, now: NaiveDateTime, batch: u32, actor: &str) -> QueryResult<Vec<String>> {
    conn.transaction(|conn| {
        // The subquery reads the same table, so it goes through an alias.
        let due_keys = diesel::alias!(api_keys as due_keys);
        let due = due_keys
            .select(due_keys.field(api_keys::id))
            .filter(due_keys.field(api_keys::status).eq(status::ACTIVE))
            .filter(due_keys.field(api_keys::expires_at).le(now))
            .order(due_keys.field(api_keys::expires_at).asc())
            .limit(i64::from(batch));
        let expired: Vec<(i64, String)> = diesel::update(api_keys::table)
            .filter(api_keys::id.eq_any(due))
            // Checked again: a key rotated or revoked meanwhile keeps its status.
            .filter(api_keys::status.eq(status::ACTIVE))
            .set((api_keys::status.eq(status::EXPIRED), api_keys::updated_at.eq(now)))
            .returning((api_keys::id, api_keys::prefix))
            .get_results(conn)?;
        let ids: Vec<i64> = expired.iter().map(|(id, _)| *id).collect();
        record_events_for(conn, &ids, event::EXPIRED, None, actor, now)?;
        Ok(expired.into_iter().map(|(_, p)| p).collect())
    })
}

/// Ends one batch of grace periods: `rotating` keys whose grace has passed
/// become `revoked` (reason "grace period ended"), each with a `grace_ended`
/// event. Returns the prefixes revoked.
pub fn end_grace_batch(
    conn: &mut DbConnection,
    now: NaiveDateTime,
    batch: u32,
    actor: &str,
) -> QueryResult<Vec<String>> {
    conn.transaction(|conn| {
        let due_keys = diesel::alias!(api_keys as due_keys);
        let due = due_keys
            .select(due_keys.field(api_keys::id))
            .filter(due_keys.field(api_keys::status).eq(status::ROTATING))
            .filter(due_keys.field(api_keys::grace_period_ends_at).le(now))
            .order(due_keys.field(api_keys::grace_period_ends_at).asc())
            .limit(i64::from(batch));
        let ended: Vec<(i64, String)> = diesel::update(api_keys::table)
            .filter(api_keys::id.eq_any(due))
            .filter(api_keys::status.eq(status::ROTATING))
            .set((
                api_keys::status.eq(status::REVOKED),
                api_keys::revoked_at.eq(Some(now)),
                api_keys::revoked_reason.eq(Some(GRACE_ENDED_REASON)),
                api_keys::updated_at.eq(now),
            ))
            .returning((api_keys::id, api_keys::prefix))
            .get_results(conn)?;
        let ids: Vec<i64> = ended.iter().map(|(id, _)| *id).collect();
        record_events_for(conn, &ids, event::GRACE_ENDED, Some(GRACE_ENDED_REASON), actor, now)?;
        Ok(ended.into_iter().map(|(_, p)| p).collect())
    })
}

pub const GRACE_ENDED_REASON: &str = "grace period ended";
