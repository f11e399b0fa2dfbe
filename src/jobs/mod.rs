//! Scheduled jobs: one small module per job, a registry naming them, and the
//! runner that wraps every run the same way.
//!
//! A run, whoever starts it (the daemon's scheduler or `keywarden jobs run`):
//! 1. connects to the database;
//! 2. takes the job lock ([`crate::db::lock`]) or skips, logging why;
//! 3. records a `job_runs` row as `running`, and closes any row a crashed
//!    earlier run left open as `interrupted` (for a per-host job, only this
//!    host's rows: another host's run may be live);
//! 4. calls the job with a typed [`JobContext`], catching panics;
//! 5. records the outcome, rows affected and error, and logs them with
//!    structured fields (`JOB`, `RUN_ID`, `OUTCOME`, `ROWS_AFFECTED`,
//!    `DURATION_MS`, `ERROR`), error text on one line.
//!
//! What an outage keeps from being written (the end of a run it cut off,
//! runs that could not connect) is kept in [`unrecorded`] and written by the
//! first run that connects again.
//!
//! Imports: keys, notify, acme, perms (the domains its jobs drive), db,
//! telemetry, config.

pub mod expire_keys;
pub mod history;
pub mod notify_expiry;
pub mod purge_audit;
pub mod registry;
pub mod renew_certs;
pub mod revoke_grace;
pub mod unrecorded;
pub mod watch_perms;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, info_span, warn};

use crate::config::{Config, JobSettings};
use crate::db::holder::Holder;
use crate::db::lock::{with_job_lock, LockKeeper};
use crate::db::{Database, DbConnection, DbError};
use crate::telemetry::one_line;

pub use registry::{config_from_toml, load_config, DryRun, JobSpec, Service};

/// What a job is given to do its work.
pub struct JobContext<'a> {
    pub conn: &'a mut DbConnection,
    pub config: &'a Config,
    pub settings: &'a JobSettings,
    pub job: &'static str,
    pub run_id: &'a str,
    /// When the run started; jobs compare against this, not a moving clock,
    /// so one run has one notion of "now".
    pub started_at: NaiveDateTime,
    /// This run of this process, as recorded on what it holds.
    pub holder: &'a Holder,
    keeper: &'a LockKeeper,
    stop: &'a CancellationToken,
}

impl JobContext<'_> {
    /// The actor recorded in audit rows written by this job.
    pub fn actor(&self) -> String {
        format!("job:{}", self.job)
    }

    /// Called by batched jobs between batches: keeps the job lock alive and
    /// says whether to go on (false once the daemon is shutting down; the
    /// work is idempotent, so the next run continues where this one stopped).
    pub fn checkpoint(&mut self) -> Result<bool, JobError> {
        if !self.keeper.renew(self.conn)? {
            return Err(JobError::LockLost);
        }
        Ok(!self.stop.is_cancelled())
    }
}

/// What a successful run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobReport {
    pub rows_affected: u64,
    /// True when the run stopped between batches for a shutdown.
    pub stopped_early: bool,
    /// What an admin must see though the run completed (a certificate whose
    /// deploy hook fails): shown in `STATUS=` until a run has none.
    pub problems: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("the job lock was lost (the run stalled longer than the lease)")]
    LockLost,
    #[error("the job panicked: {0}")]
    Panicked(String),
    #[error("the email templates: {0}")]
    Templates(#[from] crate::notify::render::RenderError),
    #[error("the mail transport: {0}")]
    Transport(#[from] crate::notify::transport::TransportError),
    /// Nothing was delivered while notices wait: an outage of the mail
    /// server (or a configuration it refuses) is a failing run.
    #[error("no email could be sent: {overdue} notice(s) wait to be retried, {failed} failed for good in this run{}; see `keywarden notifications list`", .last_error.as_ref().map(|e| format!("; last error: {e}")).unwrap_or_default())]
    NothingDelivered {
        overdue: i64,
        failed: u64,
        last_error: Option<String>,
    },
    #[error(transparent)]
    Acme(#[from] crate::acme::AcmeError),
    #[error("the permission policy: {}", .0.iter().map(|p| p.message.as_str()).collect::<Vec<_>>().join("; "))]
    Policy(Vec<crate::config::RuleProblem>),
}

/// Runs `work` under `spec`'s lock, as every run of the job runs: for work
/// on the job's rows outside a scheduled run (`keywarden certs renew`), so
/// that it never races a run of the job in another process or on another
/// replica. `Ok(None)`: another process holds the lock.
pub fn with_lock_of<R>(
    spec: &JobSpec,
    db: &Database,
    conn: &mut DbConnection,
    config: &Config,
    work: impl FnOnce(&mut DbConnection) -> R,
) -> Result<Option<R>, DbError> {
    let host = config.host_name();
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let holder = Holder::current(&host, &run_id);
    with_job_lock(db, conn, &spec.lock_name(&host), &holder, |conn, _keeper| work(conn))
}

impl From<diesel::result::Error> for JobError {
    fn from(e: diesel::result::Error) -> Self {
        JobError::Db(DbError::Query(e))
    }
}

/// Who started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    Manual,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
        }
    }
}

/// How a run ended.
#[derive(Debug)]
pub enum RunOutcome {
    Completed {
        run_id: String,
        report: JobReport,
        duration: Duration,
    },
    Failed {
        run_id: String,
        error: String,
        duration: Duration,
        /// The database could not be reached or went away during the run.
        database: bool,
    },
    /// Another process holds the job lock.
    Skipped,
}

/// Runs one job once, with locking and bookkeeping. Blocking: call it from
/// `spawn_blocking` in async code.
pub fn execute(
    db: &Database,
    config: &Config,
    spec: &JobSpec,
    trigger: Trigger,
    stop: &CancellationToken,
) -> RunOutcome {
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let span = info_span!("job_run", job = spec.name, run_id = %run_id);
    let _enter = span.enter();
    let started = Instant::now();
    let fail = |error: String, database: bool| {
        let duration = started.elapsed();
        let error = one_line(&error);
        error!(outcome = "failed", message_id = crate::telemetry::message_ids::JOB_FAILED, error = %error, duration_ms = duration.as_millis() as u64, "job {} failed: {error}", spec.name);
        RunOutcome::Failed {
            run_id: run_id.clone(),
            error,
            duration,
            database,
        }
    };

    let Some(settings) = config.job(spec.name) else {
        return fail(format!("job {} has no settings", spec.name), false);
    };
    let host = config.host_name();
    let mut conn = match db.connect() {
        Ok(c) => c,
        Err(e) => {
            let missed = unrecorded::missed_start(spec.name, &host, &e.to_string(), crate::db::now());
            return fail(
                format!("{e} (the run could not start: {missed} in a row; recorded once the database answers)"),
                true,
            );
        }
    };
    if let Err(e) = unrecorded::flush(&mut conn) {
        warn!(error = %one_line(&e.to_string()), "could not yet record the runs an outage kept from being written");
    }
    let holder = Holder::current(&host, &run_id);
    info!(trigger = trigger.as_str(), "job {} started", spec.name);

    let lock_name = spec.lock_name(&host);
    let locked = with_job_lock(db, &mut conn, &lock_name, &holder, |conn, keeper| {
        let run = Run {
            spec,
            config,
            settings,
            host: &host,
            run_id: &run_id,
            trigger,
            holder: &holder,
            stop,
        };
        run.locked(conn, keeper)
    });

    let duration = started.elapsed();
    match locked {
        Ok(None) => {
            info!(
                outcome = "skipped",
                "job {} skipped: another process holds its lock", spec.name
            );
            RunOutcome::Skipped
        }
        Ok(Some(Ok(report))) => {
            info!(
                outcome = "ok",
                rows_affected = report.rows_affected,
                duration_ms = duration.as_millis() as u64,
                stopped_early = report.stopped_early,
                "job {} finished: {} row(s) affected{}",
                spec.name,
                report.rows_affected,
                if report.stopped_early {
                    " (stopped early for shutdown; the next run continues)"
                } else {
                    ""
                }
            );
            RunOutcome::Completed {
                run_id,
                report,
                duration,
            }
        }
        Ok(Some(Err(e))) => {
            let database = matches!(&e, JobError::Db(db) if db.is_unreachable());
            fail(e.to_string(), database)
        }
        Err(e) => {
            let database = e.is_unreachable();
            fail(e.to_string(), database)
        }
    }
}

/// One run of a job, once its lock is held.
struct Run<'a> {
    spec: &'a JobSpec,
    config: &'a Config,
    settings: &'a JobSettings,
    host: &'a str,
    run_id: &'a str,
    trigger: Trigger,
    holder: &'a Holder,
    stop: &'a CancellationToken,
}

impl Run<'_> {
    /// Records the start, runs the job (catching a panic), records the
    /// end, and tells the admins when the job keeps failing.
    fn locked(&self, conn: &mut DbConnection, keeper: &LockKeeper) -> Result<JobReport, JobError> {
        let started_at = crate::db::now();
        let per_host = self.spec.per_host.then_some(self.host);
        history::close_abandoned(conn, self.spec.name, per_host, started_at)?;
        history::record_start(conn, self.run_id, self.spec.name, self.host, self.trigger, started_at)?;
        let mut ctx = JobContext {
            conn,
            config: self.config,
            settings: self.settings,
            job: self.spec.name,
            run_id: self.run_id,
            started_at,
            holder: self.holder,
            keeper,
            stop: self.stop,
        };
        let result = match catch_unwind(AssertUnwindSafe(|| (self.spec.run)(&mut ctx))) {
            Ok(r) => r,
            Err(payload) => Err(JobError::Panicked(panic_message(payload.as_ref()))),
        };
        let recorded = self.record_end(ctx.conn, &result);
        if let (Err(e), true) = (&result, recorded) {
            self.alert_if_failing(ctx.conn, &e.to_string());
        }
        result
    }

    /// Writes the end of the run; when the database went away, keeps it
    /// to be written by the first run that reaches it. Whether it was
    /// written.
    fn record_end(&self, conn: &mut DbConnection, result: &Result<JobReport, JobError>) -> bool {
        let finished_at = crate::db::now();
        let (outcome, rows, error) = match result {
            Ok(report) => ("ok", report.rows_affected, None),
            Err(e) => ("failed", 0, Some(e.to_string())),
        };
        let recorded = history::record_finish(conn, self.run_id, outcome, rows, error.as_deref(), finished_at);
        if let Err(e) = &recorded {
            let error = error.map(|e| one_line(&e));
            unrecorded::finish_cut_off(self.run_id, outcome, rows, error.as_deref(), finished_at);
            warn!(error = %one_line(&e.to_string()), "could not record the end of run {}; it is recorded once the database answers", self.run_id);
        }
        recorded.is_ok()
    }

    /// Enqueues the admins' alert when this failure makes a streak.
    fn alert_if_failing(&self, conn: &mut DbConnection, error: &str) {
        let name = self.spec.name;
        let alerted = crate::notify::alerts::alert_on_repeated_failures(
            conn,
            &self.config.notifications,
            name,
            self.host,
            error,
            crate::db::now(),
        );
        match alerted {
            Ok(n) if n > 0 => warn!("job {name} keeps failing; the admins will be emailed"),
            Ok(_) => {}
            Err(err) => warn!(error = %one_line(&err.to_string()), "could not enqueue the admin alert for job {name}"),
        }
    }
}

/// Runs `batch` until it returns fewer rows than the batch size, keeping
/// the lock alive between batches and stopping early for a shutdown.
pub(crate) fn batched(
    ctx: &mut JobContext<'_>,
    mut batch: impl FnMut(&mut JobContext<'_>) -> Result<u64, JobError>,
) -> Result<JobReport, JobError> {
    let size = u64::from(ctx.settings.batch_size);
    let mut report = JobReport::default();
    loop {
        let n = batch(ctx)?;
        report.rows_affected += n;
        if n < size {
            return Ok(report);
        }
        if !ctx.checkpoint()? {
            report.stopped_early = true;
            return Ok(report);
        }
    }
}

/// The first few items, for a log line (prefixes are public).
pub(crate) fn preview(items: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut out = items.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > SHOWN {
        out.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    out
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}
