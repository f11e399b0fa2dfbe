//! What the running daemon holds: the current configuration (swapped whole
//! on reload), the scheduler and its job ids, and the last outcome of each
//! job for the status line.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::{Config, JobSettings};
use crate::db::Database;
use crate::jobs::{self, registry, JobSpec, RunOutcome, Trigger};
use crate::metrics::JobCounters;
use crate::telemetry::Telemetry;

use super::notify;

/// The last error, for `STATUS=`: when, and whether it was the database
/// being unreachable (cleared as soon as a run reaches it again).
#[derive(Debug, Clone)]
struct LastError {
    job: &'static str,
    at: DateTime<Utc>,
    error: String,
    database: bool,
}

/// The last thing that happened, for `STATUS=`.
#[derive(Debug, Clone)]
struct LastRun {
    job: &'static str,
    at: DateTime<Utc>,
    summary: String,
}

/// The longest a job's task sleeps before it looks at the wall clock again.
const TICK_RECHECK: std::time::Duration = std::time::Duration::from_secs(300);

pub struct DaemonState {
    pub config_path: PathBuf,
    config: RwLock<Arc<Config>>,
    pub database: Database,
    pub telemetry: Telemetry,
    /// The ticking task of each job currently scheduled, by its stop token.
    scheduled: tokio::sync::Mutex<HashMap<&'static str, CancellationToken>>,
    /// One flag per job: set while a run is in progress, so ticks never overlap.
    running: HashMap<&'static str, Arc<AtomicBool>>,
    last_run: Mutex<Option<LastRun>>,
    last_error: Mutex<Option<LastError>>,
    pub stop: CancellationToken,
    pub tracker: TaskTracker,
    /// The jobs' services ([`JobSpec::service`]) running now, each with its
    /// own stop token and task.
    services: tokio::sync::Mutex<HashMap<&'static str, (CancellationToken, tokio::task::JoinHandle<()>)>>,
    /// This daemon's job runs, for the metrics.
    pub counters: Arc<JobCounters>,
    /// The metrics task ([`crate::metrics::exporter`]), when `[metrics]` is set.
    metrics: tokio::sync::Mutex<Option<(CancellationToken, tokio::task::JoinHandle<()>)>>,
    /// The verification service ([`crate::verify`]), when `[verify]` is set.
    verify: tokio::sync::Mutex<Option<(CancellationToken, tokio::task::JoinHandle<()>)>>,
    /// The leak watcher ([`crate::leaks::watch`]), when `[leaks]` is set.
    leaks: tokio::sync::Mutex<Option<(CancellationToken, tokio::task::JoinHandle<()>)>>,
}

impl DaemonState {
    pub async fn start(
        config_path: PathBuf,
        config: Config,
        database: Database,
        telemetry: Telemetry,
        stop: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        Self {
            config_path,
            config: RwLock::new(Arc::new(config)),
            database,
            telemetry,
            scheduled: tokio::sync::Mutex::new(HashMap::new()),
            running: registry::all()
                .iter()
                .map(|j| (j.name, Arc::new(AtomicBool::new(false))))
                .collect(),
            last_run: Mutex::new(None),
            last_error: Mutex::new(None),
            stop,
            tracker,
            services: tokio::sync::Mutex::new(HashMap::new()),
            counters: Arc::default(),
            metrics: tokio::sync::Mutex::new(None),
            verify: tokio::sync::Mutex::new(None),
            leaks: tokio::sync::Mutex::new(None),
        }
    }

    /// Stops the metrics task and starts it again with the configuration in
    /// force (at start, and after a reload: the sockets may have moved).
    pub async fn restart_metrics(&self) {
        let mut slot = self.metrics.lock().await;
        if let Some((token, handle)) = slot.take() {
            token.cancel();
            let _ = handle.await;
        }
        let config = self.config();
        if config.metrics.is_none() || self.stop.is_cancelled() {
            return;
        }
        let token = self.stop.child_token();
        let task = crate::metrics::exporter::run(self.database.clone(), config, self.counters.clone(), token.clone());
        *slot = Some((token, self.tracker.spawn(task)));
    }

    /// Stops the verification service and starts it again with the
    /// configuration in force (at start, and after a reload that changed
    /// `[verify]` or `[keys]`); it finishes its requests and records its
    /// pending usage before the new one binds the socket.
    pub async fn restart_verify(&self) {
        let mut slot = self.verify.lock().await;
        if let Some((token, handle)) = slot.take() {
            token.cancel();
            let _ = handle.await;
        }
        let config = self.config();
        if config.verify.is_none() || self.stop.is_cancelled() {
            return;
        }
        let token = self.stop.child_token();
        let task = crate::verify::run(self.database.clone(), config, token.clone());
        *slot = Some((token, self.tracker.spawn(task)));
    }

    /// Stops the leak watcher and starts it again with the configuration in
    /// force (at start, and after a reload that changed `[leaks]`, the
    /// permission roots it defaults to, or `[keys]`).
    pub async fn restart_leaks(&self) {
        let mut slot = self.leaks.lock().await;
        if let Some((token, handle)) = slot.take() {
            token.cancel();
            let _ = handle.await;
        }
        let config = self.config();
        if config.leaks.is_none() || self.stop.is_cancelled() {
            return;
        }
        let token = self.stop.child_token();
        let (database, stop) = (self.database.clone(), token.clone());
        let handle = self.tracker.spawn_blocking(move || {
            let run = std::panic::AssertUnwindSafe(|| crate::leaks::watch::run(database, config, stop));
            if std::panic::catch_unwind(run).is_err() {
                error!("leaks: the watcher panicked; it starts again at the next reload");
            }
        });
        *slot = Some((token, handle));
    }

    /// Stops the services of the jobs `which` selects, and starts each again
    /// when the configuration in force enables its job.
    pub async fn restart_services(&self, which: impl Fn(&JobSpec) -> bool) {
        let mut running = self.services.lock().await;
        for spec in registry::all().iter().filter(|s| which(s)) {
            let Some(service) = spec.service else { continue };
            if let Some((token, handle)) = running.remove(spec.name) {
                token.cancel();
                let _ = handle.await;
            }
            let config = self.config();
            let enabled = config.job(spec.name).is_some_and(|s| s.enabled);
            if !enabled || self.stop.is_cancelled() {
                continue;
            }
            let token = self.stop.child_token();
            let database = self.database.clone();
            let stop = token.clone();
            let name = spec.name;
            let handle = self.tracker.spawn_blocking(move || {
                let run = std::panic::AssertUnwindSafe(|| (service.run)(database, config, stop));
                if std::panic::catch_unwind(run).is_err() {
                    error!(
                        job = name,
                        "{name}: its service panicked; only the scheduled runs go on until the next reload"
                    );
                }
            });
            running.insert(spec.name, (token, handle));
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        match self.config.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn swap_config(&self, new: Config) {
        let new = Arc::new(new);
        match self.config.write() {
            Ok(mut c) => *c = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }

    /// Schedules every enabled job of the current configuration.
    pub async fn schedule_all(&self, me: &Arc<Self>) {
        let config = self.config();
        for (name, settings) in &config.jobs {
            if settings.enabled {
                self.schedule(me, name, settings).await;
            } else {
                info!(job = *name, "job {name} is disabled");
            }
        }
    }

    /// Adds (or replaces) one job's ticking task: it sleeps until the
    /// schedule's next time and starts a run, and nothing wakes it in
    /// between (a scheduler polling its jobs every 500 ms kept an idle
    /// daemon waking twice a second).
    pub async fn schedule(&self, me: &Arc<Self>, name: &'static str, settings: &JobSettings) {
        let token = self.stop.child_token();
        if let Some(old) = self.scheduled.lock().await.insert(name, token.clone()) {
            old.cancel();
        }
        let weak = Arc::downgrade(me);
        let schedule = settings.schedule.clone();
        // Not in the tracker: a tick is no work to wait for at shutdown.
        tokio::spawn(async move {
            loop {
                let now = Utc::now();
                let Some(next) = schedule.next_after(now) else { return };
                // Sleeping is measured on the monotonic clock: after a wall
                // clock step or a suspend the tick is found again within
                // TICK_RECHECK, at a cost of a wake-up every few minutes.
                let wait = (next - now).to_std().unwrap_or_default().min(TICK_RECHECK);
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                // The wall clock may have been set back meanwhile: fire
                // only once the tick's time has come.
                if Utc::now() < next {
                    continue;
                }
                let Some(state) = weak.upgrade() else { return };
                state.start_run(&state, name, Trigger::Schedule);
            }
        });
        info!(job = name, "job {name} scheduled: {} (UTC)", settings.schedule);
    }

    pub async fn unschedule(&self, name: &'static str) {
        if let Some(token) = self.scheduled.lock().await.remove(name) {
            token.cancel();
            info!(job = name, "job {name} unscheduled");
        }
    }

    /// Starts a run of `name` unless one is in progress or we are stopping.
    pub fn start_run(&self, me: &Arc<Self>, name: &'static str, trigger: Trigger) {
        if self.stop.is_cancelled() {
            return;
        }
        let Some(spec) = registry::find(name) else { return };
        let Some(flag) = self.running.get(name).cloned() else {
            return;
        };
        if flag.swap(true, Ordering::SeqCst) {
            warn!(
                job = name,
                "job {name}: the previous run is still going; this tick is skipped"
            );
            return;
        }
        let state = me.clone();
        let config = self.config();
        let database = self.database.clone();
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            let outcome =
                tokio::task::spawn_blocking(move || jobs::execute(&database, &config, spec, trigger, &stop)).await;
            flag.store(false, Ordering::SeqCst);
            match outcome {
                Ok(outcome) => state.note_outcome(name, &outcome),
                Err(e) => {
                    error!(job = name, "job {name}: run aborted: {e}");
                    state.note_error(name, format!("run aborted: {e}"), false);
                }
            }
            notify::status(&state.status_line());
            state.wake_for_retry(&state, spec).await;
        });
    }

    /// Wakes for the retries every job asks for (see
    /// [`JobSpec::retry_due`]); called at start.
    pub async fn wake_for_retries(&self, me: &Arc<Self>) {
        for spec in registry::all() {
            self.wake_for_retry(me, spec).await;
        }
    }

    /// When a job has a retry due before its next tick (renew-certs retries
    /// a failed renewal after 1, 10 and 100 minutes), starts a run at that
    /// time instead of waiting for the tick.
    async fn wake_for_retry(&self, me: &Arc<Self>, spec: &'static JobSpec) {
        let Some(retry_due) = spec.retry_due else { return };
        let config = self.config();
        let Some(settings) = config.job(spec.name).filter(|s| s.enabled) else {
            return;
        };
        let database = self.database.clone();
        let earliest = tokio::task::spawn_blocking(move || {
            let mut conn = database.connect().ok()?;
            retry_due(&mut conn).ok().flatten()
        })
        .await
        .ok()
        .flatten();
        let Some(at) = earliest else { return };
        let now = Utc::now();
        let at = at.and_utc();
        // A retry time already past is the tick's business (the run that
        // just ended did not take it: the work is not due after all).
        let next_tick = settings.schedule.next_after(now);
        if at <= now || next_tick.is_some_and(|tick| tick <= at) {
            return;
        }
        let wait = (at - now).to_std().unwrap_or_default();
        let state = me.clone();
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(wait) => state.start_run(&state, spec.name, Trigger::Schedule),
                _ = stop.cancelled() => {}
            }
        });
    }

    fn note_outcome(&self, job: &'static str, outcome: &RunOutcome) {
        let (label, rows) = match outcome {
            RunOutcome::Completed { report, .. } => ("ok", report.rows_affected),
            RunOutcome::Failed { .. } => ("failed", 0),
            RunOutcome::Skipped => ("skipped", 0),
        };
        self.counters.record(job, label, rows);
        let summary = match outcome {
            RunOutcome::Completed { report, .. } if !report.problems.is_empty() => {
                self.note_error(job, report.problems.join("; "), false);
                format!("ok, {} row(s), {} FAILING", report.rows_affected, report.problems.len())
            }
            RunOutcome::Completed { report, .. } => {
                self.clear_error(job);
                format!("ok, {} row(s)", report.rows_affected)
            }
            RunOutcome::Failed { error, database, .. } => {
                self.note_error(job, error.clone(), *database);
                "failed".to_string()
            }
            RunOutcome::Skipped => {
                // The lock was asked of the database: it answers.
                self.clear_error(job);
                "skipped (locked elsewhere)".to_string()
            }
        };
        if let Ok(mut last) = self.last_run.lock() {
            *last = Some(LastRun {
                job,
                at: Utc::now(),
                summary,
            });
        }
    }

    fn note_error(&self, job: &'static str, error: String, database: bool) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(LastError {
                job,
                at: Utc::now(),
                error,
                database,
            });
        }
    }

    /// After a run of `job` that reached the database: an outage error is
    /// over, and so is an earlier failure of the same job.
    fn clear_error(&self, job: &'static str) {
        if let Ok(mut last) = self.last_error.lock() {
            if last.as_ref().is_some_and(|e| e.database || e.job == job) {
                *last = None;
            }
        }
    }

    /// The one-line summary sent as `STATUS=`.
    pub fn status_line(&self) -> String {
        let last = self
            .last_run
            .lock()
            .ok()
            .and_then(|l| l.clone())
            .map(|l| format!("{} {} at {}", l.job, l.summary, l.at.format("%H:%M:%SZ")))
            .unwrap_or_else(|| "none yet".into());
        let next = next_run(&self.config())
            .map(|(job, at)| format!("{job} at {}", at.format("%H:%M:%SZ")))
            .unwrap_or_else(|| "none (all jobs disabled)".into());
        let error = self
            .last_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
            .map(|e| {
                format!(
                    "{} at {}: {}",
                    e.job,
                    e.at.format("%Y-%m-%d %H:%M:%SZ"),
                    e.error.chars().take(120).collect::<String>()
                )
            })
            .unwrap_or_else(|| "none".into());
        format!("last run: {last}; next: {next}; last error: {error}")
    }
}

/// The earliest next run among enabled jobs.
pub fn next_run(config: &Config) -> Option<(&'static str, DateTime<Utc>)> {
    let now = Utc::now();
    config
        .jobs
        .iter()
        .filter(|(_, s)| s.enabled)
        .filter_map(|(name, s)| s.schedule.next_after(now).map(|t| (*name, t)))
        .min_by_key(|(_, t)| *t)
}
