//! Expiry: active keys whose `expires_at` has passed become `expired`.
//!
//! Set-based and batched: each batch is one transaction that flips up to
//! `batch` rows with one `UPDATE … WHERE id IN (…) AND status = 'active'` and
//! writes their audit rows with one `INSERT … SELECT`. Running it again
//! changes nothing, because the `WHERE` only matches active keys.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::db::schema::api_keys;
use crate::db::DbConnection;

use super::{event, record_events_for, status};

/// How many due keys one planning read fetches, in batches.
const PLAN_BATCHES: usize = 20;

/// Expires the keys due at `now`, one batch (one transaction) at a time.
///
/// Work is planned, then done: a read over the `(status, expires_at)` index
/// collects up to `PLAN_BATCHES` batches of due ids; they are sorted by id
/// and expired in that order, so each transaction touches neighbouring table
/// pages and every page is visited about once per run, as a single
/// `UPDATE` would. The next planning read starts at the latest expiry already
/// planned, past the index entries earlier batches left behind. Every
/// `UPDATE` re-checks status and expiry, so a plan gone stale (a key rotated
/// or revoked meanwhile) changes nothing it should not.
pub struct Expirer {
    now: NaiveDateTime,
    batch: usize,
    actor: String,
    cursor: NaiveDateTime,
    planned: std::vec::IntoIter<i64>,
    exhausted: bool,
}

impl Expirer {
    pub fn new(now: NaiveDateTime, batch: u32, actor: &str) -> Self {
        Self {
            now,
            batch: batch.max(1) as usize,
            actor: actor.to_string(),
            cursor: crate::db::beginning_of_time(),
            planned: Vec::new().into_iter(),
            exhausted: false,
        }
    }

    /// Expires the next batch; `None` when nothing is left to do. The
    /// prefixes returned are the keys this batch expired.
    pub fn next_batch(&mut self, conn: &mut DbConnection) -> QueryResult<Option<Vec<String>>> {
        if self.planned.len() == 0 && (self.exhausted || !self.plan(conn)?) {
            return Ok(None);
        }
        let ids: Vec<i64> = self.planned.by_ref().take(self.batch).collect();
        expire_ids(conn, &ids, self.now, &self.actor).map(Some)
    }

    fn plan(&mut self, conn: &mut DbConnection) -> QueryResult<bool> {
        let limit = self.batch * PLAN_BATCHES;
        let due: Vec<(i64, NaiveDateTime)> = api_keys::table
            .select((api_keys::id, api_keys::expires_at))
            .filter(api_keys::status.eq(status::ACTIVE))
            .filter(api_keys::expires_at.ge(self.cursor))
            .filter(api_keys::expires_at.le(self.now))
            .order(api_keys::expires_at.asc())
            .limit(limit as i64)
            .load(conn)?;
        self.exhausted = due.len() < limit;
        if let Some((_, latest)) = due.last() {
            self.cursor = *latest;
        }
        let mut ids: Vec<i64> = due.into_iter().map(|(id, _)| id).collect();
        ids.sort_unstable();
        ids.dedup();
        let any = !ids.is_empty();
        self.planned = ids.into_iter();
        Ok(any)
    }
}

/// Expires the given keys that are still active and due, with their audit
/// events, in one transaction; returns their prefixes.
pub fn expire_ids(conn: &mut DbConnection, ids: &[i64], now: NaiveDateTime, actor: &str) -> QueryResult<Vec<String>> {
    if let Some(pg) = conn.as_postgres() {
        // One statement is one transaction.
        return crate::db::postgres::expire_keys_with_events(pg, ids, now, actor);
    }
    conn.write_transaction(|conn| {
        let expired: Vec<(i64, String)> = diesel::update(api_keys::table)
            .filter(api_keys::id.eq_any(ids))
            // Checked again: a key rotated, revoked or extended meanwhile keeps its state.
            .filter(api_keys::status.eq(status::ACTIVE))
            .filter(api_keys::expires_at.le(now))
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
/// event. Returns the prefixes revoked. `cursor` works as in [`Expirer::next_batch`].
pub fn end_grace_batch(
    conn: &mut DbConnection,
    now: NaiveDateTime,
    batch: u32,
    actor: &str,
    cursor: &mut Option<NaiveDateTime>,
) -> QueryResult<Vec<String>> {
    let from = cursor.unwrap_or_else(crate::db::beginning_of_time);
    conn.write_transaction(|conn| {
        let due_keys = diesel::alias!(api_keys as due_keys);
        let due = due_keys
            .select(due_keys.field(api_keys::id))
            .filter(due_keys.field(api_keys::status).eq(status::ROTATING))
            .filter(due_keys.field(api_keys::grace_period_ends_at).ge(from))
            .filter(due_keys.field(api_keys::grace_period_ends_at).le(now))
            .order(due_keys.field(api_keys::grace_period_ends_at).asc())
            .limit(i64::from(batch));
        let ended = diesel::update(api_keys::table)
            .filter(api_keys::id.eq_any(due))
            .filter(api_keys::status.eq(status::ROTATING))
            .set((
                api_keys::status.eq(status::REVOKED),
                api_keys::revoked_at.eq(Some(now)),
                api_keys::revoked_reason.eq(Some(GRACE_ENDED_REASON)),
                api_keys::updated_at.eq(now),
            ))
            .returning((api_keys::id, api_keys::prefix, api_keys::grace_period_ends_at))
            .get_results::<(i64, String, Option<NaiveDateTime>)>(conn)?;
        let ids: Vec<i64> = ended.iter().map(|(id, _, _)| *id).collect();
        record_events_for(conn, &ids, event::GRACE_ENDED, Some(GRACE_ENDED_REASON), actor, now)?;
        if let Some(latest) = ended.iter().filter_map(|(_, _, at)| *at).max() {
            *cursor = Some(latest);
        }
        Ok(ended.into_iter().map(|(_, p, _)| p).collect())
    })
}

pub const GRACE_ENDED_REASON: &str = "grace period ended";
