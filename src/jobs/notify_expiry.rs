//! `notify-expiry`: enqueue the warnings that became due (in the same
//! transaction as their detection), then deliver what is pending, chunk by
//! chunk (see [`crate::notify::deliver`]).
//!
//! The run fails when it sent nothing while notices that already failed
//! once are still undelivered, even when all of them are waiting in backoff:
//! "failing" means mail that should have gone out has not, so an SMTP
//! outage keeps the failure streak (and the admins' alert) going.

use std::collections::BTreeMap;

use tracing::info;

use super::{JobContext, JobError, JobReport, JobSpec};
use crate::config::Config;
use crate::db::DbConnection;
use crate::notify::deliver::{deliver, release_abandoned, DeliveryReport};
use crate::notify::detect::{enqueue_key_notices, plan_key_notices, PlannedNotice};
use crate::notify::outbox;
use crate::notify::render::{self, Templates};
use crate::notify::transport::Mailer;

/// This job as the registry lists it.
pub const JOB: JobSpec = JobSpec {
    name: "notify-expiry",
    description: "owners of keys entering a warning window get one email per window; the outbox is delivered",
    default_schedule: "*/15 * * * *",
    batched: false,
    default_batch_size: 500,
    per_host: false,
    retry_due: None,
    service: None,
    dry_run: Some(dry_run),
    run,
};

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
    let templates = Templates::load(cfg)?;
    let (hello_name, _) = ctx.config.mail_host_name();
    let mailer = Mailer::from_config(cfg, &hello_name)?;
    let released = release_abandoned(ctx.conn, ctx.holder, crate::db::now())?;
    if released > 0 {
        info!("{released} notice(s) left sending by a run that stopped are due again");
    }
    let mut report = JobReport {
        rows_affected: enqueued as u64,
        stopped_early: false,
        problems: Vec::new(),
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
            return Err(JobError::NothingDelivered {
                overdue,
                failed: total.failed,
                last_error,
            });
        }
    }
    Ok(report)
}

/// The notices a run would enqueue now and what waits in the outbox,
/// grouped by recipient; changes nothing.
fn dry_run(config: &Config, conn: &mut DbConnection) -> Result<Vec<String>, JobError> {
    let now = crate::db::now();
    let planned = plan_key_notices(conn, &config.notifications, now)?;
    let mut by_recipient: BTreeMap<&str, Vec<&PlannedNotice>> = BTreeMap::new();
    for p in &planned {
        by_recipient.entry(p.owner_email.as_str()).or_default().push(p);
    }
    let mut lines = Vec::new();
    if by_recipient.is_empty() {
        lines.push("no new notices are due".to_string());
    }
    for (recipient, notices) in by_recipient {
        let payloads: Vec<_> = notices.iter().map(|n| n.payload.clone()).collect();
        lines.push(format!(
            "would send to {recipient}: {}",
            render::key_subject(&payloads, now)
        ));
        for n in notices {
            lines.push(format!(
                "  {} ({}) window {}, expires {}{}",
                render::clean(&n.payload.name, 80),
                n.payload.prefix,
                n.window,
                n.payload.expires_at.format("%Y-%m-%d %H:%M UTC"),
                if n.skipped.is_empty() {
                    String::new()
                } else {
                    format!("; wider windows skipped: {}", n.skipped.join(", "))
                }
            ));
        }
    }
    let pending = outbox::list(conn, Some(crate::notify::status::PENDING), 10_000)?;
    if !pending.is_empty() {
        lines.push(format!("{} notice(s) already pending in the outbox", pending.len()));
    }
    Ok(lines)
}
