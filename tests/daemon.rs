//! The daemon as systemd runs it: the real binary, a NOTIFY_SOCKET bound by
//! the test, real signals, real databases on both backends, real journald.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod support;

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use chrono::TimeDelta;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use keywarden::db::schema::job_runs;
use keywarden::db::DbConnection;
use support::*;

const SECOND: Duration = Duration::from_secs(1);

both_backends!(
    ready_reload_valid_and_invalid_then_stop,
    sigterm_waits_for_the_running_job_and_a_second_process_skips,
    a_second_stop_signal_exits_at_once,
    waits_for_an_unreachable_database_without_ready,
    journald_receives_structured_fields,
    runs_in_process_until_its_shutdown_future,
);

/// expire-keys every second; the other jobs off, so that a test running at
/// a quarter past never sees their runs.
const EVERY_SECOND: &str = "[jobs.expire-keys]\nschedule = \"* * * * * *\"\n\
    [jobs.revoke-grace]\nenabled = false\n[jobs.notify-expiry]\nenabled = false\n[jobs.purge-audit]\nenabled = false\n";

fn ready_reload_valid_and_invalid_then_stop(backend: Backend) {
    let db = TestDb::new(backend);
    let notify = NotifySocket::bind(db.path());
    let config = db.write_config(
        "keywarden.toml",
        "[jobs.expire-keys]\nenabled = false\n[jobs.revoke-grace]\nenabled = false\n[jobs.purge-audit]\nenabled = false\n[jobs.notify-expiry]\nenabled = false\n[jobs.watch-perms]\nenabled = false\n[jobs.renew-certs]\nenabled = false\n",
    );
    let mut daemon = Daemon::start(&config, Some(&notify), &[("WATCHDOG_USEC", "400000")]);

    let ready = notify.wait_for("READY=1", 30 * SECOND);
    assert!(ready.contains("STATUS=") && ready.contains("next: none"), "{ready}");
    notify.wait_for("WATCHDOG=1", 5 * SECOND);

    let mut conn = db.conn();
    let owner = add_user(&mut conn, "a@example.com");
    add_key(
        &mut conn,
        owner,
        "sk_live_v2_first",
        "active",
        ts(-TimeDelta::minutes(1)),
    );

    // A valid reload that enables the job on a new schedule takes effect.
    db.write_config("keywarden.toml", EVERY_SECOND);
    daemon.signal("HUP");
    let reloading = notify.wait_for("RELOADING=1", 5 * SECOND);
    assert!(
        reloading.contains("MONOTONIC_USEC="),
        "RELOADING=1 and MONOTONIC_USEC in one datagram: {reloading}"
    );
    notify.wait_for("READY=1", 5 * SECOND);
    let applied = daemon.wait_for_log("reload applied", 5 * SECOND);
    assert!(applied.contains("jobs.expire-keys: enabled"), "{applied}");
    assert!(applied.contains("\"* * * * * *\""), "{applied}");
    eventually(15 * SECOND, "the reloaded job expires the key", || {
        key_status(&mut conn, "sk_live_v2_first") == "expired"
    });

    // An invalid reload is refused with its place, and the daemon carries on
    // with the configuration it had.
    let broken = db.write_config("keywarden.toml", "[jobs.expire-keys]\nschedule = \"every sunday\"\n");
    daemon.signal("HUP");
    notify.wait_for("RELOADING=1", 5 * SECOND);
    notify.wait_for("READY=1", 5 * SECOND);
    let error = daemon.wait_for_log("reload-error", 5 * SECOND);
    assert!(error.contains(&format!("{}:13:12:", broken.display())), "{error}");
    daemon.wait_for_log("reload refused", 5 * SECOND);
    assert!(daemon.is_running());
    add_key(
        &mut conn,
        owner,
        "sk_live_v2_second",
        "active",
        ts(-TimeDelta::minutes(1)),
    );
    eventually(15 * SECOND, "the old schedule still runs", || {
        key_status(&mut conn, "sk_live_v2_second") == "expired"
    });

    daemon.signal("TERM");
    notify.wait_for("STOPPING=1", 5 * SECOND);
    let status = daemon.wait_exit(30 * SECOND);
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log());
}

/// Holds the database so that the daemon's next run of expire-keys blocks
/// in the middle of its work: a row lock on a due key (PostgreSQL) or the
/// write lock (SQLite). Returns the connection holding it.
fn block_expire_keys(db: &TestDb, conn: &mut DbConnection) -> DbConnection {
    let owner = add_user(conn, "b@example.com");
    add_key(conn, owner, "sk_live_v2_blocked", "active", ts(-TimeDelta::minutes(1)));
    let mut blocker = db.database().connect().unwrap();
    blocker
        .batch_execute(if db.backend == Backend::Postgres {
            "BEGIN"
        } else {
            "BEGIN IMMEDIATE"
        })
        .unwrap();
    if db.backend == Backend::Postgres {
        blocker
            .batch_execute("SELECT id FROM api_keys WHERE prefix = 'sk_live_v2_blocked' FOR UPDATE")
            .unwrap();
    }
    blocker
}

fn start_blocked_run(db: &TestDb) -> (DbConnection, DbConnection, Daemon) {
    let mut conn = db.conn();
    let blocker = block_expire_keys(db, &mut conn);
    let config = db.write_config("keywarden.toml", EVERY_SECOND);
    let daemon = Daemon::start(&config, None, &[]);
    daemon.wait_for_log("job expire-keys started", 30 * SECOND);
    if db.backend == Backend::Postgres {
        // The run is recorded, then blocks on the locked row.
        eventually(10 * SECOND, "the run is recorded as running", || {
            job_runs::table
                .filter(job_runs::outcome.eq("running"))
                .count()
                .get_result::<i64>(&mut conn)
                .unwrap()
                == 1
        });
    }
    std::thread::sleep(Duration::from_millis(500));
    (conn, blocker, daemon)
}

fn sigterm_waits_for_the_running_job_and_a_second_process_skips(backend: Backend) {
    let db = TestDb::new(backend);
    let (mut conn, mut blocker, mut daemon) = start_blocked_run(&db);

    daemon.signal("TERM");
    daemon.wait_for_log("received SIGTERM", 5 * SECOND);
    std::thread::sleep(1500 * std::time::Duration::from_micros(1000));
    assert!(
        daemon.is_running(),
        "the daemon must wait for its running job; log:\n{}",
        daemon.log()
    );

    if backend == Backend::Postgres {
        // A second process wanting the same job meanwhile skips it.
        let config = db.path().join("keywarden.toml");
        let out = keywarden(&config, &["jobs", "run", "expire-keys"]);
        assert_eq!(
            out.status.code(),
            Some(75),
            "stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    blocker.batch_execute("COMMIT").unwrap();
    let status = daemon.wait_exit(30 * SECOND);
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log());
    let runs: Vec<(String, i64)> = job_runs::table
        .select((job_runs::outcome, job_runs::rows_affected))
        .load(&mut conn)
        .unwrap();
    assert_eq!(
        runs,
        vec![("ok".to_string(), 1)],
        "the interrupted-by-signal run finished its work"
    );
    assert_eq!(key_status(&mut conn, "sk_live_v2_blocked"), "expired");
}

fn a_second_stop_signal_exits_at_once(backend: Backend) {
    let db = TestDb::new(backend);
    let (_conn, mut blocker, mut daemon) = start_blocked_run(&db);
    daemon.signal("TERM");
    daemon.wait_for_log("received SIGTERM", 5 * SECOND);
    daemon.signal("TERM");
    let status = daemon.wait_exit(5 * SECOND);
    assert_eq!(status.code(), Some(128 + 15), "log:\n{}", daemon.log());
    assert!(status.signal().is_none());
    let _ = blocker.batch_execute("ROLLBACK");
}

fn waits_for_an_unreachable_database_without_ready(backend: Backend) {
    let db = TestDb::new(backend);
    let notify = NotifySocket::bind(db.path());
    let url = match backend {
        // A port nothing listens on, and a database file that cannot be
        // opened (a directory stands in its place). A directory that does
        // not exist is a configuration error instead (exit 78, tests/cli.rs).
        Backend::Postgres => "postgres://postgres@127.0.0.1:1/none".to_string(),
        Backend::Sqlite => {
            let blocked = db.path().join("blocked.db");
            std::fs::create_dir_all(&blocked).unwrap();
            format!("sqlite://{}", blocked.display())
        }
    };
    let config = db.path().join("down.toml");
    std::fs::write(
        &config,
        format!("[daemon]\nlog_target = \"stderr\"\n[database]\nurl = \"{url}\"\nconnect_timeout = \"1s\"\n"),
    )
    .unwrap();
    let mut daemon = Daemon::start(&config, Some(&notify), &[]);
    let status = notify.wait_for("STATUS=waiting for the database", 15 * SECOND);
    assert!(!status.contains("READY=1"));
    daemon.wait_for_nth_log("database not ready", 2, 15 * SECOND);
    assert!(daemon.is_running(), "a database outage at start is retried, not fatal");
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(10 * SECOND).code(), Some(0));
}

fn journald_receives_structured_fields(backend: Backend) {
    let db = TestDb::new(backend);
    ensure_journald();
    let mut conn = db.conn();
    let owner = add_user(&mut conn, "j@example.com");
    add_key(
        &mut conn,
        owner,
        "sk_live_v2_journal",
        "active",
        ts(-TimeDelta::minutes(1)),
    );
    // log_target = "auto" with JOURNAL_STREAM naming our stderr, as systemd
    // sets it: the daemon must log to journald natively, not to stderr.
    let config = db.write_config("keywarden.toml", EVERY_SECOND).to_path_buf();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("log_target = \"stderr\"", "log_target = \"auto\"");
    std::fs::write(&config, text).unwrap();
    let stderr_path = db.path().join("stderr.log");
    let stderr_file = std::fs::File::create(&stderr_path).unwrap();
    let meta = stderr_file.metadata().unwrap();
    let mut child = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env_remove("NOTIFY_SOCKET")
        .stderr(stderr_file)
        .spawn()
        .unwrap();
    let pid = child.id();
    eventually(20 * SECOND, "a run is recorded", || {
        job_runs::table
            .filter(job_runs::outcome.eq("ok"))
            .count()
            .get_result::<i64>(&mut conn)
            .unwrap()
            >= 1
    });
    let (run_id, rows): (String, i64) = job_runs::table
        .filter(job_runs::outcome.eq("ok"))
        .order(job_runs::id)
        .select((job_runs::run_id, job_runs::rows_affected))
        .first(&mut conn)
        .unwrap();
    assert_eq!(rows, 1);
    let mut finished = None;
    eventually(10 * SECOND, "journald has the run's last line", || {
        finished = journal_entries(pid, &format!("RUN_ID={run_id}"))
            .into_iter()
            .find(|e| e["OUTCOME"] == "ok");
        finished.is_some()
    });
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let status = child.wait().unwrap();
    let entry = finished.unwrap();
    assert_eq!(entry["JOB"], "expire-keys", "{entry}");
    assert_eq!(entry["ROWS_AFFECTED"], "1", "{entry}");
    assert!(
        entry["DURATION_MS"].as_str().is_some_and(|d| d.parse::<u64>().is_ok()),
        "{entry}"
    );
    assert_eq!(entry["PRIORITY"], "5", "{entry}");
    assert_eq!(entry["SYSLOG_IDENTIFIER"], "keywarden", "{entry}");
    // The filter an admin would use finds it too.
    assert!(!journal_entries(pid, "JOB=expire-keys").is_empty());
    // Daemon events carry the MESSAGE_ID that the catalog explains.
    let started = journal_entries(
        pid,
        &format!("MESSAGE_ID={}", keywarden::telemetry::message_ids::STARTED),
    );
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(status.code(), Some(0));
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(
        !stderr.contains("job expire-keys finished"),
        "logs went to stderr instead of journald:\n{stderr}"
    );
}

/// The daemon driven from this process, as a library: `daemon::run_until`
/// with a future for its stop. It migrates, runs a job on schedule, and
/// stops cleanly when the future completes, every run it started finished.
fn runs_in_process_until_its_shutdown_future(backend: Backend) {
    let db = TestDb::new(backend);
    let path = db.write_config("keywarden.toml", EVERY_SECOND);
    let config = keywarden::jobs::load_config(&path).expect("config");
    let mut conn = db.conn();
    let owner = add_user(&mut conn, "inproc@example.com");
    add_key(
        &mut conn,
        owner,
        "sk_live_v2_inproc",
        "active",
        ts(-TimeDelta::minutes(1)),
    );

    let telemetry = keywarden::telemetry::init(keywarden::config::LogTarget::Stderr, keywarden::config::LogLevel::Warn);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = runtime.spawn(keywarden::daemon::run_until(
        path.clone(),
        config,
        db.database(),
        telemetry,
        async {
            let _ = stopped.await;
        },
    ));
    eventually(30 * SECOND, "the in-process daemon expires the key", || {
        key_status(&mut conn, "sk_live_v2_inproc") == "expired"
    });
    stop.send(()).expect("the daemon is still running");
    let exit = runtime
        .block_on(async { tokio::time::timeout(30 * SECOND, daemon).await })
        .expect("the daemon stops within 30 s of its shutdown future")
        .expect("the daemon task did not panic");
    assert_eq!(exit, keywarden::daemon::Exit::Clean);
    let unfinished: i64 = job_runs::table
        .filter(job_runs::finished_at.is_null())
        .count()
        .get_result(&mut conn)
        .expect("count");
    assert_eq!(unfinished, 0, "every run the daemon started has finished");
    runtime.shutdown_timeout(5 * SECOND);
}
