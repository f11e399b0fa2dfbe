//! `expire-keys`: active keys past their expiry become `expired`, in
//! batches, each with its audit events.

use tracing::info;

use super::{JobContext, JobError, JobReport, JobSpec};
use crate::keys::expire::Expirer;

/// This job as the registry lists it.
pub const JOB: JobSpec = JobSpec {
    name: "expire-keys",
    description: "active API keys whose expiry has passed become expired",
    default_schedule: "*/5 * * * *",
    batched: true,
    default_batch_size: 1000,
    per_host: false,
    retry_due: None,
    service: None,
    dry_run: None,
    run,
};

/// Batches are committed without waiting for the disk
/// ([`crate::db::DbConnection::relax_commit`]): the status is bookkeeping
/// (verification refuses a key past its expiry whatever its status), so a
/// database crash that undoes the last batches only leaves them for the
/// next run, and a commit a batch that waits for the WAL flush is most of
/// the cost of a run that expires many keys.
pub fn run(ctx: &mut JobContext<'_>) -> Result<JobReport, JobError> {
    let relaxed = ctx.conn.relax_commit();
    let report = expire_due(ctx);
    ctx.conn.restore_commit(relaxed);
    report
}

fn expire_due(ctx: &mut JobContext<'_>) -> Result<JobReport, JobError> {
    let mut expirer = Expirer::new(ctx.started_at, ctx.settings.batch_size, &ctx.actor());
    let mut report = JobReport::default();
    while let Some(expired) = expirer.next_batch(ctx.conn)? {
        report.rows_affected += expired.len() as u64;
        if !expired.is_empty() {
            info!(
                rows_affected = expired.len() as u64,
                "expired {} key(s): {}",
                expired.len(),
                super::preview(&expired)
            );
        }
        if !ctx.checkpoint()? {
            report.stopped_early = true;
            break;
        }
    }
    Ok(report)
}
