//! The `notifications` table: enqueue (ignoring what already exists),
//! claim, mark, list and retry.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::Serialize;

use super::{kind, status};
use crate::db::holder::Holder;
use crate::db::schema::notifications;
use crate::db::{Backend, DbConnection};

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

/// Rows enqueued in one run above which the table's statistics are
/// refreshed before delivery.
pub const ANALYZE_AFTER: usize = 5000;

/// Refreshes PostgreSQL's statistics of the outbox. After a run enqueued
/// many rows into an outbox the planner last saw (nearly) empty, it would
/// take every delivery query for a one-row lookup and walk all pending rows
/// per claim: on 100,000 new notices, most of the run's time. Autovacuum
/// catches up within minutes; a long first run cannot wait for it. Needs the
/// table's owner (keywarden's own user, which runs the migrations); without
/// that right it is skipped.
pub fn refresh_statistics(conn: &mut DbConnection) {
    if let Some(pg) = conn.as_postgres() {
        if let Err(e) = crate::db::postgres::analyze_notifications(pg) {
            tracing::debug!("ANALYZE notifications: {e}");
        }
    }
}

/// Inserts rows, leaving alone any that already exist for the same subject,
/// generation and window. Returns how many were new.
pub fn enqueue(conn: &mut DbConnection, rows: &[NewNotification]) -> QueryResult<usize> {
    let mut n = 0;
    if let Some(pg) = conn.as_postgres() {
        for chunk in rows.chunks(10_000) {
            n += crate::db::postgres::enqueue_unnested(pg, columns(chunk))?;
        }
        return Ok(n);
    }
    // 12 columns a row; stay well under SQLite's bound-parameter limit.
    for chunk in rows.chunks(1000) {
        n += crate::on_backend!(conn, c => diesel::insert_into(notifications::table)
            .values(chunk)
            .on_conflict_do_nothing()
            .execute(c))?;
    }
    Ok(n)
}

/// Rows as the one-statement PostgreSQL insert takes them.
fn columns(rows: &[NewNotification]) -> crate::db::postgres::OutboxColumns<'_> {
    let text = |f: fn(&NewNotification) -> &str| rows.iter().map(f).collect();
    let stamps = |f: fn(&NewNotification) -> NaiveDateTime| rows.iter().map(f).collect();
    crate::db::postgres::OutboxColumns {
        subject_kind: text(|r| &r.subject_kind),
        subject_id: text(|r| &r.subject_id),
        generation: text(|r| &r.generation),
        notice_window: text(|r| &r.notice_window),
        recipient: text(|r| &r.recipient),
        recipient_name: rows.iter().map(|r| r.recipient_name.as_deref()).collect(),
        payload: text(|r| &r.payload),
        status: text(|r| &r.status),
        attempts: rows.iter().map(|r| r.attempts).collect(),
        next_attempt_at: stamps(|r| r.next_attempt_at),
        created_at: stamps(|r| r.created_at),
        updated_at: stamps(|r| r.updated_at),
    }
}

/// Marks pending rows of these subjects in `windows` as skipped (a tighter
/// window's notice was just enqueued for each of them), whatever their
/// generation: a pending row of an older generation is stale anyway.
pub fn skip_pending_windows(
    conn: &mut DbConnection,
    subject_kind: &str,
    subject_ids: &[String],
    windows: &[String],
    now: NaiveDateTime,
) -> QueryResult<usize> {
    let mut n = 0;
    for chunk in subject_ids.chunks(5000) {
        n += diesel::update(notifications::table)
            .filter(notifications::subject_kind.eq(subject_kind))
            .filter(notifications::subject_id.eq_any(chunk))
            .filter(notifications::notice_window.eq_any(windows))
            .filter(notifications::status.eq(status::PENDING))
            .set((
                notifications::status.eq(status::SKIPPED),
                notifications::updated_at.eq(now),
            ))
            .execute(conn)?;
    }
    Ok(n)
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

/// Claims the due rows of at most `recipients` recipients (taken in id
/// order from the first `scan` due rows after `after`, which moves past
/// them): they become `sending`, held by `holder`. On PostgreSQL that is two statements: a read of the due rows'
/// recipients, then one `UPDATE … RETURNING` that re-checks the status
/// under the row locks, so concurrent claimers never take the same row (a
/// claimer that finds its rows taken looks again). On SQLite both run in
/// one transaction that begins `IMMEDIATE`.
pub fn claim(
    conn: &mut DbConnection,
    holder: &Holder,
    now: NaiveDateTime,
    recipients: usize,
    scan: i64,
    after: &mut i64,
) -> QueryResult<Vec<Notification>> {
    let holder = holder.to_string();
    let claim_once = |conn: &mut DbConnection, after: &mut i64| -> QueryResult<Option<Vec<Notification>>> {
        // The recipients of the next due rows in id order, read without
        // locks, from where the previous claim stopped (the (status, id)
        // index: rows claimed before are never stepped over again).
        let due: Vec<(i64, String)> = notifications::table
            .filter(notifications::status.eq(status::PENDING))
            .filter(notifications::id.gt(*after))
            .filter(notifications::next_attempt_at.le(now))
            .order(notifications::id.asc())
            .limit(scan)
            .select((notifications::id, notifications::recipient))
            .load(conn)?;
        if due.is_empty() {
            return Ok(None);
        }
        let mut chosen: Vec<String> = Vec::new();
        for (id, recipient) in due {
            if !chosen.contains(&recipient) {
                if chosen.len() >= recipients.max(1) {
                    break;
                }
                chosen.push(recipient);
            }
            // Every row up to here belongs to a chosen recipient.
            *after = id;
        }
        // All their due rows (one digest each). The UPDATE checks the status
        // again under the row lock, so a row another replica claimed first
        // is left alone.
        // A macro: the RETURNING clause's type names the backend.
        macro_rules! claim {
            ($c:expr) => {
                diesel::update(notifications::table)
                    .filter(notifications::recipient.eq_any(&chosen))
                    .filter(notifications::status.eq(status::PENDING))
                    .filter(notifications::next_attempt_at.le(now))
                    .set((
                        notifications::status.eq(status::SENDING),
                        notifications::claimed_at.eq(Some(now)),
                        notifications::claimed_by.eq(Some(&holder)),
                        notifications::updated_at.eq(now),
                    ))
                    .returning(Notification::as_returning())
                    .get_results($c)?
            };
        }
        let mut claimed: Vec<Notification> = crate::on_backend!(conn, c => claim!(c));
        claimed.sort_by(|a, b| (&a.recipient, a.id).cmp(&(&b.recipient, b.id)));
        Ok(Some(claimed))
    };
    for _ in 0..CLAIM_TRIES {
        // PostgreSQL: two autocommitted statements, the claim atomic in
        // itself. SQLite: one write transaction (local, and it keeps other
        // writers out between the read and the update).
        let claimed = match conn.backend() {
            Backend::Postgres => claim_once(conn, after)?,
            Backend::Sqlite => conn.write_transaction(|c| claim_once(c, after))?,
        };
        match claimed {
            None => return Ok(Vec::new()),
            Some(c) if c.is_empty() => continue,
            Some(c) => return Ok(c),
        }
    }
    Ok(Vec::new())
}

/// How often a claim looks again when another replica claimed every row
/// it chose first.
const CLAIM_TRIES: usize = 20;

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

/// Marks several messages sent at once, each with its own rows and
/// Message-ID: one statement on PostgreSQL (arrays unnested; the SQL text
/// is fixed), one per message on SQLite (where statements cost no round
/// trip). Run it inside a transaction on SQLite when there are several.
pub fn mark_sent_many(conn: &mut DbConnection, sent: &[(&[i64], &str)], now: NaiveDateTime) -> QueryResult<usize> {
    if let Some(pg) = conn.as_postgres() {
        let (ids, message_ids): (Vec<i64>, Vec<&str>) = sent
            .iter()
            .flat_map(|(ids, mid)| ids.iter().map(move |id| (*id, *mid)))
            .unzip();
        return crate::db::postgres::mark_sent_unnested(pg, ids, message_ids, now);
    }
    let mut n = 0;
    for (ids, mid) in sent {
        n += mark_sent(conn, ids, mid, now)?;
    }
    Ok(n)
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
