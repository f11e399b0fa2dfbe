//! The `certificates` table: one row per configured certificate.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::Serialize;

use super::certinfo::CertInfo;
use crate::db::schema::certificates;
use crate::db::DbConnection;

pub mod kind {
    pub const ISSUED: &str = "issued";
    pub const MONITORED: &str = "monitored";
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = certificates)]
pub struct CertRow {
    pub id: i64,
    pub name: String,
    pub kind: String,
    pub source: String,
    pub domains: String,
    pub serial: Option<String>,
    pub issuer: Option<String>,
    pub not_before: Option<NaiveDateTime>,
    pub not_after: Option<NaiveDateTime>,
    pub renew_at: Option<NaiveDateTime>,
    pub renew_planned_at: Option<NaiveDateTime>,
    pub last_attempt_at: Option<NaiveDateTime>,
    pub last_success_at: Option<NaiveDateTime>,
    pub last_error: Option<String>,
    pub failures: i32,
    pub next_attempt_at: Option<NaiveDateTime>,
    pub updated_at: NaiveDateTime,
}

/// The row of `name`, creating it if missing.
pub fn ensure(
    conn: &mut DbConnection,
    name: &str,
    row_kind: &str,
    source: &str,
    now: NaiveDateTime,
) -> QueryResult<CertRow> {
    let existing = certificates::table
        .filter(certificates::name.eq(name))
        .select(CertRow::as_select())
        .first(conn)
        .optional()?;
    if let Some(row) = existing {
        if row.kind != row_kind || row.source != source {
            diesel::update(certificates::table.filter(certificates::id.eq(row.id)))
                .set((
                    certificates::kind.eq(row_kind),
                    certificates::source.eq(source),
                    certificates::updated_at.eq(now),
                ))
                .execute(conn)?;
        }
        return certificates::table
            .filter(certificates::id.eq(row.id))
            .select(CertRow::as_select())
            .first(conn);
    }
    let values = (
        certificates::name.eq(name),
        certificates::kind.eq(row_kind),
        certificates::source.eq(source),
        certificates::failures.eq(0),
        certificates::updated_at.eq(now),
    );
    crate::on_backend!(conn, c => diesel::insert_into(certificates::table)
        .values(values)
        .on_conflict_do_nothing()
        .execute(c))?;
    certificates::table
        .filter(certificates::name.eq(name))
        .select(CertRow::as_select())
        .first(conn)
}

/// Records what is installed (or served) now.
pub fn record_observed(
    conn: &mut DbConnection,
    id: i64,
    info: &CertInfo,
    renew_at: Option<NaiveDateTime>,
    now: NaiveDateTime,
) -> QueryResult<()> {
    diesel::update(certificates::table.filter(certificates::id.eq(id)))
        .set((
            certificates::domains.eq(info.domains.join(",")),
            certificates::serial.eq(&info.serial),
            certificates::issuer.eq(&info.issuer),
            certificates::not_before.eq(info.not_before),
            certificates::not_after.eq(info.not_after),
            certificates::renew_at.eq(renew_at),
            certificates::renew_planned_at.eq(renew_at.map(|_| now)),
            certificates::updated_at.eq(now),
        ))
        .execute(conn)
        .map(|_| ())
}

/// A renewal time decided again for the same certificate.
pub fn record_plan(conn: &mut DbConnection, id: i64, renew_at: NaiveDateTime, now: NaiveDateTime) -> QueryResult<()> {
    diesel::update(certificates::table.filter(certificates::id.eq(id)))
        .set((
            certificates::renew_at.eq(renew_at),
            certificates::renew_planned_at.eq(now),
            certificates::updated_at.eq(now),
        ))
        .execute(conn)
        .map(|_| ())
}

/// A successful attempt, in one statement: what was issued (or read, for a
/// monitored certificate) and, for issued ones, the next renewal time; any
/// failure streak is over.
pub fn record_success(
    conn: &mut DbConnection,
    id: i64,
    info: &CertInfo,
    renew_at: Option<NaiveDateTime>,
    now: NaiveDateTime,
) -> QueryResult<()> {
    diesel::update(certificates::table.filter(certificates::id.eq(id)))
        .set((
            certificates::domains.eq(info.domains.join(",")),
            certificates::serial.eq(&info.serial),
            certificates::issuer.eq(&info.issuer),
            certificates::not_before.eq(info.not_before),
            certificates::not_after.eq(info.not_after),
            certificates::renew_at.eq(renew_at),
            certificates::renew_planned_at.eq(renew_at.map(|_| now)),
            certificates::last_attempt_at.eq(now),
            certificates::last_success_at.eq(now),
            certificates::last_error.eq(None::<String>),
            certificates::failures.eq(0),
            certificates::next_attempt_at.eq(None::<NaiveDateTime>),
            certificates::updated_at.eq(now),
        ))
        .execute(conn)
        .map(|_| ())
}

/// A failed attempt: the error, one more failure, and when to try again.
pub fn record_failure(
    conn: &mut DbConnection,
    id: i64,
    error: &str,
    failures: i32,
    next_attempt_at: NaiveDateTime,
    now: NaiveDateTime,
) -> QueryResult<()> {
    diesel::update(certificates::table.filter(certificates::id.eq(id)))
        .set((
            certificates::last_attempt_at.eq(now),
            certificates::last_error.eq(error),
            certificates::failures.eq(failures),
            certificates::next_attempt_at.eq(next_attempt_at),
            certificates::updated_at.eq(now),
        ))
        .execute(conn)
        .map(|_| ())
}

/// An error that is not a failed renewal: a monitored certificate that
/// could not be read, or a deploy hook that failed after an install.
pub fn record_error(conn: &mut DbConnection, id: i64, error: &str, now: NaiveDateTime) -> QueryResult<()> {
    diesel::update(certificates::table.filter(certificates::id.eq(id)))
        .set((
            certificates::last_attempt_at.eq(now),
            certificates::last_error.eq(error),
            certificates::updated_at.eq(now),
        ))
        .execute(conn)
        .map(|_| ())
}

pub fn list(conn: &mut DbConnection) -> QueryResult<Vec<CertRow>> {
    certificates::table
        .order(certificates::name)
        .select(CertRow::as_select())
        .load(conn)
}

/// The earliest retry of a failed renewal, if any is pending.
pub fn earliest_retry(conn: &mut DbConnection) -> QueryResult<Option<NaiveDateTime>> {
    certificates::table
        .filter(certificates::failures.gt(0))
        .select(diesel::dsl::min(certificates::next_attempt_at))
        .first(conn)
}
