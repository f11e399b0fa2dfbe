//! `purge-audit`: audit events, permission events and job runs older than the retention are
//! deleted in batches (the retention is never below 90 days).

use super::{JobContext, JobError, JobReport, JobSpec};
use crate::keys::retention::{purge_events_batch, purge_runs_batch};

/// This job as the registry lists it.
pub const JOB: JobSpec = JobSpec {
    name: "purge-audit",
    description: "audit events and job runs older than keys.audit_retention are deleted",
    default_schedule: "17 3 * * *",
    batched: true,
    default_batch_size: 5000,
    per_host: false,
    retry_due: None,
    service: None,
    dry_run: None,
    run,
};

pub fn run(ctx: &mut JobContext<'_>) -> Result<JobReport, JobError> {
    let batch = ctx.settings.batch_size;
    let cutoff = ctx.started_at - ctx.config.keys.audit_retention.as_time_delta();
    let mut cursor = None;
    let events = super::batched(ctx, |ctx| {
        Ok(purge_events_batch(ctx.conn, cutoff, batch, &mut cursor)? as u64)
    })?;
    if events.stopped_early {
        return Ok(events);
    }
    let runs = super::batched(ctx, |ctx| Ok(purge_runs_batch(ctx.conn, cutoff, batch)? as u64))?;
    if runs.stopped_early {
        return Ok(JobReport {
            rows_affected: events.rows_affected + runs.rows_affected,
            stopped_early: true,
            problems: Vec::new(),
        });
    }
    let drift = super::batched(ctx, |ctx| {
        Ok(crate::perms::store::purge_events(ctx.conn, cutoff, i64::from(batch))?)
    })?;
    Ok(JobReport {
        rows_affected: events.rows_affected + runs.rows_affected + drift.rows_affected,
        stopped_early: drift.stopped_early,
        problems: Vec::new(),
    })
}
