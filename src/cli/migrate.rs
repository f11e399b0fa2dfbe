//! `keywarden migrate`: applies pending migrations (the daemon also does at start).

use std::path::Path;
use std::process::ExitCode;

use super::{load_config, open_database, EXIT_FAILURE};
use crate::db::migrate;

pub fn run(path: &Path) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let database = match open_database(&config) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let result = database.connect().and_then(|mut conn| migrate::run_pending(&mut conn));
    match result {
        Ok(applied) if applied.is_empty() => {
            println!("schema is up to date");
            ExitCode::SUCCESS
        }
        Ok(applied) => {
            for v in &applied {
                println!("applied {v}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
