//! Delivery: claim due rows, send one digest per recipient, mark the rows.
//!
//! What a crash or an outage can double is bounded by what is in flight:
//! a chunk claims the rows of no more recipients than there are connections,
//! each message is recorded sent (its own short statement) as soon as the
//! server accepts it, a connection sends its next message only once the
//! previous one is recorded, and delivery stops the moment a record cannot
//! be written. A claim names its holder, so rows held by a process that is
//! gone are claimed again at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use chrono::{NaiveDateTime, TimeDelta};
use diesel::prelude::*;
use lettre::message::Mailbox;
use serde::Serialize;
use tracing::{error, info, warn};

use super::detect::{generation_of, KeyNoticePayload};
use super::kind;
use super::outbox::{self, Notification};
use super::render::{build_message, AdminAlert, Templates};
use super::transport::{Mailer, SendError};
use crate::config::NotificationsConfig;
use crate::db::holder::Holder;
use crate::db::schema::{api_keys, users};
use crate::db::DbConnection;
use crate::keys::status as key_status;

/// A row left `sending` this long by a holder that cannot be judged (one on
/// another host) is assumed abandoned and claimed again.
pub const STALE_CLAIM: TimeDelta = TimeDelta::minutes(15);

/// Due rows looked at per claim, to find the recipients to claim for.
pub const CLAIM_SCAN: i64 = 500;

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Emails accepted by the transport.
    pub messages: u64,
    /// Outbox rows those emails covered.
    pub notices: u64,
    /// Emails that failed and will be retried.
    pub retrying: u64,
    /// Emails that failed for the last time.
    pub failed: u64,
    /// Rows dropped because their key was rotated, revoked or re-dated.
    pub cancelled: u64,
}

/// The delay before attempt `attempt + 1`: `retry_base * 2^(attempt-1)`,
/// capped at `retry_max`, plus up to a quarter of jitter so that a fleet
/// does not retry in step.
pub fn retry_delay(cfg: &NotificationsConfig, attempt: u32) -> TimeDelta {
    let base = cfg.retry_base.as_duration();
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let capped = exp.min(cfg.retry_max.as_duration());
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    let jitter = capped.mul_f64(f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX) * 0.25);
    TimeDelta::from_std(capped + jitter).unwrap_or(TimeDelta::hours(6))
}

/// Claims and delivers one chunk: the due rows of as many recipients as the
/// mailer has connections. `None` when nothing was due. An error means a
/// row's outcome could not be recorded: stop, the rows still claimed are
/// claimed again by the next run.
pub fn deliver_chunk(
    conn: &mut DbConnection,
    cfg: &NotificationsConfig,
    mailer: &Mailer,
    templates: &Templates,
    holder: &Holder,
    now: NaiveDateTime,
) -> QueryResult<Option<DeliveryReport>> {
    let claimed = outbox::claim(conn, holder, crate::db::now(), mailer.parallelism(), CLAIM_SCAN)?;
    if claimed.is_empty() {
        return Ok(None);
    }
    let mut report = DeliveryReport::default();
    let from: Mailbox = match cfg.from.parse() {
        Ok(m) => m,
        Err(e) => {
            // check-config refuses this; a row must still never be lost.
            let ids: Vec<i64> = claimed.iter().map(|n| n.id).collect();
            outbox::mark_attempt_failed(
                conn,
                &ids,
                &format!("notifications.from: {e}"),
                Some(now + retry_delay(cfg, 1)),
                now,
            )?;
            return Ok(Some(report));
        }
    };
    let claimed = drop_stale_key_notices(conn, claimed, now, &mut report)?;
    let mut groups: Vec<(String, Vec<Notification>)> = Vec::new();
    for n in claimed {
        match groups.last_mut() {
            Some((recipient, rows)) if *recipient == n.recipient => rows.push(n),
            _ => groups.push((n.recipient.clone(), vec![n])),
        }
    }
    // Render every digest first, send them over several connections at once
    // (the pool), then record the outcomes: the database is only touched
    // from this thread.
    let mut outgoing: Vec<Outgoing> = Vec::new();
    for (recipient, rows) in groups {
        let (keys, other): (Vec<&Notification>, Vec<&Notification>) =
            rows.iter().partition(|r| r.subject_kind == kind::API_KEY);
        if !other.is_empty() {
            let alerts: Vec<AdminAlert> = other
                .iter()
                .map(|r| {
                    serde_json::from_str(&r.payload).unwrap_or_else(|_| AdminAlert {
                        title: format!("{} {}", r.subject_kind.replace('_', " "), r.subject_id),
                        lines: Vec::new(),
                        action: None,
                    })
                })
                .collect();
            let message = templates
                .render_admin_digest(&alerts)
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    build_message(&from, &recipient, None, &r, mailer.hello_name()).map_err(|e| e.to_string())
                });
            outgoing.push(Outgoing {
                ids: other.iter().map(|r| r.id).collect(),
                attempts: other.iter().map(|r| r.attempts).max().unwrap_or(0).max(0) as u32 + 1,
                recipient: recipient.clone(),
                message,
            });
        }
        if keys.is_empty() {
            continue;
        }
        let mut payloads: Vec<KeyNoticePayload> = keys
            .iter()
            .filter_map(|r| serde_json::from_str(&r.payload).ok())
            .collect();
        payloads.sort_by_key(|p| p.expires_at);
        let name = keys[0].recipient_name.clone();
        let display = name
            .clone()
            .unwrap_or_else(|| recipient.split('@').next().unwrap_or("there").to_string());
        let message = templates
            .render_key_digest(&display, &payloads, cfg.action_url.as_deref(), now)
            .map_err(|e| e.to_string())
            .and_then(|r| {
                build_message(&from, &recipient, name.as_deref(), &r, mailer.hello_name()).map_err(|e| e.to_string())
            });
        outgoing.push(Outgoing {
            ids: keys.iter().map(|r| r.id).collect(),
            attempts: keys.iter().map(|r| r.attempts).max().unwrap_or(0).max(0) as u32 + 1,
            recipient,
            message,
        });
    }
    let mut record_error = None;
    send_recording(mailer, &outgoing, |i, sent| {
        let out = &outgoing[i];
        let recorded = record_outcome(conn, cfg, out, sent, &mut report);
        match recorded {
            Ok(()) => true,
            Err(e) => {
                error!(recipient = %out.recipient, error = %crate::telemetry::one_line(&e.to_string()), "cannot record the outcome of the notice to {}; delivery stops until the database answers", out.recipient);
                record_error = Some(e);
                false
            }
        }
    });
    match record_error {
        Some(e) => Err(e),
        None => Ok(Some(report)),
    }
}

/// Writes what became of one message, at once.
fn record_outcome(
    conn: &mut DbConnection,
    cfg: &NotificationsConfig,
    out: &Outgoing,
    sent: Result<String, SendError>,
    report: &mut DeliveryReport,
) -> QueryResult<()> {
    let Outgoing {
        ids,
        attempts,
        recipient,
        ..
    } = out;
    let attempts = *attempts;
    let now = crate::db::now();
    // SMTP replies can span lines; the log record must not.
    let sent = sent.map_err(|e| SendError {
        text: crate::telemetry::one_line(&e.text),
        ..e
    });
    match sent {
        Ok(message_id) => {
            outbox::mark_sent(conn, ids, &message_id, now)?;
            report.messages += 1;
            report.notices += ids.len() as u64;
            info!(recipient = %recipient, notices = ids.len() as u64, "sent expiry notice for {} key(s) to {recipient}", ids.len());
        }
        Err(SendError {
            text: e,
            permanent: true,
        }) => {
            outbox::mark_attempt_failed(conn, ids, &e, None, now)?;
            report.failed += 1;
            error!(recipient = %recipient, message_id = crate::telemetry::message_ids::NOTIFICATION_FAILED, error = %e, "the server refused the notice to {recipient} for good (not retried; `keywarden notifications retry` queues it again): {e}");
        }
        Err(SendError { text: e, .. }) if attempts >= cfg.max_attempts => {
            outbox::mark_attempt_failed(conn, ids, &e, None, now)?;
            report.failed += 1;
            error!(recipient = %recipient, message_id = crate::telemetry::message_ids::NOTIFICATION_FAILED, error = %e, "giving up on the notice to {recipient} after {attempts} attempt(s): {e}");
        }
        Err(SendError { text: e, .. }) => {
            let next = now + retry_delay(cfg, attempts);
            outbox::mark_attempt_failed(conn, ids, &e, Some(next), now)?;
            report.retrying += 1;
            warn!(recipient = %recipient, error = %e, "notice to {recipient} failed (attempt {attempts}); retrying at {next}: {e}");
        }
    }
    Ok(())
}

/// One digest ready to go.
struct Outgoing {
    ids: Vec<i64>,
    attempts: u32,
    recipient: String,
    message: Result<lettre::Message, String>,
}

/// Sends every message over `mailer.parallelism()` connections at once and
/// hands each outcome (the Message-ID, or the error) to `record` on the
/// calling thread, the only one touching the database. A connection sends
/// its next message only after `record` returned for its previous one, so
/// at most one accepted message per connection is ever unrecorded; once
/// `record` returns false no new message is started.
fn send_recording(
    mailer: &Mailer,
    outgoing: &[Outgoing],
    mut record: impl FnMut(usize, Result<String, SendError>) -> bool,
) {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let workers = mailer.parallelism().clamp(1, outgoing.len().max(1));
    type Done = (usize, Result<String, SendError>, mpsc::SyncSender<()>);
    let (done_tx, done_rx) = mpsc::channel::<Done>();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let done_tx = done_tx.clone();
            let (next, stop) = (&next, &stop);
            scope.spawn(move || loop {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(out) = outgoing.get(i) else { break };
                let result = match &out.message {
                    Ok(msg) => {
                        let id = msg.headers().get_raw("Message-ID").unwrap_or_default().to_string();
                        mailer.send(msg).map(|_| id)
                    }
                    Err(e) => Err(SendError::transient(e.clone())),
                };
                let (recorded_tx, recorded_rx) = mpsc::sync_channel(1);
                if done_tx.send((i, result, recorded_tx)).is_err() || recorded_rx.recv().is_err() {
                    break;
                }
            });
        }
        drop(done_tx);
        for (i, result, recorded) in done_rx {
            if !stop.load(Ordering::SeqCst) && !record(i, result) {
                stop.store(true, Ordering::SeqCst);
            }
            let _ = recorded.send(());
        }
    });
}

/// Cancels API-key notices whose key was rotated or revoked, or whose expiry
/// changed, since they were enqueued; returns the rest.
fn drop_stale_key_notices(
    conn: &mut DbConnection,
    rows: Vec<Notification>,
    now: NaiveDateTime,
    report: &mut DeliveryReport,
) -> QueryResult<Vec<Notification>> {
    let key_ids: Vec<i64> = rows
        .iter()
        .filter(|r| r.subject_kind == kind::API_KEY)
        .filter_map(|r| r.subject_id.parse().ok())
        .collect();
    // A key of a disabled owner reads as absent: its notice is dropped.
    let current: HashMap<i64, (String, NaiveDateTime)> = api_keys::table
        .inner_join(users::table)
        .filter(api_keys::id.eq_any(&key_ids))
        .filter(users::status.eq("active"))
        .select((api_keys::id, api_keys::status, api_keys::expires_at))
        .load::<(i64, String, NaiveDateTime)>(conn)?
        .into_iter()
        .map(|(id, st, exp)| (id, (st, exp)))
        .collect();
    let (keep, stale): (Vec<Notification>, Vec<Notification>) = rows.into_iter().partition(|r| {
        if r.subject_kind != kind::API_KEY {
            return true;
        }
        let Ok(id) = r.subject_id.parse::<i64>() else {
            return false;
        };
        match current.get(&id) {
            Some((st, exp)) => {
                (st == key_status::ACTIVE || st == key_status::EXPIRED) && generation_of(*exp) == r.generation
            }
            None => false,
        }
    });
    if !stale.is_empty() {
        let ids: Vec<i64> = stale.iter().map(|r| r.id).collect();
        outbox::mark_cancelled(
            conn,
            &ids,
            "the key was rotated, revoked or re-dated, or its owner disabled, before delivery",
            now,
        )?;
        report.cancelled += ids.len() as u64;
    }
    Ok(keep)
}

/// Puts back abandoned claims: at once when their holder is gone, after
/// [`STALE_CLAIM`] when it is on another host.
pub fn release_abandoned(conn: &mut DbConnection, me: &Holder, now: NaiveDateTime) -> QueryResult<usize> {
    outbox::release_abandoned_claims(conn, me, now - STALE_CLAIM, now)
}
