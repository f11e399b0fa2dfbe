//! `watch-perms`, the scheduled part: a full rescan of every root (the
//! daemon's watcher catches changes between rescans), remediation where the
//! policy says, drift recorded and resolved, and the admins' digest
//! enqueued when one is due. Its lock is per host: replicas on several
//! machines each hold their own files to the policy.

use tracing::info;

use super::{JobContext, JobError, JobReport, JobSpec, Service};
use crate::perms::{digest, log_scan, scan, scan_and_fix, store, Fix, Policy};

/// This job as the registry lists it.
pub const JOB: JobSpec = JobSpec {
    name: "watch-perms",
    description: "full rescan of the permission policy under permissions.roots (the daemon also watches continuously)",
    default_schedule: "41 * * * *",
    batched: false,
    default_batch_size: 1,
    per_host: true,
    retry_due: None,
    service: Some(Service {
        run: crate::perms::watch::run,
        restart_on: |old, new| old.permissions != new.permissions,
    }),
    dry_run: None,
    run,
};

pub fn run(ctx: &mut JobContext<'_>) -> Result<JobReport, JobError> {
    let policy = Policy::of(&ctx.config.permissions).map_err(JobError::Policy)?;
    if policy.roots().is_empty() {
        info!("watch-perms: no permissions.roots configured; nothing to scan");
        return Ok(JobReport::default());
    }
    let roots = policy.roots().to_vec();
    let began = std::time::Instant::now();
    let (report, remedies) = scan_and_fix(&policy, &roots, scan::default_threads(), Fix::AsPolicySays, &|_| {});
    let host = ctx.config.host_name();
    let tally = store::reconcile(ctx.conn, &host, &roots, &report, &remedies, ctx.started_at)?;
    log_scan("rescan", &report, &tally, began.elapsed());
    digest::enqueue_if_due(ctx.conn, ctx.config, &host, crate::db::now())?;
    Ok(JobReport {
        rows_affected: tally.total(),
        stopped_early: false,
        problems: Vec::new(),
    })
}
