//! The database: one code path for PostgreSQL and SQLite.
//!
//! [`DbConnection`] is a Diesel `MultiConnection` over both backends, so
//! queries are written once with Diesel's query builder. Statements that
//! must be typed against the concrete connection (upserts, batch inserts,
//! `RETURNING`) are still written once, through [`crate::on_backend!`]; those that
//! exist on one backend only live here: [`postgres`] (reached through
//! [`DbConnection::as_postgres`]), [`lock`] (advisory locks, SQLite
//! leases) and [`migrate`]. No module above matches on the backend.
//!
//! Imports: telemetry, config.

pub mod holder;
pub mod listen;
pub mod lock;
pub mod migrate;
pub mod postgres;
pub mod schema;

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::{PgConnection, SqliteConnection};

use crate::config::{DatabaseConfig, DatabaseUrl, Secret, Secrets};
use crate::telemetry::one_line;

/// A connection to either backend.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Postgres(PgConnection),
    Sqlite(SqliteConnection),
}

/// Why the database could not be used. Messages carry the redacted URL and
/// the database's own message, never query text or bound values.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// `reason` is the driver's message on one line (libpq's spans several).
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("cannot prepare the SQLite file {path}: {source}")]
    SqliteFile { path: String, source: std::io::Error },
    #[error("database error: {}", one_line(&.0.to_string()))]
    Query(#[from] diesel::result::Error),
    #[error("the lock connection and the work connection use different backends")]
    BackendMismatch,
    #[error("migration failed: {0}")]
    Migration(String),
}

impl DbError {
    /// Whether the database could not be reached or went away, rather than
    /// refusing what was asked.
    pub fn is_unreachable(&self) -> bool {
        use diesel::result::{DatabaseErrorKind as K, Error as E};
        match self {
            DbError::Connect { .. } => true,
            DbError::Query(E::DatabaseError(K::ClosedConnection | K::UnableToSendCommand, _)) => true,
            DbError::Query(E::DatabaseError(K::Unknown, info)) => {
                let m = info.message();
                m.contains("server closed the connection")
                    || m.contains("terminating connection")
                    || m.contains("no connection to the server")
                    || m.contains("could not receive data")
                    || m.contains("could not send data")
                    || m.contains("SSL SYSCALL error")
                    || m.contains("connection to server")
            }
            _ => false,
        }
    }
}

/// Runs one statement, written once, on whichever backend `conn` is. For
/// what Diesel's `MultiConnection` cannot run generically (upserts, batch
/// inserts, `RETURNING`): those must be typed against the concrete
/// connection, so the body is compiled once per backend. Statements that
/// differ between the backends do not use it; they live in `db/`.
///
/// `on_backend!(conn, c => diesel::insert_into(t).values(v).execute(c))`
#[macro_export]
macro_rules! on_backend {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::db::DbConnection::Postgres($c) => $body,
            $crate::db::DbConnection::Sqlite($c) => $body,
        }
    };
}

/// Like [`on_backend!`], with `$mode` naming the loading mode that streams
/// rows one at a time on that backend (PostgreSQL's row-by-row mode; SQLite
/// always steps), for `load_iter` over results of any size: memory stays
/// that of one row.
#[macro_export]
macro_rules! streaming_on_backend {
    ($conn:expr, $c:ident, $mode:ident => $body:expr) => {
        match $conn {
            $crate::db::DbConnection::Postgres($c) => {
                type $mode = diesel::pg::PgRowByRowLoadingMode;
                $body
            }
            $crate::db::DbConnection::Sqlite($c) => {
                type $mode = diesel::connection::DefaultLoadingMode;
                $body
            }
        }
    };
}

/// Which backend a connection talks to, for the few decisions that
/// depend on it (one statement or a transaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl DbConnection {
    /// The PostgreSQL connection, for the statements only PostgreSQL runs
    /// ([`postgres`]); `None` on SQLite, which takes the portable path.
    pub fn as_postgres(&mut self) -> Option<&mut PgConnection> {
        match self {
            DbConnection::Postgres(pg) => Some(pg),
            DbConnection::Sqlite(_) => None,
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            DbConnection::Postgres(_) => Backend::Postgres,
            DbConnection::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Runs `f` in a transaction meant to write. On SQLite it begins
    /// `IMMEDIATE`: a deferred transaction that reads and then writes cannot
    /// upgrade while another connection writes, and fails with "database is
    /// locked" at once instead of waiting `busy_timeout`. An immediate one
    /// waits for the write lock up front. Nested calls use a savepoint.
    pub fn write_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        use diesel::connection::{AnsiTransactionManager, TransactionManager};
        let immediate = match self {
            DbConnection::Sqlite(lite) => {
                let depth = AnsiTransactionManager::transaction_manager_status_mut(lite).transaction_depth()?;
                if depth.is_none() {
                    AnsiTransactionManager::begin_transaction_sql(lite, "BEGIN IMMEDIATE")?;
                    true
                } else {
                    false
                }
            }
            DbConnection::Postgres(_) => false,
        };
        if !immediate {
            return self.transaction(f);
        }
        match f(self) {
            Ok(value) => {
                <DbConnection as Connection>::TransactionManager::commit_transaction(self)?;
                Ok(value)
            }
            Err(e) => {
                <DbConnection as Connection>::TransactionManager::rollback_transaction(self)?;
                Err(e)
            }
        }
    }
}

impl DbConnection {
    /// Runs `f` with commits that return before the write-ahead log reaches
    /// the disk (PostgreSQL's `synchronous_commit = off`), then restores the
    /// setting. What `f` commits is at once visible and survives this
    /// process dying; only a crash of the database server itself within
    /// about 0.6 s (three `wal_writer_delay`s) can undo it. That is what
    /// SQLite's `synchronous = NORMAL` (this project's setting) already
    /// means for every commit. Delivery records through this: a lost record
    /// can only mean a message is sent again, and a commit that waits for
    /// the disk would sit between every two messages on a connection.
    pub fn with_relaxed_commit<T>(&mut self, f: impl FnOnce(&mut DbConnection) -> T) -> T {
        let relaxed = self.relax_commit();
        let value = f(self);
        self.restore_commit(relaxed);
        value
    }

    /// Starts what [`DbConnection::with_relaxed_commit`] does, for a caller
    /// that cannot lend the connection to a closure; returns whether the
    /// setting was changed, for [`DbConnection::restore_commit`].
    pub fn relax_commit(&mut self) -> bool {
        match self {
            DbConnection::Postgres(pg) => pg.batch_execute("SET synchronous_commit = off").is_ok(),
            DbConnection::Sqlite(_) => false,
        }
    }

    /// Ends [`DbConnection::relax_commit`].
    pub fn restore_commit(&mut self, relaxed: bool) {
        if let (true, DbConnection::Postgres(pg)) = (relaxed, &mut *self) {
            // A connection that cannot run this is broken; the pool's next
            // use finds out.
            let _ = pg.batch_execute("RESET synchronous_commit");
        }
    }
}

/// What a user may be shown of a query error: its kind only. The server's
/// own text can name tables and constraints, so it goes to the debug log.
pub fn describe_error(e: &diesel::result::Error) -> &'static str {
    use diesel::result::{DatabaseErrorKind as K, Error as E};
    tracing::debug!("database error: {}", one_line(&e.to_string()));
    match e {
        E::DatabaseError(K::UniqueViolation, _) => "a unique constraint was violated",
        E::DatabaseError(K::ForeignKeyViolation, _) => "a referenced row is missing",
        E::DatabaseError(K::CheckViolation, _) => "a value was refused by a check constraint",
        E::DatabaseError(K::NotNullViolation, _) => "a required value was missing",
        E::DatabaseError(K::SerializationFailure, _) => "a concurrent change conflicted; try again",
        E::DatabaseError(K::ClosedConnection, _) => "the connection was closed",
        E::NotFound => "a row was not found",
        _ => "the database refused the operation (details in the debug log)",
    }
}

/// How to reach the database: the validated URL plus the password, if any.
#[derive(Clone, Debug)]
pub struct Database {
    url: DatabaseUrl,
    password: Option<Secret>,
    connect_timeout: Duration,
    busy_timeout: Duration,
}

impl Database {
    pub fn new(config: &DatabaseConfig, secrets: &Secrets) -> Self {
        Self {
            url: config.url.clone(),
            password: secrets.database_password.clone(),
            connect_timeout: config.connect_timeout.as_duration(),
            busy_timeout: config.busy_timeout.as_duration(),
        }
    }

    /// Which backend the URL names.
    pub fn backend(&self) -> Backend {
        match self.url {
            DatabaseUrl::Postgres(_) => Backend::Postgres,
            DatabaseUrl::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// The URL with any password redacted; safe to log.
    pub fn describe(&self) -> String {
        self.url.to_string()
    }

    /// Opens a new connection, set up for keywarden's use.
    pub fn connect(&self) -> Result<DbConnection, DbError> {
        match &self.url {
            DatabaseUrl::Postgres(url) => {
                let conn_str = self.postgres_connection_string(url);
                let conn = PgConnection::establish(conn_str.expose()).map_err(|e| DbError::Connect {
                    url: self.describe(),
                    reason: one_line(&e.to_string()),
                })?;
                Ok(DbConnection::Postgres(conn))
            }
            DatabaseUrl::Sqlite(path) => {
                create_private_file(path).map_err(|source| DbError::SqliteFile {
                    path: path.display().to_string(),
                    source,
                })?;
                let path_str = path.to_str().ok_or_else(|| DbError::SqliteFile {
                    path: path.display().to_string(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "path is not valid UTF-8"),
                })?;
                let mut conn = SqliteConnection::establish(path_str).map_err(|e| DbError::Connect {
                    url: self.describe(),
                    reason: one_line(&e.to_string()),
                })?;
                // The busy timeout is a typed integer from the configuration,
                // not text; PRAGMA takes no bind parameters.
                let millis = self.busy_timeout.as_millis().min(i32::MAX as u128);
                conn.batch_execute(&format!(
                    "PRAGMA busy_timeout = {millis}; PRAGMA journal_mode = WAL; \
                     PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;"
                ))?;
                Ok(DbConnection::Sqlite(conn))
            }
        }
    }

    /// The libpq connection string, in its `keyword='value'` form: the URL's
    /// parts decoded once, the password inserted as it was read (a `%` or a
    /// quote in it is never re-encoded into text that libpq would decode
    /// again or quote back in an error), timeouts and the application name
    /// added. It is a `Secret` because it holds the password.
    pub(crate) fn postgres_connection_string(&self, url: &url::Url) -> Secret {
        let mut pairs: Vec<(String, String)> = Vec::new();
        if let Some(host) = url.host_str() {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            pairs.push(("host".into(), host.to_string()));
        }
        if let Some(port) = url.port() {
            pairs.push(("port".into(), port.to_string()));
        }
        if !url.username().is_empty() {
            pairs.push(("user".into(), percent_decode(url.username())));
        }
        let dbname = url.path().trim_start_matches('/');
        if !dbname.is_empty() {
            pairs.push(("dbname".into(), percent_decode(dbname)));
        }
        match (&self.password, url.password()) {
            (Some(pw), _) => pairs.push(("password".into(), pw.expose().to_string())),
            (None, Some(inline)) => pairs.push(("password".into(), percent_decode(inline))),
            (None, None) => {}
        }
        for (k, v) in url.query_pairs() {
            // A query parameter may not override what the URL's own parts
            // (or the password source) set.
            if !pairs.iter().any(|(have, _)| *have == k) {
                pairs.push((k.into_owned(), v.into_owned()));
            }
        }
        let has = |pairs: &[(String, String)], k: &str| pairs.iter().any(|(key, _)| key == k);
        if !has(&pairs, "connect_timeout") {
            pairs.push((
                "connect_timeout".into(),
                self.connect_timeout.as_secs().max(1).to_string(),
            ));
        }
        if !has(&pairs, "application_name") {
            pairs.push(("application_name".into(), "keywarden".into()));
        }
        let mut out = String::new();
        for (k, v) in &pairs {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(k);
            out.push_str("='");
            for c in v.chars() {
                if c == '\\' || c == '\'' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('\'');
        }
        for (_, v) in &mut pairs {
            zeroize::Zeroize::zeroize(v);
        }
        Secret::new(out)
    }
}

/// Percent-decoding of a URL component (an invalid sequence is kept as
/// written).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |at: usize| bytes.get(at).and_then(|b| (*b as char).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let (Some(h), Some(l)) = (hex(i + 1), hex(i + 2)) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Creates the SQLite file with mode 0600 if it does not exist yet, so the
/// hashes in it are never readable by others, whatever the umask.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// The current time as stored in the database: UTC, microsecond precision
/// (what PostgreSQL keeps), so values read back compare equal.
pub fn now() -> chrono::NaiveDateTime {
    use chrono::SubsecRound;
    chrono::Utc::now().naive_utc().trunc_subsecs(6)
}

/// The earliest timestamp the jobs compare against: 0001-01-01, which both
/// backends store (chrono's own minimum is out of PostgreSQL's range).
pub fn beginning_of_time() -> chrono::NaiveDateTime {
    chrono::NaiveDate::from_ymd_opt(1, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database(url: &str, password: Option<&str>) -> (Database, url::Url) {
        let cfg = crate::config::Config::from_toml(
            Path::new("t.toml"),
            &format!("[database]\nurl = \"{url}\"\n"),
            &crate::config::LoadChecks::SECTIONS_ONLY,
        )
        .expect("config");
        let secrets = Secrets {
            database_password: password.map(Secret::new),
            ..Secrets::default()
        };
        let DatabaseUrl::Postgres(u) = cfg.database.url.clone() else {
            panic!("postgres")
        };
        (Database::new(&cfg.database, &secrets), u)
    }

    #[test]
    fn the_password_goes_to_libpq_as_read() {
        let (db, url) = database(
            "postgres://kw%40x@db.example:6543/key%20warden?sslmode=require",
            Some("p%41ss'w\\rd"),
        );
        let conn = db.postgres_connection_string(&url);
        assert_eq!(
            conn.expose(),
            "host='db.example' port='6543' user='kw@x' dbname='key warden' password='p%41ss\\'w\\\\rd' \
             sslmode='require' connect_timeout='10' application_name='keywarden'"
        );
    }

    #[test]
    fn query_parameters_cannot_override_the_password_source() {
        let (db, url) = database(
            "postgres://kw@db/kw?password=inline&application_name=x",
            Some("fromfile"),
        );
        let conn = db.postgres_connection_string(&url);
        assert!(conn.expose().contains("password='fromfile'"), "{}", conn.expose());
        assert!(!conn.expose().contains("inline"));
        assert!(conn.expose().contains("application_name='x'") && !conn.expose().contains("'keywarden'"));
    }
}
