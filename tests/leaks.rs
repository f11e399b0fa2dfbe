//! A lifecycle with known secret values, then a search for them everywhere
//! they must not be: every command's output (but the one line that shows a
//! new key), the daemon's journal entries, a dump of the database and the
//! mail the SMTP server received.
//!
//! The secrets: a database password with `%` and quotes (PostgreSQL; the
//! test server trusts loopback, so any password connects), an SMTP password
//! (the test's server requires the login, over STARTTLS), and the secret
//! halves of the API keys made along the way.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod support;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

both_backends!(no_secret_reaches_an_output_a_log_a_dump_or_an_email);

const DB_PASSWORD: &str = "db%41pa'ss%zz-Leak-Test-1";
const SMTP_PASSWORD: &str = "smtp-Leak-Test-2 %25 \"q\"";

fn run(config: &Path, args: &[&str], stdin: Option<&str>) -> (String, String) {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("keywarden");
    if let Some(input) = stdin {
        let _ = child.stdin.take().expect("stdin").write_all(input.as_bytes());
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("wait");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn secret_file(dir: &Path, name: &str, value: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).expect("write secret");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

fn no_secret_reaches_an_output_a_log_a_dump_or_an_email(backend: Backend) {
    ensure_journald();
    let db = TestDb::new(backend);
    let _ = db.conn();
    let (ca, cert, key) = make_test_pki(db.path());
    let sink = SmtpSink::start_full(db.path(), Some((&cert, &key)), false, Some(SMTP_PASSWORD));
    let smtp_pw = secret_file(db.path(), "smtp-password", SMTP_PASSWORD);
    let db_pw = secret_file(db.path(), "db-password", DB_PASSWORD);
    let password_line = match backend {
        Backend::Postgres => format!("password = {{ file = \"{}\" }}\n", db_pw.display()),
        Backend::Sqlite => String::new(),
    };
    let config = db.path().join("k.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nlog_target = \"journald\"\nlog_level = \"debug\"\nshutdown_timeout = \"30s\"\n\n\
             [database]\nurl = \"{}\"\n{password_line}\n\
             [notifications]\nfrom = \"keywarden <kw@example.com>\"\ntransport = \"smtp\"\nadmin_emails = [\"ops@example.com\"]\n\n\
             [notifications.smtp]\nhost = \"localhost\"\nport = {}\nsecurity = \"starttls\"\nca_file = \"{}\"\nusername = \"keywarden\"\npassword = {{ file = \"{}\" }}\ntimeout = \"5s\"\n\n\
             [jobs.notify-expiry]\nschedule = \"* * * * * *\"\n[jobs.expire-keys]\nschedule = \"* * * * * *\"\n",
            db.url,
            sink.port,
            ca.display(),
            smtp_pw.display()
        ),
    )
    .expect("config");

    let mut outputs: Vec<(String, String)> = Vec::new();
    let mut record =
        |what: &str, (out, err): (String, String)| outputs.push((what.to_string(), format!("{out}\n{err}")));
    record("check-config", run(&config, &["check-config"], None));
    record("users add", run(&config, &["users", "add", "leak@example.com"], None));
    // The one place a key is shown: its own stdout, at creation.
    let (created, err) = run(
        &config,
        &[
            "keys",
            "create",
            "--owner",
            "leak@example.com",
            "--name",
            "leaky",
            "--expires-in",
            "2d",
        ],
        None,
    );
    let key1 = created.trim().to_string();
    assert!(key1.contains('.'), "a key was made: {key1}\n{err}");
    record("keys create (stderr)", (String::new(), err));
    let prefix1 = key1.split('.').next().unwrap_or_default().to_string();
    record("keys verify", run(&config, &["keys", "verify"], Some(&key1)));
    record(
        "keys verify wrong",
        run(&config, &["keys", "verify"], Some(&format!("{key1}x"))),
    );
    // The owner is warned (over SMTP with the password) before the rotation.
    record(
        "jobs run notify-expiry",
        run(&config, &["jobs", "run", "notify-expiry"], None),
    );
    let (rotated, err) = run(&config, &["keys", "rotate", &prefix1, "--grace", "2h"], None);
    record("keys rotate (stderr)", (String::new(), err));
    let key2 = rotated.trim().to_string();
    assert!(key2.contains('.'), "rotation made a key: {key2}");
    record("keys verify new", run(&config, &["keys", "verify"], Some(&key2)));
    for args in [
        &["keys", "list"][..],
        &["keys", "list", "--json"],
        &["keys", "show", &prefix1],
        &["keys", "usage", &prefix1],
        &["keys", "usage", &prefix1, "--json"],
        &["jobs", "list"],
        &["notifications", "list", "--json"],
        &["status"],
        &["status", "--json"],
        &["users", "list", "--json"],
    ] {
        record(&args.join(" "), run(&config, args, None));
    }
    // The daemon, logging to the journal at debug level, for a few ticks.
    let mut daemon = Daemon::start(&config, None, &[]);
    std::thread::sleep(Duration::from_secs(4));
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).code(), Some(0));
    std::thread::sleep(Duration::from_millis(500));
    let journal: Vec<String> = journal_entries(daemon.pid(), "SYSLOG_IDENTIFIER=keywarden")
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert!(!journal.is_empty(), "the daemon logged to the journal");
    record("journal", (journal.join("\n"), daemon.log()));

    // The database, dumped whole.
    let dump = match backend {
        Backend::Postgres => Command::new("pg_dump").arg(&db.url).output().expect("pg_dump").stdout,
        Backend::Sqlite => {
            let path = db.url.trim_start_matches("sqlite://");
            let mut bytes = std::fs::read(path).expect("database file");
            bytes.extend(std::fs::read(format!("{path}-wal")).unwrap_or_default());
            bytes
        }
    };
    assert!(dump.len() > 1000, "a dump was made");
    record(
        "database dump",
        (String::from_utf8_lossy(&dump).into_owned(), String::new()),
    );
    let mail: Vec<String> = sink
        .messages()
        .iter()
        .map(|(meta, raw)| format!("{meta}\n{}", String::from_utf8_lossy(raw)))
        .collect();
    assert!(!mail.is_empty(), "the owner was mailed");
    record("mail", (mail.join("\n"), String::new()));

    let secret_of = |k: &str| k.split('.').nth(1).unwrap_or_default().to_string();
    let needles = [
        DB_PASSWORD.to_string(),
        "pa'ss%zz".into(),
        "db%2541pa".into(),
        "dbApa'ss".into(),
        SMTP_PASSWORD.to_string(),
        "smtp-Leak-Test-2".into(),
        secret_of(&key1),
        secret_of(&key2),
    ];
    for (what, text) in &outputs {
        for needle in &needles {
            assert!(!needle.is_empty());
            assert!(!text.contains(needle.as_str()), "{what} holds a secret ({needle:?})");
        }
    }
}
