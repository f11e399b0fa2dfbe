//! `[jobs.<name>]`: whether a job runs, its schedule and batch size.
//!
//! Which jobs exist is the job registry's business, one floor up: it hands
//! [`JobDefaults`] for each to [`super::Config::load_with`], so that this
//! floor imports nothing above it.

use serde::Deserialize;

use super::Schedule;

/// What the configuration needs to know of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobDefaults {
    pub name: &'static str,
    /// Five-field cron, UTC.
    pub default_schedule: &'static str,
    /// Whether the job changes rows in batches (and so takes `batch_size`).
    pub batched: bool,
    pub default_batch_size: u32,
}

/// `[jobs.<name>]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JobSection {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    schedule: Option<Schedule>,
    #[serde(default)]
    batch_size: Option<u32>,
}

/// A job's settings after defaults are applied.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSettings {
    pub enabled: bool,
    pub schedule: Schedule,
    /// Rows changed per transaction by set-based jobs.
    pub batch_size: u32,
}

/// Larger batches hold row locks longer and exceed SQLite's bind limits.
pub const MAX_BATCH_SIZE: u32 = 10_000;

impl JobSection {
    /// What is wrong with this section for this job.
    pub(super) fn problems(&self, job: &JobDefaults) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(b) = self.batch_size {
            if !job.batched {
                problems.push(format!(
                    "jobs.{}.batch_size: this job does not work in batches; remove batch_size",
                    job.name
                ));
            } else if b == 0 || b > MAX_BATCH_SIZE {
                problems.push(format!(
                    "jobs.{}.batch_size must be between 1 and {MAX_BATCH_SIZE}, found {b}",
                    job.name
                ));
            }
        }
        problems
    }
}

impl JobDefaults {
    /// The settings a section gives this job, defaults filled in. A
    /// built-in schedule that does not parse (a registry mistake, caught by
    /// the registry's unit test) is reported as a problem.
    pub(super) fn settings(&self, section: Option<JobSection>) -> Result<JobSettings, String> {
        let section = section.unwrap_or_default();
        let schedule = match section.schedule {
            Some(s) => s,
            None => Schedule::parse(self.default_schedule)
                .map_err(|e| format!("the built-in schedule of job {} is invalid: {e}", self.name))?,
        };
        Ok(JobSettings {
            enabled: section.enabled.unwrap_or(true),
            schedule,
            batch_size: section.batch_size.unwrap_or(self.default_batch_size),
        })
    }
}
