//! Reload on SIGHUP: validate-then-swap.
//!
//! The file is read and validated completely. If it is valid, it replaces the
//! running configuration in one step: changed jobs are rescheduled, the log
//! level is applied, and every change is logged. If it is not, nothing
//! changes and every error is logged. Either way systemd hears `RELOADING=1`
//! (with `MONOTONIC_USEC`) before and `READY=1` after.
//!
//! A different `[database]` cannot be swapped under running jobs; such a
//! reload is refused as a whole and asks for a restart.

use std::sync::Arc;

use tracing::{error, info, warn};

use crate::config::{Config, JobSettings};

use super::notify;
use super::state::DaemonState;

/// The result of one reload, as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    Applied { changes: Vec<String> },
    Refused { errors: Vec<String> },
}

pub async fn reload(state: &Arc<DaemonState>) {
    notify::reloading();
    info!(event = "reloading", "reloading {}", state.config_path.display());
    let path = state.config_path.clone();
    let loaded = tokio::task::spawn_blocking(move || crate::jobs::load_config(&path)).await;
    let outcome = match loaded {
        Ok(Ok(new)) => apply(state, new).await,
        Ok(Err(errors)) => ReloadOutcome::Refused {
            errors: errors.0.iter().map(|e| e.to_string()).collect(),
        },
        Err(e) => ReloadOutcome::Refused {
            errors: vec![format!("reading the configuration failed: {e}")],
        },
    };
    match &outcome {
        ReloadOutcome::Applied { changes } if changes.is_empty() => {
            info!(
                event = "reload-applied",
                message_id = crate::telemetry::message_ids::RELOAD_APPLIED,
                "reload applied: no changes"
            );
        }
        ReloadOutcome::Applied { changes } => {
            for change in changes {
                info!(event = "reload-change", "{change}");
            }
            info!(
                event = "reload-applied",
                message_id = crate::telemetry::message_ids::RELOAD_APPLIED,
                "reload applied: {}",
                changes.join("; ")
            );
        }
        ReloadOutcome::Refused { errors } => {
            for e in errors {
                error!(event = "reload-error", "{e}");
            }
            error!(
                event = "reload-refused",
                message_id = crate::telemetry::message_ids::RELOAD_REFUSED,
                "reload refused ({} error(s)); still running on the previous configuration",
                errors.len()
            );
        }
    }
    notify::ready(&state.status_line());
}

async fn apply(state: &Arc<DaemonState>, new: Config) -> ReloadOutcome {
    let old = state.config();
    if old.database != new.database {
        return ReloadOutcome::Refused {
            errors: vec![format!(
                "{}: [database] changed; a different database needs a restart (systemctl restart keywarden)",
                new.source.display()
            )],
        };
    }
    let JobChanges {
        mut changes,
        to_schedule,
        to_unschedule,
    } = job_changes(&old, &new);
    changes.extend(section_changes(&old, &new));
    let enabled = |c: &Config, job: &str| c.job(job).is_some_and(|s| s.enabled);
    let restart: Vec<&'static str> = crate::jobs::registry::all()
        .iter()
        .filter(|spec| {
            spec.service.is_some_and(|s| (s.restart_on)(&old, &new))
                || enabled(&old, spec.name) != enabled(&new, spec.name)
        })
        .map(|spec| spec.name)
        .collect();

    // The swap: the new configuration is in force for every run started from
    // here on; the scheduler is then brought in line with it.
    let level = new.daemon.log_level;
    let verify_changed = old.verify != new.verify || old.keys != new.keys;
    let leaks_changed = old.leaks != new.leaks
        || old.keys != new.keys
        || (new.leaks.is_some() && old.permissions.roots != new.permissions.roots);
    state.swap_config(new);
    state.telemetry.set_level(level);
    for name in to_unschedule {
        state.unschedule(name).await;
    }
    for (name, settings) in to_schedule {
        state.schedule(state, name, &settings).await;
    }
    if !restart.is_empty() {
        state.restart_services(|spec| restart.contains(&spec.name)).await;
    }
    state.restart_metrics().await;
    if verify_changed {
        state.restart_verify().await;
    }
    if leaks_changed {
        state.restart_leaks().await;
    }
    ReloadOutcome::Applied { changes }
}

/// What a reload changes in the jobs: lines for the log, and the jobs to
/// schedule anew or take off the schedule.
struct JobChanges {
    changes: Vec<String>,
    to_schedule: Vec<(&'static str, JobSettings)>,
    to_unschedule: Vec<&'static str>,
}

fn job_changes(old: &Config, new: &Config) -> JobChanges {
    let mut changes = Vec::new();
    let mut to_schedule = Vec::new();
    let mut to_unschedule = Vec::new();
    for (name, new_settings) in &new.jobs {
        let Some(old_settings) = old.jobs.get(name) else {
            continue;
        };
        if old_settings == new_settings {
            continue;
        }
        if old_settings.enabled != new_settings.enabled {
            changes.push(format!(
                "jobs.{name}: {}",
                if new_settings.enabled { "enabled" } else { "disabled" }
            ));
        }
        if old_settings.schedule != new_settings.schedule {
            changes.push(format!(
                "jobs.{name}.schedule: {:?} -> {:?}",
                old_settings.schedule.as_written(),
                new_settings.schedule.as_written()
            ));
        }
        if old_settings.batch_size != new_settings.batch_size {
            changes.push(format!(
                "jobs.{name}.batch_size: {} -> {}",
                old_settings.batch_size, new_settings.batch_size
            ));
        }
        let schedule_changed =
            old_settings.enabled != new_settings.enabled || old_settings.schedule != new_settings.schedule;
        if schedule_changed {
            if new_settings.enabled {
                to_schedule.push((*name, new_settings.clone()));
            } else {
                to_unschedule.push(*name);
            }
        }
    }
    JobChanges {
        changes,
        to_schedule,
        to_unschedule,
    }
}

/// What a reload changes in the other sections, as lines for the log.
fn section_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut changes = Vec::new();
    if old.daemon.log_level != new.daemon.log_level {
        changes.push(
            format!(
                "daemon.log_level: {:?} -> {:?}",
                old.daemon.log_level, new.daemon.log_level
            )
            .to_lowercase(),
        );
    }
    if old.daemon.shutdown_timeout != new.daemon.shutdown_timeout {
        changes.push(format!(
            "daemon.shutdown_timeout: {} -> {}",
            old.daemon.shutdown_timeout, new.daemon.shutdown_timeout
        ));
    }
    if old.daemon.host_name != new.daemon.host_name {
        changes.push("daemon.host_name changed".to_string());
    }
    if old.verify != new.verify {
        changes.push(match &new.verify {
            Some(_) => {
                "verify: settings changed; the verification service restarts (its cache starts empty)".to_string()
            }
            None => "verify: removed; the verification service stops".to_string(),
        });
    }
    if old.leaks != new.leaks {
        changes.push(match &new.leaks {
            Some(_) => "leaks: settings changed; the leak watcher restarts with a full scan".to_string(),
            None => "leaks: removed; the leak watcher stops".to_string(),
        });
    }
    if old.permissions != new.permissions {
        changes.push("permissions: policy changed; the watcher restarts with a full rescan".to_string());
    }
    if old.acme != new.acme || old.certificates != new.certificates || old.monitors != new.monitors {
        changes.push(format!(
            "certificates: {} issued and {} monitored now configured; the next renew-certs run uses them",
            new.certificates.len(),
            new.monitors.len()
        ));
    }
    if old.notifications != new.notifications {
        changes.push("notifications changed; the next notify-expiry run uses them".to_string());
    }
    if old.keys != new.keys {
        changes.push("keys settings changed".to_string());
    }
    if old.daemon.log_target != new.daemon.log_target {
        warn!("daemon.log_target changed; it takes effect at the next start");
    }
    changes
}
