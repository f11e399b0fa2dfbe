//! What a process could not write to `job_runs` while the database was
//! away, kept in memory and written by the first run that connects again.
//!
//! Two things go missing in an outage: the end of a run the outage cut off
//! (its row would otherwise stay `running` until the next run closes it as
//! "the process running it stopped", which is not what happened), and the
//! runs that could not start at all because no connection could be made.
//! The first are recorded with their real outcome and the words "cut off by
//! a database outage"; the second as one `failed` summary row per job
//! ("N run(s) could not start ..."), so `jobs list` and the failure streak
//! see the outage.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use tracing::info;

use super::history;
use super::Trigger;
use crate::db::schema::job_runs;
use crate::db::DbConnection;

/// The end of a run that could not be written.
#[derive(Debug, Clone)]
struct Finish {
    run_id: String,
    outcome: &'static str,
    rows: u64,
    error: String,
    finished_at: NaiveDateTime,
}

/// Runs of one job that could not start.
#[derive(Debug, Clone)]
struct Missed {
    host: String,
    count: u64,
    first_at: NaiveDateTime,
    last_at: NaiveDateTime,
    last_error: String,
}

#[derive(Default)]
struct Ledger {
    finishes: Vec<Finish>,
    missed: BTreeMap<&'static str, Missed>,
}

/// Bounded: a process that never reaches its database again must not grow.
const MAX_FINISHES: usize = 1000;

static LEDGER: Mutex<Ledger> = Mutex::new(Ledger {
    finishes: Vec::new(),
    missed: BTreeMap::new(),
});

fn ledger() -> std::sync::MutexGuard<'static, Ledger> {
    LEDGER.lock().unwrap_or_else(|p| p.into_inner())
}

/// Remembers the end of `run_id`, which could not be written.
pub fn finish_cut_off(run_id: &str, outcome: &'static str, rows: u64, error: Option<&str>, at: NaiveDateTime) {
    let mut l = ledger();
    if l.finishes.len() >= MAX_FINISHES {
        l.finishes.remove(0);
    }
    let error = match error {
        Some(e) => format!("cut off by a database outage: {e}"),
        None => "finished, but a database outage kept the end from being recorded".to_string(),
    };
    l.finishes.push(Finish {
        run_id: run_id.to_string(),
        outcome,
        rows,
        error,
        finished_at: at,
    });
}

/// Counts a run of `job` that could not start; returns how many have been
/// missed in a row.
pub fn missed_start(job: &'static str, host: &str, error: &str, at: NaiveDateTime) -> u64 {
    let mut l = ledger();
    let m = l.missed.entry(job).or_insert_with(|| Missed {
        host: host.to_string(),
        count: 0,
        first_at: at,
        last_at: at,
        last_error: String::new(),
    });
    m.count += 1;
    m.last_at = at;
    m.last_error = error.to_string();
    m.count
}

/// Writes everything remembered. What cannot be written stays for the next
/// attempt.
pub fn flush(conn: &mut DbConnection) -> QueryResult<()> {
    let (finishes, missed) = {
        let mut l = ledger();
        (std::mem::take(&mut l.finishes), std::mem::take(&mut l.missed))
    };
    if finishes.is_empty() && missed.is_empty() {
        return Ok(());
    }
    let mut left = Ledger::default();
    let mut failure = None;
    for f in finishes {
        if failure.is_some() {
            left.finishes.push(f);
            continue;
        }
        // A replica may have closed the row as interrupted meanwhile; the
        // process that ran it knows better.
        let written = diesel::update(job_runs::table)
            .filter(job_runs::run_id.eq(&f.run_id))
            .filter(job_runs::outcome.eq_any(["running", "interrupted"]))
            .set((
                job_runs::outcome.eq(f.outcome),
                job_runs::rows_affected.eq(i64::try_from(f.rows).unwrap_or(i64::MAX)),
                job_runs::error.eq(Some(&f.error)),
                job_runs::finished_at.eq(Some(f.finished_at)),
            ))
            .execute(conn);
        match written {
            Ok(_) => info!(run_id = %f.run_id, "recorded the end of run {}, which a database outage cut off", f.run_id),
            Err(e) => {
                failure = Some(e);
                left.finishes.push(f);
            }
        }
    }
    for (job, m) in missed {
        if failure.is_some() {
            left.missed.insert(job, m);
            continue;
        }
        let run_id = uuid::Uuid::new_v4().simple().to_string();
        let error = format!(
            "{} run(s) could not start between {} and {} UTC: {}",
            m.count,
            m.first_at.format("%Y-%m-%d %H:%M:%S"),
            m.last_at.format("%Y-%m-%d %H:%M:%S"),
            m.last_error
        );
        let written = history::record_start(conn, &run_id, job, &m.host, Trigger::Schedule, m.first_at)
            .and_then(|()| history::record_finish(conn, &run_id, "failed", 0, Some(&error), m.last_at));
        match written {
            Ok(()) => info!(job, "job {job}: {error}"),
            Err(e) => {
                failure = Some(e);
                left.missed.insert(job, m);
            }
        }
    }
    if !left.finishes.is_empty() || !left.missed.is_empty() {
        let mut l = ledger();
        left.finishes.append(&mut l.finishes);
        for (job, newer) in std::mem::take(&mut l.missed) {
            match left.missed.get_mut(job) {
                Some(m) => {
                    m.count += newer.count;
                    m.last_at = newer.last_at;
                    m.last_error = newer.last_error;
                }
                None => {
                    left.missed.insert(job, newer);
                }
            }
        }
        *l = left;
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
