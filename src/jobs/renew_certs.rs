//! `renew-certs`: every configured certificate is renewed when due
//! (installed atomically, its deploy hook run once) and every monitored one
//! read; admins hear of certificates near expiry that keep failing or that
//! keywarden does not issue. The job lock keeps two replicas from renewing
//! the same certificate twice.

use tracing::info;

use super::{JobContext, JobError, JobReport, JobSpec};
use crate::acme::renew::{run_pass, Mode, Outcome};

/// This job as the registry lists it.
pub const JOB: JobSpec = JobSpec {
    name: "renew-certs",
    description:
        "certificates are renewed over ACME when due and monitored ones read; admins are warned before any lapses",
    default_schedule: "*/5 * * * *",
    batched: false,
    default_batch_size: 1,
    per_host: false,
    retry_due: Some(retry_due),
    service: None,
    dry_run: None,
    run,
};

pub fn run(ctx: &mut JobContext<'_>) -> Result<JobReport, JobError> {
    if ctx.config.certificates.is_empty() && ctx.config.monitors.is_empty() {
        return Ok(JobReport::default());
    }
    let reports = run_pass(ctx.conn, ctx.config, None, Mode::Renew)?;
    let renewed = reports.iter().filter(|r| matches!(r.outcome, Outcome::Renewed)).count();
    let problems: Vec<String> = reports
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::DeployFailed { error, failures, .. } => Some(format!(
                "certificate {}: deploy hook failing ({failures} in a row): {error}",
                r.name
            )),
            Outcome::Waiting { last_error, .. } => {
                Some(format!("certificate {}: renewal failing: {last_error}", r.name))
            }
            Outcome::Failed { error } => Some(format!("certificate {}: renewal failed: {error}", r.name)),
            Outcome::Stale { replaced_by, .. } => Some(format!(
                "{}: serving a stale certificate (keywarden installed {replaced_by})",
                r.name
            )),
            Outcome::Unreadable { error } => Some(format!("{}: unreadable: {error}", r.name)),
            _ => None,
        })
        .collect();
    let failing = problems.len();
    info!(
        "renew-certs: {} certificate(s) checked, {renewed} renewed, {failing} failing",
        reports.len()
    );
    Ok(JobReport {
        rows_affected: renewed as u64,
        stopped_early: false,
        problems,
    })
}

/// The earliest retry of a failed renewal (the daemon wakes for it).
pub fn retry_due(conn: &mut crate::db::DbConnection) -> diesel::QueryResult<Option<chrono::NaiveDateTime>> {
    crate::acme::store::earliest_retry(conn)
}
