//! Finding keys that enter a warning window, and planning one notice each.
//!
//! For a key expiring at `e`, window `w` is due once `e - w <= now` (a `<=`
//! comparison, so a run that was missed catches up). Only the tightest due
//! window is sent; the wider due ones are recorded as `skipped`. Once the key
//! has expired, the `expired` notice is the one due. The generation of every
//! row is the key's expiry, so extending a key makes its new windows due.

use chrono::{NaiveDateTime, TimeDelta};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamp};
use serde::{Deserialize, Serialize};

use super::outbox::{self, NewNotification};
use super::{kind, status, EXPIRED_WINDOW};
use crate::config::duration::format_duration;
use crate::config::NotificationsConfig;
use crate::db::DbConnection;
use crate::keys::status as key_status;

/// How long after expiry the `expired` notice is still worth sending (a key
/// that expired before notifications were set up gets none).
pub const EXPIRED_LOOKBACK: TimeDelta = TimeDelta::days(7);

/// What an API-key notice carries, to render it later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyNoticePayload {
    pub name: String,
    pub prefix: String,
    pub expires_at: NaiveDateTime,
    pub expired: bool,
}

/// One planned notice.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedNotice {
    pub key_id: i64,
    pub owner_email: String,
    pub owner_name: Option<String>,
    pub window: String,
    pub generation: String,
    pub payload: KeyNoticePayload,
    /// Wider windows passed without a notice; recorded as skipped.
    pub skipped: Vec<String>,
}

pub fn generation_of(expires_at: NaiveDateTime) -> String {
    expires_at.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

/// A key near or past its expiry; the rest only when its notice is due.
#[derive(QueryableByName)]
struct Candidate {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Timestamp)]
    expires_at: NaiveDateTime,
    #[diesel(sql_type = Bool)]
    due: bool,
    #[diesel(sql_type = Nullable<Text>)]
    prefix: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    name: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    owner_email: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    owner_name: Option<String>,
}

/// Keys looked at per query: what one batch holds in memory.
pub const DETECT_BATCH: i64 = 2000;

/// The next [`DETECT_BATCH`] keys with `status` expiring in
/// `(lower, upper]` after the cursor, in (expiry, id) order (an index range
/// scan that stops at the batch), each marked `due` when its owner is active
/// and the outbox has no row for `window` in the key's current generation:
/// an anti-join on the outbox's unique index, one lookup per key, so no run
/// loads the outbox and an idle run's cost is one pass over the keys near
/// expiry. The generation is the expiry formatted as in [`generation_of`].
/// On PostgreSQL the lookup is a LATERAL subquery, which the planner can
/// only run as an index probe: with a plain NOT EXISTS it may, on the
/// statistics of a still empty outbox, materialize the outbox and scan it
/// once per key as the run fills it. The key's names and its owner are
/// read only for keys without a notice (a second LATERAL gated on the
/// first), so an idle run reads the keys from the (status, expires_at)
/// index alone and never joins the users. The SQL text is fixed; every value is
/// bound (`$1` status, `$2`/`$3` range, `$4`/`$5` cursor, `$6` window, `$7`
/// batch size).
const BATCH_POSTGRES: &str = "SELECT k.id, k.expires_at, COALESCE(u.status = 'active', false) AS due, \
       u.prefix, u.name, u.email AS owner_email, u.owner AS owner_name \
     FROM (SELECT id, expires_at FROM api_keys \
           WHERE status = $1 AND expires_at > $2 AND expires_at <= $3 AND (expires_at, id) > ($4, $5) \
           ORDER BY expires_at, id LIMIT $7) k \
     LEFT JOIN LATERAL (SELECT 1 AS hit FROM notifications n WHERE n.subject_kind = 'api_key' \
           AND n.subject_id = k.id::text \
           AND n.generation = to_char(k.expires_at, 'YYYY-MM-DD\"T\"HH24:MI:SS.US') \
           AND n.notice_window = $6 LIMIT 1) sent ON true \
     LEFT JOIN LATERAL (SELECT a.prefix, a.name, o.email, o.name AS owner, o.status \
           FROM api_keys a JOIN users o ON o.id = a.owner_id \
           WHERE a.id = k.id AND sent.hit IS NULL LIMIT 1) u ON true \
     ORDER BY k.expires_at, k.id";

/// The same for SQLite, where timestamps are text (`%F %T%.f`): the
/// generation pads the fraction to six digits.
const BATCH_SQLITE: &str = "SELECT id, expires_at, due, \
       CASE WHEN due THEN prefix END AS prefix, CASE WHEN due THEN name END AS name, \
       CASE WHEN due THEN email END AS owner_email, CASE WHEN due THEN owner END AS owner_name \
     FROM (SELECT k.id, k.expires_at, k.prefix, k.name, u.email, u.name AS owner, \
             (u.status = 'active' AND NOT EXISTS (SELECT 1 FROM notifications n \
                 WHERE n.subject_kind = 'api_key' AND n.subject_id = CAST(k.id AS TEXT) \
                 AND n.generation = substr(replace(k.expires_at, ' ', 'T') || \
                       CASE WHEN instr(k.expires_at, '.') > 0 THEN '000000' ELSE '.000000' END, 1, 26) \
                 AND n.notice_window = ?6)) AS due \
           FROM (SELECT id, prefix, name, expires_at, owner_id FROM api_keys \
                 WHERE status = ?1 AND expires_at > ?2 AND expires_at <= ?3 AND (expires_at, id) > (?4, ?5) \
                 ORDER BY expires_at, id LIMIT ?7) k \
           JOIN users u ON u.id = k.owner_id) \
     ORDER BY expires_at, id";

/// Keys whose due notice is one window: expiring in `(lower, upper]`.
struct DueClass {
    window: String,
    statuses: &'static [&'static str],
    lower: NaiveDateTime,
    upper: NaiveDateTime,
    /// The wider windows, due too but not sent.
    skipped: Vec<String>,
    expired: bool,
}

/// The windows as ranges of expiry: a key expiring within the tightest
/// window gets that window's notice; one that expired (within the
/// look-back) gets the `expired` notice.
fn due_classes(cfg: &NotificationsConfig, now: NaiveDateTime) -> Vec<DueClass> {
    let mut windows: Vec<TimeDelta> = cfg.windows.iter().map(|w| w.as_time_delta()).collect();
    windows.sort();
    windows.dedup();
    let label = |w: &TimeDelta| format_duration(w.to_std().unwrap_or_default());
    let mut classes = Vec::new();
    let mut lower = now;
    for (i, w) in windows.iter().enumerate() {
        classes.push(DueClass {
            window: label(w),
            statuses: &[key_status::ACTIVE],
            lower,
            upper: now + *w,
            skipped: windows[i + 1..].iter().map(label).collect(),
            expired: false,
        });
        lower = now + *w;
    }
    if cfg.notify_expired {
        classes.push(DueClass {
            window: EXPIRED_WINDOW.to_string(),
            // An active key past its expiry is expired in all but name
            // (expire-keys is behind).
            statuses: &[key_status::ACTIVE, key_status::EXPIRED],
            lower: now - EXPIRED_LOOKBACK,
            upper: now,
            skipped: windows.iter().map(label).collect(),
            expired: true,
        });
    }
    classes
}

/// Calls `each` with every batch (at most [`DETECT_BATCH`]) of notices due
/// at `now` that are not in the outbox yet; `each` may enqueue them, which
/// the next batch's anti-join then sees.
pub fn for_each_due_batch(
    conn: &mut DbConnection,
    cfg: &NotificationsConfig,
    now: NaiveDateTime,
    mut each: impl FnMut(&mut DbConnection, Vec<PlannedNotice>) -> QueryResult<()>,
) -> QueryResult<()> {
    use diesel::sql_types::{BigInt, Text, Timestamp};
    let mut enqueued = false;
    for class in due_classes(cfg, now) {
        for status in class.statuses {
            // PostgreSQL first counts what is due in one anti-join (hashed,
            // in parallel when the planner likes): nothing due, no batches.
            // Only while this run has enqueued nothing: after that the
            // outbox's statistics are stale, a plan from them could scan
            // the outbox once per key, and the run is not idle anyway.
            if let (Some(pg), false) = (conn.as_postgres(), enqueued) {
                let due =
                    crate::db::postgres::count_due_key_notices(pg, status, class.lower, class.upper, &class.window)?;
                if due == 0 {
                    continue;
                }
            }
            let mut cursor = (class.lower, i64::MIN);
            loop {
                macro_rules! due {
                    ($sql:expr, $c:expr) => {
                        diesel::sql_query($sql)
                            .bind::<Text, _>(*status)
                            .bind::<Timestamp, _>(class.lower)
                            .bind::<Timestamp, _>(class.upper)
                            .bind::<Timestamp, _>(cursor.0)
                            .bind::<BigInt, _>(cursor.1)
                            .bind::<Text, _>(&class.window)
                            .bind::<BigInt, _>(DETECT_BATCH)
                            .load::<Candidate>($c)?
                    };
                }
                let sql = match conn.backend() {
                    crate::db::Backend::Postgres => BATCH_POSTGRES,
                    crate::db::Backend::Sqlite => BATCH_SQLITE,
                };
                let batch: Vec<Candidate> = crate::on_backend!(conn, c => due!(sql, c));
                let Some(last) = batch.last() else { break };
                cursor = (last.expires_at, last.id);
                let full = batch.len() as i64 == DETECT_BATCH;
                let planned: Vec<PlannedNotice> = batch
                    .into_iter()
                    .filter(|c| c.due)
                    .map(|c| PlannedNotice {
                        key_id: c.id,
                        owner_email: c.owner_email.unwrap_or_default(),
                        owner_name: c.owner_name,
                        window: class.window.clone(),
                        generation: generation_of(c.expires_at),
                        payload: KeyNoticePayload {
                            name: c.name.unwrap_or_default(),
                            prefix: c.prefix.unwrap_or_default(),
                            expires_at: c.expires_at,
                            expired: class.expired,
                        },
                        skipped: class.skipped.clone(),
                    })
                    .collect();
                if planned.is_empty() {
                    if !full {
                        break;
                    }
                    continue;
                }
                each(conn, planned)?;
                enqueued = true;
                if !full {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Plans the notices due at `now` that are not in the outbox yet (all of
/// them, for `jobs run notify-expiry --dry-run`).
pub fn plan_key_notices(
    conn: &mut DbConnection,
    cfg: &NotificationsConfig,
    now: NaiveDateTime,
) -> QueryResult<Vec<PlannedNotice>> {
    let mut all = Vec::new();
    for_each_due_batch(conn, cfg, now, |_, batch| {
        all.extend(batch);
        Ok(())
    })?;
    all.sort_by_key(|p| p.key_id);
    Ok(all)
}

/// Finds and enqueues the notices due at `now`, batch by batch, each batch
/// in one transaction with its detection re-checked by the unique index
/// (a concurrent run's rows are left alone). Returns how many notices were
/// enqueued (wider windows recorded as skipped not counted).
pub fn enqueue_key_notices(
    conn: &mut DbConnection,
    cfg: &NotificationsConfig,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    let mut enqueued = 0;
    let mut inserted = 0;
    for_each_due_batch(conn, cfg, now, |conn, planned| {
        conn.write_transaction(|conn| {
            let mut rows = Vec::with_capacity(planned.len() * 2);
            for p in &planned {
                let payload = serde_json::to_string(&p.payload).unwrap_or_else(|_| "{}".into());
                let row = |window: &str, st: &str| NewNotification {
                    subject_kind: kind::API_KEY.into(),
                    subject_id: p.key_id.to_string(),
                    generation: p.generation.clone(),
                    notice_window: window.to_string(),
                    recipient: p.owner_email.clone(),
                    recipient_name: p.owner_name.clone(),
                    payload: payload.clone(),
                    status: st.to_string(),
                    attempts: 0,
                    next_attempt_at: now,
                    created_at: now,
                    updated_at: now,
                };
                rows.push(row(&p.window, status::PENDING));
                for w in &p.skipped {
                    rows.push(row(w, status::SKIPPED));
                }
            }
            let pending = planned.len();
            inserted += outbox::enqueue(conn, &rows)?;
            // The batch shares its wider windows: one statement skips the
            // pending warnings of those windows for all its keys.
            if let Some(first) = planned.first() {
                if !first.skipped.is_empty() {
                    let ids: Vec<String> = planned.iter().map(|p| p.key_id.to_string()).collect();
                    outbox::skip_pending_windows(conn, kind::API_KEY, &ids, &first.skipped, now)?;
                }
            }
            enqueued += pending;
            Ok(())
        })
    })?;
    if inserted > outbox::ANALYZE_AFTER {
        outbox::refresh_statistics(conn);
    }
    Ok(enqueued)
}
