//! What only this daemon knows: its job runs by outcome and the rows they
//! affected, since it started (Prometheus counters reset with the process).

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Job runs of this process, by job and outcome.
#[derive(Debug, Default)]
pub struct JobCounters {
    inner: Mutex<BTreeMap<(&'static str, &'static str), Tally>>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub runs: u64,
    pub rows: u64,
}

impl JobCounters {
    /// One run of `job` ended with `outcome` (`ok`, `failed`, `skipped`).
    pub fn record(&self, job: &'static str, outcome: &'static str, rows: u64) {
        if let Ok(mut map) = self.inner.lock() {
            let t = map.entry((job, outcome)).or_default();
            t.runs += 1;
            t.rows += rows;
        }
    }

    /// Every (job, outcome) seen, in order.
    pub fn read(&self) -> Vec<((&'static str, &'static str), Tally)> {
        self.inner
            .lock()
            .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default()
    }
}
