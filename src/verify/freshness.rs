//! What tells the cache that a remembered key changed: the PostgreSQL
//! listener task, or SQLite's change counter (see [`super::cache`]).

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::BigInt;
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::cache::{Cache, Entry};
use crate::db::listen::Listener;
use crate::db::schema::{api_keys, users};
use crate::db::{Database, DbConnection};
use crate::keys::model::ApiKey;

/// The channel the triggers of migration `000010_verify_notify` announce on.
pub const CHANNEL: &str = "keywarden_keys";

/// How often a quiet listener checks that its connection still answers.
const PING_EVERY: Duration = Duration::from_secs(30);
/// How long a ping may take before the connection is given up.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Applies one notification's payload to the cache.
fn apply(cache: &Cache, payload: &str) {
    let id = |rest: &str| rest.parse::<i64>().ok();
    match payload.split_once(':') {
        Some(("k", rest)) if id(rest).is_some() => cache.forget_key(id(rest).unwrap_or_default()),
        Some(("u", rest)) if id(rest).is_some() => cache.forget_owner(id(rest).unwrap_or_default()),
        // '*' and anything not understood: forget everything.
        _ => cache.clear(),
    }
}

struct Fd(RawFd);
impl std::os::fd::AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Whether `fd` has data to read now.
fn readable_now(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents != 0
}

/// Keeps the cache fed by `LISTEN keywarden_keys` until `stop`; the cache
/// is live only while the listener is connected, and starts empty each
/// time it connects (announcements may have been missed meanwhile).
pub async fn listen(database: Database, cache: Arc<Cache>, stop: CancellationToken) {
    let mut backoff = Duration::from_secs(1);
    let mut warned = false;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let db = database.clone();
        let connected = tokio::task::spawn_blocking(move || Listener::connect(&db, CHANNEL)).await;
        let listener = match connected {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                if !warned {
                    warn!("verify: cannot listen for key changes, every verification runs in full meanwhile: {e}");
                    warned = true;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
            Err(_) => return,
        };
        backoff = Duration::from_secs(1);
        if warned {
            info!("verify: listening for key changes again; remembered verifications are used again");
        }
        cache.set_live(true);
        let lost = watch(listener, &cache, &stop).await;
        cache.set_live(false);
        match lost {
            None => return,
            Some(reason) => {
                warn!("verify: the key-change listener lost its connection ({reason}); every verification runs in full until it is back");
                warned = true;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
}

/// Waits on the listener's socket; `None` when stopped, else why the
/// connection was given up. The listener is shared with the blocking
/// thread a ping runs on, which may outlive a ping that timed out.
async fn watch(listener: Listener, cache: &Cache, stop: &CancellationToken) -> Option<String> {
    let socket = listener.socket();
    let listener = Arc::new(Mutex::new(listener));
    let drain = |cache: &Cache| -> Result<(), String> {
        let payloads = listener
            .lock()
            .map_err(|_| "listener lock poisoned".to_string())?
            .drain()?;
        payloads.iter().for_each(|p| apply(cache, p));
        Ok(())
    };
    // SAFETY: the descriptor is the listener's, which lives in `listener`
    // (declared before `fd`, so dropped after it) and in ping threads.
    let fd = match unsafe { AsyncFd::register_with_interest(Fd(socket), tokio::io::Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => return Some(e.to_string()),
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            ready = fd.readable() => {
                let mut guard = match ready {
                    Ok(g) => g,
                    Err(e) => return Some(e.to_string()),
                };
                // Drain until the socket has nothing more: the readiness
                // is edge-triggered.
                loop {
                    if let Err(e) = drain(cache) {
                        return Some(e);
                    }
                    if !readable_now(socket) {
                        break;
                    }
                }
                guard.clear_ready();
            }
            _ = tokio::time::sleep(PING_EVERY) => {
                // A connection that died without a word (a cut network)
                // shows here. The ping blocks, so it runs off the runtime.
                let shared = listener.clone();
                let handle = tokio::task::spawn_blocking(move || match shared.lock() {
                    Ok(mut l) => l.ping(),
                    Err(_) => Err("listener lock poisoned".to_string()),
                });
                let pinged = match tokio::time::timeout(PING_TIMEOUT, handle).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("no answer to a ping".into()),
                };
                if let Err(e) = pinged {
                    return Some(e);
                }
                // The ping may have read notifications into libpq's buffer.
                if let Err(e) = drain(cache) {
                    return Some(e);
                }
            }
        }
    }
}

/// SQLite's change counter on a connection of its own.
pub struct ChangeCounter {
    database: Database,
    conn: Mutex<Option<DbConnection>>,
}

#[derive(QueryableByName)]
struct DataVersion {
    #[diesel(sql_type = BigInt)]
    data_version: i64,
}

impl ChangeCounter {
    pub fn new(database: Database) -> ChangeCounter {
        ChangeCounter {
            database,
            conn: Mutex::new(None),
        }
    }

    /// Runs `f` on the counter's connection (opened on first use, dropped
    /// after an error).
    fn with_conn<T>(&self, f: impl FnOnce(&mut DbConnection) -> QueryResult<T>) -> Option<T> {
        let mut slot = self.conn.lock().ok()?;
        if slot.is_none() {
            *slot = self.database.connect().ok();
        }
        let conn = slot.as_mut()?;
        match f(conn) {
            Ok(v) => Some(v),
            Err(_) => {
                *slot = None;
                None
            }
        }
    }

    /// The current `data_version`; `None` when it cannot be read (the
    /// caller then verifies in full).
    pub fn version(&self) -> Option<i64> {
        self.with_conn(|conn| {
            diesel::sql_query("PRAGMA data_version")
                .get_result::<DataVersion>(conn)
                .map(|v| v.data_version)
        })
    }

    /// Whether `entry`'s key row and owner are still what they were when it
    /// verified (read again; SQLite reads are local and cheap).
    pub fn unchanged(&self, entry: &Entry) -> bool {
        let then = &entry.key;
        let now = self.with_conn(|conn| {
            api_keys::table
                .inner_join(users::table)
                .filter(api_keys::id.eq(then.id))
                .select((ApiKey::as_select(), users::status))
                .first::<(ApiKey, String)>(conn)
                .optional()
        });
        match now {
            Some(Some((key, owner_status))) => {
                owner_status == "active"
                    && key.status == then.status
                    && key.key_hash == then.key_hash
                    && key.prefix == then.prefix
                    && key.owner_id == then.owner_id
                    && key.expires_at == then.expires_at
                    && key.grace_period_ends_at == then.grace_period_ends_at
                    && key.scopes == then.scopes
                    && key.allowed_ips == then.allowed_ips
            }
            _ => false,
        }
    }
}
