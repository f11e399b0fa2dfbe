//! The daemon: the long-running process behind `keywarden run`.
//!
//! Start: signal handlers first, then the database (retried with backoff
//! while it is unreachable), migrations, the scheduler, and only then
//! `READY=1`. Running: each job fires on its cron schedule into a
//! [`TaskTracker`]; a job never overlaps itself. SIGHUP reloads
//! (validate-then-swap, see [`reload`]); SIGTERM/SIGINT stop: `STOPPING=1`,
//! no new runs, running jobs get `daemon.shutdown_timeout` to finish, and a
//! second signal exits at once.
//!
//! Imports: verify, metrics, jobs, leaks, perms (the continuous watcher), db, telemetry,
//! config.

pub mod notify;
pub mod reload;
pub mod signals;
pub mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::db::{migrate, Database};
use crate::telemetry::Telemetry;

use signals::DaemonSignal;
use state::DaemonState;

/// How the daemon ended, mapped to the process exit status by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Stopped on request after running jobs finished (or the timeout passed).
    Clean,
    /// A second stop signal: exit at once with 128 + the signal number.
    Forced(i32),
    /// Could not start.
    Failed,
}

/// Runs the daemon until `requests` asks it to stop: reloads and stops
/// come from there (the process's signals under `keywarden run`, see
/// [`signals::install`]; a test's own stream in-process). A second stop
/// while jobs finish exits at once.
pub async fn run<R>(
    config_path: PathBuf,
    config: Config,
    database: Database,
    telemetry: Telemetry,
    mut requests: R,
) -> Exit
where
    R: Stream<Item = DaemonSignal> + Unpin,
{
    info!(
        event = "starting",
        "keywarden {} starting; database {}",
        env!("CARGO_PKG_VERSION"),
        database.describe()
    );

    if let Some(exit) = prepare_database(&database, &mut requests).await {
        return exit;
    }

    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let state =
        Arc::new(DaemonState::start(config_path, config, database, telemetry, stop.clone(), tracker.clone()).await);
    state.schedule_all(&state).await;
    state.restart_services(|_| true).await;
    state.restart_metrics().await;
    state.restart_verify().await;
    state.restart_leaks().await;
    // Work that failed before this start is retried on time.
    state.wake_for_retries(&state).await;
    notify::spawn_watchdog(stop.clone());
    notify::ready(&state.status_line());
    info!(
        event = "started",
        message_id = crate::telemetry::message_ids::STARTED,
        "keywarden ready; {}",
        state.status_line()
    );

    loop {
        match requests.next().await {
            Some(DaemonSignal::Reload) => reload::reload(&state).await,
            Some(DaemonSignal::Stop(sig)) => {
                info!(event = "stopping", "received {}; stopping", signals::name(sig));
                break;
            }
            None => {
                warn!("signal stream ended; stopping");
                break;
            }
        }
    }

    notify::stopping();
    stop.cancel();
    tracker.close();
    let running = tracker.len();
    if running > 0 {
        info!(
            "waiting up to {} for {running} running job(s)",
            state.config().daemon.shutdown_timeout
        );
    }
    let timeout = state.config().daemon.shutdown_timeout.as_duration();
    tokio::select! {
        _ = tracker.wait() => {
            info!(event = "stopped", message_id = crate::telemetry::message_ids::STOPPED, "keywarden stopped");
            Exit::Clean
        }
        _ = tokio::time::sleep(timeout) => {
            warn!(event = "stopped", message_id = crate::telemetry::message_ids::STOPPED, "shutdown timeout of {} passed with {} job(s) still running; exiting anyway (their runs will show as interrupted)",
                state.config().daemon.shutdown_timeout, tracker.len());
            Exit::Clean
        }
        sig = signals::next_stop(&mut requests) => {
            warn!(event = "stopped", message_id = crate::telemetry::message_ids::STOPPED, "second stop signal; exiting at once");
            Exit::Forced(sig)
        }
    }
}

/// Runs the daemon until `shutdown` completes, then stops as on SIGTERM
/// (running jobs get `daemon.shutdown_timeout`). For driving the daemon in
/// the same process, as tests do; there is no reload.
pub async fn run_until<F>(
    config_path: PathBuf,
    config: Config,
    database: Database,
    telemetry: Telemetry,
    shutdown: F,
) -> Exit
where
    F: std::future::Future<Output = ()>,
{
    let requests = Box::pin(futures_util::stream::once(async move {
        shutdown.await;
        DaemonSignal::Stop(signal_hook::consts::SIGTERM)
    }));
    run(config_path, config, database, telemetry, requests).await
}

/// Connects and migrates, retrying with backoff while the database is
/// unreachable. Returns `Some(exit)` if a stop signal arrived meanwhile.
async fn prepare_database<R>(database: &Database, requests: &mut R) -> Option<Exit>
where
    R: Stream<Item = DaemonSignal> + Unpin,
{
    let mut delay = Duration::from_secs(1);
    loop {
        let db = database.clone();
        let attempt = tokio::task::spawn_blocking(move || -> Result<Vec<String>, crate::db::DbError> {
            let mut conn = db.connect()?;
            migrate::run_pending(&mut conn)
        })
        .await;
        match attempt {
            Ok(Ok(applied)) => {
                if !applied.is_empty() {
                    info!("applied {} migration(s): {}", applied.len(), applied.join(", "));
                }
                return None;
            }
            Ok(Err(e)) => {
                error!(error = %e, message_id = crate::telemetry::message_ids::DATABASE_UNAVAILABLE, "database not ready: {e}; retrying in {}s", delay.as_secs());
                notify::status(&format!("waiting for the database: {e}"));
            }
            Err(e) => {
                error!("database preparation panicked: {e}");
                return Some(Exit::Failed);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            sig = requests.next() => match sig {
                Some(DaemonSignal::Stop(_)) | None => return Some(Exit::Clean),
                Some(DaemonSignal::Reload) => info!("reload requested during startup; the configuration is read again at the next start"),
            }
        }
        delay = (delay * 2).min(Duration::from_secs(60));
    }
}
