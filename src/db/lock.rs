//! The job lock: at most one process runs a given job at a time, across
//! every replica sharing the database.
//!
//! PostgreSQL: `pg_try_advisory_xact_lock` taken in a transaction on a
//! connection of its own, held while the job works on another connection and
//! released by that transaction's end. Nothing session-scoped is left behind,
//! and if the process dies the server drops the lock with the connection.
//!
//! SQLite (one host, several processes): a lease row in `job_leases` with an
//! expiry, taken with an upsert that only succeeds when no live lease exists,
//! renewed between batches, deleted at the end. A lease whose holder is
//! provably gone (same host, and another boot, a dead process or an earlier
//! run of this one: see [`Holder`]) is taken over at once; a lease held from
//! another host runs out after [`LEASE_TTL`].

use chrono::{NaiveDateTime, TimeDelta};
use diesel::prelude::*;
use diesel::query_dsl::methods::FilterDsl;
use diesel::upsert::excluded;

use super::holder::Holder;
use super::schema::job_leases;
use super::{Database, DbConnection, DbError};

/// How long an SQLite lease lives without renewal.
pub const LEASE_TTL: TimeDelta = TimeDelta::minutes(10);

diesel::define_sql_function! {
    /// PostgreSQL's non-blocking transaction-scoped advisory lock.
    fn pg_try_advisory_xact_lock(key: diesel::sql_types::BigInt) -> diesel::sql_types::Bool;
}

/// The advisory-lock key for a job: FNV-1a of a namespaced name, so keys are
/// stable across versions and unlikely to collide with other applications.
pub fn lock_key(job: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in "keywarden:job:".bytes().chain(job.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash as i64
}

/// Keeps a held lock alive during a long run.
pub struct LockKeeper {
    lease: Option<(String, String)>,
}

impl LockKeeper {
    /// Extends the lease (SQLite). Returns false if the lease was lost, which
    /// only happens when a run stalled past [`LEASE_TTL`] and another process
    /// took over; the caller should stop.
    pub fn renew(&self, conn: &mut DbConnection) -> Result<bool, DbError> {
        let Some((job, holder)) = &self.lease else {
            return Ok(true);
        };
        let now = super::now();
        let n = diesel::update(job_leases::table)
            .filter(job_leases::job.eq(job))
            .filter(job_leases::holder.eq(holder))
            .set(job_leases::expires_at.eq(now + LEASE_TTL))
            .execute(conn)?;
        Ok(n == 1)
    }
}

/// Runs `work` while holding `job`'s lock. Returns `Ok(None)` without running
/// it when another process holds the lock.
pub fn with_job_lock<R>(
    db: &Database,
    conn: &mut DbConnection,
    job: &str,
    holder: &Holder,
    work: impl FnOnce(&mut DbConnection, &LockKeeper) -> R,
) -> Result<Option<R>, DbError> {
    match conn {
        DbConnection::Postgres(_) => {
            let DbConnection::Postgres(mut lock_conn) = db.connect()? else {
                return Err(DbError::BackendMismatch);
            };
            let keeper = LockKeeper { lease: None };
            lock_conn.transaction::<_, DbError, _>(|lc| {
                let got: bool = diesel::select(pg_try_advisory_xact_lock(lock_key(job))).get_result(lc)?;
                if !got {
                    return Ok(None);
                }
                Ok(Some(work(conn, &keeper)))
            })
        }
        DbConnection::Sqlite(lite) => {
            let me = holder.to_string();
            let acquired = try_acquire_lease(lite, job, &me, super::now())?
                || (take_over_from_gone_holder(lite, job, holder)? && try_acquire_lease(lite, job, &me, super::now())?);
            if !acquired {
                return Ok(None);
            }
            let keeper = LockKeeper {
                lease: Some((job.to_string(), me.clone())),
            };
            let result = work(conn, &keeper);
            release_lease(conn, job, &me)?;
            Ok(Some(result))
        }
    }
}

/// Takes the lease when it is free or expired. The conditional upsert is a
/// single statement, so two processes cannot both succeed.
pub fn try_acquire_lease(
    conn: &mut diesel::SqliteConnection,
    job: &str,
    holder: &str,
    now: NaiveDateTime,
) -> Result<bool, DbError> {
    let n = diesel::insert_into(job_leases::table)
        .values((
            job_leases::job.eq(job),
            job_leases::holder.eq(holder),
            job_leases::acquired_at.eq(now),
            job_leases::expires_at.eq(now + LEASE_TTL),
        ))
        .on_conflict(job_leases::job)
        .do_update()
        .set((
            job_leases::holder.eq(excluded(job_leases::holder)),
            job_leases::acquired_at.eq(excluded(job_leases::acquired_at)),
            job_leases::expires_at.eq(excluded(job_leases::expires_at)),
        ))
        .filter(job_leases::expires_at.le(now))
        .execute(conn)?;
    Ok(n == 1)
}

/// Deletes `job`'s lease when its holder is provably gone; returns whether
/// it did. Deleting by the exact holder text means a lease renewed or taken
/// by someone else meanwhile is left alone.
fn take_over_from_gone_holder(conn: &mut diesel::SqliteConnection, job: &str, me: &Holder) -> Result<bool, DbError> {
    let current: Option<String> = QueryDsl::filter(job_leases::table, job_leases::job.eq(job))
        .select(job_leases::holder)
        .first(conn)
        .optional()?;
    let Some(text) = current else {
        // Released meanwhile: the next attempt may succeed.
        return Ok(true);
    };
    let Some(other) = Holder::parse(&text) else {
        return Ok(false);
    };
    if !other.is_gone(me) {
        return Ok(false);
    }
    let n = diesel::delete(job_leases::table)
        .filter(job_leases::job.eq(job))
        .filter(job_leases::holder.eq(&text))
        .execute(conn)?;
    if n == 1 {
        tracing::info!(job, "took over the lease of {job} from a holder that is gone ({text})");
    }
    Ok(true)
}

fn release_lease(conn: &mut DbConnection, job: &str, holder: &str) -> Result<(), DbError> {
    diesel::delete(job_leases::table)
        .filter(job_leases::job.eq(job))
        .filter(job_leases::holder.eq(holder))
        .execute(conn)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        assert_eq!(lock_key("expire-keys"), lock_key("expire-keys"));
        assert_ne!(lock_key("expire-keys"), lock_key("revoke-grace"));
    }
}
