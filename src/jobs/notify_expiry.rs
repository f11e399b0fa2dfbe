//! `notify-expiry`: enqueue the warnings that became due (in the same
//! transaction as their detection), then deliver what is pending.

use tracing::info;

use super::{JobContext, JobError, JobReport};
use crate::notify::deliver::{deliver_batch, release_stale, DeliveryReport};
use crate::notify::detect::enqueue_key_notices;
use crate::notify::render::Templates;
use crate::notify::transport::Mailer;

pub fn run(ctx: &mut JobContext<'_>) -> Result<JobReport, JobError> {
    let cfg = &ctx.config.notifications;
    let now = ctx.started_at;
    let enqueued = enqueue_key_notices(ctx.conn, cfg, now)?;
    if !enqueued.is_empty() {
        info!(
            rows_affected = enqueued.len() as u64,
            "enqueued {} expiry notice(s)",
            enqueued.len()
        );
    }
    let templates = Templates::load(cfg).map_err(|e| JobError::Failed(e.to_string()))?;
    let mailer = Mailer::from_config(cfg).map_err(|e| JobError::Failed(e.to_string()))?;
    release_stale(ctx.conn, now)?;
    let mut total = DeliveryReport::default();
    let mut report = JobReport {
        rows_affected: enqueued.len() as u64,
        stopped_early: false,
    };
    while let Some(batch) = deliver_batch(ctx.conn, cfg, &mailer, &templates, now)? {
        total.messages += batch.messages;
        total.notices += batch.notices;
        total.retrying += batch.retrying;
        total.failed += batch.failed;
        total.cancelled += batch.cancelled;
        if !ctx.checkpoint()? {
            report.stopped_early = true;
            break;
        }
    }
    if total != DeliveryReport::default() {
        info!(
            "delivered {} email(s) covering {} notice(s); {} to retry, {} failed, {} cancelled",
            total.messages, total.notices, total.retrying, total.failed, total.cancelled
        );
    }
    report.rows_affected += total.notices;
    if total.messages == 0 && total.retrying + total.failed > 0 {
        return Err(JobError::Failed(format!(
            "no email could be sent ({} to retry, {} failed); see the notifications table",
            total.retrying, total.failed
        )));
    }
    Ok(report)
}
