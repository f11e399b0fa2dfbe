//! The command line without a database: configuration errors as an admin
//! meets them, secrets refused, help and exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use support::BIN;

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn run(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .envs(envs.iter().copied())
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn check_config_says_ok_for_the_examples() {
    for example in ["examples/quickstart.toml", "examples/production.toml"] {
        let (code, out, err) = run(&["--config", example, "check-config"], &[]);
        assert_eq!((code, out.trim()), (Some(0), "ok"), "{example}: {err}");
    }
}

/// The shipped configuration names /var/lib/keywarden, which the package
/// creates (systemd-tmpfiles) and which need not exist here: checked as
/// shipped (only that directory is reported), and with the database moved
/// into a directory that exists.
#[test]
fn check_config_says_ok_for_the_shipped_configuration() {
    let shipped = std::fs::read_to_string("packaging/keywarden.toml").unwrap();
    let (code, out, err) = run(&["--config", "packaging/keywarden.toml", "check-config"], &[]);
    if std::path::Path::new("/var/lib/keywarden").is_dir() {
        assert_eq!((code, out.trim()), (Some(0), "ok"), "{err}");
    } else {
        assert_eq!(code, Some(78), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("/var/lib/keywarden"), "{err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let moved = shipped.replace("/var/lib/keywarden/", &format!("{}/", dir.path().display()));
    assert_ne!(moved, shipped);
    let cfg = write(dir.path(), "keywarden.toml", &moved);
    let (code, out, err) = run(&["--config", cfg.to_str().unwrap(), "check-config"], &[]);
    assert_eq!((code, out.trim()), (Some(0), "ok"), "{err}");
}

#[test]
fn a_sqlite_database_in_a_missing_directory_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "k.toml",
        &format!("[database]\nurl = \"sqlite://{}/missing/k.db\"\n", dir.path().display()),
    );
    for cmd in ["check-config", "run"] {
        let (code, _, err) = run(&["--config", cfg.to_str().unwrap(), cmd], &[]);
        assert_eq!(code, Some(78), "{cmd}: {err}");
        assert!(err.contains("missing") && err.contains("SQLite"), "{cmd}: {err}");
    }
}

#[test]
fn one_broken_line_gives_one_precise_error_and_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "keywarden.toml",
        "[daemon]\nlog_level = \"info\"\n\n[database]\nurl = \"sqlite:///tmp/x.db\"\nbusy_timeout = \"5 seconds\"\n",
    );
    for cmd in ["check-config", "run", "migrate", "status"] {
        let (code, out, err) = run(&["--config", cfg.to_str().unwrap(), cmd], &[]);
        assert_eq!(code, Some(78), "{cmd}: {out} {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{cmd}: {err}");
        assert!(
            lines[0].starts_with(&format!("{}:6:16: ", cfg.display())),
            "{cmd}: {err}"
        );
        assert!(lines[0].contains("\"5 seconds\""), "{err}");
    }
}

#[test]
fn every_error_is_listed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "k.toml",
        "[daemon]\nshutdown_timeout = 30\n[database]\nurl = \"mysql://db/x\"\n[jobs.expire-keys]\nschedul = \"* * * * *\"\n",
    );
    let (code, _, err) = run(&["--config", cfg.to_str().unwrap(), "check-config"], &[]);
    assert_eq!(code, Some(78));
    assert_eq!(err.lines().count(), 3, "{err}");
    assert!(err.contains(":2:20:") && err.contains("\"30s\""), "{err}");
    assert!(err.contains(":4:7:") && err.contains("mysql"), "{err}");
    assert!(err.contains(":6:1:") && err.contains("schedul"), "{err}");
}

#[test]
fn config_is_found_through_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "env.toml", "[daemon]\nlog_level = \"loud\"\n");
    let (code, _, err) = run(&["check-config"], &[("KEYWARDEN_CONFIG", cfg.to_str().unwrap())]);
    assert_eq!(code, Some(78));
    assert!(err.contains("env.toml:2:13:"), "{err}");
    let (code, _, err) = run(
        &["check-config"],
        &[("KEYWARDEN_CONFIG", "/nonexistent/keywarden.toml")],
    );
    assert_eq!(code, Some(78));
    assert!(
        err.starts_with("/nonexistent/keywarden.toml: cannot read configuration"),
        "{err}"
    );
}

#[test]
fn a_world_readable_secret_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write(dir.path(), "db-password", "correct horse battery staple\n");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = write(
        dir.path(),
        "k.toml",
        &format!(
            "[database]\nurl = \"postgres://keywarden@127.0.0.1:5432/keywarden\"\npassword = {{ file = \"{}\" }}\n",
            secret.display()
        ),
    );
    // check-config does not read secrets (it runs from ExecReload=), but it
    // looks at the file's mode: it passes only what `run` accepts.
    for cmd in ["check-config", "run"] {
        let (code, _, err) = run(&["--config", cfg.to_str().unwrap(), cmd], &[]);
        assert_eq!(code, Some(78), "{cmd}: {err}");
        assert!(
            err.contains(&secret.display().to_string()) && err.contains("0644"),
            "{cmd}: {err}"
        );
        assert!(!err.contains("correct horse"), "{cmd}: {err}");
    }
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, out, err) = run(&["--config", cfg.to_str().unwrap(), "check-config"], &[]);
    assert_eq!((code, out.trim()), (Some(0), "ok"), "{err}");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
}

#[test]
fn a_missing_credential_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "k.toml",
        "[database]\nurl = \"postgres://keywarden@127.0.0.1/keywarden\"\npassword = { credential = \"db-password\" }\n",
    );
    let out = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "migrate"])
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("LoadCredential=db-password"));
}

#[test]
fn a_password_in_a_world_readable_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "k.toml",
        "[database]\nurl = \"postgres://kw:hunter2@127.0.0.1/kw\"\n",
    );
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = run(&["--config", cfg.to_str().unwrap(), "check-config"], &[]);
    assert_eq!(code, Some(78));
    assert!(
        err.contains("readable by everyone") && !err.contains("hunter2"),
        "{err}"
    );
}

#[test]
fn help_everywhere_and_exit_codes_documented() {
    let (code, out, _) = run(&["--help"], &[]);
    assert_eq!(code, Some(0));
    assert!(out.contains("78") && out.contains("75"), "{out}");
    for args in [
        &["run", "--help"][..],
        &["check-config", "--help"],
        &["migrate", "--help"],
        &["jobs", "--help"],
        &["jobs", "list", "--help"],
        &["jobs", "run", "--help"],
        &["status", "--help"],
    ] {
        let (code, out, err) = run(args, &[]);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(out.contains("Usage:"), "{args:?}: {out}");
    }
    let (code, _, err) = run(&["jobs", "run", "make-coffee"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("expire-keys"), "{err}");
}

#[test]
fn completions_and_man_page_come_from_the_command_definitions() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = run(&["completions", shell], &[]);
        assert_eq!(code, Some(0), "{shell}: {err}");
        for sub in ["check-config", "notifications", "keys"] {
            assert!(out.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let (code, man, _) = run(&["manpage"], &[]);
    assert_eq!(code, Some(0));
    assert!(man.contains(".TH keywarden 8"), "{man}");
    for needle in [
        "EXIT STATUS",
        "78",
        "SIGHUP",
        "/etc/keywarden/keywarden.toml",
        "check\\-config",
    ] {
        assert!(man.contains(needle), "man page lacks {needle}");
    }
    // A closed pipe ends a printing command quietly, without a panic.
    let mut child = Command::new(BIN)
        .args(["completions", "bash"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

/// A password typed where its source belongs, in any secret-typed key and
/// in any shape, is refused by name and never repeated.
#[test]
fn a_password_typed_in_place_of_its_source_is_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "hunter2-typed-in-place";
    let cases = [
        (
            "database.password",
            format!("[database]\nurl = \"postgres://kw@127.0.0.1/kw\"\npassword = \"{secret}\"\n"),
        ),
        (
            "database.password",
            format!("[database]\nurl = \"postgres://kw@127.0.0.1/kw\"\npassword = [\"{secret}\"]\n"),
        ),
        (
            "password",
            format!("[notifications]\ntransport = \"smtp\"\n[notifications.smtp]\nhost = \"127.0.0.1\"\nsecurity = \"none\"\nusername = \"kw\"\npassword = \"{secret}\"\n"),
        ),
        (
            "hmac_key",
            format!("[acme]\ndirectory = \"https://127.0.0.1:14000/dir\"\ncontact = [\"mailto:a@example.com\"]\n[acme.eab]\nkey_id = \"k\"\nhmac_key = \"{secret}\"\n"),
        ),
    ];
    for (key, text) in cases {
        let cfg = write(dir.path(), "k.toml", &text);
        for cmd in ["check-config", "run"] {
            let (code, out, err) = run(&["--config", cfg.to_str().unwrap(), cmd], &[]);
            assert_eq!(code, Some(78), "{cmd} {key}: {err}");
            assert!(
                !out.contains(secret) && !err.contains(secret),
                "{cmd} {key} echoed the value: {err}"
            );
            assert!(err.contains(key) || err.contains("secret source"), "{cmd} {key}: {err}");
            assert!(err.contains("{ file = "), "the accepted forms are named: {err}");
        }
    }
}

/// A password with `%` (and quotes) from a 0600 file reaches libpq as read:
/// it is never decoded as a URL escape, and no error or log line repeats it.
#[test]
fn a_database_password_with_percent_never_reaches_a_log() {
    let dir = tempfile::tempdir().unwrap();
    let password = "pa%zz'wo\\rd%41-s3cret";
    let secret = write(dir.path(), "db-password", &format!("{password}\n"));
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Nothing listens there: every attempt fails, and is logged.
    let port = support::free_port();
    let cfg = write(
        dir.path(),
        "k.toml",
        &format!(
            "[daemon]\nlog_target = \"stderr\"\n\n[database]\nurl = \"postgres://kw@127.0.0.1:{port}/kw?sslmode=disable\"\npassword = {{ file = \"{}\" }}\nconnect_timeout = \"1s\"\n",
            secret.display()
        ),
    );
    let mut daemon = std::process::Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(3500));
    let _ = daemon.kill();
    let out = daemon.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("database not ready"), "the failures are logged: {err}");
    let (_, status_out, status_err) = run(&["--config", cfg.to_str().unwrap(), "status"], &[]);
    let (_, jobs_out, jobs_err) = run(&["--config", cfg.to_str().unwrap(), "jobs", "list"], &[]);
    for text in [err.as_ref(), &status_out, &status_err, &jobs_out, &jobs_err] {
        for fragment in [password, "pa%zz", "s3cret", "paJzz"] {
            assert!(!text.contains(fragment), "{fragment:?} leaked:\n{text}");
        }
    }
}
