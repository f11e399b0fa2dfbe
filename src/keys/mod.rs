//! The API-key domain. Keys live in `api_keys`; every state change writes an
//! `api_key_events` row in the same transaction.
//!
//! Statuses: `active` → `rotating` (after a rotation, until its grace period
//! ends) → `revoked`; `active` → `expired` when `expires_at` passes;
//! `revoked` is final.
//!
//! Imports: db, config. What other domains keep about a key they drop through
//! [`service::OnRetire`] hooks set by whoever assembles the service.

pub mod error;
pub mod expire;
pub mod format;
pub mod hash;
pub mod model;
pub mod policy;
pub mod retention;
pub mod service;
pub mod users;
pub mod verify;

pub use error::KeyError;
pub use service::{CreateKey, IssuedKey, KeyService, ListFilter, Rotation, SortColumn};
pub use verify::{Refusal, VerifiedKey, VerifyOutcome, VerifyRequest};

/// Key statuses as stored (a CHECK constraint holds the column to these).
pub mod status {
    pub const ACTIVE: &str = "active";
    pub const ROTATING: &str = "rotating";
    pub const REVOKED: &str = "revoked";
    pub const EXPIRED: &str = "expired";
}

/// Audit event kinds as stored.
pub mod event {
    pub const CREATED: &str = "created";
    pub const USED: &str = "used";
    pub const VERIFY_FAILED: &str = "verify_failed";
    pub const ROTATED: &str = "rotated";
    pub const REVOKED: &str = "revoked";
    pub const EXPIRED: &str = "expired";
    pub const GRACE_ENDED: &str = "grace_ended";
}

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::db::schema::api_key_events;
use crate::db::DbConnection;

/// Writes one audit row per key in `ids`, all of the same kind, with a
/// single `INSERT … SELECT` per chunk (multi-row `VALUES` is not available
/// through the multi-backend connection). Chunks stay under SQLite's limit of
/// bound parameters per statement.
pub fn record_events_for(
    conn: &mut DbConnection,
    ids: &[i64],
    kind: &str,
    reason: Option<&str>,
    actor: &str,
    at: NaiveDateTime,
) -> QueryResult<usize> {
    use crate::db::schema::api_keys;
    let mut n = 0;
    for chunk in ids.chunks(10_000) {
        let rows = api_keys::table.filter(api_keys::id.eq_any(chunk)).select((
            api_keys::id.nullable(),
            api_keys::prefix,
            kind.into_sql::<diesel::sql_types::Text>(),
            reason.into_sql::<diesel::sql_types::Nullable<diesel::sql_types::Text>>(),
            actor.into_sql::<diesel::sql_types::Text>(),
            at.into_sql::<diesel::sql_types::Timestamp>(),
        ));
        n += diesel::insert_into(api_key_events::table)
            .values(rows)
            .into_columns((
                api_key_events::key_id,
                api_key_events::prefix,
                api_key_events::event,
                api_key_events::reason,
                api_key_events::actor,
                api_key_events::created_at,
            ))
            .execute(conn)?;
    }
    Ok(n)
}

/// One audit row with every column given (a single-row insert).
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = api_key_events, treat_none_as_default_value = false)]
pub struct NewKeyEvent<'a> {
    pub key_id: Option<i64>,
    pub prefix: &'a str,
    pub event: &'a str,
    pub reason: Option<&'a str>,
    pub actor: &'a str,
    pub ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub endpoint: Option<&'a str>,
    pub created_at: NaiveDateTime,
}
