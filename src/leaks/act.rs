//! What a candidate leads to. A candidate is a key only when its prefix is
//! stored and its secret verifies (Argon2, like any verification): a string
//! that merely looks like a key, or a stored prefix with the wrong secret,
//! changes nothing. A key that verifies is recorded in `leak_findings`
//! once per path (found again there, nothing more happens) and, while it
//! is live (active, or rotating within its grace), revoked with the reason
//! `leaked: PATH:LINE` (action `revoke`) or only reported (`alert`). Its
//! owner and the admins are emailed, in the transaction that records it.
//! The secret is never logged, stored or mailed: the prefix, path and line
//! are.

use std::path::Path;

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::find::Candidate;
use crate::config::leaks::LeakAction;
use crate::config::Config;
use crate::db::schema::{api_keys, leak_findings, users};
use crate::db::DbConnection;
use crate::keys::model::ApiKey;
use crate::keys::{format, status, KeyError, KeyService};
use crate::notify::alerts::enqueue_admin_alert;
use crate::notify::outbox::{self, NewNotification};
use crate::notify::render::AdminAlert;

/// Candidates verified per file and pass at most: a file full of
/// key-shaped strings with stored prefixes cannot buy unbounded Argon2 work.
pub const MAX_VERIFIED_PER_FILE: usize = 64;

/// The outbox subject kind of leak emails.
pub const KIND: &str = "leaked_key";
/// The actor of the revocations and the findings.
pub const ACTOR: &str = "leak-scanner";

/// What to do with a key found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Verify and report; change nothing (`keywarden leaks scan`).
    Report,
    /// Record, revoke or alert, email (the daemon, `leaks scan --revoke`).
    Act(LeakAction),
}

/// What became of a key found in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Live, and revoked now.
    Revoked,
    /// Live, reported only (`action = "alert"`).
    Alerted,
    /// Already revoked or expired: recorded, nobody alerted.
    Recorded,
    /// Found at this path before: nothing done.
    AlreadyKnown,
    /// Live; `leaks scan` without `--revoke` changed nothing.
    Live,
    /// Not live; `leaks scan` without `--revoke` changed nothing.
    NotLive,
}

/// A key found in a file (never its secret).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    pub prefix: String,
    pub name: String,
    pub owner: String,
    pub path: String,
    pub line: u64,
    pub status: String,
    pub outcome: Outcome,
}

impl Finding {
    /// Whether the key could be used when it was found.
    pub fn was_live(&self) -> bool {
        matches!(self.outcome, Outcome::Revoked | Outcome::Alerted | Outcome::Live)
    }
}

/// The path as it appears in reasons, emails and logs: control characters
/// replaced, at most 400 characters (a hostile file name cannot forge a
/// line or overflow a reason).
pub fn shown_path(path: &Path) -> String {
    let text = path.to_string_lossy();
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(400)
        .collect();
    if text.chars().count() > 400 {
        out.push('…');
    }
    out
}

/// Whether the key was usable at `now`.
fn is_live(key: &ApiKey, now: NaiveDateTime) -> bool {
    match key.status.as_str() {
        status::ACTIVE => key.expires_at > now,
        status::ROTATING => key.grace_period_ends_at.is_some_and(|g| g > now),
        _ => false,
    }
}

/// Looks `candidate` up and acts on it; `None` when it is not a key.
pub fn respond(
    conn: &mut DbConnection,
    service: &KeyService,
    config: &Config,
    path: &Path,
    candidate: &Candidate,
    mode: Mode,
) -> Result<Option<Finding>, KeyError> {
    let Ok(parsed) = format::parse(candidate.key.expose()) else {
        return Ok(None);
    };
    let shown = shown_path(path);
    let row: Option<(ApiKey, String, Option<String>)> = api_keys::table
        .inner_join(users::table)
        .filter(api_keys::prefix.eq(parsed.prefix))
        .select((ApiKey::as_select(), users::email, users::name))
        .first(conn)
        .optional()?;
    let Some((key, owner, owner_name)) = row else {
        return Ok(None);
    };
    let known: i64 = leak_findings::table
        .filter(leak_findings::prefix.eq(&key.prefix))
        .filter(leak_findings::path.eq(&shown))
        .count()
        .get_result(conn)?;
    let finding = |outcome| Finding {
        prefix: key.prefix.clone(),
        name: key.name.clone(),
        owner: owner.clone(),
        path: shown.clone(),
        line: candidate.line,
        status: key.status.clone(),
        outcome,
    };
    if known > 0 {
        // Verified when it was recorded; a look-alike of a recorded key's
        // prefix at the same path changes nothing either way.
        return Ok(Some(finding(Outcome::AlreadyKnown)));
    }
    if !service.hasher.verify(parsed.secret(), &key.key_hash) {
        return Ok(None);
    }
    let now = crate::db::now();
    let live = is_live(&key, now);
    let action = match mode {
        Mode::Report => return Ok(Some(finding(if live { Outcome::Live } else { Outcome::NotLive }))),
        Mode::Act(action) => action,
    };
    let outcome = match (live, action) {
        (true, LeakAction::Revoke) => Outcome::Revoked,
        (true, LeakAction::Alert) => Outcome::Alerted,
        (false, _) => Outcome::Recorded,
    };
    let host = config.host_name();
    let line = i64::try_from(candidate.line).unwrap_or(i64::MAX);
    let recorded = conn.write_transaction::<_, KeyError, _>(|conn| {
        // The finding first: a second scanner (a replica, the rescan) that
        // finds the same key at the same path stops here.
        let inserted = crate::on_backend!(conn, c => diesel::insert_into(leak_findings::table)
            .values((
                leak_findings::key_id.eq(Some(key.id)),
                leak_findings::prefix.eq(&key.prefix),
                leak_findings::path.eq(&shown),
                leak_findings::line.eq(line),
                leak_findings::host.eq(&host),
                leak_findings::key_status.eq(&key.status),
                leak_findings::action.eq(match outcome {
                    Outcome::Revoked => "revoked",
                    Outcome::Alerted => "alerted",
                    _ => "recorded",
                }),
                leak_findings::found_at.eq(now),
            ))
            .on_conflict_do_nothing()
            .execute(c))?;
        if inserted == 0 {
            return Ok(false);
        }
        if outcome == Outcome::Revoked {
            let reason = format!("leaked: {shown}:{}", candidate.line);
            service.revoke(conn, &key.prefix, &reason, ACTOR)?;
        }
        if matches!(outcome, Outcome::Revoked | Outcome::Alerted) {
            enqueue_emails(
                conn,
                config,
                &key,
                &owner,
                owner_name.as_deref(),
                &shown,
                candidate.line,
                outcome,
                now,
            )?;
        }
        Ok(true)
    })?;
    Ok(Some(finding(if recorded { outcome } else { Outcome::AlreadyKnown })))
}

/// [`respond`] for the candidates of one file: each distinct string once,
/// at most [`MAX_VERIFIED_PER_FILE`] of them (the rest wait for the next
/// pass); what was found is added to `findings`.
pub fn respond_file(
    conn: &mut DbConnection,
    service: &KeyService,
    config: &Config,
    path: &Path,
    candidates: &[Candidate],
    mode: Mode,
    findings: &mut Vec<Finding>,
) -> Result<(), KeyError> {
    let mut verified = std::collections::HashSet::new();
    for c in candidates {
        if !verified.insert(c.key.expose()) {
            continue;
        }
        if verified.len() > MAX_VERIFIED_PER_FILE {
            tracing::warn!(
                "leaks: {} holds more than {MAX_VERIFIED_PER_FILE} key-shaped strings; the rest are left for the next pass",
                shown_path(path)
            );
            break;
        }
        if let Some(f) = respond(conn, service, config, path, c, mode)? {
            findings.push(f);
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn enqueue_emails(
    conn: &mut DbConnection,
    config: &Config,
    key: &ApiKey,
    owner: &str,
    owner_name: Option<&str>,
    path: &str,
    line: u64,
    outcome: Outcome,
    now: NaiveDateTime,
) -> Result<(), KeyError> {
    let host = config.host_name();
    let done = if outcome == Outcome::Revoked {
        "and has been revoked"
    } else {
        "and still works (leaks.action = \"alert\")"
    };
    let owner_alert = AdminAlert {
        title: format!("Your API key {} was found in {path} on {host} {done}", key.name),
        lines: vec![
            format!("Key: {} ({})", key.name, key.prefix),
            format!("Found in: {path}, line {line}"),
            format!("Host: {host}"),
        ],
        action: Some(if outcome == Outcome::Revoked {
            "Rotate it: issue a new key, put it where the old one was used, and remove the key from that file.".into()
        } else {
            "Rotate it now: issue a new key, put it where the old one was used, revoke the old one, and remove it from that file.".into()
        }),
    };
    let subject = format!("{}:{path}", key.prefix);
    let row = NewNotification {
        subject_kind: KIND.to_string(),
        subject_id: format!("{subject}:{owner}"),
        generation: "found".into(),
        notice_window: "leak".into(),
        recipient: owner.to_string(),
        recipient_name: owner_name.map(str::to_string),
        payload: serde_json::to_string(&owner_alert).unwrap_or_else(|_| "{}".into()),
        status: crate::notify::status::PENDING.to_string(),
        attempts: 0,
        next_attempt_at: now,
        created_at: now,
        updated_at: now,
    };
    outbox::enqueue(conn, &[row])?;
    let admin_alert = AdminAlert {
        title: format!("API key {} of {owner} found in {path} on {host} {done}", key.prefix),
        lines: vec![
            format!("Found in: {path}, line {line}"),
            format!("Key: {} ({})", key.name, key.prefix),
        ],
        action: Some(
            "Remove the key from the file and find how it got there (a log of request headers, a committed config)."
                .into(),
        ),
    };
    enqueue_admin_alert(
        conn,
        &config.notifications,
        KIND,
        &subject,
        "found",
        "leak",
        &admin_alert,
        now,
    )?;
    Ok(())
}
