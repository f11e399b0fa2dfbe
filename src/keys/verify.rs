//! Verifying a presented key, for services that share the database.
//!
//! The order of work is what keeps it honest:
//! 1. the key is parsed; malformed input is refused before any other work;
//! 2. the row is looked up by prefix, and the Argon2 verify always runs: on
//!    the stored hash, or on a decoy when the prefix is unknown, at the cost
//!    of a neighbouring stored key, so an unknown prefix costs the same time
//!    as a wrong secret, before and after a cost raise;
//! 3. only then are status, expiry, grace, the owner's status, allow-list
//!    and scopes checked; a stored allow-list or scope list that cannot be
//!    read refuses the key (fail closed), it never reads as "no limit";
//! 4. a success increments `usage_count` with `SET usage_count =
//!    usage_count + 1` (never read-modify-write), re-hashes a hash made at
//!    another cost than the configured one, and writes a `used` event;
//!    a refusal writes a `verify_failed` event with its reason.

use std::net::IpAddr;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::Serialize;

use super::error::KeyError;
use super::format::{self, KeyFormatError};
use super::model::ApiKey;
use super::service::KeyService;
use super::{event, policy, record_events_for, status, NewKeyEvent};
use crate::db::schema::{api_keys, users};
use crate::db::DbConnection;

/// Who is presenting the key, for the allow-list and the audit trail.
#[derive(Debug, Clone, Default)]
pub struct VerifyRequest<'a> {
    pub ip: Option<IpAddr>,
    pub required_scopes: &'a [&'a str],
    pub user_agent: Option<&'a str>,
    pub endpoint: Option<&'a str>,
    /// Recorded as the actor of audit rows (the service's name).
    pub actor: &'a str,
    /// Where the rows of this answer go instead of being written now (a
    /// service that writes them in batches); `None`: written before the
    /// answer is returned.
    pub defer: Option<Deferral<'a>>,
}

/// Takes the record of an answer to be written later ([`record_deferred`]);
/// returns `false` when it cannot, and the rows are written at once.
#[derive(Clone, Copy)]
pub struct Deferral<'a>(pub &'a (dyn Fn(DeferredUse) -> bool + Sync));

impl std::fmt::Debug for Deferral<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deferral")
    }
}

/// A key that verified.
#[derive(Debug, Clone, Serialize)]
pub struct VerifiedKey {
    pub key_id: i64,
    pub prefix: String,
    pub owner_id: i64,
    pub name: String,
    pub scopes: Vec<String>,
    /// Set while the key is `rotating`: it works until then, and the caller
    /// should tell its user to switch to the successor.
    pub grace_ends_at: Option<NaiveDateTime>,
    pub expires_at: NaiveDateTime,
}

impl VerifiedKey {
    /// The answer for a key whose checks passed.
    pub fn of(key: &ApiKey) -> VerifiedKey {
        VerifiedKey {
            key_id: key.id,
            prefix: key.prefix.clone(),
            owner_id: key.owner_id,
            name: key.name.clone(),
            scopes: key.scope_list(),
            grace_ends_at: (key.status == status::ROTATING)
                .then_some(key.grace_period_ends_at)
                .flatten(),
            expires_at: key.expires_at,
        }
    }
}

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", content = "detail", rename_all = "snake_case")]
pub enum Refusal {
    Malformed(String),
    UnknownKey,
    WrongSecret,
    Revoked,
    Expired,
    GraceEnded,
    IpNotAllowed,
    MissingScope(String),
    /// The key's owner is disabled (`keywarden users disable`).
    OwnerDisabled,
    /// A stored restriction cannot be read; the column is named.
    UnreadableRestriction(String),
}

impl Refusal {
    pub fn as_reason(&self) -> String {
        match self {
            Refusal::Malformed(e) => format!("malformed: {e}"),
            Refusal::UnknownKey => "unknown prefix".into(),
            Refusal::WrongSecret => "wrong secret".into(),
            Refusal::Revoked => "key revoked".into(),
            Refusal::Expired => "key expired".into(),
            Refusal::GraceEnded => "grace period ended".into(),
            Refusal::IpNotAllowed => "address not in the allow-list".into(),
            Refusal::MissingScope(s) => format!("missing scope {s}"),
            Refusal::OwnerDisabled => "owner disabled".into(),
            Refusal::UnreadableRestriction(column) => format!("{column} cannot be read; the key is refused"),
        }
    }
}

/// The typed result of a verification.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum VerifyOutcome {
    Valid(VerifiedKey),
    Refused(Refusal),
}

impl From<KeyFormatError> for Refusal {
    fn from(e: KeyFormatError) -> Self {
        Refusal::Malformed(e.to_string())
    }
}

impl KeyService {
    pub fn verify(
        &self,
        conn: &mut DbConnection,
        presented: &str,
        req: &VerifyRequest<'_>,
    ) -> Result<VerifyOutcome, KeyError> {
        self.verify_keeping_row(conn, presented, req)
            .map(|(outcome, _)| outcome)
    }

    /// [`Self::verify`], also returning the key's row when it verified (with
    /// its owner active): what a cache of successful verifications keeps.
    pub fn verify_keeping_row(
        &self,
        conn: &mut DbConnection,
        presented: &str,
        req: &VerifyRequest<'_>,
    ) -> Result<(VerifyOutcome, Option<ApiKey>), KeyError> {
        let started = std::time::Instant::now();
        let parsed = match format::parse(presented) {
            Ok(p) => p,
            Err(e) => return Ok((VerifyOutcome::Refused(e.into()), None)),
        };
        let row: Option<(ApiKey, String)> = api_keys::table
            .inner_join(users::table)
            .filter(api_keys::prefix.eq(parsed.prefix))
            .select((ApiKey::as_select(), users::status))
            .first(conn)
            .optional()?;
        let now = crate::db::now();
        let ip = req.ip.map(|i| i.to_string());
        let Some((key, owner_status)) = row else {
            // An unknown prefix is verified against a neighbouring key's
            // stored hash, at that key's cost (after a cost raise, stored
            // keys keep their old cost until re-hashed); the fixed end of
            // every refusal hides the extra read.
            let neighbour = neighbour_hash(conn, parsed.prefix)?;
            let argon = std::time::Instant::now();
            self.hasher.verify_decoy(parsed.secret(), neighbour.as_deref());
            let argon = argon.elapsed();
            self.record_failure(conn, None, parsed.prefix, &Refusal::UnknownKey, ip.as_deref(), req, now)?;
            self.end_refusal(started, argon);
            return Ok((VerifyOutcome::Refused(Refusal::UnknownKey), None));
        };
        let argon = std::time::Instant::now();
        let secret_ok = self.hasher.verify(parsed.secret(), &key.key_hash);
        let argon = argon.elapsed();
        let refusal = if !secret_ok {
            Some(Refusal::WrongSecret)
        } else {
            self.status_refusal(conn, &key, now, req.actor)?
        }
        .or_else(|| (owner_status != "active").then_some(Refusal::OwnerDisabled))
        .or_else(|| restriction_refusal(&key, req));
        if let Some(refusal) = refusal {
            self.record_failure(conn, Some(key.id), &key.prefix, &refusal, ip.as_deref(), req, now)?;
            self.end_refusal(started, argon);
            return Ok((VerifyOutcome::Refused(refusal), None));
        }
        // A hash made at another cost than the configured one is replaced
        // now that the secret is known to be right (hashed before the
        // transaction opens, so no transaction waits on Argon2).
        let rehashed = if self.hasher.needs_rehash(&key.key_hash) {
            self.hasher.hash(parsed.secret()).ok()
        } else {
            None
        };
        self.record_use(conn, &key, rehashed.as_deref(), ip.as_deref(), req, now)?;
        let mut key = key;
        if let Some(h) = rehashed {
            key.key_hash = h;
        }
        Ok((VerifyOutcome::Valid(VerifiedKey::of(&key)), Some(key)))
    }

    /// A valid key's use: counted, its hash replaced when made at another
    /// cost, and its `used` event written, in one transaction.
    fn record_use(
        &self,
        conn: &mut DbConnection,
        key: &ApiKey,
        rehashed: Option<&str>,
        ip: Option<&str>,
        req: &VerifyRequest<'_>,
        now: NaiveDateTime,
    ) -> Result<(), KeyError> {
        if rehashed.is_none() && self.deferred(Some(key.id), &key.prefix, None, req, now) {
            return Ok(());
        }
        conn.write_transaction::<_, KeyError, _>(|conn| {
            diesel::update(api_keys::table.find(key.id))
                .set((
                    api_keys::usage_count.eq(api_keys::usage_count + 1),
                    api_keys::last_used_at.eq(Some(now)),
                ))
                .execute(conn)?;
            if let Some(new_hash) = rehashed {
                diesel::update(api_keys::table.find(key.id))
                    .filter(api_keys::key_hash.eq(&key.key_hash))
                    .set(api_keys::key_hash.eq(new_hash))
                    .execute(conn)?;
            }
            insert_event(conn, Some(key.id), &key.prefix, event::USED, None, ip, req, now)
        })
    }

    /// Refuses keys that are revoked, expired or past their grace, and
    /// records the transition when the key is found past its time (the jobs
    /// would make the same change at their next run).
    fn status_refusal(
        &self,
        conn: &mut DbConnection,
        key: &ApiKey,
        now: NaiveDateTime,
        actor: &str,
    ) -> Result<Option<Refusal>, KeyError> {
        Ok(match key.status.as_str() {
            status::REVOKED => Some(Refusal::Revoked),
            status::EXPIRED => Some(Refusal::Expired),
            status::ACTIVE if key.expires_at <= now => {
                conn.write_transaction::<_, KeyError, _>(|conn| {
                    let n = diesel::update(api_keys::table.find(key.id))
                        .filter(api_keys::status.eq(status::ACTIVE))
                        .set((api_keys::status.eq(status::EXPIRED), api_keys::updated_at.eq(now)))
                        .execute(conn)?;
                    if n == 1 {
                        record_events_for(
                            conn,
                            &[key.id],
                            event::EXPIRED,
                            Some("found expired at verification"),
                            actor,
                            now,
                        )?;
                    }
                    Ok(())
                })?;
                Some(Refusal::Expired)
            }
            status::ROTATING if key.grace_period_ends_at.is_none_or(|g| g <= now) => {
                conn.write_transaction::<_, KeyError, _>(|conn| {
                    let n = diesel::update(api_keys::table.find(key.id))
                        .filter(api_keys::status.eq(status::ROTATING))
                        .set((
                            api_keys::status.eq(status::REVOKED),
                            api_keys::revoked_at.eq(Some(now)),
                            api_keys::revoked_reason.eq(Some("grace period ended")),
                            api_keys::updated_at.eq(now),
                        ))
                        .execute(conn)?;
                    if n == 1 {
                        record_events_for(
                            conn,
                            &[key.id],
                            event::GRACE_ENDED,
                            Some("found past its grace at verification"),
                            actor,
                            now,
                        )?;
                    }
                    Ok(())
                })?;
                Some(Refusal::GraceEnded)
            }
            _ => None,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn record_failure(
        &self,
        conn: &mut DbConnection,
        key_id: Option<i64>,
        prefix: &str,
        refusal: &Refusal,
        ip: Option<&str>,
        req: &VerifyRequest<'_>,
        now: NaiveDateTime,
    ) -> Result<(), KeyError> {
        if self.deferred(key_id, prefix, Some(refusal), req, now) {
            return Ok(());
        }
        insert_event(
            conn,
            key_id,
            prefix,
            event::VERIFY_FAILED,
            Some(&refusal.as_reason()),
            ip,
            req,
            now,
        )
    }
}

impl KeyService {
    /// Hands the record of an answer to the request's deferral, if it has
    /// one that takes it.
    fn deferred(
        &self,
        key_id: Option<i64>,
        prefix: &str,
        refusal: Option<&Refusal>,
        req: &VerifyRequest<'_>,
        now: NaiveDateTime,
    ) -> bool {
        let Some(Deferral(take)) = req.defer else { return false };
        take(DeferredUse {
            key_id,
            prefix: prefix.into(),
            refusal: refusal.cloned(),
            ip: req.ip,
            user_agent: clip_for_audit(req.user_agent),
            endpoint: clip_for_audit(req.endpoint),
            actor: req.actor.into(),
            at: now,
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn insert_event(
    conn: &mut DbConnection,
    key_id: Option<i64>,
    prefix: &str,
    kind: &str,
    reason: Option<&str>,
    ip: Option<&str>,
    req: &VerifyRequest<'_>,
    now: NaiveDateTime,
) -> Result<(), KeyError> {
    let user_agent = clip_for_audit(req.user_agent);
    let endpoint = clip_for_audit(req.endpoint);
    let row = NewKeyEvent {
        key_id,
        prefix,
        event: kind,
        reason,
        actor: req.actor,
        ip,
        user_agent: user_agent.as_deref(),
        endpoint: endpoint.as_deref(),
        created_at: now,
    };
    diesel::insert_into(crate::db::schema::api_key_events::table)
        .values(&row)
        .execute(conn)?;
    Ok(())
}

/// The stored hash of the key whose prefix follows `prefix` (or of the
/// first key): the cost a decoy copies.
fn neighbour_hash(conn: &mut DbConnection, prefix: &str) -> QueryResult<Option<String>> {
    let next: Option<String> = api_keys::table
        .filter(api_keys::prefix.gt(prefix))
        .order(api_keys::prefix.asc())
        .select(api_keys::key_hash)
        .first(conn)
        .optional()?;
    match next {
        Some(h) => Ok(Some(h)),
        None => api_keys::table
            .order(api_keys::prefix.asc())
            .select(api_keys::key_hash)
            .first(conn)
            .optional(),
    }
}

/// What a refusal may spend on the database besides its Argon2 run.
const REFUSAL_DATABASE_BUDGET: std::time::Duration = std::time::Duration::from_millis(5);

impl KeyService {
    /// Sleeps until a refusal's fixed end: `started` plus one and a half
    /// times this service's average Argon2 run (or this run, if longer, or
    /// if it is the first) plus [`REFUSAL_DATABASE_BUDGET`]. The two refusals
    /// an attacker would compare (an unknown prefix, a known one with a
    /// wrong secret) do the same Argon2 work, but the work around it differs
    /// by a fraction of a millisecond; ending both at a time that does not
    /// depend on their own work hides it. It costs a refused caller some
    /// milliseconds of waiting (no CPU); a valid key is never delayed.
    fn end_refusal(&self, started: std::time::Instant, argon: std::time::Duration) {
        use std::sync::atomic::Ordering;
        let this = u64::try_from(argon.as_nanos()).unwrap_or(u64::MAX);
        let average = self.argon_average_ns.load(Ordering::Relaxed);
        let updated = if average == 0 {
            this
        } else {
            average - average / 8 + this / 8
        };
        self.argon_average_ns.store(updated, Ordering::Relaxed);
        let allowance = if average == 0 {
            argon
        } else {
            std::time::Duration::from_nanos(average + average / 2).max(argon)
        };
        let deadline = started + allowance + REFUSAL_DATABASE_BUDGET;
        let now = std::time::Instant::now();
        if deadline > now {
            std::thread::sleep(deadline - now);
        }
    }
}

/// The key's own restrictions, in order: an unreadable list refuses, then
/// an address outside the allow-list, then the first scope missing.
fn restriction_refusal(key: &ApiKey, req: &VerifyRequest<'_>) -> Option<Refusal> {
    match key.allowed_ips_checked() {
        None => return Some(Refusal::UnreadableRestriction("allowed_ips".into())),
        Some(list) if !policy::ip_allowed(&list, req.ip) => return Some(Refusal::IpNotAllowed),
        Some(_) => {}
    }
    match key.scopes_checked() {
        None => Some(Refusal::UnreadableRestriction("scopes".into())),
        Some(scopes) => req
            .required_scopes
            .iter()
            .find(|s| !scopes.iter().any(|have| have == *s))
            .map(|s| Refusal::MissingScope(s.to_string())),
    }
}

/// Bounds what callers pass through to the audit trail: 500 characters,
/// no control characters.
pub fn clip_for_audit(value: Option<&str>) -> Option<String> {
    value.map(|v| v.chars().filter(|c| !c.is_control()).take(500).collect())
}

/// A verification answered from a cache of earlier successes, recorded
/// afterwards in a batch ([`record_deferred`]): the rows
/// [`KeyService::verify`] writes for the same answer.
#[derive(Debug, Clone)]
pub struct DeferredUse {
    /// `None` for a prefix no key has.
    pub key_id: Option<i64>,
    pub prefix: std::sync::Arc<str>,
    /// `None` for a success (counted, a `used` event); a refusal writes its
    /// `verify_failed` event.
    pub refusal: Option<Refusal>,
    pub ip: Option<IpAddr>,
    /// Already clipped ([`clip_for_audit`]).
    pub user_agent: Option<String>,
    pub endpoint: Option<String>,
    pub actor: std::sync::Arc<str>,
    pub at: NaiveDateTime,
}

/// Records a batch of [`DeferredUse`] in one transaction: each key's usage
/// count grows by its successes (`usage_count + n`, never read), its
/// `last_used_at` moves forward only, and every use gets its event row.
pub fn record_deferred(conn: &mut DbConnection, uses: &[DeferredUse]) -> Result<(), KeyError> {
    use std::collections::BTreeMap;
    let mut per_key: BTreeMap<i64, (i64, NaiveDateTime)> = BTreeMap::new();
    for (id, u) in uses
        .iter()
        .filter(|u| u.refusal.is_none())
        .filter_map(|u| Some((u.key_id?, u)))
    {
        let entry = per_key.entry(id).or_insert((0, u.at));
        entry.0 += 1;
        entry.1 = entry.1.max(u.at);
    }
    let reasons: Vec<Option<String>> = uses
        .iter()
        .map(|u| u.refusal.as_ref().map(Refusal::as_reason))
        .collect();
    let ips: Vec<Option<String>> = uses.iter().map(|u| u.ip.map(|i| i.to_string())).collect();
    conn.write_transaction::<_, KeyError, _>(|conn| {
        for (id, (n, last)) in &per_key {
            diesel::update(api_keys::table.find(*id))
                .set(api_keys::usage_count.eq(api_keys::usage_count + *n))
                .execute(conn)?;
            diesel::update(api_keys::table.find(*id))
                .filter(api_keys::last_used_at.is_null().or(api_keys::last_used_at.lt(*last)))
                .set(api_keys::last_used_at.eq(Some(*last)))
                .execute(conn)?;
        }
        let rows: Vec<NewKeyEvent<'_>> = uses
            .iter()
            .zip(reasons.iter().zip(&ips))
            .map(|(u, (reason, ip))| NewKeyEvent {
                key_id: u.key_id,
                prefix: &u.prefix,
                event: if u.refusal.is_none() {
                    event::USED
                } else {
                    event::VERIFY_FAILED
                },
                reason: reason.as_deref(),
                actor: &u.actor,
                ip: ip.as_deref(),
                user_agent: u.user_agent.as_deref(),
                endpoint: u.endpoint.as_deref(),
                created_at: u.at,
            })
            .collect();
        // Nine columns a row: chunks stay well under SQLite's bound-parameter
        // limit, and small enough that a busy service's batches do not
        // hold many megabytes of statement at once.
        for chunk in rows.chunks(500) {
            crate::on_backend!(conn, c => diesel::insert_into(crate::db::schema::api_key_events::table)
                .values(chunk)
                .execute(c))?;
        }
        Ok(())
    })
}

/// A remembered key's checks that depend on the moment and the request,
/// in [`KeyService::verify`]'s order: `None` when the remembered answer
/// cannot be reused (the key may have expired or its grace ended; the
/// caller verifies in full, which records the transition), else the
/// outcome.
pub fn recheck_remembered(key: &ApiKey, req: &VerifyRequest<'_>, now: NaiveDateTime) -> Option<VerifyOutcome> {
    match key.status.as_str() {
        status::ACTIVE if key.expires_at > now => {}
        status::ROTATING if key.grace_period_ends_at.is_some_and(|g| g > now) && key.expires_at > now => {}
        _ => return None,
    }
    Some(match restriction_refusal(key, req) {
        Some(refusal) => VerifyOutcome::Refused(refusal),
        None => VerifyOutcome::Valid(VerifiedKey::of(key)),
    })
}
