//! The malformed-configuration corpus (`tests/config-corpus/`, written by
//! its `generate.py`): every file through `check-config`, `run` and a
//! reload of the running daemon. Each must be refused with exit 78 (the
//! reload: refused, the daemon running on), at the line `expected.tsv`
//! names, without a panic, a hang or the marker secret in any output.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const SECRET: &str = "CORPUS-SECRET-7f3a9c";
const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/config-corpus");

/// (file, line the error must point at).
fn corpus() -> Vec<(PathBuf, Option<usize>)> {
    let expected = std::fs::read_to_string(Path::new(DIR).join("expected.tsv")).expect("expected.tsv");
    let cases: Vec<(PathBuf, Option<usize>)> = expected
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (file, line) = l.split_once('\t').expect("file<TAB>line");
            (Path::new(DIR).join(file), line.parse().ok())
        })
        .collect();
    assert!(cases.len() >= 100, "the corpus has {} cases", cases.len());
    cases
}

/// Runs the binary with a deadline: a hang fails the test.
fn run_bounded(args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("keywarden");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("keywarden {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (
        status.code(),
        String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned(),
        String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned(),
    )
}

#[test]
fn every_malformed_configuration_is_refused_at_its_place() {
    let mut failures = Vec::new();
    for (file, line) in corpus() {
        let path = file.to_str().expect("utf-8 path");
        let name = file.file_name().unwrap_or_default().to_string_lossy().into_owned();
        for cmd in ["check-config", "run"] {
            let (code, out, err) = run_bounded(&["--config", path, cmd]);
            let shown: String = err.chars().take(600).collect();
            let mut fail = |what: String| failures.push(format!("{name} {cmd}: {what}\n{shown}"));
            if code != Some(78) {
                fail(format!("exit {code:?}"));
            }
            if err.contains("panicked") {
                fail("panicked".into());
            }
            if out.contains(SECRET) || err.contains(SECRET) {
                fail("showed the secret".into());
            }
            if !err.contains(path) {
                fail("the file is not named".into());
            }
            if let Some(line) = line {
                if !err.contains(&format!("{path}:{line}:")) {
                    fail(format!("no error at line {line}"));
                }
            }
            // Long values are cut, not quoted whole.
            if err.lines().any(|l| l.len() > 2000) {
                fail("an error line over 2000 bytes".into());
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn a_reload_to_any_malformed_configuration_keeps_the_running_one() {
    let db = TestDb::new(Backend::Sqlite);
    let config = db.write_config("keywarden.toml", "");
    let good = std::fs::read(&config).expect("config");
    let notify = NotifySocket::bind(db.path());
    let mut daemon = Daemon::start(&config, Some(&notify), &[]);
    notify.wait_for("READY=1", 60 * Duration::from_secs(1));
    let mut refused = 0;
    for (file, _) in corpus() {
        std::fs::write(&config, std::fs::read(&file).expect("case")).expect("write");
        daemon.signal("HUP");
        refused += 1;
        daemon.wait_for_nth_log("reload refused", refused, Duration::from_secs(30));
        assert!(
            daemon.is_running(),
            "{} stopped the daemon:\n{}",
            file.display(),
            daemon.log()
        );
    }
    // Still on the first configuration, and it still reloads.
    std::fs::write(&config, good).expect("write");
    daemon.signal("HUP");
    daemon.wait_for_log("reload applied", Duration::from_secs(30));
    let log = daemon.log();
    assert!(!log.contains(SECRET), "a reload error showed the secret");
    assert!(!log.contains("panicked"), "{log}");
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).code(), Some(0));
}
