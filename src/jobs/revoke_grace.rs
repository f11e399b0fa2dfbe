//! `revoke-grace`: rotated keys whose grace period has ended become
//! `revoked`, in batches, each with its audit events.

use tracing::info;

use super::{JobContext, JobError, JobReport, JobSpec};
use crate::keys::expire::end_grace_batch;

/// This job as the registry lists it.
pub const JOB: JobSpec = JobSpec {
    name: "revoke-grace",
    description: "rotated keys whose grace period has ended become revoked",
    default_schedule: "*/5 * * * *",
    batched: true,
    default_batch_size: 1000,
    per_host: false,
    retry_due: None,
    service: None,
    dry_run: None,
    run,
};

pub fn run(ctx: &mut JobContext<'_>) -> Result<JobReport, JobError> {
    let batch = ctx.settings.batch_size;
    let actor = ctx.actor();
    let mut cursor = None;
    super::batched(ctx, |ctx| {
        let ended = end_grace_batch(ctx.conn, ctx.started_at, batch, &actor, &mut cursor)?;
        if !ended.is_empty() {
            info!(
                rows_affected = ended.len() as u64,
                "grace ended for {} key(s): {}",
                ended.len(),
                super::preview(&ended)
            );
        }
        Ok(ended.len() as u64)
    })
}
