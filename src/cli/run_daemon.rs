//! `keywarden run`: the daemon, in the foreground.

use std::path::Path;
use std::process::ExitCode;

use super::{load_config, open_database, EXIT_FAILURE};
use crate::daemon::{self, Exit};
use crate::telemetry;

pub fn run(path: &Path) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // What check-config checks on this machine stops the start too: a
    // missing SQLite directory is a configuration error, not an outage to
    // wait out, and a secret file readable by all is refused.
    let problems = config.check_local();
    if !problems.is_empty() {
        for p in problems {
            eprintln!("{p}");
        }
        return ExitCode::from(super::EXIT_CONFIG);
    }
    let database = match open_database(&config) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let telemetry = telemetry::init(config.daemon.log_target, config.daemon.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("keywarden")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let exit = runtime.block_on(async {
        // Handlers go in before anything else, so a reload or stop arriving
        // during startup is never the default action (which would kill us).
        match daemon::signals::install() {
            Ok(signals) => daemon::run(path.to_path_buf(), config, database, telemetry, signals).await,
            Err(e) => {
                tracing::error!("cannot install signal handlers: {e}");
                Exit::Failed
            }
        }
    });
    // Do not wait for blocking job threads here: on a clean stop they are
    // already done, and after a timeout or a second signal we must not wait.
    runtime.shutdown_background();
    match exit {
        Exit::Clean => ExitCode::SUCCESS,
        Exit::Forced(sig) => ExitCode::from(128u8.saturating_add(sig.clamp(0, 127) as u8)),
        Exit::Failed => ExitCode::from(EXIT_FAILURE),
    }
}
