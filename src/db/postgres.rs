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

#[derive(QueryableByName)]
struct BlockRangeExpiry {
    #[diesel(sql_type = BigInt)]
    picked: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    last: Option<String>,
    #[diesel(sql_type = Array<Text>)]
    prefixes: Vec<String>,
}

/// What one statement of the physical-order expiry pass did.
pub struct BlockStep {
    /// Due rows the statement found (at most the limit asked for).
    pub picked: i64,
    /// The last row position it found, where the next statement goes on.
    pub last: Option<String>,
    /// The keys it expired (a row changed meanwhile is found, not expired).
    pub prefixes: Vec<String>,
}

/// The table's size in pages, as the physical-order pass walks it.
pub fn api_keys_pages(conn: &mut PgConnection) -> QueryResult<i64> {
    let row: Count =
        diesel::sql_query("SELECT pg_relation_size('api_keys') / current_setting('block_size')::bigint AS n")
            .get_result(conn)?;
    Ok(row.n)
}

/// How many active keys are due at `now`, counting no further than `cap`
/// (an index range read that stops there).
pub fn count_due_keys(conn: &mut PgConnection, now: NaiveDateTime, cap: i64) -> QueryResult<i64> {
    let row: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM (SELECT 1 FROM api_keys \
             WHERE status = 'active' AND expires_at <= $1 LIMIT $2) due",
    )
    .bind::<Timestamp, _>(now)
    .bind::<BigInt, _>(cap)
    .get_result(conn)?;
    Ok(row.n)
}

/// Expires, with their audit rows, up to `limit` due keys found in table
/// order strictly after row position `after` and before page `end_page`
/// (a TID range scan: the pages are read in order, each once per run, and
/// the rows found are updated through their positions), in one statement.
/// Positions are PostgreSQL's own text form, `(page,item)`, made here and
/// returned by the server, never taken from input.
pub fn expire_block_range(
    conn: &mut PgConnection,
    after: &str,
    end_page: i64,
    limit: i64,
    now: NaiveDateTime,
    actor: &str,
) -> QueryResult<BlockStep> {
    let row: BlockRangeExpiry = diesel::sql_query(
        "WITH picked AS ( \
             SELECT ctid AS at FROM api_keys \
             WHERE ctid > $1::tid AND ctid < ('(' || $2 || ',0)')::tid \
               AND status = 'active' AND expires_at <= $3 LIMIT $4), \
         expired AS ( \
             UPDATE api_keys k SET status = 'expired', updated_at = $3 FROM picked \
             WHERE k.ctid = picked.at AND k.status = 'active' AND k.expires_at <= $3 \
             RETURNING k.id, k.prefix), \
         logged AS ( \
             INSERT INTO api_key_events (key_id, prefix, event, actor, created_at) \
             SELECT id, prefix, 'expired', $5, $3 FROM expired RETURNING prefix) \
         SELECT (SELECT count(*) FROM picked) AS picked, (SELECT max(at)::text FROM picked) AS last, \
                ARRAY(SELECT prefix FROM logged) AS prefixes",
    )
    .bind::<Text, _>(after)
    .bind::<BigInt, _>(end_page)
    .bind::<Timestamp, _>(now)
    .bind::<BigInt, _>(limit)
    .bind::<Text, _>(actor)
    .get_result(conn)?;
    Ok(BlockStep {
        picked: row.picked,
        last: row.last,
        prefixes: row.prefixes,
    })
}

/// Refreshes the planner's statistics of the outbox (see
/// `notify::outbox::refresh_statistics`).
pub fn analyze_notifications(conn: &mut PgConnection) -> QueryResult<usize> {
    diesel::sql_query("ANALYZE notifications").execute(conn)
}

/// New outbox rows, a column at a time (the outbox builds them; see
/// `notify::outbox::enqueue`).
pub struct OutboxColumns<'a> {
    pub subject_kind: Vec<&'a str>,
    pub subject_id: Vec<&'a str>,
    pub generation: Vec<&'a str>,
    pub notice_window: Vec<&'a str>,
    pub recipient: Vec<&'a str>,
    pub recipient_name: Vec<Option<&'a str>>,
    pub payload: Vec<&'a str>,
    pub status: Vec<&'a str>,
    pub attempts: Vec<i32>,
    pub next_attempt_at: Vec<NaiveDateTime>,
    pub created_at: Vec<NaiveDateTime>,
    pub updated_at: Vec<NaiveDateTime>,
}

/// Inserts outbox rows in one statement of constant text (one array a
/// column, unnested side by side), leaving alone any that already exist for
/// the same subject, generation and window; returns how many were new.
/// Unlike a multi-row `VALUES`, the statement is the same whatever the
/// number of rows, and binding an array a column is cheaper than a
/// parameter a value.
pub fn enqueue_unnested(conn: &mut PgConnection, rows: OutboxColumns<'_>) -> QueryResult<usize> {
    use diesel::sql_types::{Integer, Nullable};
    diesel::sql_query(
        "INSERT INTO notifications (subject_kind, subject_id, generation, notice_window, recipient, \
             recipient_name, payload, status, attempts, next_attempt_at, created_at, updated_at) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
             $7::text[], $8::text[], $9::int4[], $10::timestamp[], $11::timestamp[], $12::timestamp[]) \
         ON CONFLICT DO NOTHING",
    )
    .bind::<Array<Text>, _>(rows.subject_kind)
    .bind::<Array<Text>, _>(rows.subject_id)
    .bind::<Array<Text>, _>(rows.generation)
    .bind::<Array<Text>, _>(rows.notice_window)
    .bind::<Array<Text>, _>(rows.recipient)
    .bind::<Array<Nullable<Text>>, _>(rows.recipient_name)
    .bind::<Array<Text>, _>(rows.payload)
    .bind::<Array<Text>, _>(rows.status)
    .bind::<Array<Integer>, _>(rows.attempts)
    .bind::<Array<Timestamp>, _>(rows.next_attempt_at)
    .bind::<Array<Timestamp>, _>(rows.created_at)
    .bind::<Array<Timestamp>, _>(rows.updated_at)
    .execute(conn)
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
