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
    // On a clean stop the job threads are done: let the runtime drop its
    // tasks on their threads (briefly). After a timeout or a second signal
    // jobs may still run: do not wait for them.
    match exit {
        Exit::Clean => runtime.shutdown_timeout(std::time::Duration::from_secs(2)),
        Exit::Forced(_) | Exit::Failed => runtime.shutdown_background(),
    }
    let code = match exit {
        Exit::Clean => 0,
        Exit::Forced(sig) => 128u8.saturating_add(sig.clamp(0, 127) as u8),
        Exit::Failed => EXIT_FAILURE,
    };
    exit_without_teardown(code)
}

/// Ends the process without the C library's exit handlers. Threads the
/// runtime left (a job past the shutdown timeout, a connection being
/// dropped) may still use OpenSSL and the heap while libpq's and OpenSSL's
/// `atexit` cleanup frees them underneath: "double free or corruption" at a
/// clean SIGTERM, seen in the fault tests. Nothing here needs those
/// handlers: logs went out synchronously, the database commits are done,
/// and stdout and stderr are flushed first.
fn exit_without_teardown(code: u8) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit ends the process at once; no Rust state is used after.
    unsafe { libc::_exit(i32::from(code)) }
}
