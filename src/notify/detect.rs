//! Finding keys that enter a warning window, and planning one notice each.
//!
//! For a key expiring at `e`, window `w` is due once `e - w <= now` (a `<=`
//! comparison, so a run that was missed catches up). Only the tightest due
//! window is sent; the wider due ones are recorded as `skipped`. Once the key
//! has expired, the `expired` notice is the one due. The generation of every
//! row is the key's expiry, so extending a key makes its new windows due.

use std::collections::HashSet;

use chrono::{NaiveDateTime, TimeDelta};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};

use super::outbox::{self, NewNotification};
use super::{kind, status, EXPIRED_WINDOW};
use crate::config::duration::format_duration;
use crate::config::NotificationsConfig;
use crate::db::schema::{api_keys, users};
use crate::db::DbConnection;
use crate::keys::status as key_status;

/// How long after expiry the `expired` notice is still worth sending (a key
/// that expired before notifications were set up gets none).
pub const EXPIRED_LOOKBACK: TimeDelta = TimeDelta::days(7);

/// What an API-key notice carries, to render it later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyNoticePayload {
    pub name: String,
    pub prefix: String,
    pub expires_at: NaiveDateTime,
    pub expired: bool,
}

/// One planned notice.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedNotice {
    pub key_id: i64,
    pub owner_email: String,
    pub owner_name: Option<String>,
    pub window: String,
    pub generation: String,
    pub payload: KeyNoticePayload,
    /// Wider windows passed without a notice; recorded as skipped.
    pub skipped: Vec<String>,
}

pub fn generation_of(expires_at: NaiveDateTime) -> String {
    expires_at.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

/// A key near or past its expiry, with its owner.
#[derive(Queryable)]
struct Candidate {
    key_id: i64,
    prefix: String,
    name: String,
    expires_at: NaiveDateTime,
    status: String,
    owner_email: String,
    owner_name: Option<String>,
}

/// Plans the notices due at `now` that are not in the outbox yet.
pub fn plan_key_notices(
    conn: &mut DbConnection,
    cfg: &NotificationsConfig,
    now: NaiveDateTime,
) -> QueryResult<Vec<PlannedNotice>> {
    let windows = cfg.sorted_windows();
    let widest = windows.first().map(|w| w.as_time_delta()).unwrap_or(TimeDelta::zero());
    let earliest = if cfg.notify_expired {
        now - EXPIRED_LOOKBACK
    } else {
        now
    };
    let candidates: Vec<Candidate> = api_keys::table
        .inner_join(users::table)
        .filter(users::status.eq("active"))
        .filter(api_keys::status.eq_any([key_status::ACTIVE, key_status::EXPIRED]))
        .filter(api_keys::expires_at.gt(earliest))
        .filter(api_keys::expires_at.le(now + widest))
        .select((
            api_keys::id,
            api_keys::prefix,
            api_keys::name,
            api_keys::expires_at,
            api_keys::status,
            users::email,
            users::name,
        ))
        .order(api_keys::id.asc())
        .load(conn)?;

    let mut planned = Vec::new();
    for Candidate {
        key_id,
        prefix,
        name,
        expires_at,
        status,
        owner_email,
        owner_name,
    } in candidates
    {
        let expired = expires_at <= now;
        if expired && !cfg.notify_expired {
            continue;
        }
        // An expired-status key before its expiry cannot exist; an active one
        // past its expiry is expired in all but name (expire-keys is behind).
        if status == key_status::EXPIRED && !expired {
            continue;
        }
        let due: Vec<String> = windows
            .iter()
            .filter(|w| expires_at - w.as_time_delta() <= now)
            .map(|w| format_duration(w.as_duration()))
            .collect();
        let (window, skipped) = if expired {
            (EXPIRED_WINDOW.to_string(), due)
        } else {
            match due.split_last() {
                Some((tightest, wider)) => (tightest.clone(), wider.to_vec()),
                None => continue,
            }
        };
        planned.push(PlannedNotice {
            key_id,
            owner_email,
            owner_name,
            window,
            generation: generation_of(expires_at),
            payload: KeyNoticePayload {
                name,
                prefix,
                expires_at,
                expired,
            },
            skipped,
        });
    }

    // Leave out what the outbox already holds (in any state).
    let ids: Vec<String> = planned.iter().map(|p| p.key_id.to_string()).collect();
    let existing: HashSet<(String, String, String)> =
        outbox::existing_for(conn, kind::API_KEY, &ids)?.into_iter().collect();
    planned.retain(|p| !existing.contains(&(p.key_id.to_string(), p.generation.clone(), p.window.clone())));
    Ok(planned)
}

/// Plans and enqueues in one transaction. Returns the notices enqueued.
pub fn enqueue_key_notices(
    conn: &mut DbConnection,
    cfg: &NotificationsConfig,
    now: NaiveDateTime,
) -> QueryResult<Vec<PlannedNotice>> {
    conn.write_transaction(|conn| {
        let planned = plan_key_notices(conn, cfg, now)?;
        let mut rows = Vec::with_capacity(planned.len());
        for p in &planned {
            let payload = serde_json::to_string(&p.payload).unwrap_or_else(|_| "{}".into());
            let row = |window: &str, st: &str| NewNotification {
                subject_kind: kind::API_KEY.into(),
                subject_id: p.key_id.to_string(),
                generation: p.generation.clone(),
                notice_window: window.to_string(),
                recipient: p.owner_email.clone(),
                recipient_name: p.owner_name.clone(),
                payload: payload.clone(),
                status: st.to_string(),
                attempts: 0,
                next_attempt_at: now,
                created_at: now,
                updated_at: now,
            };
            rows.push(row(&p.window, status::PENDING));
            for w in &p.skipped {
                rows.push(row(w, status::SKIPPED));
            }
        }
        outbox::enqueue(conn, &rows)?;
        for p in planned.iter().filter(|p| !p.skipped.is_empty()) {
            outbox::skip_pending(
                conn,
                kind::API_KEY,
                &p.key_id.to_string(),
                &p.generation,
                &p.skipped,
                now,
            )?;
        }
        Ok(planned)
    })
}
