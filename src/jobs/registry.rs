//! The registry of scheduled jobs: their names, default schedules and entry
//! points. Adding a job is adding a module and a line here.

use chrono::NaiveDateTime;
use diesel::QueryResult;

use std::path::Path;

use crate::config::{CompiledPolicy, Config, ConfigErrors, JobDefaults, LoadChecks, PermissionsConfig, RuleProblem};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::db::{Database, DbConnection};

use super::{JobContext, JobError, JobReport};

/// Reads when a job's next retry is due, from the job's own tables.
pub type RetryDue = fn(&mut DbConnection) -> QueryResult<Option<NaiveDateTime>>;

/// A job as the scheduler and the command line know it.
#[derive(Debug)]
pub struct JobSpec {
    pub name: &'static str,
    pub description: &'static str,
    /// Five-field cron, UTC.
    pub default_schedule: &'static str,
    /// Whether the job changes rows in batches (and so takes `batch_size`).
    pub batched: bool,
    pub default_batch_size: u32,
    /// Whether the job works on this machine's files rather than shared
    /// rows: its lock is then taken per host, not across replicas.
    pub per_host: bool,
    /// The earliest retry the job's own state asks for, when it keeps one
    /// (failed renewals); the daemon wakes for it if it falls before the
    /// next tick.
    pub retry_due: Option<RetryDue>,
    /// A part the daemon keeps running beside the schedule while the job is
    /// enabled (the permission watcher of `watch-perms`).
    pub service: Option<Service>,
    /// What the job would do now, changing nothing: `jobs run --dry-run`.
    pub dry_run: Option<DryRun>,
    pub run: fn(&mut JobContext<'_>) -> Result<JobReport, JobError>,
}

/// A long-running part of a job, on a blocking thread of the daemon's: it
/// returns once its token is cancelled.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    pub run: fn(Database, Arc<Config>, CancellationToken),
    /// Whether a reload from the first configuration to the second must
    /// restart it (it is restarted too when the job is enabled or disabled).
    pub restart_on: fn(&Config, &Config) -> bool,
}

/// The lines `jobs run --dry-run` prints for a job.
pub type DryRun = fn(&Config, &mut DbConnection) -> Result<Vec<String>, JobError>;

impl JobSpec {
    /// The name the job lock is taken under.
    pub fn lock_name(&self, host: &str) -> String {
        if self.per_host {
            format!("{}@{host}", self.name)
        } else {
            self.name.to_string()
        }
    }

    /// What the configuration needs to know of this job.
    pub fn defaults(&self) -> JobDefaults {
        JobDefaults {
            name: self.name,
            default_schedule: self.default_schedule,
            batched: self.batched,
            default_batch_size: self.default_batch_size,
        }
    }
}

/// Every job, in the order `jobs list` shows them. Adding a job is adding
/// its module (which declares its [`JobSpec`] as `JOB`) and a line here.
static JOBS: &[&JobSpec] = &[
    &super::expire_keys::JOB,
    &super::revoke_grace::JOB,
    &super::notify_expiry::JOB,
    &super::purge_audit::JOB,
    &super::renew_certs::JOB,
    &super::watch_perms::JOB,
];

pub fn all() -> &'static [&'static JobSpec] {
    JOBS
}

pub fn find(name: &str) -> Option<&'static JobSpec> {
    JOBS.iter().find(|j| j.name == name).copied()
}

pub fn names() -> Vec<&'static str> {
    JOBS.iter().map(|j| j.name).collect()
}

/// Reads and validates a configuration file, with what config itself
/// cannot know: the jobs of this registry (their names and defaults) and
/// whether the permission rules compile.
pub fn load_config(path: &Path) -> Result<Config, ConfigErrors> {
    let jobs: Vec<JobDefaults> = JOBS.iter().map(|j| j.defaults()).collect();
    Config::load_with(path, &checks(&jobs))
}

/// [`load_config`] for configuration text; `path` is only named in messages.
pub fn config_from_toml(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let jobs: Vec<JobDefaults> = JOBS.iter().map(|j| j.defaults()).collect();
    Config::from_toml(path, text, &checks(&jobs))
}

fn checks(jobs: &[JobDefaults]) -> LoadChecks<'_> {
    fn permission_rules(p: &PermissionsConfig) -> Result<CompiledPolicy, Vec<RuleProblem>> {
        let policy = crate::perms::Policy::compile(p)?;
        Ok(CompiledPolicy(Some(Arc::new(policy))))
    }
    LoadChecks { jobs, permission_rules }
}

#[cfg(test)]
mod tests {
    #[test]
    fn built_in_schedules_parse() {
        for job in super::all() {
            crate::config::Schedule::parse(job.default_schedule).unwrap();
        }
    }
}
