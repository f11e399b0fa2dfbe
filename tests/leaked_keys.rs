//! Leaked keys (`[leaks]`): live keys written into watched files are
//! revoked within seconds and their owners emailed (the real daemon, real
//! files, a real SMTP server); look-alikes, keys that are no longer live,
//! keys of another format and excluded files revoke nothing; a large log
//! is read from where it was, not again from its start; the secret is in
//! no log, email, outbox row or database file. Both backends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use keywarden::db::schema::{api_key_events, api_keys, leak_findings, notifications};
use support::*;

both_backends!(
    a_live_key_written_to_a_watched_log_is_revoked_and_its_owner_emailed,
    only_live_keys_found_in_scanned_files_change_anything,
    a_key_appended_to_a_large_log_is_found_without_reading_it_again,
);

fn create_key(cfg: &Path, owner: &str, name: &str) -> String {
    let out = keywarden(cfg, &["keys", "create", "--owner", owner, "--name", name]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn prefix_of(key: &str) -> String {
    key.split('.').next().unwrap().to_string()
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn revoked_reason(conn: &mut keywarden::db::DbConnection, prefix: &str) -> Option<String> {
    api_keys::table
        .filter(api_keys::prefix.eq(prefix))
        .select(api_keys::revoked_reason)
        .first::<Option<String>>(conn)
        .unwrap()
}

/// Every byte of the database, as a dump would have it: `pg_dump`, or the
/// SQLite file and its write-ahead log.
fn database_bytes(db: &TestDb) -> Vec<u8> {
    match db.backend {
        Backend::Postgres => {
            let out = std::process::Command::new("pg_dump")
                .arg(&db.url)
                .output()
                .expect("pg_dump (postgresql-client) is needed for this test");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            out.stdout
        }
        Backend::Sqlite => {
            let mut all = Vec::new();
            for suffix in ["", "-wal"] {
                if let Ok(b) = std::fs::read(format!("{}{suffix}", db.path().join("keywarden.db").display())) {
                    all.extend(b);
                }
            }
            all
        }
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn a_live_key_written_to_a_watched_log_is_revoked_and_its_owner_emailed(backend: Backend) {
    let db = TestDb::new(backend);
    let mut conn = db.conn();
    let sink = SmtpSink::start(db.path(), None);
    let logs = db.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let cfg = db.write_config(
        "leaks.toml",
        &format!(
            "[notifications]\nfrom = \"keywarden <keywarden@example.com>\"\ntransport = \"smtp\"\nadmin_emails = [\"admin@example.com\"]\n\
             [notifications.smtp]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\ntimeout = \"5s\"\n\
             [leaks]\nroots = [\"{}\"]\n",
            sink.port,
            logs.display()
        ),
    );
    let out = keywarden(&cfg, &["users", "add", "owner@example.com"]);
    assert!(out.status.success());
    let key = create_key(&cfg, "owner@example.com", "billing");
    let prefix = prefix_of(&key);
    let secret = key.split_once('.').unwrap().1.to_string();
    let log = logs.join("app.log");
    append(&log, "2026-12-01 GET /health 200\n2026-12-01 GET /orders 200\n");
    let mut daemon = Daemon::start(&cfg, None, &[]);
    daemon.wait_for_log("leaks: watching", Duration::from_secs(60));

    let written = Instant::now();
    append(
        &log,
        &format!("2026-12-01 GET /orders 401 Authorization: Bearer {key}\n"),
    );
    let reason = loop {
        if let Some(r) = revoked_reason(&mut conn, &prefix) {
            break r;
        }
        assert!(
            written.elapsed() < Duration::from_secs(20),
            "not revoked after 20 s\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    println!("written to revoked: {:?}", written.elapsed());
    assert_eq!(reason, format!("leaked: {}:3", log.display()));
    let actor: String = api_key_events::table
        .filter(api_key_events::prefix.eq(&prefix))
        .filter(api_key_events::event.eq("revoked"))
        .select(api_key_events::actor)
        .first(&mut conn)
        .unwrap();
    assert_eq!(actor, "leak-scanner");
    // The owner and the admin are mailed, by the daemon, at once.
    eventually(Duration::from_secs(20), "the owner's and the admin's emails", || {
        sink.messages().len() >= 2
    });
    let messages = sink.messages();
    let to_owner = messages
        .iter()
        .find(|(meta, _)| meta["rcpt_tos"].to_string().contains("owner@example.com"))
        .unwrap_or_else(|| {
            panic!(
                "no email to the owner: {:?}",
                messages.iter().map(|m| &m.0).collect::<Vec<_>>()
            )
        });
    let body = String::from_utf8_lossy(&to_owner.1).replace("=\r\n", "");
    assert!(
        body.contains("billing") && body.contains("app.log") && body.contains("revoked"),
        "{body}"
    );
    assert!(messages
        .iter()
        .any(|(meta, _)| meta["rcpt_tos"].to_string().contains("admin@example.com")));
    // The journal line names the path, line and prefix; never the secret.
    let line = daemon.wait_for_log("was found in", Duration::from_secs(5));
    assert!(line.contains(&prefix) && line.contains("app.log:3"), "{line}");

    // Written again: recorded once, nobody mailed again.
    append(&log, &format!("again {key}\n"));
    let other = logs.join("other.log");
    std::fs::write(&other, format!("copied {key}\n")).unwrap();
    eventually(Duration::from_secs(20), "the second path recorded", || {
        leak_findings::table
            .filter(leak_findings::path.eq(other.display().to_string()))
            .count()
            .get_result::<i64>(&mut conn)
            .unwrap()
            == 1
    });
    let rows: Vec<(String, String)> = leak_findings::table
        .select((leak_findings::path, leak_findings::action))
        .order(leak_findings::id)
        .load(&mut conn)
        .unwrap();
    assert_eq!(
        rows,
        vec![
            (log.display().to_string(), "revoked".to_string()),
            (other.display().to_string(), "recorded".to_string())
        ]
    );
    daemon.signal("TERM");
    assert!(daemon.wait_exit(Duration::from_secs(60)).success());
    assert_eq!(sink.messages().len(), 2, "a key found again is not mailed again");

    // The secret is nowhere but in the files it leaked into.
    assert!(!daemon.log().contains(&secret), "the daemon logged the secret");
    for (_, raw) in sink.messages() {
        assert!(!contains(&raw, &secret), "an email holds the secret");
    }
    let payloads: Vec<String> = notifications::table
        .select(notifications::payload)
        .load(&mut conn)
        .unwrap();
    assert!(payloads.iter().all(|p| !p.contains(&secret)));
    drop(conn);
    assert!(
        !contains(&database_bytes(&db), &secret),
        "the database holds the secret"
    );
}

fn scan_json(cfg: &Path, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut all = vec!["leaks", "scan", "--json"];
    all.extend_from_slice(args);
    let out = keywarden(cfg, &all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), v)
}

fn only_live_keys_found_in_scanned_files_change_anything(backend: Backend) {
    let db = TestDb::new(backend);
    let mut conn = db.conn();
    let tree = db.path().join("srv");
    std::fs::create_dir_all(tree.join("app/test")).unwrap();
    let cfg = db.write_config(
        "leaks.toml",
        &format!(
            "[leaks]\nroots = [\"{}\"]\nexclude = [\"**/test/**\"]\n",
            tree.display()
        ),
    );
    assert!(keywarden(&cfg, &["users", "add", "owner@example.com"]).status.success());
    let live = create_key(&cfg, "owner@example.com", "live");
    let revoked = create_key(&cfg, "owner@example.com", "revoked");
    let expired = create_key(&cfg, "owner@example.com", "expired");
    let excluded = create_key(&cfg, "owner@example.com", "excluded");
    assert!(
        keywarden(&cfg, &["keys", "revoke", &prefix_of(&revoked), "--reason", "old"])
            .status
            .success()
    );
    diesel::update(api_keys::table.filter(api_keys::prefix.eq(prefix_of(&expired))))
        .set((
            api_keys::status.eq("expired"),
            api_keys::expires_at.eq(keywarden::db::now() - chrono::TimeDelta::days(1)),
        ))
        .execute(&mut conn)
        .unwrap();
    let (head, _) = live.split_once('.').unwrap();
    let look_alike = format!("sk_live_v2_0123456789abcdef.{}", "Q".repeat(43));
    let wrong_secret = format!("{head}.{}", "W".repeat(43));
    std::fs::write(
        tree.join("app/config.env"),
        format!(
            "A={look_alike}\nB={wrong_secret}\nC=sk_live_1234567890abcdef\nD=ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789\nE={revoked}\nF={expired}\n"
        ),
    )
    .unwrap();
    std::fs::write(tree.join("app/test/fixture.log"), format!("{excluded}\n")).unwrap();
    // Binary files are skipped and counted.
    std::fs::write(
        tree.join("app/blob.bin"),
        [b"\0\0\0".as_slice(), live.as_bytes()].concat(),
    )
    .unwrap();
    // A symlink out of the tree is not followed.
    let outside = db.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), format!("{live}\n")).unwrap();
    std::os::unix::fs::symlink(&outside, tree.join("app/link")).unwrap();

    let (code, report) = scan_json(&cfg, &["--revoke"]);
    assert_eq!(code, Some(0), "{report}");
    let outcomes: Vec<(String, String)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["prefix"].as_str().unwrap().to_string(),
                f["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut want = vec![
        (prefix_of(&revoked), "recorded".to_string()),
        (prefix_of(&expired), "recorded".to_string()),
    ];
    want.sort();
    let mut got = outcomes.clone();
    got.sort();
    assert_eq!(got, want, "{report}");
    assert_eq!(report["scanned"]["skipped_binary"], 1, "{report}");
    assert_eq!(report["scanned"]["excluded"], 1, "{report}");
    for (key, status) in [
        (&live, "active"),
        (&excluded, "active"),
        (&revoked, "revoked"),
        (&expired, "expired"),
    ] {
        assert_eq!(key_status(&mut conn, &prefix_of(key)), status);
    }
    let queued: i64 = notifications::table.count().get_result(&mut conn).unwrap();
    assert_eq!(queued, 0, "nothing live was found: nobody is mailed");
    // Found again: recorded once.
    let (_, again) = scan_json(&cfg, &["--revoke"]);
    assert!(
        again["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["outcome"] == "already_known"),
        "{again}"
    );
    assert_eq!(leak_findings::table.count().get_result::<i64>(&mut conn).unwrap(), 2);

    // A live key: reported without --revoke (exit 3, nothing changed)...
    std::fs::write(tree.join("app/debug.log"), format!("token {live}\n")).unwrap();
    let (code, report) = scan_json(&cfg, &[]);
    assert_eq!(code, Some(3), "{report}");
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["outcome"] == "live"),
        "{report}"
    );
    assert_eq!(key_status(&mut conn, &prefix_of(&live)), "active");
    // ... and with leaks.action = "alert" and --revoke: reported, mailed, still working.
    let alert = db.write_config(
        "alert.toml",
        &format!(
            "[leaks]\nroots = [\"{}\"]\nexclude = [\"**/test/**\"]\naction = \"alert\"\n",
            tree.display()
        ),
    );
    let (code, report) = scan_json(&alert, &["--revoke"]);
    assert_eq!(code, Some(3), "{report}");
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["outcome"] == "alerted"),
        "{report}"
    );
    assert_eq!(key_status(&mut conn, &prefix_of(&live)), "active");
    let to_owner: i64 = notifications::table
        .filter(notifications::recipient.eq("owner@example.com"))
        .count()
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(to_owner, 1);
    // A path given on the command line that is a symlink is not followed.
    let (_, report) = scan_json(&cfg, &[tree.join("app/link").to_str().unwrap()]);
    assert_eq!(report["findings"].as_array().unwrap().len(), 0, "{report}");
}

/// The rchar count of a process (bytes it read through read(2) and kin).
fn rchar(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("rchar: ").map(|v| v.trim().parse().unwrap()))
        .unwrap()
}

fn a_key_appended_to_a_large_log_is_found_without_reading_it_again(backend: Backend) {
    let db = TestDb::new(backend);
    let mut conn = db.conn();
    let logs: PathBuf = db.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let cfg = db.write_config("leaks.toml", &format!("[leaks]\nroots = [\"{}\"]\n", logs.display()));
    assert!(keywarden(&cfg, &["users", "add", "owner@example.com"]).status.success());
    let key = create_key(&cfg, "owner@example.com", "big");
    let log = logs.join("big.log");
    let size: u64 = std::env::var("KEYWARDEN_TEST_BIG_LOG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
        << 20;
    {
        let line = "2026-12-01T00:00:00Z INFO request handled path=/api/orders status=200 took=3ms\n";
        let chunk = line.repeat((1 << 20) / line.len());
        let mut f = std::io::BufWriter::new(std::fs::File::create(&log).unwrap());
        let mut written = 0u64;
        while written < size {
            f.write_all(chunk.as_bytes()).unwrap();
            written += chunk.len() as u64;
        }
    }
    let lines = std::fs::read(&log).unwrap().iter().filter(|&&b| b == b'\n').count();
    let mut daemon = Daemon::start(&cfg, None, &[]);
    daemon.wait_for_log("leaks: watching", Duration::from_secs(120));
    let before = rchar(daemon.pid());
    append(&log, &format!("2026-12-01T00:00:01Z WARN bad header x-api-key={key}\n"));
    let prefix = prefix_of(&key);
    eventually(Duration::from_secs(30), "the appended key revoked", || {
        revoked_reason(&mut conn, &prefix).is_some()
    });
    let read = rchar(daemon.pid()) - before;
    assert_eq!(
        revoked_reason(&mut conn, &prefix).unwrap(),
        format!("leaked: {}:{}", log.display(), lines + 1)
    );
    assert!(
        read < 8 << 20,
        "{read} bytes read after the append to a {size}-byte log"
    );
    daemon.signal("TERM");
    assert!(daemon.wait_exit(Duration::from_secs(60)).success());
}
