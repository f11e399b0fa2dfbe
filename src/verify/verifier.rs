//! One verification as the service answers it: from the cache when the
//! key was verified recently and nothing changed since, else in full with
//! [`KeyService::verify`] on a pooled connection (Argon2 on the blocking
//! pool, at most `verify.workers` at once).

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use super::cache::Cache;
use super::freshness::ChangeCounter;
use super::usage::UsageLog;
use crate::db::{Backend, Database, DbConnection, DbError};
use crate::keys::verify::{clip_for_audit, recheck_remembered, Deferral, DeferredUse};
use crate::keys::{KeyError, KeyService, Refusal, VerifyOutcome, VerifyRequest};

/// What a client asks.
#[derive(Debug, Clone)]
pub struct Question {
    pub key: crate::config::Secret,
    pub ip: Option<IpAddr>,
    pub scopes: Vec<String>,
    pub endpoint: Option<String>,
    pub user_agent: Option<String>,
}

/// The answer, and whether it came from the cache.
#[derive(Debug, Clone)]
pub struct Answer {
    pub outcome: VerifyOutcome,
    pub cached: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the database is unavailable: {0}")]
    Database(String),
    #[error("verification failed: {0}")]
    Key(#[from] KeyError),
    #[error("the service is stopping")]
    Stopping,
}

pub struct Verifier {
    pub service: Arc<KeyService>,
    pub cache: Arc<Cache>,
    pub usage: Arc<UsageLog>,
    counter: Option<ChangeCounter>,
    database: Database,
    pool: Mutex<Vec<DbConnection>>,
    workers: Arc<Semaphore>,
    actor: Arc<str>,
}

impl Verifier {
    pub fn new(
        service: KeyService,
        cache: Arc<Cache>,
        usage: Arc<UsageLog>,
        database: Database,
        backend: Backend,
        workers: usize,
        actor: String,
    ) -> Verifier {
        Verifier {
            service: Arc::new(service),
            cache,
            usage,
            counter: (backend == Backend::Sqlite).then(|| ChangeCounter::new(database.clone())),
            database,
            pool: Mutex::new(Vec::new()),
            workers: Arc::new(Semaphore::new(workers)),
            actor: actor.into(),
        }
    }

    /// Answers `q`.
    pub async fn verify(self: &Arc<Self>, q: Question) -> Result<Answer, VerifyError> {
        let fp = self.cache.is_live().then(|| self.cache.fingerprint(q.key.expose()));
        if let Some(fp) = &fp {
            if let Some(answer) = self.remembered(fp, &q) {
                return Ok(answer);
            }
        }
        self.in_full(q, fp).await
    }

    /// The remembered answer, when there is one that may be used; its use
    /// is queued for recording.
    fn remembered(&self, fp: &super::cache::Fingerprint, q: &Question) -> Option<Answer> {
        let entry = self.cache.get(fp)?;
        if let Some(counter) = &self.counter {
            let version = counter.version()?;
            if version != entry.version {
                if !counter.unchanged(&entry) {
                    self.cache.forget(fp);
                    return None;
                }
                self.cache.confirm(fp, version);
            }
        }
        let scopes: Vec<&str> = q.scopes.iter().map(String::as_str).collect();
        let req = self.request(q, &scopes, None);
        let now = crate::db::now();
        let outcome = recheck_remembered(&entry.key, &req, now)?;
        let refusal = match &outcome {
            VerifyOutcome::Valid(_) => None,
            VerifyOutcome::Refused(r) => Some(r.clone()),
        };
        let queued = self.usage.push(DeferredUse {
            key_id: Some(entry.key.id),
            prefix: entry.prefix.clone(),
            refusal,
            ip: q.ip,
            user_agent: clip_for_audit(q.user_agent.as_deref()),
            endpoint: clip_for_audit(q.endpoint.as_deref()),
            actor: self.actor.clone(),
            at: now,
        });
        queued.then_some(Answer { outcome, cached: true })
    }

    /// A full verification, remembered when it succeeds.
    async fn in_full(
        self: &Arc<Self>,
        q: Question,
        fp: Option<super::cache::Fingerprint>,
    ) -> Result<Answer, VerifyError> {
        let permit = self
            .workers
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| VerifyError::Stopping)?;
        let this = self.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            this.in_full_blocking(&q, fp)
        })
        .await;
        joined.unwrap_or(Err(VerifyError::Stopping))
    }

    fn in_full_blocking(&self, q: &Question, fp: Option<super::cache::Fingerprint>) -> Result<Answer, VerifyError> {
        // Read before the row is: a change announced after this keeps the
        // answer out of the cache.
        let generation = self.cache.generation();
        let version = match &self.counter {
            Some(counter) if fp.is_some() => counter.version(),
            _ => Some(0),
        };
        let mut conn = self.connection()?;
        let scopes: Vec<&str> = q.scopes.iter().map(String::as_str).collect();
        // The answer's rows join the batches of remembered answers: no
        // commit waits between Argon2 and the answer.
        let later = |u: DeferredUse| self.usage.push(u);
        let req = self.request(q, &scopes, Some(Deferral(&later)));
        let verified = self.service.verify_keeping_row(&mut conn, q.key.expose(), &req);
        let (outcome, row) = match verified {
            Ok(v) => v,
            Err(KeyError::Db(e)) => return Err(VerifyError::Database(e)),
            Err(e) => return Err(e.into()),
        };
        self.give_back(conn);
        if let (Some(fp), Some(row), Some(version)) = (fp, row, version) {
            self.cache.insert(fp, row, generation, version);
        }
        Ok(Answer { outcome, cached: false })
    }

    /// The library's request for `q`.
    fn request<'a>(&'a self, q: &'a Question, scopes: &'a [&'a str], defer: Option<Deferral<'a>>) -> VerifyRequest<'a> {
        VerifyRequest {
            ip: q.ip,
            required_scopes: scopes,
            user_agent: q.user_agent.as_deref(),
            endpoint: q.endpoint.as_deref(),
            actor: &self.actor,
            defer,
        }
    }

    fn connection(&self) -> Result<DbConnection, VerifyError> {
        if let Some(conn) = self.pool.lock().ok().and_then(|mut p| p.pop()) {
            return Ok(conn);
        }
        self.database
            .connect()
            .map_err(|e: DbError| VerifyError::Database(e.to_string()))
    }

    fn give_back(&self, conn: DbConnection) {
        if let Ok(mut pool) = self.pool.lock() {
            if pool.len() < self.workers.available_permits() + 8 {
                pool.push(conn);
            }
        }
    }
}

impl Refusal {
    /// The machine-readable name of the refusal, as the API reports it.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "malformed",
            Refusal::UnknownKey => "unknown_key",
            Refusal::WrongSecret => "wrong_secret",
            Refusal::Revoked => "revoked",
            Refusal::Expired => "expired",
            Refusal::GraceEnded => "grace_ended",
            Refusal::IpNotAllowed => "ip_not_allowed",
            Refusal::MissingScope(_) => "missing_scope",
            Refusal::OwnerDisabled => "owner_disabled",
            Refusal::UnreadableRestriction(_) => "unreadable_restriction",
        }
    }
}
