//! Embedded migrations, one folder per backend, applied under a lock so two
//! replicas starting at once do not race (Diesel itself does not lock).

use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::{DbConnection, DbError};

const POSTGRES: EmbeddedMigrations = embed_migrations!("migrations/postgres");
const SQLITE: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// Advisory lock key held while migrating ("kwmigrat" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x6b77_6d69_6772_6174;

/// Applies every pending migration and returns the versions applied.
pub fn run_pending(conn: &mut DbConnection) -> Result<Vec<String>, DbError> {
    match conn {
        DbConnection::Postgres(pg) => {
            // A session-level lock on a connection that is not pooled: it is
            // released below, or when the connection closes if we die.
            diesel::sql_query("SELECT pg_advisory_lock($1)")
                .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
                .execute(pg)?;
            let result = pg
                .run_pending_migrations(POSTGRES)
                .map(|v| v.iter().map(|m| m.to_string()).collect())
                .map_err(|e| DbError::Migration(e.to_string()));
            let unlock = diesel::sql_query("SELECT pg_advisory_unlock($1)")
                .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
                .execute(pg);
            let applied = result?;
            unlock?;
            Ok(applied)
        }
        DbConnection::Sqlite(lite) => {
            // An immediate transaction takes SQLite's write lock up front: a
            // second process waits (busy_timeout), then finds nothing to do.
            // Diesel runs each migration in a savepoint inside it.
            // Most starts find nothing to do: check without taking the lock.
            if !lite
                .has_pending_migration(SQLITE)
                .map_err(|e| DbError::Migration(e.to_string()))?
            {
                return Ok(Vec::new());
            }
            lite.immediate_transaction(|c| {
                c.run_pending_migrations(SQLITE)
                    .map(|v| v.iter().map(|m| m.to_string()).collect::<Vec<_>>())
                    .map_err(|e| DbError::Migration(e.to_string()))
            })
        }
    }
}

/// Versions not yet applied (for `status` and `check`).
pub fn pending(conn: &mut DbConnection) -> Result<Vec<String>, DbError> {
    let r = match conn {
        DbConnection::Postgres(pg) => pg
            .pending_migrations(POSTGRES)
            .map(|v| v.iter().map(|m| m.name().to_string()).collect()),
        DbConnection::Sqlite(lite) => lite
            .pending_migrations(SQLITE)
            .map(|v| v.iter().map(|m| m.name().to_string()).collect()),
    };
    r.map_err(|e| DbError::Migration(e.to_string()))
}
