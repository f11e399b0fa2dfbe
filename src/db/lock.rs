//! The job lock: at most one process runs a given job at a time, across
//! every replica sharing the database.
//!
//! PostgreSQL: a session-level `pg_try_advisory_lock` on a connection of its
//! own, outside any transaction, held while the job works on another
//! connection in short transactions of its own, and released by
//! `pg_advisory_unlock` (or the connection's end, should the process die).
//! No transaction is open on the lock connection, so it holds no snapshot:
//! a long job does not pin the vacuum horizon (a transaction-scoped lock
//! kept the lock connection "idle in transaction" for the whole job). The
//! run is fenced: between batches [`LockKeeper::renew`] asks the lock
//! connection (at most once a second) and a connection that no longer
//! answers means the lock is gone, so the job stops.
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

/// How often, at most, a PostgreSQL run asks its lock connection whether
/// it is still there.
const FENCE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

diesel::define_sql_function! {
    /// PostgreSQL's non-blocking session-level advisory lock.
    fn pg_try_advisory_lock(key: diesel::sql_types::BigInt) -> diesel::sql_types::Bool;
}

diesel::define_sql_function! {
    fn pg_advisory_unlock(key: diesel::sql_types::BigInt) -> diesel::sql_types::Bool;
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
    /// PostgreSQL: the connection holding the session lock, and when it
    /// last answered.
    session: Option<std::sync::Mutex<SessionLock>>,
}

struct SessionLock {
    conn: diesel::PgConnection,
    answered: std::time::Instant,
}

impl LockKeeper {
    /// Extends the lease (SQLite), or checks that the connection holding
    /// the lock still answers (PostgreSQL). Returns false if the lock was
    /// lost: an SQLite run that stalled past [`LEASE_TTL`] while another
    /// process took over, or a PostgreSQL lock connection that was cut (the
    /// server then releases the lock). The caller should stop.
    pub fn renew(&self, conn: &mut DbConnection) -> Result<bool, DbError> {
        if let Some(session) = &self.session {
            let Ok(mut lock) = session.lock() else { return Ok(false) };
            if lock.answered.elapsed() < FENCE_INTERVAL {
                return Ok(true);
            }
            let alive = diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1"))
                .get_result::<i32>(&mut lock.conn)
                .is_ok();
            lock.answered = std::time::Instant::now();
            return Ok(alive);
        }
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
            let key = lock_key(job);
            let got: bool = diesel::select(pg_try_advisory_lock(key)).get_result(&mut lock_conn)?;
            if !got {
                return Ok(None);
            }
            let keeper = LockKeeper {
                lease: None,
                session: Some(std::sync::Mutex::new(SessionLock {
                    conn: lock_conn,
                    answered: std::time::Instant::now(),
                })),
            };
            // Dropped on a panic too: closing the connection releases the lock.
            let result = work(conn, &keeper);
            if let Some(Ok(mut lock)) = keeper.session.map(|s| s.into_inner()) {
                let _ = diesel::select(pg_advisory_unlock(key)).get_result::<bool>(&mut lock.conn);
            }
            Ok(Some(result))
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
                session: None,
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
