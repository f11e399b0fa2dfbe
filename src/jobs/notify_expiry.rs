//! `notify-expiry`: enqueue the warnings that became due (in the same
//! transaction as their detection), then deliver what is pending, chunk by
//! chunk (see [`crate::notify::deliver`]).
//!
//! The run fails when it sent nothing while notices that already failed
//! once are still undelivered, even when all of them are waiting in backoff:
//! "failing" means mail that should have gone out has not, so an SMTP
//! outage keeps the failure streak (and the admins' alert) going.

use tracing::info;

use super::{JobContext, JobError, JobReport};
use crate::notify::deliver::{deliver, release_abandoned, DeliveryReport};
use crate::notify::detect::enqueue_key_notices;
use crate::notify::outbox;
use crate::notify::render::Templates;
use crate::notify::transport::Mailer;

pub fn run(ctx: &mut JobContext<'_>) -> Result<JobReport, JobError> {
    let cfg = &ctx.config.notifications;
    let now = ctx.started_at;
    let enqueued = enqueue_key_notices(ctx.conn, cfg, now)?;
    if enqueued > 0 {
        info!(
            rows_affected = enqueued as u64,
            "enqueued {} expiry notice(s)", enqueued
        );
    }
    let templates = Templates::load(cfg).map_err(|e| JobError::Failed(e.to_string()))?;
    let (hello_name, _) = ctx.config.mail_host_name();
    let mailer = Mailer::from_config(cfg, &hello_name).map_err(|e| JobError::Failed(e.to_string()))?;
    let released = release_abandoned(ctx.conn, ctx.holder, crate::db::now())?;
    if released > 0 {
        info!("{released} notice(s) left sending by a run that stopped are due again");
    }
    let mut report = JobReport {
        rows_affected: enqueued as u64,
        stopped_early: false,
    };
    // Between chunks: keep the job lock, and stop for a shutdown.
    let (keeper, stop) = (ctx.keeper, ctx.stop);
    let mut lock_error = None;
    let total = deliver(
        ctx.conn,
        cfg,
        &mailer,
        &templates,
        ctx.holder,
        now,
        |conn| match keeper.renew(conn) {
            Ok(true) if !stop.is_cancelled() => true,
            Ok(true) => {
                report.stopped_early = true;
                false
            }
            Ok(false) => {
                lock_error = Some(JobError::LockLost);
                false
            }
            Err(e) => {
                lock_error = Some(JobError::Db(e));
                false
            }
        },
    )?;
    if let Some(e) = lock_error {
        return Err(e);
    }
    mailer.close();
    if total != DeliveryReport::default() {
        info!(
            "delivered {} email(s) covering {} notice(s); {} to retry, {} failed, {} cancelled",
            total.messages, total.notices, total.retrying, total.failed, total.cancelled
        );
    }
    report.rows_affected += total.notices;
    if total.messages == 0 {
        let (overdue, last_error) = outbox::overdue_after_failure(ctx.conn)?;
        if overdue > 0 || total.failed > 0 {
            return Err(JobError::Failed(format!(
                "no email could be sent: {overdue} notice(s) wait to be retried, {} failed for good in this run{}; see `keywarden notifications list`",
                total.failed,
                last_error.map(|e| format!("; last error: {e}")).unwrap_or_default()
            )));
        }
    }
    Ok(report)
}
