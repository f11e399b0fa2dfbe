//! The `notifications` table: enqueue (ignoring what already exists),
//! claim, mark, list and retry.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::Serialize;

use super::{kind, status};
use crate::db::holder::Holder;
use crate::db::schema::notifications;
use crate::db::DbConnection;

/// A row to enqueue. `None` is stored as NULL, which lets SQLite take these
/// in multi-row inserts.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = notifications, treat_none_as_default_value = false)]
pub struct NewNotification {
    pub subject_kind: String,
    pub subject_id: String,
    pub generation: String,
    pub notice_window: String,
    pub recipient: String,
    pub recipient_name: Option<String>,
    pub payload: String,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: NaiveDateTime,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = notifications)]
pub struct Notification {
    pub id: i64,
    pub subject_kind: String,
    pub subject_id: String,
    pub generation: String,
    pub notice_window: String,
    pub recipient: String,
    pub recipient_name: Option<String>,
    pub payload: String,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: NaiveDateTime,
    pub claimed_at: Option<NaiveDateTime>,
    pub last_error: Option<String>,
    pub message_id: Option<String>,
    pub created_at: NaiveDateTime,
    pub sent_at: Option<NaiveDateTime>,
    pub updated_at: NaiveDateTime,
    /// Who holds the row while it is `sending` (see [`Holder`]).
    pub claimed_by: Option<String>,
}

/// Inserts rows, leaving alone any that already exist for the same subject,
/// generation and window. Returns how many were new.
pub fn enqueue(conn: &mut DbConnection, rows: &[NewNotification]) -> QueryResult<usize> {
    let mut n = 0;
    // 12 columns a row; stay well under SQLite's bound-parameter limit.
    for chunk in rows.chunks(1000) {
        n += match conn {
            DbConnection::Postgres(pg) => diesel::insert_into(notifications::table)
                .values(chunk)
                .on_conflict_do_nothing()
                .execute(pg)?,
            DbConnection::Sqlite(lite) => diesel::insert_into(notifications::table)
                .values(chunk)
                .on_conflict_do_nothing()
                .execute(lite)?,
        };
    }
    Ok(n)
}

/// Marks pending rows of a subject in windows wider than the one just
/// enqueued as skipped: one warning per key at a time.
pub fn skip_pending(
    conn: &mut DbConnection,
    subject_kind: &str,
    subject_id: &str,
    generation: &str,
    windows: &[String],
    now: NaiveDateTime,
) -> QueryResult<usize> {
    diesel::update(notifications::table)
        .filter(notifications::subject_kind.eq(subject_kind))
        .filter(notifications::subject_id.eq(subject_id))
        .filter(notifications::generation.eq(generation))
        .filter(notifications::notice_window.eq_any(windows))
        .filter(notifications::status.eq(status::PENDING))
        .set((
            notifications::status.eq(status::SKIPPED),
            notifications::updated_at.eq(now),
        ))
        .execute(conn)
}

/// Cancels a key's pending warnings (it was rotated or revoked).
pub fn cancel_for_key(conn: &mut DbConnection, key_id: i64, now: NaiveDateTime) -> QueryResult<usize> {
    diesel::update(notifications::table)
        .filter(notifications::subject_kind.eq(kind::API_KEY))
        .filter(notifications::subject_id.eq(key_id.to_string()))
        .filter(notifications::status.eq(status::PENDING))
        .set((
            notifications::status.eq(status::CANCELLED),
            notifications::updated_at.eq(now),
        ))
        .execute(conn)
}

/// Cancels the pending warnings about every key of an owner (the owner was
/// disabled). Returns how many.
pub fn cancel_for_owner(conn: &mut DbConnection, owner_id: i64, now: NaiveDateTime) -> QueryResult<usize> {
    use crate::db::schema::api_keys;
    let keys: Vec<i64> = api_keys::table
        .filter(api_keys::owner_id.eq(owner_id))
        .select(api_keys::id)
        .load(conn)?;
    let mut n = 0;
    for chunk in keys.chunks(5000) {
        let ids: Vec<String> = chunk.iter().map(i64::to_string).collect();
        n += diesel::update(notifications::table)
            .filter(notifications::subject_kind.eq(kind::API_KEY))
            .filter(notifications::subject_id.eq_any(ids))
            .filter(notifications::status.eq(status::PENDING))
            .set((
                notifications::status.eq(status::CANCELLED),
                notifications::last_error.eq(Some("the owner was disabled")),
                notifications::updated_at.eq(now),
            ))
            .execute(conn)?;
    }
    Ok(n)
}

/// Existing rows for these subjects (any status), as (subject id, generation, window).
pub fn existing_for(
    conn: &mut DbConnection,
    subject_kind: &str,
    subject_ids: &[String],
) -> QueryResult<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    for chunk in subject_ids.chunks(5000) {
        out.extend(
            notifications::table
                .filter(notifications::subject_kind.eq(subject_kind))
                .filter(notifications::subject_id.eq_any(chunk))
                .select((
                    notifications::subject_id,
                    notifications::generation,
                    notifications::notice_window,
                ))
                .load::<(String, String, String)>(conn)?,
        );
    }
    Ok(out)
}

/// Puts back rows left `sending` by a run that stopped before marking them
/// (they are sent again: delivery is at-least-once): at once when their
/// holder is provably gone (see [`Holder::is_gone`]), otherwise once the
/// claim is older than `older_than` (another host's crash). Returns how many.
pub fn release_abandoned_claims(
    conn: &mut DbConnection,
    me: &Holder,
    older_than: NaiveDateTime,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    let held: Vec<(i64, Option<String>, Option<NaiveDateTime>)> = notifications::table
        .filter(notifications::status.eq(status::SENDING))
        .select((notifications::id, notifications::claimed_by, notifications::claimed_at))
        .load(conn)?;
    let ids: Vec<i64> = held
        .into_iter()
        .filter(|(_, by, at)| {
            let gone = by.as_deref().and_then(Holder::parse).is_some_and(|h| h.is_gone(me));
            gone || at.is_none_or(|at| at < older_than)
        })
        .map(|(id, _, _)| id)
        .collect();
    let mut n = 0;
    for chunk in ids.chunks(5000) {
        n += diesel::update(notifications::table)
            .filter(notifications::id.eq_any(chunk))
            .filter(notifications::status.eq(status::SENDING))
            .set((
                notifications::status.eq(status::PENDING),
                notifications::claimed_by.eq(None::<String>),
                notifications::updated_at.eq(now),
            ))
            .execute(conn)?;
    }
    Ok(n)
}

/// Claims the due rows of at most `recipients` recipients (taken in row
/// order from the first `scan` due rows): they become `sending`, held by
/// `holder`. Delivery claims no more than it can have in flight, so a crash
/// leaves at most that many messages sent but unrecorded. On PostgreSQL the
/// rows are picked with `FOR UPDATE SKIP LOCKED`, so concurrent claimers
/// never take the same row; on SQLite the transaction begins `IMMEDIATE`.
pub fn claim(
    conn: &mut DbConnection,
    holder: &Holder,
    now: NaiveDateTime,
    recipients: usize,
    scan: i64,
) -> QueryResult<Vec<Notification>> {
    let holder = holder.to_string();
    conn.write_transaction(|conn| {
        let due: Vec<(i64, String)> = match conn {
            DbConnection::Postgres(pg) => notifications::table
                .filter(notifications::status.eq(status::PENDING))
                .filter(notifications::next_attempt_at.le(now))
                .order(notifications::id.asc())
                .limit(scan)
                .select((notifications::id, notifications::recipient))
                .for_update()
                .skip_locked()
                .load(pg)?,
            DbConnection::Sqlite(lite) => notifications::table
                .filter(notifications::status.eq(status::PENDING))
                .filter(notifications::next_attempt_at.le(now))
                .order(notifications::id.asc())
                .limit(scan)
                .select((notifications::id, notifications::recipient))
                .load(lite)?,
        };
        let mut chosen: Vec<&str> = Vec::new();
        let mut ids: Vec<i64> = Vec::new();
        for (id, recipient) in &due {
            if !chosen.contains(&recipient.as_str()) {
                if chosen.len() >= recipients.max(1) {
                    continue;
                }
                chosen.push(recipient);
            }
            ids.push(*id);
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        diesel::update(notifications::table)
            .filter(notifications::id.eq_any(&ids))
            .filter(notifications::status.eq(status::PENDING))
            .set((
                notifications::status.eq(status::SENDING),
                notifications::claimed_at.eq(Some(now)),
                notifications::claimed_by.eq(Some(&holder)),
                notifications::updated_at.eq(now),
            ))
            .execute(conn)?;
        notifications::table
            .filter(notifications::id.eq_any(&ids))
            .filter(notifications::status.eq(status::SENDING))
            .filter(notifications::claimed_by.eq(&holder))
            .order((notifications::recipient.asc(), notifications::id.asc()))
            .select(Notification::as_select())
            .load(conn)
    })
}

/// Rows that failed at least once and wait for their next attempt (or gave
/// up): undelivered past their due time. Returns the count and one error.
pub fn overdue_after_failure(conn: &mut DbConnection) -> QueryResult<(i64, Option<String>)> {
    let n: i64 = notifications::table
        .filter(notifications::status.eq(status::PENDING))
        .filter(notifications::attempts.gt(0))
        .count()
        .get_result(conn)?;
    if n == 0 {
        return Ok((0, None));
    }
    let error: Option<Option<String>> = notifications::table
        .filter(notifications::status.eq(status::PENDING))
        .filter(notifications::attempts.gt(0))
        .order(notifications::updated_at.desc())
        .select(notifications::last_error)
        .first(conn)
        .optional()?;
    Ok((n, error.flatten()))
}

pub fn mark_sent(conn: &mut DbConnection, ids: &[i64], message_id: &str, now: NaiveDateTime) -> QueryResult<usize> {
    diesel::update(notifications::table)
        .filter(notifications::id.eq_any(ids))
        .set((
            notifications::status.eq(status::SENT),
            notifications::claimed_by.eq(None::<String>),
            notifications::sent_at.eq(Some(now)),
            notifications::message_id.eq(Some(message_id)),
            notifications::attempts.eq(notifications::attempts + 1),
            notifications::last_error.eq(None::<String>),
            notifications::updated_at.eq(now),
        ))
        .execute(conn)
}

pub fn mark_cancelled(conn: &mut DbConnection, ids: &[i64], why: &str, now: NaiveDateTime) -> QueryResult<usize> {
    diesel::update(notifications::table)
        .filter(notifications::id.eq_any(ids))
        .set((
            notifications::status.eq(status::CANCELLED),
            notifications::claimed_by.eq(None::<String>),
            notifications::last_error.eq(Some(why)),
            notifications::updated_at.eq(now),
        ))
        .execute(conn)
}

/// Records a failed attempt: back to pending with a later attempt time, or
/// failed when the attempts are used up.
pub fn mark_attempt_failed(
    conn: &mut DbConnection,
    ids: &[i64],
    error: &str,
    next_attempt_at: Option<NaiveDateTime>,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    let error: String = error.chars().take(2000).collect();
    let (new_status, next) = match next_attempt_at {
        Some(t) => (status::PENDING, t),
        None => (status::FAILED, now),
    };
    diesel::update(notifications::table)
        .filter(notifications::id.eq_any(ids))
        .set((
            notifications::status.eq(new_status),
            notifications::claimed_by.eq(None::<String>),
            notifications::attempts.eq(notifications::attempts + 1),
            notifications::next_attempt_at.eq(next),
            notifications::last_error.eq(Some(error)),
            notifications::updated_at.eq(now),
        ))
        .execute(conn)
}

pub fn list(conn: &mut DbConnection, status_filter: Option<&str>, limit: i64) -> QueryResult<Vec<Notification>> {
    let mut q = notifications::table.select(Notification::as_select()).into_boxed();
    if let Some(s) = status_filter {
        q = q.filter(notifications::status.eq(s.to_string()));
    }
    q.order(notifications::id.desc()).limit(limit).load(conn)
}

/// Puts a failed (or cancelled) row back in the queue, due now.
pub fn retry(conn: &mut DbConnection, id: i64, now: NaiveDateTime) -> QueryResult<Option<Notification>> {
    let n = diesel::update(notifications::table)
        .filter(notifications::id.eq(id))
        .filter(notifications::status.eq_any([status::FAILED, status::CANCELLED]))
        .set((
            notifications::status.eq(status::PENDING),
            notifications::attempts.eq(0),
            notifications::next_attempt_at.eq(now),
            notifications::updated_at.eq(now),
        ))
        .execute(conn)?;
    if n == 0 {
        return Ok(None);
    }
    notifications::table
        .find(id)
        .select(Notification::as_select())
        .first(conn)
        .optional()
}

pub fn find(conn: &mut DbConnection, id: i64) -> QueryResult<Option<Notification>> {
    notifications::table
        .find(id)
        .select(Notification::as_select())
        .first(conn)
        .optional()
}

/// Rows per status, for `keywarden status`.
pub fn counts(conn: &mut DbConnection) -> QueryResult<Vec<(String, i64)>> {
    notifications::table
        .group_by(notifications::status)
        .select((notifications::status, diesel::dsl::count_star()))
        .order(notifications::status)
        .load(conn)
}
