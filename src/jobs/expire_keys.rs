//! `expire-keys`: active keys past their expiry become `expired`, in
//! batches, each with its audit events.

use tracing::info;

use super::{JobContext, JobError, JobReport};
use crate::keys::expire::expire_batch;

pub fn run(ctx: &mut JobContext<'_>) -> Result<JobReport, JobError> {
    let batch = ctx.settings.batch_size;
    let actor = ctx.actor();
    super::batched(ctx, |ctx| {
        let expired = expire_batch(ctx.conn, ctx.started_at, batch, &actor)?;
        if !expired.is_empty() {
            info!(
                rows_affected = expired.len() as u64,
                "expired {} key(s): {}",
                expired.len(),
                super::preview(&expired)
            );
        }
        Ok(expired.len() as u64)
    })
}
