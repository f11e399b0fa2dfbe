//! Issuing and managing keys: create, rotate with grace, revoke, find,
//! list and usage. Every state change writes its audit event in the same
//! transaction; secrets are hashed before the transaction opens, so no
//! transaction waits on Argon2.

use std::time::Duration;

use chrono::{NaiveDateTime, TimeDelta};
use diesel::prelude::*;
use serde::Serialize;

use super::error::KeyError;
use super::format::{self, check_prefix, NewKey};
use super::hash::SecretHasher;
use super::model::{to_json_list, ApiKey, KeyEvent, KeyListing, User};
use super::{event, policy, record_events_for, status, users};
use crate::config::{KeysConfig, Secret};
use crate::db::schema::{api_key_events, api_keys, users as users_t};
use crate::db::DbConnection;

/// What `create` needs.
#[derive(Debug, Clone, Default)]
pub struct CreateKey {
    pub owner_email: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub allowed_ips: Vec<String>,
    pub lifetime: Option<Duration>,
}

/// A key as issued: the full key is shown once and never again.
pub struct IssuedKey {
    pub key: ApiKey,
    pub full_key: Secret,
}

/// The outcome of a rotation.
pub struct Rotation {
    pub old: ApiKey,
    pub new: IssuedKey,
}

/// What other domains keep about a key and drop when it is retired
/// (rotated or revoked), run inside the transaction that retires it: the
/// notifier cancels the key's pending warnings. Set by whoever assembles
/// the service ([`KeyService::on_retire`]), so keys know nothing of them.
pub type OnRetire = fn(&mut DbConnection, i64, NaiveDateTime) -> QueryResult<usize>;

/// The key service: settings plus the hasher (whose decoy hash makes unknown
/// prefixes cost a full verify).
pub struct KeyService {
    pub config: KeysConfig,
    pub(crate) hasher: SecretHasher,
    /// A running average of this service's Argon2 verifications, in
    /// nanoseconds (0 until the first): refusals end a fixed time after
    /// their start derived from it, not from their own work (see
    /// `keys::verify`).
    pub(crate) argon_average_ns: std::sync::atomic::AtomicU64,
    on_retire: Vec<OnRetire>,
}

impl KeyService {
    pub fn new(config: &KeysConfig) -> Result<Self, KeyError> {
        Ok(Self {
            config: config.clone(),
            hasher: SecretHasher::new(&config.argon2)?,
            argon_average_ns: std::sync::atomic::AtomicU64::new(0),
            on_retire: Vec::new(),
        })
    }

    /// Adds what runs when a key is rotated or revoked; see [`OnRetire`].
    pub fn on_retire(mut self, hook: OnRetire) -> Self {
        self.on_retire.push(hook);
        self
    }

    fn retired(&self, conn: &mut DbConnection, key_id: i64, now: NaiveDateTime) -> QueryResult<()> {
        for hook in &self.on_retire {
            hook(conn, key_id, now)?;
        }
        Ok(())
    }

    fn new_key(&self) -> Result<(NewKey, String), KeyError> {
        let key = format::generate(&self.config.namespace, &self.config.environment)
            .map_err(|e| KeyError::Random(e.to_string()))?;
        let hash = self.hasher.hash(key.secret())?;
        Ok((key, hash))
    }

    /// Issues a key to an owner, within the owner's limit.
    pub fn create(&self, conn: &mut DbConnection, req: &CreateKey, actor: &str) -> Result<IssuedKey, KeyError> {
        let name = policy::check_name(&req.name)?;
        let scopes = policy::check_scopes(&req.scopes)?;
        let ips = policy::check_allowed_ips(&req.allowed_ips)?;
        let lifetime = policy::check_lifetime(&self.config, req.lifetime)?;
        let email = users::normalize_email(&req.owner_email)?;
        let (new, hash) = self.new_key()?;
        let limit = self.config.max_keys_per_owner;
        let key = conn.write_transaction::<_, KeyError, _>(|conn| {
            let owner = lock_owner(conn, &email)?;
            let held: i64 = api_keys::table
                .filter(api_keys::owner_id.eq(owner.id))
                .filter(api_keys::status.eq_any([status::ACTIVE, status::ROTATING]))
                .count()
                .get_result(conn)?;
            if held >= i64::from(limit) {
                return Err(KeyError::TooManyKeys {
                    owner: owner.email,
                    limit,
                });
            }
            let now = crate::db::now();
            let expires_at = now + to_delta(lifetime);
            insert_key(
                conn,
                &new.prefix,
                &hash,
                &name,
                1,
                owner.id,
                &scopes,
                &ips,
                expires_at,
                now,
            )?;
            let key = find_in(conn, &new.prefix)?;
            record_events_for(conn, &[key.id], event::CREATED, None, actor, now)?;
            Ok(key)
        })?;
        Ok(IssuedKey {
            key,
            full_key: new.full,
        })
    }

    /// Replaces an active key with a successor that inherits its owner, name,
    /// scopes and allow-list. The old key keeps working, as `rotating`, until
    /// its grace period ends, and never past its own expiry.
    pub fn rotate(
        &self,
        conn: &mut DbConnection,
        prefix: &str,
        grace: Option<Duration>,
        actor: &str,
    ) -> Result<Rotation, KeyError> {
        check_prefix(prefix)?;
        let grace = policy::check_grace(&self.config, grace)?;
        let (new, hash) = self.new_key()?;
        let lifetime = self.config.default_lifetime.as_duration();
        let (old, key) = conn.write_transaction::<_, KeyError, _>(|conn| {
            let old = find_in(conn, prefix)?;
            if old.status != status::ACTIVE {
                return Err(KeyError::InvalidState {
                    prefix: old.prefix,
                    status: old.status,
                    action: "rotated",
                });
            }
            let now = crate::db::now();
            if old.expires_at <= now {
                return Err(KeyError::InvalidState {
                    prefix: old.prefix,
                    status: "past its expiry".into(),
                    action: "rotated",
                });
            }
            let grace_ends = (now + to_delta(grace)).min(old.expires_at);
            insert_key(
                conn,
                &new.prefix,
                &hash,
                &old.name,
                old.version.saturating_add(1),
                old.owner_id,
                &old.scope_list(),
                &old.allowed_ip_list(),
                now + to_delta(lifetime),
                now,
            )?;
            let successor = find_in(conn, &new.prefix)?;
            let changed = diesel::update(api_keys::table)
                .filter(api_keys::id.eq(old.id))
                .filter(api_keys::status.eq(status::ACTIVE))
                .set((
                    api_keys::status.eq(status::ROTATING),
                    api_keys::rotated_at.eq(Some(now)),
                    api_keys::grace_period_ends_at.eq(Some(grace_ends)),
                    api_keys::replaced_by_id.eq(Some(successor.id)),
                    api_keys::updated_at.eq(now),
                ))
                .execute(conn)?;
            if changed != 1 {
                return Err(KeyError::Conflict(old.prefix));
            }
            self.retired(conn, old.id, now)?;
            let reason = format!("replaced by {}", successor.prefix);
            record_events_for(conn, &[old.id], event::ROTATED, Some(&reason), actor, now)?;
            record_events_for(conn, &[successor.id], event::CREATED, Some("rotation"), actor, now)?;
            Ok((find_in(conn, prefix)?, successor))
        })?;
        Ok(Rotation {
            old,
            new: IssuedKey {
                key,
                full_key: new.full,
            },
        })
    }

    /// Revokes a key at once. A revoked key never comes back.
    pub fn revoke(&self, conn: &mut DbConnection, prefix: &str, reason: &str, actor: &str) -> Result<ApiKey, KeyError> {
        check_prefix(prefix)?;
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > 500 || reason.chars().any(char::is_control) {
            return Err(KeyError::InvalidReason);
        }
        conn.write_transaction::<_, KeyError, _>(|conn| {
            let key = find_in(conn, prefix)?;
            if key.status == status::REVOKED {
                return Err(KeyError::InvalidState {
                    prefix: key.prefix,
                    status: key.status,
                    action: "revoked again",
                });
            }
            let now = crate::db::now();
            let changed = diesel::update(api_keys::table)
                .filter(api_keys::id.eq(key.id))
                .filter(api_keys::status.ne(status::REVOKED))
                .set((
                    api_keys::status.eq(status::REVOKED),
                    api_keys::revoked_at.eq(Some(now)),
                    api_keys::revoked_reason.eq(Some(reason)),
                    api_keys::updated_at.eq(now),
                ))
                .execute(conn)?;
            if changed != 1 {
                return Err(KeyError::Conflict(key.prefix));
            }
            record_events_for(conn, &[key.id], event::REVOKED, Some(reason), actor, now)?;
            self.retired(conn, key.id, now)?;
            find_in(conn, prefix)
        })
    }

    pub fn find(conn: &mut DbConnection, prefix: &str) -> Result<ApiKey, KeyError> {
        check_prefix(prefix)?;
        find_in(conn, prefix)
    }
}

/// Takes the owner row for update: touching it serializes key creation for
/// one owner (a row lock on PostgreSQL, the write lock on SQLite), so two
/// concurrent creates cannot both pass the limit.
fn lock_owner(conn: &mut DbConnection, email: &str) -> Result<User, KeyError> {
    let owner = users::find_by_email(conn, email)?.ok_or_else(|| KeyError::UnknownOwner(email.to_string()))?;
    if owner.status != "active" {
        return Err(KeyError::OwnerDisabled(owner.email));
    }
    diesel::update(users_t::table.find(owner.id))
        .set(users_t::updated_at.eq(crate::db::now()))
        .execute(conn)?;
    Ok(owner)
}

#[allow(clippy::too_many_arguments)]
fn insert_key(
    conn: &mut DbConnection,
    prefix: &str,
    hash: &str,
    name: &str,
    version: i32,
    owner_id: i64,
    scopes: &[String],
    ips: &[String],
    expires_at: NaiveDateTime,
    now: NaiveDateTime,
) -> Result<(), KeyError> {
    diesel::insert_into(api_keys::table)
        .values((
            api_keys::prefix.eq(prefix),
            api_keys::key_hash.eq(hash),
            api_keys::name.eq(name),
            api_keys::status.eq(status::ACTIVE),
            api_keys::version.eq(version),
            api_keys::owner_id.eq(owner_id),
            api_keys::scopes.eq(to_json_list(scopes)),
            api_keys::allowed_ips.eq(to_json_list(ips)),
            api_keys::expires_at.eq(expires_at),
            api_keys::usage_count.eq(0i64),
            api_keys::created_at.eq(now),
            api_keys::updated_at.eq(now),
        ))
        .execute(conn)?;
    Ok(())
}

pub(crate) fn find_in(conn: &mut DbConnection, prefix: &str) -> Result<ApiKey, KeyError> {
    api_keys::table
        .filter(api_keys::prefix.eq(prefix))
        .select(ApiKey::as_select())
        .first(conn)
        .optional()?
        .ok_or_else(|| KeyError::NotFound(prefix.to_string()))
}

pub(crate) fn to_delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// Columns `keys list --sort` accepts: an allow-list, so no identifier ever
/// comes from input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortColumn {
    CreatedAt,
    ExpiresAt,
    LastUsedAt,
    Name,
    Prefix,
    Status,
    UsageCount,
    Owner,
}

impl SortColumn {
    pub const ALL: [(&'static str, SortColumn); 8] = [
        ("created_at", SortColumn::CreatedAt),
        ("expires_at", SortColumn::ExpiresAt),
        ("last_used_at", SortColumn::LastUsedAt),
        ("name", SortColumn::Name),
        ("prefix", SortColumn::Prefix),
        ("status", SortColumn::Status),
        ("usage_count", SortColumn::UsageCount),
        ("owner", SortColumn::Owner),
    ];

    pub fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|(n, _)| *n).collect()
    }
}

impl std::str::FromStr for SortColumn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, c)| *c).ok_or_else(|| {
            format!(
                "{:?} is not a column keys can be sorted by; valid columns: {}",
                s,
                Self::names().join(", ")
            )
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub owner_email: Option<String>,
    pub status: Option<String>,
    pub sort: Option<SortColumn>,
    pub descending: bool,
    /// At most this many keys.
    pub limit: Option<i64>,
    /// A keyset cursor: only keys whose prefix sorts after this one (in
    /// prefix order, the listing's order then), for paging through any
    /// number of keys with `--limit`.
    pub after_prefix: Option<String>,
}

/// A key with its owner's email, for listings.
#[derive(Debug, Clone, Serialize)]
pub struct ListedKey {
    #[serde(flatten)]
    pub key: KeyListing,
    pub owner_email: String,
}

/// Why a streamed listing stopped.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Writing a row failed (a closed pipe): the listing stops there.
    #[error("writing the listing: {0}")]
    Output(#[from] std::io::Error),
}

/// Hands each key `filter` selects to `each`, in order, one row in memory
/// at a time (PostgreSQL streams them row by row in one statement), so a
/// listing of millions of keys costs what one key costs.
pub fn list_each(
    conn: &mut DbConnection,
    filter: &ListFilter,
    mut each: impl FnMut(ListedKey) -> std::io::Result<()>,
) -> Result<(), ListError> {
    let owner_id = match &filter.owner_email {
        Some(email) => Some(
            users::find_by_email(conn, email)?
                .ok_or_else(|| KeyError::UnknownOwner(email.clone()))?
                .id,
        ),
        None => None,
    };
    let sort = match (&filter.after_prefix, filter.sort) {
        (Some(_), _) => SortColumn::Prefix,
        (None, sort) => sort.unwrap_or(SortColumn::CreatedAt),
    };
    let desc = filter.descending;
    crate::streaming_on_backend!(conn, c, Streaming => {
        let mut query = api_keys::table
            .inner_join(users_t::table)
            .select((KeyListing::as_select(), users_t::email))
            .into_boxed();
        if let Some(id) = owner_id {
            query = query.filter(api_keys::owner_id.eq(id));
        }
        if let Some(st) = &filter.status {
            query = query.filter(api_keys::status.eq(st.clone()));
        }
        if let Some(after) = &filter.after_prefix {
            query = if desc {
                query.filter(api_keys::prefix.lt(after.clone()))
            } else {
                query.filter(api_keys::prefix.gt(after.clone()))
            };
        }
        if let Some(n) = filter.limit {
            query = query.limit(n);
        }
        query = match sort {
            SortColumn::CreatedAt if desc => query.order(api_keys::created_at.desc()),
            SortColumn::CreatedAt => query.order(api_keys::created_at.asc()),
            SortColumn::ExpiresAt if desc => query.order(api_keys::expires_at.desc()),
            SortColumn::ExpiresAt => query.order(api_keys::expires_at.asc()),
            SortColumn::LastUsedAt if desc => query.order(api_keys::last_used_at.desc()),
            SortColumn::LastUsedAt => query.order(api_keys::last_used_at.asc()),
            SortColumn::Name if desc => query.order(api_keys::name.desc()),
            SortColumn::Name => query.order(api_keys::name.asc()),
            SortColumn::Prefix if desc => query.order(api_keys::prefix.desc()),
            SortColumn::Prefix => query.order(api_keys::prefix.asc()),
            SortColumn::Status if desc => query.order(api_keys::status.desc()),
            SortColumn::Status => query.order(api_keys::status.asc()),
            SortColumn::UsageCount if desc => query.order(api_keys::usage_count.desc()),
            SortColumn::UsageCount => query.order(api_keys::usage_count.asc()),
            SortColumn::Owner if desc => query.order(users_t::email.desc()),
            SortColumn::Owner => query.order(users_t::email.asc()),
        };
        let rows = query
            .then_order_by(api_keys::id.asc())
            .load_iter::<(KeyListing, String), Streaming>(c)
            .map_err(KeyError::from)?;
        for row in rows {
            let (key, owner_email) = row.map_err(KeyError::from)?;
            each(ListedKey { key, owner_email })?;
        }
        Ok(())
    })
}

/// What `keys usage` shows, as in the guide: totals, last use, success rate
/// and the recent events.
#[derive(Debug, Clone, Serialize)]
pub struct UsageReport {
    pub prefix: String,
    pub status: String,
    pub total_uses: i64,
    pub last_used_at: Option<NaiveDateTime>,
    pub successful_verifications: i64,
    pub failed_verifications: i64,
    /// Successful / all verifications in the retained audit trail, in percent.
    pub success_rate: Option<f64>,
    pub recent_events: Vec<KeyEvent>,
}

pub fn usage(conn: &mut DbConnection, prefix: &str, recent: i64) -> Result<UsageReport, KeyError> {
    let key = KeyService::find(conn, prefix)?;
    let count = |conn: &mut DbConnection, kind: &str| -> Result<i64, KeyError> {
        Ok(api_key_events::table
            .filter(api_key_events::key_id.eq(key.id))
            .filter(api_key_events::event.eq(kind))
            .count()
            .get_result(conn)?)
    };
    let ok = count(conn, event::USED)?;
    let failed = count(conn, event::VERIFY_FAILED)?;
    let recent_events = api_key_events::table
        .filter(api_key_events::key_id.eq(key.id))
        .order((api_key_events::created_at.desc(), api_key_events::id.desc()))
        .limit(recent)
        .select(KeyEvent::as_select())
        .load(conn)?;
    Ok(UsageReport {
        prefix: key.prefix,
        status: key.status,
        total_uses: key.usage_count,
        last_used_at: key.last_used_at,
        successful_verifications: ok,
        failed_verifications: failed,
        success_rate: (ok + failed > 0).then(|| 100.0 * ok as f64 / (ok + failed) as f64),
        recent_events,
    })
}

/// The keys section of `keywarden status`.
#[derive(Debug, Clone, Serialize)]
pub struct KeysSummary {
    pub active: i64,
    pub rotating: i64,
    pub revoked: i64,
    pub expired: i64,
    /// Active keys expiring within 7 days.
    pub expiring_within_7d: i64,
    /// Rotating keys, with the prefix and the end of their grace.
    pub in_grace: Vec<(String, NaiveDateTime)>,
}

pub fn summary(conn: &mut DbConnection) -> Result<KeysSummary, KeyError> {
    let counts: Vec<(String, i64)> = api_keys::table
        .group_by(api_keys::status)
        .select((api_keys::status, diesel::dsl::count_star()))
        .load(conn)?;
    let get = |s: &str| counts.iter().find(|(k, _)| k == s).map(|(_, n)| *n).unwrap_or(0);
    let now = crate::db::now();
    let expiring_within_7d = api_keys::table
        .filter(api_keys::status.eq(status::ACTIVE))
        .filter(api_keys::expires_at.gt(now))
        .filter(api_keys::expires_at.le(now + TimeDelta::days(7)))
        .count()
        .get_result(conn)?;
    let in_grace: Vec<(String, Option<NaiveDateTime>)> = api_keys::table
        .filter(api_keys::status.eq(status::ROTATING))
        .order(api_keys::grace_period_ends_at.asc())
        .limit(50)
        .select((api_keys::prefix, api_keys::grace_period_ends_at))
        .load(conn)?;
    Ok(KeysSummary {
        active: get(status::ACTIVE),
        rotating: get(status::ROTATING),
        revoked: get(status::REVOKED),
        expired: get(status::EXPIRED),
        expiring_within_7d,
        in_grace: in_grace.into_iter().filter_map(|(p, g)| g.map(|g| (p, g))).collect(),
    })
}
