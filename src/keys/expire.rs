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

/// On PostgreSQL, a run walks the table in physical order instead when
/// there is at least one due key per this many pages.
const PAGES_PER_DUE_KEY: i64 = 4;

/// Tables smaller than this many pages are always expired through the index.
const MIN_PAGES_FOR_TABLE_ORDER: i64 = 1024;

/// Pages one statement of the physical-order pass reads at most, so a
/// stretch without due keys does not make one long transaction.
const PAGES_PER_STEP: i64 = 2048;

/// Expires the keys due at `now`, one batch (one transaction) at a time.
///
/// Work is planned, then done: a read over the `(status, expires_at)` index
/// collects up to `PLAN_BATCHES` batches of due ids; they are sorted by id
/// and expired in that order, so each transaction touches neighbouring table
/// pages. The next planning read starts at the latest expiry already
/// planned, past the index entries earlier batches left behind. Every
/// `UPDATE` re-checks status and expiry, so a plan gone stale (a key rotated
/// or revoked meanwhile) changes nothing it should not.
///
/// When many keys are due at once on PostgreSQL (one per
/// [`PAGES_PER_DUE_KEY`] pages or more), due keys of one planning read lie
/// all over the table and each page would be visited by several batches;
/// the run then walks the table in physical order first, a batch of due
/// rows per statement, each page read once (see
/// [`crate::db::postgres::expire_block_range`]), and finishes with the
/// index pass, which finds what moved meanwhile.
pub struct Expirer {
    now: NaiveDateTime,
    batch: usize,
    actor: String,
    cursor: NaiveDateTime,
    planned: std::vec::IntoIter<i64>,
    exhausted: bool,
    table_order: TableOrder,
}

/// The physical-order pass: not decided yet, walking (from a row position
/// to the table's end page at the start of the run), or done.
enum TableOrder {
    Undecided,
    Walking { after: String, end_page: i64 },
    Done,
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
            table_order: TableOrder::Undecided,
        }
    }

    /// Expires the next batch; `None` when nothing is left to do. The
    /// prefixes returned are the keys this batch expired.
    pub fn next_batch(&mut self, conn: &mut DbConnection) -> QueryResult<Option<Vec<String>>> {
        self.prepare(conn)?;
        if let Some(pg) = conn.as_postgres() {
            if let Some(expired) = self.table_order_step(pg)? {
                return Ok(Some(expired));
            }
        }
        if self.planned.len() == 0 && (self.exhausted || !self.plan(conn)?) {
            return Ok(None);
        }
        let ids: Vec<i64> = self.planned.by_ref().take(self.batch).collect();
        expire_ids(conn, &ids, self.now, &self.actor).map(Some)
    }

    /// Decides whether the run walks the table in physical order (a read
    /// of the table's size and a count of due keys that stops at the
    /// threshold); [`Expirer::next_batch`] does it first when not done yet.
    pub fn prepare(&mut self, conn: &mut DbConnection) -> QueryResult<()> {
        use crate::db::postgres;
        if !matches!(self.table_order, TableOrder::Undecided) {
            return Ok(());
        }
        let Some(pg) = conn.as_postgres() else {
            self.table_order = TableOrder::Done;
            return Ok(());
        };
        let pages = postgres::api_keys_pages(pg)?;
        let cap = pages / PAGES_PER_DUE_KEY;
        self.table_order = if pages >= MIN_PAGES_FOR_TABLE_ORDER && postgres::count_due_keys(pg, self.now, cap)? >= cap
        {
            tracing::debug!(pages, "{cap} or more keys due: expiring them in table order");
            TableOrder::Walking {
                after: "(0,0)".to_string(),
                end_page: pages,
            }
        } else {
            TableOrder::Done
        };
        Ok(())
    }

    /// One statement of the physical-order pass; `None` once it is not (or
    /// no longer) the way.
    fn table_order_step(&mut self, pg: &mut diesel::PgConnection) -> QueryResult<Option<Vec<String>>> {
        use crate::db::postgres;
        let TableOrder::Walking { after, end_page } = &self.table_order else {
            return Ok(None);
        };
        let Some(from_page) = page_of(after) else {
            self.table_order = TableOrder::Done;
            return Ok(None);
        };
        let until = (from_page + PAGES_PER_STEP).min(*end_page);
        let step = postgres::expire_block_range(pg, after, until, self.batch as i64, self.now, &self.actor)?;
        self.table_order = match step.last {
            // The batch was full: the stretch goes on after its last row.
            Some(last) if step.picked >= self.batch as i64 => TableOrder::Walking {
                after: last,
                end_page: *end_page,
            },
            _ if until < *end_page => TableOrder::Walking {
                after: format!("({until},0)"),
                end_page: *end_page,
            },
            _ => TableOrder::Done,
        };
        Ok(Some(step.prefixes))
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

/// The page of a row position in PostgreSQL's text form `(page,item)`.
fn page_of(position: &str) -> Option<i64> {
    let inner = position.strip_prefix('(')?.strip_suffix(')')?;
    inner.split_once(',')?.0.parse().ok()
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

#[cfg(test)]
mod tests {
    use super::page_of;

    #[test]
    fn row_positions_give_their_page() {
        assert_eq!(page_of("(0,0)"), Some(0));
        assert_eq!(page_of("(123456,17)"), Some(123_456));
        assert_eq!(page_of("123,4"), None);
        assert_eq!(page_of("(x,1)"), None);
        assert_eq!(page_of(""), None);
    }
}
