//! Statements only PostgreSQL runs. Each is constant SQL text with bound
//! parameters; nothing in it comes from input.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Text, Timestamp};
use diesel::PgConnection;

#[derive(QueryableByName)]
struct Prefix {
    #[diesel(sql_type = Text)]
    prefix: String,
}

/// Expires the given keys that are still active and due, and writes their
/// `expired` audit rows, in one statement: the `UPDATE … RETURNING` feeds the
/// `INSERT` directly, so the rows are not read a second time. (The portable
/// path in `keys::expire` does the same in two statements.)
pub fn expire_keys_with_events(
    conn: &mut PgConnection,
    ids: &[i64],
    now: NaiveDateTime,
    actor: &str,
) -> QueryResult<Vec<String>> {
    let rows: Vec<Prefix> = diesel::sql_query(
        "WITH expired AS ( \
             UPDATE api_keys SET status = 'expired', updated_at = $1 \
             WHERE id = ANY($2) AND status = 'active' AND expires_at <= $1 \
             RETURNING id, prefix) \
         INSERT INTO api_key_events (key_id, prefix, event, actor, created_at) \
         SELECT id, prefix, 'expired', $3, $1 FROM expired \
         RETURNING prefix",
    )
    .bind::<Timestamp, _>(now)
    .bind::<Array<BigInt>, _>(ids)
    .bind::<Text, _>(actor)
    .load(conn)?;
    Ok(rows.into_iter().map(|r| r.prefix).collect())
}

/// Refreshes the planner's statistics of the outbox (see
/// `notify::outbox::refresh_statistics`).
pub fn analyze_notifications(conn: &mut PgConnection) -> QueryResult<usize> {
    diesel::sql_query("ANALYZE notifications").execute(conn)
}

/// Marks notifications sent, each id with its own Message-ID, in one
/// statement: the two arrays are unnested side by side.
pub fn mark_sent_unnested(
    conn: &mut PgConnection,
    ids: Vec<i64>,
    message_ids: Vec<&str>,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    diesel::sql_query(
        "UPDATE notifications AS n SET status = 'sent', claimed_by = NULL, sent_at = $3, \
         message_id = v.message_id, attempts = n.attempts + 1, last_error = NULL, updated_at = $3 \
         FROM unnest($1::bigint[], $2::text[]) AS v(id, message_id) WHERE n.id = v.id",
    )
    .bind::<Array<BigInt>, _>(ids)
    .bind::<Array<Text>, _>(message_ids)
    .bind::<Timestamp, _>(now)
    .execute(conn)
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// How many keys with `status` expiring in `(lower, upper]`, of active
/// owners, have no notice for `window` in their current generation: the
/// anti-join against the outbox in one statement, which the planner may
/// run as a (parallel) hash anti-join. Detection asks this first, so a run
/// with nothing to send costs one anti-join instead of a pass of index
/// probes over every key near expiry.
pub fn count_due_key_notices(
    conn: &mut PgConnection,
    status: &str,
    lower: NaiveDateTime,
    upper: NaiveDateTime,
    window: &str,
) -> QueryResult<i64> {
    let count: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM api_keys k JOIN users u ON u.id = k.owner_id \
         WHERE k.status = $1 AND k.expires_at > $2 AND k.expires_at <= $3 AND u.status = 'active' \
           AND NOT EXISTS (SELECT 1 FROM notifications n WHERE n.subject_kind = 'api_key' \
                 AND n.subject_id = k.id::text \
                 AND n.generation = to_char(k.expires_at, 'YYYY-MM-DD\"T\"HH24:MI:SS.US') \
                 AND n.notice_window = $4)",
    )
    .bind::<Text, _>(status)
    .bind::<Timestamp, _>(lower)
    .bind::<Timestamp, _>(upper)
    .bind::<Text, _>(window)
    .get_result(conn)?;
    Ok(count.n)
}
