//! Metrics as Prometheus and Grafana read them: the exposition checked by
//! `promtool check metrics` (Debian's prometheus package) and by the
//! OpenMetrics parser of the Python client, the daemon's textfile and its
//! socket and loopback scrapes, and the shipped alert rules and dashboard.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

both_backends!(
    the_exposition_passes_promtool_and_the_openmetrics_parser,
    the_daemon_writes_the_textfile_and_answers_scrapes,
);

const PACKAGING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging");

/// `promtool check metrics` on `text`: its lint findings, or a failure.
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The families the OpenMetrics parser of prometheus_client reads from
/// `text`, as `name type` lines (it raises on anything malformed).
fn openmetrics_parse(text: &str) -> String {
    let script = "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\n\
                  for f in p(sys.stdin.read()):\n    print(f.name, f.type, len(f.samples))\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused it: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The value of the sample written exactly as `series` (name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// Every metric name the expressions of `text` (rules, dashboard) use.
fn names_used(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("keywarden_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        if !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
        i = end;
    }
    out
}

fn the_exposition_passes_promtool_and_the_openmetrics_parser(backend: Backend) {
    let db = TestDb::new(backend);
    let config = db.write_config(
        "k.toml",
        "[notifications]\nwindows = [\"30d\", \"7d\"]\nfile_dir = \"/nonexistent\"\n",
    );
    let mut conn = db.conn();
    let owner = add_user(&mut conn, "owner@example.com");
    let now = keywarden::db::now();
    add_key(&mut conn, owner, "kw_soon1", "active", now + chrono::TimeDelta::days(3));
    add_key(
        &mut conn,
        owner,
        "kw_later",
        "active",
        now + chrono::TimeDelta::days(20),
    );
    add_key(
        &mut conn,
        owner,
        "kw_far01",
        "active",
        now + chrono::TimeDelta::days(200),
    );
    add_key(
        &mut conn,
        owner,
        "kw_gone1",
        "revoked",
        now + chrono::TimeDelta::days(3),
    );

    let out = keywarden(&config, &["metrics"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    promtool_check(&text);
    assert_eq!(value(&text, "keywarden_keys{status=\"active\"}"), Some(3.0), "{text}");
    assert_eq!(value(&text, "keywarden_keys{status=\"revoked\"}"), Some(1.0));
    assert_eq!(value(&text, "keywarden_keys_expiring{window=\"7d\"}"), Some(1.0));
    assert_eq!(value(&text, "keywarden_keys_expiring{window=\"30d\"}"), Some(2.0));
    assert_eq!(value(&text, "keywarden_permission_drift_open"), Some(0.0));
    assert!(!text.contains("# EOF"));

    let out = keywarden(&config, &["metrics", "--openmetrics"]);
    assert!(out.status.success());
    let om = String::from_utf8(out.stdout).unwrap();
    assert!(om.ends_with("# EOF\n"));
    let families = openmetrics_parse(&om);
    assert!(families.contains("keywarden_job_runs counter"), "{families}");
    assert!(families.contains("keywarden_keys gauge 2"), "{families}");

    // The shipped rules and dashboard use only metrics keywarden exports.
    let exported: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    for file in ["prometheus/keywarden-alerts.yml", "grafana/keywarden-dashboard.json"] {
        let shipped = std::fs::read_to_string(Path::new(PACKAGING).join(file)).unwrap();
        let used = names_used(&shipped);
        assert!(used.len() >= 10, "{file}: {used:?}");
        for name in used {
            assert!(
                exported.contains(&name.as_str()),
                "{file} uses {name}, which keywarden does not export"
            );
        }
    }
}

/// One HTTP exchange over `stream`: the whole answer.
fn exchange(mut stream: impl Read + Write, request: &str) -> String {
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

fn the_daemon_writes_the_textfile_and_answers_scrapes(backend: Backend) {
    let db = TestDb::new(backend);
    let textfile = db.path().join("node-exporter/keywarden.prom");
    std::fs::create_dir_all(textfile.parent().unwrap()).unwrap();
    let socket = db.path().join("metrics.sock");
    let port = free_port();
    let config = db.write_config(
        "k.toml",
        &format!(
            "[metrics]\ntextfile = \"{}\"\nsocket = \"{}\"\nlisten = \"127.0.0.1:{port}\"\ninterval = \"1s\"\n\n\
             [jobs.expire-keys]\nschedule = \"* * * * * *\"\n[jobs.revoke-grace]\nenabled = false\n\
             [jobs.notify-expiry]\nenabled = false\n[jobs.purge-audit]\nenabled = false\n[jobs.watch-perms]\nenabled = false\n\
             [jobs.renew-certs]\nenabled = false\n",
            textfile.display(),
            socket.display()
        ),
    );
    let _migrated = db.conn();
    let mut daemon = Daemon::start(&config, None, &[]);
    let runs = "keywarden_job_runs_total{job=\"expire-keys\",outcome=\"ok\"}";
    eventually(Duration::from_secs(30), "the textfile counts the job's runs", || {
        std::fs::read_to_string(&textfile).is_ok_and(|t| value(&t, runs).is_some_and(|n| n >= 2.0))
    });
    let text = std::fs::read_to_string(&textfile).unwrap();
    promtool_check(&text);
    assert!(
        value(&text, "keywarden_job_last_ok{job=\"expire-keys\"}") == Some(1.0),
        "{text}"
    );
    assert!(value(
        &text,
        "keywarden_job_last_success_timestamp_seconds{job=\"expire-keys\"}"
    )
    .is_some());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&textfile).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o660);
    // No temporary file is left beside it.
    let left: Vec<_> = std::fs::read_dir(textfile.parent().unwrap()).unwrap().collect();
    assert_eq!(left.len(), 1, "{left:?}");

    // The socket, asked for OpenMetrics; the loopback address, plain.
    let unix = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let answer = exchange(
        unix,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n",
    );
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"));
    openmetrics_parse(body);
    let tcp = || std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let answer = exchange(tcp(), "GET /metrics HTTP/1.0\r\n\r\n");
    assert!(
        answer.starts_with("HTTP/1.1 200 OK") && answer.contains("text/plain; version=0.0.4"),
        "{answer}"
    );
    promtool_check(answer.split_once("\r\n\r\n").unwrap().1);
    assert!(exchange(tcp(), "GET /secret HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    assert!(exchange(tcp(), "POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    let mut stream = tcp();
    let _ = stream.write_all(huge.as_bytes());
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // A client that sends nothing is let go; the next scrape is answered.
    let _idle = tcp();
    assert!(exchange(tcp(), "GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));

    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).code(), Some(0));
    assert!(!socket.exists(), "the socket was left behind");
}

#[test]
fn the_alert_rules_pass_promtool_and_their_tests_and_the_dashboard_is_valid_json() {
    let rules = Path::new(PACKAGING).join("prometheus");
    for args in [
        vec!["check", "rules", "keywarden-alerts.yml"],
        vec!["test", "rules", "keywarden-alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(&rules)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(PACKAGING).join("grafana/keywarden-dashboard.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(dashboard["title"], "keywarden");
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = std::collections::HashSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_i64().unwrap()), "panel ids repeat");
        let pos = &p["gridPos"];
        assert!(pos["x"].as_i64().unwrap() + pos["w"].as_i64().unwrap() <= 24, "{p}");
        if p["type"] != "row" {
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{p}");
            for t in targets {
                assert!(t["expr"].as_str().unwrap().contains("keywarden_"), "{t}");
            }
        }
    }
}
