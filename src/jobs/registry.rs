//! The registry of scheduled jobs: their names, default schedules and entry
//! points. Adding a job is adding a module and a line here.

use chrono::NaiveDateTime;
use diesel::QueryResult;

use crate::config::Schedule;
use crate::db::DbConnection;

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
    pub run: fn(&mut JobContext<'_>) -> Result<JobReport, JobError>,
}

impl JobSpec {
    /// The name the job lock is taken under.
    pub fn lock_name(&self, host: &str) -> String {
        if self.per_host {
            format!("{}@{host}", self.name)
        } else {
            self.name.to_string()
        }
    }

    pub fn default_schedule(&self) -> Schedule {
        // The built-in schedules are checked by a unit test below.
        Schedule::parse(self.default_schedule)
            .unwrap_or_else(|e| panic!("built-in schedule of {} is invalid: {e}", self.name))
    }
}

static JOBS: &[JobSpec] = &[
    JobSpec {
        name: "expire-keys",
        description: "active API keys whose expiry has passed become expired",
        default_schedule: "*/5 * * * *",
        batched: true,
        default_batch_size: 1000,
        per_host: false,
        retry_due: None,
        run: super::expire_keys::run,
    },
    JobSpec {
        name: "revoke-grace",
        description: "rotated keys whose grace period has ended become revoked",
        default_schedule: "*/5 * * * *",
        batched: true,
        default_batch_size: 1000,
        per_host: false,
        retry_due: None,
        run: super::revoke_grace::run,
    },
    JobSpec {
        name: "notify-expiry",
        description: "owners of keys entering a warning window get one email per window; the outbox is delivered",
        default_schedule: "*/15 * * * *",
        batched: false,
        default_batch_size: 500,
        per_host: false,
        retry_due: None,
        run: super::notify_expiry::run,
    },
    JobSpec {
        name: "purge-audit",
        description: "audit events and job runs older than keys.audit_retention are deleted",
        default_schedule: "17 3 * * *",
        batched: true,
        default_batch_size: 5000,
        per_host: false,
        retry_due: None,
        run: super::purge_audit::run,
    },
    JobSpec {
        name: "renew-certs",
        description:
            "certificates are renewed over ACME when due and monitored ones read; admins are warned before any lapses",
        default_schedule: "*/5 * * * *",
        batched: false,
        default_batch_size: 1,
        per_host: false,
        retry_due: Some(super::renew_certs::retry_due),
        run: super::renew_certs::run,
    },
    JobSpec {
        name: "watch-perms",
        description:
            "full rescan of the permission policy under permissions.roots (the daemon also watches continuously)",
        default_schedule: "41 * * * *",
        batched: false,
        default_batch_size: 1,
        per_host: true,
        retry_due: None,
        run: super::watch_perms::run,
    },
];

pub fn all() -> &'static [JobSpec] {
    JOBS
}

pub fn find(name: &str) -> Option<&'static JobSpec> {
    JOBS.iter().find(|j| j.name == name)
}

pub fn names() -> Vec<&'static str> {
    JOBS.iter().map(|j| j.name).collect()
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
