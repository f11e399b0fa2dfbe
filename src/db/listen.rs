//! PostgreSQL `LISTEN` on a connection of its own.
//!
//! Diesel can read pending notifications but does not expose the socket to
//! wait on, so a listener would have to poll. This is a libpq connection
//! (the library Diesel itself uses, with the same connection string, so the
//! same authentication and TLS) whose socket the caller waits on: the
//! process sleeps until a notification arrives.
//!
//! The unsafe code is confined here: every pointer comes from libpq, is
//! checked for null, and is freed with libpq's own functions.

use std::ffi::{CStr, CString};
use std::os::fd::RawFd;
use std::ptr::NonNull;

use pq_sys as pq;

use super::{Database, DbError};
use crate::config::DatabaseUrl;
use crate::telemetry::one_line;

/// A connection that has run `LISTEN channel` and does nothing else.
pub struct Listener {
    conn: NonNull<pq::PGconn>,
}

// SAFETY: a PGconn may move between threads as long as one thread uses it
// at a time, which `&mut self` on every method guarantees.
unsafe impl Send for Listener {}

impl Drop for Listener {
    fn drop(&mut self) {
        // SAFETY: the pointer came from PQconnectdb and is finished once.
        unsafe { pq::PQfinish(self.conn.as_ptr()) }
    }
}

impl Listener {
    /// Connects (blocking) and listens on `channel`, a fixed identifier of
    /// keywarden's (never input).
    pub fn connect(database: &Database, channel: &'static str) -> Result<Listener, DbError> {
        let DatabaseUrl::Postgres(url) = &database.url else {
            return Err(DbError::Connect {
                url: database.describe(),
                reason: "LISTEN needs PostgreSQL".into(),
            });
        };
        let fail = |reason: String| DbError::Connect {
            url: database.describe(),
            reason: one_line(&reason),
        };
        let conninfo = database.postgres_connection_string(url);
        let conninfo = CString::new(conninfo.expose()).map_err(|_| fail("the connection string holds a NUL".into()))?;
        // SAFETY: conninfo is a valid C string for the call's duration.
        let raw = unsafe { pq::PQconnectdb(conninfo.as_ptr()) };
        let conn = NonNull::new(raw).ok_or_else(|| fail("out of memory".into()))?;
        let listener = Listener { conn };
        // SAFETY: conn is a live connection.
        if unsafe { pq::PQstatus(listener.conn.as_ptr()) } != pq::ConnStatusType::CONNECTION_OK {
            return Err(fail(listener.error_message()));
        }
        let valid_identifier = channel.chars().all(|c| c.is_ascii_lowercase() || c == '_');
        if !valid_identifier {
            return Err(fail(format!("{channel:?} is not a channel name")));
        }
        listener.command(&format!("LISTEN {channel}")).map_err(fail)?;
        Ok(listener)
    }

    fn error_message(&self) -> String {
        // SAFETY: libpq returns a string owned by the connection, valid
        // until the next call on it; it is copied at once.
        let msg = unsafe { pq::PQerrorMessage(self.conn.as_ptr()) };
        if msg.is_null() {
            return "unknown libpq error".into();
        }
        unsafe { CStr::from_ptr(msg) }.to_string_lossy().trim().to_string()
    }

    /// Runs a statement without results (blocking).
    fn command(&self, sql: &str) -> Result<(), String> {
        let sql = CString::new(sql).map_err(|_| "statement holds a NUL".to_string())?;
        // SAFETY: both pointers are valid; the result is cleared below.
        let result = unsafe { pq::PQexec(self.conn.as_ptr(), sql.as_ptr()) };
        if result.is_null() {
            return Err(self.error_message());
        }
        let status = unsafe { pq::PQresultStatus(result) };
        unsafe { pq::PQclear(result) };
        match status {
            pq::ExecStatusType::PGRES_COMMAND_OK | pq::ExecStatusType::PGRES_TUPLES_OK => Ok(()),
            _ => Err(self.error_message()),
        }
    }

    /// The socket to wait on for readability.
    pub fn socket(&self) -> RawFd {
        // SAFETY: conn is a live connection.
        unsafe { pq::PQsocket(self.conn.as_ptr()) }
    }

    /// Reads what the server sent and returns the payloads of the
    /// notifications received, without blocking. An error means the
    /// connection is gone.
    pub fn drain(&mut self) -> Result<Vec<String>, String> {
        // SAFETY: conn is a live connection.
        if unsafe { pq::PQconsumeInput(self.conn.as_ptr()) } == 0 {
            return Err(self.error_message());
        }
        if unsafe { pq::PQstatus(self.conn.as_ptr()) } != pq::ConnStatusType::CONNECTION_OK {
            return Err(self.error_message());
        }
        let mut out = Vec::new();
        loop {
            // SAFETY: each notification is read, copied and freed.
            let n = unsafe { pq::PQnotifies(self.conn.as_ptr()) };
            let Some(n) = NonNull::new(n) else { break };
            let extra = unsafe { n.as_ref().extra };
            if !extra.is_null() {
                out.push(unsafe { CStr::from_ptr(extra) }.to_string_lossy().into_owned());
            }
            unsafe { pq::PQfreemem(n.as_ptr().cast()) };
        }
        Ok(out)
    }

    /// A round trip, to find a connection that died quietly.
    pub fn ping(&mut self) -> Result<(), String> {
        self.command("SELECT 1")
    }
}
