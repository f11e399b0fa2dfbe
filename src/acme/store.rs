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
    /// The installed serial whose deploy hook has not succeeded yet.
    pub deploy_serial: Option<String>,
    pub deploy_error: Option<String>,
    pub deploy_failures: i32,
    pub next_deploy_at: Option<NaiveDateTime>,
    /// When keywarden last installed a certificate, and the serial it replaced.
    pub installed_at: Option<NaiveDateTime>,
    pub previous_serial: Option<String>,
}

impl CertRow {
    /// The deploy still owed for the certificate in place, if any.
    pub fn pending_deploy(&self) -> Option<&str> {
        self.deploy_serial
            .as_deref()
            .filter(|s| self.serial.as_deref() == Some(*s))
    }

    /// What an admin must see about this certificate, if anything: an owed
    /// deploy hook first (the service may serve the old certificate), then
    /// the last error.
    pub fn problem(&self) -> Option<String> {
        match (self.pending_deploy(), &self.deploy_error, &self.last_error) {
            (Some(_), Some(e), _) => Some(format!("deploy hook failing ({} in a row): {e}", self.deploy_failures)),
            (Some(_), None, _) => Some("deploy hook not run yet".to_string()),
            (None, _, Some(e)) => Some(e.clone()),
            (None, _, None) => None,
        }
    }
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

/// A certificate keywarden just installed, in one statement with its
/// success: the deploy it owes (when it has a hook) is recorded before the
/// hook runs, so a crash between install and hook still leaves it owed.
pub fn record_install(
    conn: &mut DbConnection,
    id: i64,
    info: &CertInfo,
    replaced: Option<&str>,
    renew_at: Option<NaiveDateTime>,
    has_hook: bool,
    now: NaiveDateTime,
) -> QueryResult<()> {
    conn.transaction(|conn| {
        record_success(conn, id, info, renew_at, now)?;
        diesel::update(certificates::table.filter(certificates::id.eq(id)))
            .set((
                certificates::deploy_serial.eq(has_hook.then_some(info.serial.as_str())),
                certificates::deploy_error.eq(None::<String>),
                certificates::deploy_failures.eq(0),
                certificates::next_deploy_at.eq(has_hook.then_some(now)),
                certificates::installed_at.eq(now),
                certificates::previous_serial.eq(replaced),
            ))
            .execute(conn)
            .map(|_| ())
    })
}

/// The deploy hook succeeded: nothing is owed.
pub fn record_deployed(conn: &mut DbConnection, id: i64, now: NaiveDateTime) -> QueryResult<()> {
    diesel::update(certificates::table.filter(certificates::id.eq(id)))
        .set((
            certificates::deploy_serial.eq(None::<String>),
            certificates::deploy_error.eq(None::<String>),
            certificates::deploy_failures.eq(0),
            certificates::next_deploy_at.eq(None::<NaiveDateTime>),
            certificates::updated_at.eq(now),
        ))
        .execute(conn)
        .map(|_| ())
}

/// The deploy hook failed again: its error, the streak, the next try.
pub fn record_deploy_failure(
    conn: &mut DbConnection,
    id: i64,
    error: &str,
    failures: i32,
    next: NaiveDateTime,
    now: NaiveDateTime,
) -> QueryResult<()> {
    diesel::update(certificates::table.filter(certificates::id.eq(id)))
        .set((
            certificates::deploy_error.eq(error),
            certificates::deploy_failures.eq(failures),
            certificates::next_deploy_at.eq(next),
            certificates::updated_at.eq(now),
        ))
        .execute(conn)
        .map(|_| ())
}

/// The issued certificate that last replaced `serial`, if one did.
pub fn replaced_by(conn: &mut DbConnection, serial: &str) -> QueryResult<Option<CertRow>> {
    certificates::table
        .filter(certificates::kind.eq(kind::ISSUED))
        .filter(certificates::previous_serial.eq(serial))
        .select(CertRow::as_select())
        .first(conn)
        .optional()
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

/// The earliest retry of a failed renewal or deploy hook, if any is pending.
pub fn earliest_retry(conn: &mut DbConnection) -> QueryResult<Option<NaiveDateTime>> {
    let renewal: Option<NaiveDateTime> = certificates::table
        .filter(certificates::failures.gt(0))
        .select(diesel::dsl::min(certificates::next_attempt_at))
        .first(conn)?;
    let deploy: Option<NaiveDateTime> = certificates::table
        .filter(certificates::deploy_serial.is_not_null())
        .select(diesel::dsl::min(certificates::next_deploy_at))
        .first(conn)?;
    Ok(match (renewal, deploy) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}
