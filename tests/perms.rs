//! Permission drift on real files in temporary directories, with the real
//! daemon (inotify), the real command line and both databases.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use diesel::prelude::*;
use keywarden::db::schema::{notifications, permission_drift, permission_events};
use keywarden::db::DbConnection;
use support::*;

const SECOND: std::time::Duration = std::time::Duration::from_secs(1);

both_backends!(
    a_chmod_is_recorded_and_put_back_and_a_chown_is_caught,
    planted_symlinks_and_hard_links_get_nowhere,
    a_file_in_a_just_created_directory_is_caught,
    an_overflow_leads_to_a_rescan_that_finds_everything,
    rescans_record_once_resolve_and_digest_for_admins,
    past_the_inotify_watch_limit_unwatched_directories_are_rescanned,
    drift_reaches_journald_with_its_fields,
    a_watched_directory_swapped_for_a_symlink_yields_nothing_from_outside,
);

/// A watched directory moved away and replaced by a symlink to elsewhere:
/// events still arrive for the old directory under its old name, and they
/// must never be answered with what the symlink leads to.
fn a_watched_directory_swapped_for_a_symlink_yields_nothing_from_outside(backend: Backend) {
    let db = TestDb::new(backend);
    let root = app_root(db.path());
    let outside = db.path().join("outside/conf");
    write(&outside.join("database.json"), 0o644);
    let mut conn = db.conn();
    let mut daemon = start_watching(&db, &policy(&root, false));
    // Moved within the root: still watched, under its old name.
    std::fs::rename(root.join("config"), root.join("config.old")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("config")).unwrap();
    let old = root.join("config.old/database.json");
    for mode in [0o640, 0o600].repeat(5) {
        chmod(&old, mode);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The watcher is working: a real change in the root is caught.
    let env = root.join(".env");
    chmod(&env, 0o644);
    eventually(10 * SECOND, "the watcher answers", || {
        !actions_for(&mut conn, &env).is_empty()
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    let swapped = root.join("config/database.json").display().to_string();
    let seen: Vec<(String, Option<i32>)> = permission_events::table
        .filter(permission_events::path.eq(&swapped))
        .select((permission_events::action, permission_events::found_mode))
        .load(&mut conn)
        .unwrap();
    assert!(
        seen.iter().all(|(_, mode)| *mode != Some(0o644)),
        "the mode of a file outside the root was recorded: {seen:?}"
    );
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(30 * SECOND).code(), Some(0));
}

fn drift_reaches_journald_with_its_fields(backend: Backend) {
    let db = TestDb::new(backend);
    ensure_journald();
    let root = app_root(db.path());
    let mut conn = db.conn();
    let config = db.write_config("keywarden.toml", &format!("{QUIET_JOBS}{}", policy(&root, true)));
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("log_target = \"stderr\"", "log_target = \"journald\"");
    std::fs::write(&config, text).unwrap();
    let mut daemon = Daemon::start(&config, None, &[]);
    let env = root.join(".env");
    // The start scan is over once the daemon reacts to a change.
    eventually(30 * SECOND, "the daemon watches", || {
        chmod(&env, 0o644);
        std::thread::sleep(std::time::Duration::from_millis(300));
        actions_for(&mut conn, &env).contains(&"remediated".to_string())
    });
    let path = format!("PATH={}", env.display());
    let mut entries = Vec::new();
    eventually(10 * SECOND, "journald has the drift", || {
        entries = journal_entries(daemon.pid(), &path);
        entries.iter().any(|e| e["ACTION"] == "detected") && entries.iter().any(|e| e["ACTION"] == "remediated")
    });
    let detected = entries.iter().find(|e| e["ACTION"] == "detected").unwrap();
    assert_eq!(detected["FOUND_MODE"], "0644", "{detected}");
    assert_eq!(detected["FOUND_UID"], "0", "{detected}");
    assert_eq!(detected["PRIORITY"], "4", "{detected}");
    assert!(detected["RULE"].as_str().unwrap().contains("secrets"), "{detected}");
    assert!(
        detected["EXPECTED"].as_str().unwrap().contains("mode 0600"),
        "{detected}"
    );
    assert_eq!(
        detected["MESSAGE_ID"],
        keywarden::telemetry::message_ids::PERMISSION_DRIFT,
        "{detected}"
    );
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(30 * SECOND).code(), Some(0));
}

fn past_the_inotify_watch_limit_unwatched_directories_are_rescanned(backend: Backend) {
    let db = TestDb::new(backend);
    let root = app_root(db.path());
    let secrets: Vec<PathBuf> = (0..12).map(|i| root.join(format!("svc{i}/.env"))).collect();
    for s in &secrets {
        write(s, 0o600);
    }
    let mut conn = db.conn();
    let config = db.write_config(
        "keywarden.toml",
        &format!(
            "{QUIET_JOBS}{}",
            policy(&root, false).replace("roots = [", "fallback_rescan = \"10s\"\nroots = [")
        ),
    );
    // A user namespace of its own, whose inotify limit (Linux 5.11+) is 5
    // watches: the tree has 15 directories.
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--user", "--map-root-user", "sh", "-c"]).arg(format!(
        "echo 5 > /proc/sys/user/max_inotify_watches && exec {BIN} --config {} run",
        config.display()
    ));
    let mut daemon = Daemon::spawn(cmd, None, &[]);
    daemon.wait_for_log("inotify watch limit", 60 * SECOND);
    daemon.wait_for_log("watch-perms start:", 60 * SECOND);
    for s in &secrets {
        chmod(s, 0o644);
    }
    // Watched directories report at once; the rest within a fallback rescan.
    eventually(40 * SECOND, "every drifted secret is recorded", || {
        let seen = events(&mut conn);
        secrets.iter().all(|p| {
            seen.iter()
                .any(|(q, a)| *q == p.display().to_string() && a == "detected")
        })
    });
    assert!(
        daemon.log().contains("fallback rescan of unwatched directories"),
        "{}",
        daemon.log()
    );
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(30 * SECOND).code(), Some(0));
}

const QUIET_JOBS: &str = "[jobs.expire-keys]\nenabled = false\n[jobs.revoke-grace]\nenabled = false\n\
    [jobs.notify-expiry]\nenabled = false\n[jobs.purge-audit]\nenabled = false\n";

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn write(p: &Path, mode: u32) {
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(p, "x").unwrap();
    chmod(p, mode);
}

/// (path, action) of every event, oldest first.
fn events(conn: &mut DbConnection) -> Vec<(String, String)> {
    permission_events::table
        .order(permission_events::id)
        .select((permission_events::path, permission_events::action))
        .load(conn)
        .unwrap()
}

fn actions_for(conn: &mut DbConnection, path: &Path) -> Vec<String> {
    let p = path.display().to_string();
    events(conn)
        .into_iter()
        .filter(|(q, _)| *q == p)
        .map(|(_, a)| a)
        .collect()
}

/// A root laid out like the guide's application, all compliant.
fn app_root(dir: &Path) -> PathBuf {
    let root = dir.join("app");
    std::fs::create_dir_all(root.join("logs")).unwrap();
    std::fs::create_dir_all(root.join("config")).unwrap();
    chmod(&root.join("logs"), 0o700);
    write(&root.join(".env"), 0o600);
    write(&root.join("config/database.json"), 0o600);
    write(&root.join("server.js"), 0o644);
    write(&root.join("logs/app.log"), 0o600);
    root
}

fn policy(root: &Path, remediate: bool) -> String {
    format!(
        r#"[permissions]
roots = ["{root}"]

[[permissions.rules]]
name = "secrets"
paths = ["**/.env", "config/*.json"]
type = "file"
mode = "0600"
owner = "root"
remediate = {remediate}

[[permissions.rules]]
name = "logs"
paths = ["logs"]
type = "directory"
mode = "0700"
"#,
        root = root.display()
    )
}

fn start_watching(db: &TestDb, extra: &str) -> Daemon {
    let config = db.write_config("keywarden.toml", &format!("{QUIET_JOBS}{extra}"));
    let daemon = Daemon::start(&config, None, &[]);
    daemon.wait_for_log("watch-perms start:", 60 * SECOND);
    daemon
}

fn a_chmod_is_recorded_and_put_back_and_a_chown_is_caught(backend: Backend) {
    let db = TestDb::new(backend);
    let root = app_root(db.path());
    let mut conn = db.conn();
    let mut daemon = start_watching(&db, &policy(&root, true));
    assert!(events(&mut conn).is_empty(), "a compliant tree records nothing");

    let env = root.join(".env");
    chmod(&env, 0o644);
    eventually(10 * SECOND, "the chmod is recorded and put back", || {
        actions_for(&mut conn, &env) == ["detected", "remediated"]
    });
    assert_eq!(mode_of(&env), 0o600);
    let found: (Option<i32>, String, String) = permission_events::table
        .filter(permission_events::action.eq("detected"))
        .select((
            permission_events::found_mode,
            permission_events::rules,
            permission_events::expected,
        ))
        .first(&mut conn)
        .unwrap();
    assert_eq!(found.0, Some(0o644));
    assert!(found.1.contains("secrets"), "{found:?}");
    assert!(found.2.contains("mode 0600"), "{found:?}");

    // A chown to nobody is caught (inotify reports it like a chmod) and the
    // owner put back.
    let db_json = root.join("config/database.json");
    std::os::unix::fs::lchown(&db_json, Some(65534), Some(65534)).unwrap();
    eventually(10 * SECOND, "the chown is recorded", || {
        actions_for(&mut conn, &db_json) == ["detected", "remediated"]
    });
    let uid: Option<i64> = permission_events::table
        .filter(permission_events::path.eq(db_json.display().to_string()))
        .filter(permission_events::action.eq("detected"))
        .select(permission_events::found_uid)
        .first(&mut conn)
        .unwrap();
    assert_eq!(uid, Some(65534));
    assert_eq!(std::fs::metadata(&db_json).unwrap().uid(), 0);
    assert_eq!(mode_of(&db_json), 0o600);

    // Without remediation for logs: recorded, then resolved by a person.
    let logs = root.join("logs");
    chmod(&logs, 0o755);
    eventually(10 * SECOND, "the directory drift is recorded", || {
        actions_for(&mut conn, &logs) == ["detected"]
    });
    assert_eq!(
        mode_of(&logs),
        0o755,
        "no remediation where the rule does not ask for it"
    );
    chmod(&logs, 0o700);
    eventually(10 * SECOND, "fixed by hand, resolved", || {
        actions_for(&mut conn, &logs) == ["detected", "resolved"]
    });
    let open: i64 = permission_drift::table.count().get_result(&mut conn).unwrap();
    assert_eq!(open, 0);

    // Journald-style fields are on the log lines too.
    let log = daemon.log();
    assert!(
        log.contains("permission drift at") && log.contains(&env.display().to_string()),
        "{log}"
    );
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(30 * SECOND).code(), Some(0));
}

fn planted_symlinks_and_hard_links_get_nowhere(backend: Backend) {
    let db = TestDb::new(backend);
    let root = app_root(db.path());
    let outside = db.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let target = outside.join("shadow");
    write(&target, 0o644);
    let mut conn = db.conn();
    let mut daemon = start_watching(&db, &policy(&root, true));

    // A symlink in place of a secret file: recorded as the wrong type,
    // remediation refused, the target untouched.
    let env = root.join(".env");
    std::fs::remove_file(&env).unwrap();
    std::os::unix::fs::symlink(&target, &env).unwrap();
    eventually(10 * SECOND, "the planted symlink is refused", || {
        actions_for(&mut conn, &env) == ["detected", "remediation-refused"]
    });
    assert_eq!(mode_of(&target), 0o644, "the symlink's target was changed");

    // A hard link to a secret: refused, both names keep their mode.
    let db_json = root.join("config/database.json");
    let twin = outside.join("database.json");
    std::fs::hard_link(&db_json, &twin).unwrap();
    chmod(&db_json, 0o644);
    eventually(10 * SECOND, "the hard-linked file is refused", || {
        actions_for(&mut conn, &db_json) == ["detected", "remediation-refused"]
    });
    assert_eq!(mode_of(&twin), 0o644);
    let detail: Option<String> = permission_events::table
        .filter(permission_events::path.eq(db_json.display().to_string()))
        .filter(permission_events::action.eq("remediation-refused"))
        .select(permission_events::detail)
        .first(&mut conn)
        .unwrap();
    assert!(detail.unwrap_or_default().contains("hard links"));
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(30 * SECOND).code(), Some(0));

    // A symlink in a parent directory: `perms scan --fix` walks past it and
    // remediation through it is refused; the real file outside is untouched.
    let elsewhere = outside.join("conf");
    std::fs::create_dir_all(&elsewhere).unwrap();
    write(&elsewhere.join("app.json"), 0o644);
    std::fs::remove_dir_all(root.join("config")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, root.join("config")).unwrap();
    let config = db.path().join("keywarden.toml");
    let out = keywarden(&config, &["perms", "scan", "--fix"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert_eq!(mode_of(&elsewhere.join("app.json")), 0o644);
    assert!(!text.contains("outside/conf"), "the scan followed a symlink: {text}");
    let policy =
        keywarden::perms::Policy::compile(&keywarden::jobs::load_config(&config).unwrap().permissions).unwrap();
    match keywarden::perms::remediate::remediate(&policy, &root.join("config/app.json")) {
        keywarden::perms::Remedy::Refused(why) => assert!(why.contains("symlink"), "{why}"),
        other => panic!("remediation through a symlinked parent: {other:?}"),
    }
    assert_eq!(mode_of(&elsewhere.join("app.json")), 0o644);
}

fn a_file_in_a_just_created_directory_is_caught(backend: Backend) {
    let db = TestDb::new(backend);
    let root = app_root(db.path());
    let mut conn = db.conn();
    let mut daemon = start_watching(&db, &policy(&root, false));
    // Files created at once inside new (nested) directories, before any
    // watch on them can exist: the scan after watching finds them.
    let mut planted = Vec::new();
    for i in 0..20 {
        let dir = root.join(format!("tenant{i}/deep"));
        std::fs::create_dir_all(&dir).unwrap();
        let env = dir.join(".env");
        write(&env, 0o644);
        planted.push(env);
    }
    eventually(20 * SECOND, "every planted file is recorded", || {
        let seen = events(&mut conn);
        planted.iter().all(|p| {
            seen.iter()
                .any(|(q, a)| *q == p.display().to_string() && a == "detected")
        })
    });
    // And each only once.
    let detected = events(&mut conn).iter().filter(|(_, a)| a == "detected").count();
    assert_eq!(detected, planted.len());
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(30 * SECOND).code(), Some(0));
}

fn an_overflow_leads_to_a_rescan_that_finds_everything(backend: Backend) {
    let db = TestDb::new(backend);
    let root = app_root(db.path());
    let many = root.join("many");
    std::fs::create_dir_all(&many).unwrap();
    let files: Vec<PathBuf> = (0..1500).map(|i| many.join(format!("s{i}.key"))).collect();
    for f in &files {
        write(f, 0o600);
    }
    let mut conn = db.conn();
    let mut daemon = start_watching(&db, &policy(&root, false));
    // Freeze the daemon so nothing drains the kernel queue, then make far
    // more events than it holds (fs.inotify.max_queued_events, 16384 by
    // default): the kernel drops them and queues an overflow instead. (Two
    // identical events in a row are merged, so each pass touches each file
    // once.)
    daemon.signal("STOP");
    for pass in 0..12 {
        for f in &files {
            chmod(f, if pass % 2 == 0 { 0o640 } else { 0o600 });
        }
    }
    for f in &files {
        chmod(f, 0o644);
    }
    daemon.signal("CONT");
    daemon.wait_for_log("inotify queue overflowed", 30 * SECOND);
    eventually(30 * SECOND, "the rescan finds every drifted file", || {
        let n: i64 = permission_drift::table.count().get_result(&mut conn).unwrap();
        n == files.len() as i64
    });
    daemon.signal("TERM");
    let status = daemon.wait_exit(30 * SECOND);
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", daemon.log());
}

fn rescans_record_once_resolve_and_digest_for_admins(backend: Backend) {
    let db = TestDb::new(backend);
    let root = app_root(db.path());
    let uploads = root.join("uploads");
    std::fs::create_dir_all(&uploads).unwrap();
    chmod(&uploads, 0o777);
    chmod(&root.join(".env"), 0o644);
    let mut conn = db.conn();
    let extra = format!(
        "[notifications]\nfile_dir = \"{}\"\nadmin_emails = [\"ops@example.com\"]\n\n{}",
        db.path().join("outbox").display(),
        policy(&root, false)
    );
    let config = db.write_config("keywarden.toml", &extra);
    let run = |conn: &mut DbConnection| {
        let out = keywarden(&config, &["jobs", "run", "watch-perms"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        events(conn)
    };
    let first = run(&mut conn);
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(first.contains(&(uploads.display().to_string(), "detected".into())));
    assert!(first.contains(&(root.join(".env").display().to_string(), "detected".into())));
    // The world-writable directory was caught by the global rule.
    let expected: String = permission_events::table
        .filter(permission_events::path.eq(uploads.display().to_string()))
        .select(permission_events::expected)
        .first(&mut conn)
        .unwrap();
    assert!(expected.contains("not world-writable"), "{expected}");
    // One digest for the admin, listing both.
    let digests: Vec<String> = notifications::table
        .filter(notifications::subject_kind.eq("permission_drift"))
        .select(notifications::payload)
        .load(&mut conn)
        .unwrap();
    assert_eq!(digests.len(), 1);
    assert!(
        digests[0].contains("uploads") && digests[0].contains(".env"),
        "{}",
        digests[0]
    );

    // Nothing changed: nothing new, and no second digest within the interval.
    assert_eq!(run(&mut conn).len(), 2);
    chmod(&uploads, 0o750);
    let third = run(&mut conn);
    assert_eq!(third.len(), 3);
    assert_eq!(third[2], (uploads.display().to_string(), "resolved".into()));
    let n: i64 = notifications::table.count().get_result(&mut conn).unwrap();
    assert_eq!(n, 1, "digests are at most one per interval");

    // The command line shows the history and the state.
    let out = keywarden(&config, &["perms", "events", "--since", "1h"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("resolved") && text.contains("uploads"), "{text}");
    let out = keywarden(&config, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Permission drift:") && text.contains("1 open drift"),
        "{text}"
    );
    // The one-shot audit agrees, and --fix puts it right.
    let out = keywarden(&config, &["perms", "scan"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains(".env: found file 0644"));
    let out = keywarden(&config, &["perms", "scan", "--fix", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["violations"][0]["remedy"], "fixed");
    assert_eq!(mode_of(&root.join(".env")), 0o600);
    assert_eq!(keywarden(&config, &["perms", "scan"]).status.code(), Some(0));
}

#[test]
fn perms_scan_needs_no_database_and_reports_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let root = app_root(dir.path());
    let uploads = root.join("uploads");
    std::fs::create_dir_all(&uploads).unwrap();
    chmod(&uploads, 0o777);
    let config = dir.path().join("k.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"postgres://nobody@127.0.0.1:1/none\"\n{}",
            policy(&root, false)
        ),
    )
    .unwrap();
    let out = keywarden(&config, &["perms", "scan"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("uploads: found directory 0777"), "{text}");
    assert!(text.contains("not world-writable [global]"), "{text}");

    std::fs::write(
        &config,
        "[permissions]\nroots = [\"/etc/hostname\"]\n\n[[permissions.rules]]\npaths = [\"x\"]\nmode = 600\n",
    )
    .unwrap();
    let out = keywarden(&config, &["check-config"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("k.toml:6:8:") && err.contains("quoted octal"), "{err}");
}

/// A file name holding a newline and an escape sequence cannot forge a line
/// of `perms scan` or reach the terminal raw; `--json` keeps the exact name.
#[test]
fn file_names_cannot_forge_scan_output() {
    let dir = tempfile::tempdir().unwrap();
    let root = app_root(dir.path());
    let evil = root.join("uploads/x\nconfig/database.json: found file 0600; expected 0600 [secrets]\x1b[2J");
    write(&evil, 0o666);
    let config = dir.path().join("k.toml");
    std::fs::write(&config, policy(&root, false)).unwrap();
    let out = keywarden(&config, &["perms", "scan"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        !text.lines().any(|l| l.starts_with("config/database.json")),
        "a forged line: {text}"
    );
    assert!(
        !text.contains('\x1b'),
        "an escape sequence reached the output: {text:?}"
    );
    assert!(
        text.contains("x\\nconfig/database.json") && text.contains("\\u{1b}[2J"),
        "{text}"
    );
    let out = keywarden(&config, &["perms", "scan", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json.to_string().contains("x\\nconfig/database.json"), "{json}");
}
