//! `expire-keys`: active keys past their expiry become `expired`, in
//! batches, each with its audit events.

use tracing::info;

use super::{JobContext, JobError, JobReport};
use crate::keys::expire::expire_batch;

pub fn run(ctx: &mut JobContext<'_>) -> Result<JobReport, JobError> {
    let batch = ctx.settings.batch_size;
    let actor = ctx.actor();
    let mut report = JobReport::default();
    loop {
        let expired = expire_batch(ctx.conn, ctx.started_at, batch, &actor)?;
        report.rows_affected += expired.len() as u64;
        if !expired.is_empty() {
            info!(
                rows_affected = expired.len() as u64,
                "expired {} key(s): {}",
                expired.len(),
                preview(&expired)
            );
        }
        if (expired.len() as u64) < u64::from(batch) {
            break;
        }
        if !ctx.checkpoint()? {
            report.stopped_early = true;
            break;
        }
    }
    Ok(report)
}

/// The first few prefixes, for the log line (prefixes are public).
fn preview(prefixes: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut out = prefixes.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if prefixes.len() > SHOWN {
        out.push_str(&format!(" and {} more", prefixes.len() - SHOWN));
    }
    out
}
