//! `keywarden metrics`: the figures the daemon publishes, read once and
//! printed (for a look, a cron job writing a textfile, or promtool). The
//! daemon's own counters (its job runs) exist only in the daemon.

use std::path::Path;
use std::process::ExitCode;

use super::{connect_current, load_config, open_database, EXIT_FAILURE};
use crate::metrics::{render, Format, JobCounters, Snapshot};

pub fn run(path: &Path, openmetrics: bool) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut conn = match open_database(&config).and_then(|db| connect_current(&db)) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match Snapshot::read(&mut conn, &config, crate::db::now()) {
        Ok(snap) => {
            let format = if openmetrics {
                Format::OpenMetrics
            } else {
                Format::Prometheus
            };
            print!("{}", render(&snap, &JobCounters::default(), format));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: database error: {}", crate::db::describe_error(&e));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
