//! Usage of remembered keys, recorded in batches: every answer from the
//! cache is one [`DeferredUse`], written by [`record`] within about
//! [`FLUSH_AFTER`] of the first one pending (its count, `last_used_at` and
//! its event, as a full verification writes them). Counts stay exact: a
//! batch is one transaction, retried until it commits, and written once
//! more when the service stops. A kill -9 loses what was pending (at most
//! [`FLUSH_AFTER`] of use); the README says so.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::db::{Database, DbConnection};
use crate::keys::verify::{record_deferred, DeferredUse};

/// How long the first pending use waits for others to share its batch.
pub const FLUSH_AFTER: Duration = Duration::from_millis(100);
/// Pending uses at most: beyond, the cache is not used (verifications run
/// in full and record themselves), so a database that is away cannot make
/// memory grow.
pub const MAX_PENDING: usize = 100_000;

#[derive(Default)]
pub struct UsageLog {
    pending: Mutex<Vec<DeferredUse>>,
    wake: Notify,
}

impl UsageLog {
    /// Queues one use; `false` when the log is full (the caller verifies
    /// in full instead).
    pub fn push(&self, used: DeferredUse) -> bool {
        let Ok(mut pending) = self.pending.lock() else {
            return false;
        };
        if pending.len() >= MAX_PENDING {
            return false;
        }
        let first = pending.is_empty();
        pending.push(used);
        drop(pending);
        if first {
            self.wake.notify_one();
        }
        true
    }

    /// Uses waiting to be written.
    pub fn pending(&self) -> usize {
        self.pending.lock().map(|p| p.len()).unwrap_or(0)
    }

    fn take(&self) -> Vec<DeferredUse> {
        self.pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }

    /// Puts back a batch that could not be written, ahead of newer uses.
    fn put_back(&self, mut batch: Vec<DeferredUse>) {
        if let Ok(mut pending) = self.pending.lock() {
            batch.append(&mut pending);
            *pending = batch;
        }
    }
}

/// Writes pending uses until `stop`, then once more. Sleeps while nothing
/// is pending.
pub async fn record(database: Database, log: Arc<UsageLog>, stop: CancellationToken) {
    let mut conn: Option<DbConnection> = None;
    let mut failing = false;
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = log.wake.notified() => false,
        };
        if !stopping {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(FLUSH_AFTER) => {}
            }
        }
        let batch = log.take();
        if !batch.is_empty() {
            let db = database.clone();
            let kept = conn.take();
            let written = tokio::task::spawn_blocking(move || {
                let mut c = match kept {
                    Some(c) => c,
                    None => match db.connect() {
                        Ok(c) => c,
                        Err(e) => return (None, Err(e.to_string()), batch),
                    },
                };
                match record_deferred(&mut c, &batch) {
                    Ok(()) => (Some(c), Ok(()), Vec::new()),
                    Err(e) => (None, Err(e.to_string()), batch),
                }
            })
            .await;
            match written {
                Ok((c, Ok(()), _)) => {
                    conn = c;
                    failing = false;
                }
                Ok((_, Err(e), batch)) => {
                    if !failing {
                        warn!("verify: cannot record the use of remembered keys yet, retrying: {e}");
                        failing = true;
                    }
                    let n = batch.len();
                    log.put_back(batch);
                    if stop.is_cancelled() {
                        warn!("verify: stopping with {n} uses of remembered keys unrecorded");
                        return;
                    }
                    // Try again after a pause, however the wake-ups go.
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    log.wake.notify_one();
                }
                Err(_) => return,
            }
        }
        if stopping {
            return;
        }
    }
}
