//! Delivery: claim due rows, send one digest per recipient, mark the rows.
//!
//! What a crash or an outage can double is bounded by what is in flight:
//! each message is recorded sent as soon as the server accepts it, a
//! connection lets the server accept its next message only once the
//! previous one is recorded (see [`super::smtp`]), and delivery stops the
//! moment a record cannot be written. Claims run one chunk ahead of the
//! sending, so the database's round trips overlap the mail's; rows claimed
//! and never started are not doubled: a claim names its holder, so rows
//! held by a process that is gone are claimed again at once.

use std::collections::{HashMap, VecDeque};

use chrono::{NaiveDateTime, TimeDelta};
use diesel::prelude::*;
use lettre::message::Mailbox;
use serde::Serialize;
use tracing::{error, info, warn};

use super::detect::{generation_of, KeyNoticePayload};
use super::kind;
use super::outbox::{self, Notification};
use super::render::{build_message, AdminAlert, OwnerNotes, Templates};
use super::transport::{Mailer, Outcome, SendError};
use crate::config::NotificationsConfig;
use crate::db::holder::Holder;
use crate::db::schema::{api_keys, users};
use crate::db::DbConnection;
use crate::keys::status as key_status;

/// A row left `sending` this long by a holder that cannot be judged (one on
/// another host) is assumed abandoned and claimed again.
pub const STALE_CLAIM: TimeDelta = TimeDelta::minutes(15);

/// Due rows looked at per claim, at most, to find the recipients to claim
/// for (eight per recipient wanted).
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

/// Delivers everything due: claims a chunk (the due rows of as many
/// recipients as the mailer has messages in flight), renders one digest per
/// recipient, submits them, and records each outcome as it comes, while the
/// next chunk is claimed and rendered (one chunk ahead, no more).
/// `keep_going` is asked about once a second (it renews the job lock) and
/// stops the delivery when it says no. An error means an outcome could not
/// be recorded: delivery stops at once; the rows still claimed are claimed
/// again by the next run. Records are committed without waiting for the
/// disk ([`DbConnection::with_relaxed_commit`]): only a crash of the
/// database server can lose one, which sends that message again.
pub fn deliver(
    conn: &mut DbConnection,
    cfg: &NotificationsConfig,
    mailer: &Mailer,
    templates: &Templates,
    holder: &Holder,
    now: NaiveDateTime,
    keep_going: impl FnMut(&mut DbConnection) -> bool,
) -> QueryResult<DeliveryReport> {
    conn.with_relaxed_commit(|conn| deliver_due(conn, cfg, mailer, templates, holder, now, keep_going))
}

fn deliver_due(
    conn: &mut DbConnection,
    cfg: &NotificationsConfig,
    mailer: &Mailer,
    templates: &Templates,
    holder: &Holder,
    now: NaiveDateTime,
    mut keep_going: impl FnMut(&mut DbConnection) -> bool,
) -> QueryResult<DeliveryReport> {
    let mut report = DeliveryReport::default();
    let claim_size = mailer.claim_size();
    let from: Mailbox = match cfg.from.parse() {
        Ok(m) => m,
        Err(e) => {
            // check-config refuses this; a row must still never be lost.
            let error = format!("notifications.from: {e}");
            let mut after = 0;
            loop {
                let claimed = outbox::claim(conn, holder, crate::db::now(), claim_size, CLAIM_SCAN, &mut after)?;
                if claimed.is_empty() {
                    return Ok(report);
                }
                let ids: Vec<i64> = claimed.iter().map(|n| n.id).collect();
                outbox::mark_attempt_failed(conn, &ids, &error, Some(now + retry_delay(cfg, 1)), now)?;
                report.retrying += 1;
            }
        }
    };
    let notes = OwnerNotes::from_config(cfg, mailer.hello_name());
    let mut session = mailer.session();
    let mut on_the_way: HashMap<usize, Outgoing> = HashMap::new();
    // Claimed and not rendered yet: one recipient's rows each. Rendering a
    // recipient at a time, between records, keeps a connection that waits
    // for its record from waiting for a whole claim's rendering too.
    let mut claimed: VecDeque<Vec<Notification>> = VecDeque::new();
    let mut next_index = 0usize;
    let mut exhausted = false;
    let mut asked = std::time::Instant::now();
    let scan = (claim_size as i64 * 8).min(CLAIM_SCAN);
    // Claims walk the due rows in id order; a row that falls due again
    // behind this cursor (released, retried) waits for the next run.
    let mut after = 0;
    loop {
        // A connection waiting for its record goes first.
        if !session.has_outcome() && session.wants_more() {
            if let Some(rows) = claimed.pop_front() {
                for (out, message) in render(rows, &from, &notes, templates, mailer.hello_name(), now) {
                    session.submit(next_index, message);
                    on_the_way.insert(next_index, out);
                    next_index += 1;
                }
                continue;
            }
            if !exhausted {
                let rows =
                    outbox::claim(conn, holder, crate::db::now(), claim_size, scan, &mut after).and_then(|rows| {
                        match rows.is_empty() {
                            true => Ok(None),
                            false => drop_stale_key_notices(conn, rows, now, &mut report).map(Some),
                        }
                    });
                match rows {
                    Ok(Some(rows)) => claimed.extend(by_recipient(rows)),
                    Ok(None) => exhausted = true,
                    Err(e) => {
                        session.stop();
                        return Err(e);
                    }
                }
                continue;
            }
        }
        if session.outstanding() == 0 {
            if exhausted && claimed.is_empty() {
                break;
            }
            continue;
        }
        let outcomes = session.outcomes();
        if outcomes.iter().any(|(_, o)| o.as_ref().is_err_and(|e| e.unreachable)) {
            // The rest would wait for the same server: stop claiming (what
            // is claimed fails at once and backs off).
            exhausted = true;
        }
        if let Err(e) = record_outcomes(conn, cfg, &outcomes, &mut on_the_way, &mut report) {
            session.stop();
            return Err(e);
        }
        session.recorded();
        if asked.elapsed() >= std::time::Duration::from_secs(1) {
            asked = std::time::Instant::now();
            if !keep_going(conn) {
                session.stop();
                break;
            }
        }
    }
    Ok(report)
}

/// Writes the outcomes that arrived together: one statement when there is
/// one, else one transaction (one commit). The Message-ID of a sent message
/// is read from the message itself.
fn record_outcomes(
    conn: &mut DbConnection,
    cfg: &NotificationsConfig,
    outcomes: &[Outcome],
    on_the_way: &mut HashMap<usize, Outgoing>,
    report: &mut DeliveryReport,
) -> QueryResult<()> {
    let done: Vec<(Outgoing, Result<String, SendError>)> = outcomes
        .iter()
        .filter_map(|(i, sent)| {
            let out = on_the_way.remove(i)?;
            let sent = sent.clone().map(|()| out.message_id.clone());
            Some((out, sent))
        })
        .collect();
    let record = |conn: &mut DbConnection, report: &mut DeliveryReport| -> QueryResult<()> {
        let sent: Vec<(&[i64], &str)> = done
            .iter()
            .filter_map(|(out, r)| r.as_ref().ok().map(|mid| (out.ids.as_slice(), mid.as_str())))
            .collect();
        if !sent.is_empty() {
            outbox::mark_sent_many(conn, &sent, crate::db::now())?;
        }
        for (out, r) in &done {
            match r {
                Ok(_) => {
                    report.messages += 1;
                    report.notices += out.ids.len() as u64;
                    info!(recipient = %out.recipient, notices = out.ids.len() as u64, "sent expiry notice for {} key(s) to {}", out.ids.len(), out.recipient);
                }
                Err(e) => record_outcome(conn, cfg, out, Err(e.clone()), report)?,
            }
        }
        Ok(())
    };
    // One statement needs no transaction (a commit each way, and the
    // PostgreSQL batch is one statement however many messages it covers).
    let failures = done.iter().filter(|(_, r)| r.is_err()).count();
    let statements = failures + usize::from(done.len() > failures);
    let one_statement = statements <= 1 && (done.len() <= 1 || conn.backend() == crate::db::Backend::Postgres);
    let recorded = if one_statement {
        record(conn, report)
    } else {
        conn.write_transaction(|conn| record(conn, report))
    };
    if let Err(e) = &recorded {
        for (out, _) in &done {
            error!(recipient = %out.recipient, error = %crate::telemetry::one_line(&e.to_string()), "cannot record the outcome of the notice to {}; delivery stops until the database answers", out.recipient);
        }
    }
    recorded
}

/// Claimed rows split by recipient (a claim returns each recipient's rows
/// together).
fn by_recipient(claimed: Vec<Notification>) -> Vec<Vec<Notification>> {
    let mut groups: Vec<Vec<Notification>> = Vec::new();
    for n in claimed {
        match groups.last_mut() {
            Some(rows) if rows[0].recipient == n.recipient => rows.push(n),
            _ => groups.push(vec![n]),
        }
    }
    groups
}

/// One recipient's digests (admin alerts and key notices apart), with the
/// rows each covers.
fn render(
    rows: Vec<Notification>,
    from: &Mailbox,
    notes: &OwnerNotes,
    templates: &Templates,
    hello_name: &str,
    now: NaiveDateTime,
) -> Vec<(Outgoing, Result<lettre::Message, String>)> {
    let mut outgoing = Vec::new();
    let Some(recipient) = rows.first().map(|r| r.recipient.clone()) else {
        return outgoing;
    };
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
            .and_then(|r| build_message(from, &recipient, None, &r, hello_name).map_err(|e| e.to_string()));
        outgoing.push((Outgoing::new(&other, &recipient, &message), message));
    }
    if keys.is_empty() {
        return outgoing;
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
        .render_key_digest(&display, &payloads, notes, now)
        .map_err(|e| e.to_string())
        .and_then(|r| build_message(from, &recipient, name.as_deref(), &r, hello_name).map_err(|e| e.to_string()));
    outgoing.push((Outgoing::new(&keys, &recipient, &message), message));
    outgoing
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
            ..
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

/// The rows one message covers.
struct Outgoing {
    ids: Vec<i64>,
    attempts: u32,
    recipient: String,
    message_id: String,
}

impl Outgoing {
    fn new(rows: &[&Notification], recipient: &str, message: &Result<lettre::Message, String>) -> Outgoing {
        Outgoing {
            ids: rows.iter().map(|r| r.id).collect(),
            attempts: rows.iter().map(|r| r.attempts).max().unwrap_or(0).max(0) as u32 + 1,
            recipient: recipient.to_string(),
            message_id: match message {
                Ok(m) => m.headers().get_raw("Message-ID").unwrap_or_default().to_string(),
                Err(_) => String::new(),
            },
        }
    }
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
