//! Expiry notifications end to end: the outbox on both backends, the file
//! transport, and a real SMTP server (Debian's aiosmtpd) with an outage, two
//! competing processes and STARTTLS against a private CA.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{NaiveDateTime, TimeDelta};
use diesel::prelude::*;
use keywarden::config::KeysConfig;
use keywarden::db::schema::{api_keys, notifications};
use keywarden::keys::KeyService;
use keywarden::notify::detect::enqueue_key_notices;
use mail_parser::MessageParser;
use support::*;

both_backends!(
    each_owner_gets_one_digest_per_window_as_eml_files,
    rotation_cancels_and_a_new_expiry_renews,
    smtp_delivery_survives_an_outage_and_never_doubles,
    two_processes_on_one_database_send_each_message_once,
    starttls_with_a_private_ca,
    a_job_failing_repeatedly_alerts_the_admins_once,
    waiting_in_backoff_keeps_the_failure_streak,
    a_permanent_refusal_fails_at_once_and_a_temporary_one_is_retried,
    servers_are_greeted_with_a_fully_qualified_name,
    a_failed_notification_can_be_retried_by_hand,
    postfix_accepts_a_fully_qualified_greeting_over_starttls,
);

fn ok(out: std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn emls(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn expiry(conn: &mut keywarden::db::DbConnection, prefix: &str) -> NaiveDateTime {
    api_keys::table
        .filter(api_keys::prefix.eq(prefix))
        .select(api_keys::expires_at)
        .first(conn)
        .unwrap()
}

/// What the reader sees: both parts present, every key's name (escaped in
/// HTML), prefix and expiry date in them, and the headers of an automated
/// sender.
fn check_message(raw: &[u8], to: &str, keys: &[(&str, &str, NaiveDateTime)]) -> String {
    let msg = MessageParser::default().parse(raw).expect("parse message");
    let subject = msg.subject().unwrap_or_default().to_string();
    assert_eq!(msg.to().and_then(|a| a.first()).and_then(|a| a.address()), Some(to));
    assert_eq!(msg.to().map(|a| a.iter().count()), Some(1));
    assert!(msg.message_id().is_some());
    assert_eq!(msg.header_raw("Auto-Submitted").map(str::trim), Some("auto-generated"));
    assert!(msg.header_raw("Bcc").is_none() && msg.header_raw("Cc").is_none());
    let text = msg.body_text(0).expect("text part").into_owned();
    let html = msg.body_html(0).expect("html part").into_owned();
    assert_ne!(text, html);
    for (name, prefix, expires_at) in keys {
        let escaped = name
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;");
        assert!(html.contains(&escaped), "{name} (escaped) not in the HTML:\n{html}");
        assert!(text.contains(name), "{name} not in the text:\n{text}");
        assert!(html.contains(prefix) && text.contains(prefix), "{prefix} missing");
        let date = expires_at.format("%-d %b %Y").to_string();
        assert!(html.contains(&date) && text.contains(&date), "{date} missing");
    }
    assert!(!html.contains("<script"), "{html}");
    subject
}

fn each_owner_gets_one_digest_per_window_as_eml_files(backend: Backend) {
    let db = TestDb::new(backend);
    let mut conn = db.conn();
    let alice = add_user(&mut conn, "alice@example.com");
    let bob = add_user(&mut conn, "bob@example.com");
    add_key(&mut conn, alice, "sk_live_v2_a1", "active", ts(TimeDelta::days(5)));
    add_key(
        &mut conn,
        alice,
        "sk_live_v2_a2",
        "active",
        ts(TimeDelta::days(5) + TimeDelta::hours(3)),
    );
    add_key(&mut conn, alice, "sk_live_v2_a3", "active", ts(TimeDelta::days(20)));
    add_key(&mut conn, alice, "sk_live_v2_far", "active", ts(TimeDelta::days(60)));
    add_key(&mut conn, bob, "sk_live_v2_b1", "active", ts(TimeDelta::hours(12)));
    add_key(&mut conn, bob, "sk_live_v2_b_old", "expired", ts(-TimeDelta::days(30)));
    let outbox = db.path().join("outbox");
    let cfg = db.write_config("k.toml", "");

    // The dry run says what would go to whom, and changes nothing.
    let dry = ok(keywarden(&cfg, &["jobs", "run", "notify-expiry", "--dry-run"]));
    assert!(
        dry.contains("would send to alice@example.com: 3 API keys expire between"),
        "{dry}"
    );
    assert!(
        dry.contains("would send to bob@example.com: API key \"key sk_live_v2_b1\" expires on"),
        "{dry}"
    );
    assert!(emls(&outbox).is_empty());
    let rows: i64 = notifications::table.count().get_result(&mut conn).unwrap();
    assert_eq!(rows, 0);

    ok(keywarden(&cfg, &["jobs", "run", "notify-expiry"]));
    let files = emls(&outbox);
    assert_eq!(files.len(), 2, "one email per owner: {files:?}");
    for f in &files {
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(f).unwrap().permissions()) & 0o7777;
        assert_eq!(mode, 0o600, "{} names an owner and their keys: 0600", f.display());
    }
    let mut subjects = Vec::new();
    for f in &files {
        let raw = std::fs::read(f).unwrap();
        let parsed = MessageParser::default().parse(&raw).unwrap();
        let to = parsed
            .to()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .unwrap()
            .to_string();
        if to == "alice@example.com" {
            let keys = [
                ("key sk_live_v2_a1", "sk_live_v2_a1", expiry(&mut conn, "sk_live_v2_a1")),
                ("key sk_live_v2_a2", "sk_live_v2_a2", expiry(&mut conn, "sk_live_v2_a2")),
                ("key sk_live_v2_a3", "sk_live_v2_a3", expiry(&mut conn, "sk_live_v2_a3")),
            ];
            subjects.push(check_message(&raw, &to, &keys));
            assert!(!String::from_utf8_lossy(&raw).contains("sk_live_v2_far"));
        } else {
            subjects.push(check_message(
                &raw,
                &to,
                &[("key sk_live_v2_b1", "sk_live_v2_b1", expiry(&mut conn, "sk_live_v2_b1"))],
            ));
            assert!(
                !String::from_utf8_lossy(&raw).contains("sk_live_v2_b_old"),
                "long-expired keys get no notice"
            );
        }
    }
    subjects.sort();
    assert!(subjects[0].starts_with("3 API keys expire between"), "{subjects:?}");
    assert!(
        subjects[1].starts_with("API key \"key sk_live_v2_b1\" expires on"),
        "{subjects:?}"
    );

    // Windows: the tightest due is sent, the wider ones are marked skipped.
    let by_window: Vec<(String, String)> = notifications::table
        .select((notifications::notice_window, notifications::status))
        .order((notifications::notice_window, notifications::status))
        .load(&mut conn)
        .unwrap();
    let count = |w: &str, s: &str| by_window.iter().filter(|(a, b)| a == w && b == s).count();
    assert_eq!(count("7d", "sent"), 2, "{by_window:?}");
    assert_eq!(count("30d", "skipped"), 3, "{by_window:?}");
    assert_eq!(count("30d", "sent"), 1, "{by_window:?}");
    assert_eq!(count("1d", "sent"), 1, "{by_window:?}");
    assert_eq!(count("7d", "skipped"), 1, "{by_window:?}");

    // Never twice: more runs send nothing.
    for _ in 0..3 {
        ok(keywarden(&cfg, &["jobs", "run", "notify-expiry"]));
    }
    assert_eq!(emls(&outbox).len(), 2);

    // A key crossing into a tighter window gets exactly one more email.
    diesel::update(api_keys::table.filter(api_keys::prefix.eq("sk_live_v2_a3")))
        .set(api_keys::expires_at.eq(ts(TimeDelta::days(6))))
        .execute(&mut conn)
        .unwrap();
    ok(keywarden(&cfg, &["jobs", "run", "notify-expiry"]));
    ok(keywarden(&cfg, &["jobs", "run", "notify-expiry"]));
    assert_eq!(emls(&outbox).len(), 3);
    let list = ok(keywarden(
        &cfg,
        &["notifications", "list", "--status", "sent", "--json"],
    ));
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(
        v.as_array().unwrap().len(),
        5,
        "four first notices and the new window of the re-dated key: {list}"
    );
}

fn rotation_cancels_and_a_new_expiry_renews(backend: Backend) {
    let db = TestDb::new(backend);
    let mut conn = db.conn();
    let owner = add_user(&mut conn, "r@example.com");
    let id = add_key(&mut conn, owner, "sk_live_v2_rot", "active", ts(TimeDelta::days(3)));
    let cfg = keywarden::config::NotificationsConfig::default();
    let planned = enqueue_key_notices(&mut conn, &cfg, keywarden::db::now()).unwrap();
    assert_eq!(planned, 1);
    // Enqueueing again adds nothing, whatever happens in between.
    assert_eq!(enqueue_key_notices(&mut conn, &cfg, keywarden::db::now()).unwrap(), 0);

    let svc = KeyService::new(&KeysConfig::default())
        .unwrap()
        .on_retire(keywarden::notify::outbox::cancel_for_key);
    svc.rotate(&mut conn, "sk_live_v2_rot", None, "test").unwrap();
    let status: String = notifications::table
        .filter(notifications::subject_id.eq(id.to_string()))
        .filter(notifications::notice_window.eq("7d"))
        .select(notifications::status)
        .first(&mut conn)
        .unwrap();
    assert_eq!(status, "cancelled", "rotating a key cancels its pending warning");

    // A key whose expiry moves is eligible again for its new windows.
    let other = add_key(&mut conn, owner, "sk_live_v2_ext", "active", ts(TimeDelta::hours(20)));
    assert_eq!(enqueue_key_notices(&mut conn, &cfg, keywarden::db::now()).unwrap(), 1);
    diesel::update(api_keys::table.find(other))
        .set(api_keys::expires_at.eq(ts(TimeDelta::days(25))))
        .execute(&mut conn)
        .unwrap();
    let again = enqueue_key_notices(&mut conn, &cfg, keywarden::db::now()).unwrap();
    assert_eq!(again, 1);
    let window: String = notifications::table
        .filter(notifications::subject_id.eq(other.to_string()))
        .filter(notifications::status.eq("pending"))
        .filter(notifications::created_at.gt(ts(-TimeDelta::seconds(5))))
        .order(notifications::id.desc())
        .select(notifications::notice_window)
        .first(&mut conn)
        .unwrap();
    assert_eq!(window, "30d");
    // Delivery drops the warning about the old expiry.
    let dir = db.path().join("outbox");
    let config = db.write_config("k.toml", "");
    ok(keywarden(&config, &["jobs", "run", "notify-expiry"]));
    let files = emls(&dir);
    assert_eq!(files.len(), 1);
    let raw = String::from_utf8(std::fs::read(&files[0]).unwrap()).unwrap();
    assert!(
        raw.contains("Subject: API key \"key sk_live_v2_ext\" expires on"),
        "{raw}"
    );
    let cancelled: i64 = notifications::table
        .filter(notifications::status.eq("cancelled"))
        .count()
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(cancelled, 2);
}

fn smtp_config(db: &TestDb, port: u16, extra: &str) -> PathBuf {
    db.write_config(
        "smtp.toml",
        &format!(
            "[notifications]\nfrom = \"keywarden <keywarden@example.com>\"\ntransport = \"smtp\"\nretry_base = \"1s\"\nretry_max = \"2s\"\nmax_attempts = 5\n{extra}\n[notifications.smtp]\nhost = \"127.0.0.1\"\nport = {port}\nsecurity = \"none\"\ntimeout = \"5s\"\n"
        ),
    )
}

fn smtp_delivery_survives_an_outage_and_never_doubles(backend: Backend) {
    let db = TestDb::new(backend);
    let mut sink = SmtpSink::start(db.path(), None);
    let mut conn = db.conn();
    let owner = add_user(&mut conn, "owner@example.com");
    let evil = "<img src=x onerror=alert(1)>\r\nBcc: victim@example.com\r\n\r\nhi";
    let now = keywarden::db::now();
    diesel::insert_into(api_keys::table)
        .values((
            api_keys::prefix.eq("sk_live_v2_evil"),
            api_keys::key_hash.eq("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA"),
            api_keys::name.eq(evil),
            api_keys::status.eq("active"),
            api_keys::owner_id.eq(owner),
            api_keys::expires_at.eq(now + TimeDelta::days(2)),
            api_keys::created_at.eq(now),
            api_keys::updated_at.eq(now),
        ))
        .execute(&mut conn)
        .unwrap();
    let cfg = smtp_config(&db, sink.port, "");

    // Outage: the run fails, the row stays pending with its error.
    sink.stop();
    let out = keywarden(&cfg, &["jobs", "run", "notify-expiry"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let (status, attempts, error): (String, i32, Option<String>) = notifications::table
        .filter(notifications::notice_window.eq("7d"))
        .select((
            notifications::status,
            notifications::attempts,
            notifications::last_error,
        ))
        .first(&mut conn)
        .unwrap();
    assert_eq!((status.as_str(), attempts), ("pending", 1));
    assert!(error.is_some());

    // Back up: once the retry is due the message goes out, once.
    sink.resume();
    std::thread::sleep(std::time::Duration::from_millis(2600));
    ok(keywarden(&cfg, &["jobs", "run", "notify-expiry"]));
    ok(keywarden(&cfg, &["jobs", "run", "notify-expiry"]));
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1, "exactly one message");
    let (meta, raw) = &msgs[0];
    assert_eq!(
        meta["rcpt_tos"],
        serde_json::json!(["owner@example.com"]),
        "the injected Bcc reached nobody"
    );
    let clean_name = "<img src=x onerror=alert(1)>Bcc: victim@example.comhi";
    check_message(
        raw,
        "owner@example.com",
        &[(clean_name, "sk_live_v2_evil", expiry(&mut conn, "sk_live_v2_evil"))],
    );
    let html = MessageParser::default()
        .parse(raw)
        .unwrap()
        .body_html(0)
        .unwrap()
        .into_owned();
    assert!(!html.contains("<img"), "{html}");
    let sent: i64 = notifications::table
        .filter(notifications::status.eq("sent"))
        .count()
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(sent, 1);
}

fn two_processes_on_one_database_send_each_message_once(backend: Backend) {
    let db = TestDb::new(backend);
    let sink = SmtpSink::start(db.path(), None);
    let mut conn = db.conn();
    for i in 0..20 {
        let owner = add_user(&mut conn, &format!("owner{i}@example.com"));
        add_key(
            &mut conn,
            owner,
            &format!("sk_live_v2_k{i}"),
            "active",
            ts(TimeDelta::days(3)),
        );
    }
    let cfg = smtp_config(&db, sink.port, "");
    // Two replicas running the job at the same moment, several times.
    for _ in 0..3 {
        let spawn = || {
            Command::new(BIN)
                .arg("--config")
                .arg(&cfg)
                .args(["jobs", "run", "notify-expiry"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        };
        let (mut a, mut b) = (spawn(), spawn());
        let (ra, rb) = (a.wait().unwrap(), b.wait().unwrap());
        for r in [ra, rb] {
            assert!(matches!(r.code(), Some(0) | Some(75)), "{r:?}");
        }
    }
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 20, "one message per owner, none doubled");
    let mut rcpts: Vec<String> = msgs
        .iter()
        .map(|(m, _)| m["rcpt_tos"][0].as_str().unwrap().to_string())
        .collect();
    rcpts.sort();
    rcpts.dedup();
    assert_eq!(rcpts.len(), 20);
}

fn starttls_with_a_private_ca(backend: Backend) {
    let db = TestDb::new(backend);
    let (ca, cert, key) = make_test_pki(db.path());
    // The server wants a login; the password comes from a 0600 file.
    let sink = SmtpSink::start_full(db.path(), Some((&cert, &key)), false, Some("s3cret smtp pw"));
    let pw_file = db.path().join("smtp-password");
    std::fs::write(&pw_file, "s3cret smtp pw\n").unwrap();
    std::fs::set_permissions(&pw_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut conn = db.conn();
    let owner = add_user(&mut conn, "tls@example.com");
    add_key(&mut conn, owner, "sk_live_v2_tls", "active", ts(TimeDelta::days(3)));
    let cfg = db.write_config(
        "tls.toml",
        &format!(
            "[notifications]\ntransport = \"smtp\"\n[notifications.smtp]\nhost = \"localhost\"\nport = {}\nsecurity = \"starttls\"\nca_file = \"{}\"\ntimeout = \"5s\"\nusername = \"keywarden\"\npassword = {{ file = \"{}\" }}\n",
            sink.port,
            ca.display(),
            pw_file.display()
        ),
    );
    // A wrong password is refused by the server and nothing is sent.
    let wrong_pw = db.path().join("wrong-password");
    std::fs::write(&wrong_pw, "guess").unwrap();
    std::fs::set_permissions(&wrong_pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let wrong_text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&pw_file.display().to_string(), &wrong_pw.display().to_string());
    let wrong = db.path().join("wrong.toml");
    std::fs::write(&wrong, wrong_text).unwrap();
    let out = keywarden(&wrong, &["jobs", "run", "notify-expiry"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("guess"),
        "the password never shows"
    );
    assert!(sink.messages().is_empty());
    diesel::update(notifications::table)
        .set(notifications::next_attempt_at.eq(ts(-TimeDelta::seconds(1))))
        .execute(&mut conn)
        .unwrap();
    ok(keywarden(&cfg, &["jobs", "run", "notify-expiry"]));
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].0["tls"], true, "the session was encrypted");

    // Without the CA the server is not trusted and nothing is sent in clear.
    add_key(
        &mut conn,
        owner,
        "sk_live_v2_tls2",
        "active",
        ts(TimeDelta::days(3) + TimeDelta::hours(1)),
    );
    let untrusted = db.write_config(
        "untrusted.toml",
        &format!("[notifications]\ntransport = \"smtp\"\n[notifications.smtp]\nhost = \"localhost\"\nport = {}\nsecurity = \"starttls\"\ntimeout = \"5s\"\n", sink.port),
    );
    let out = keywarden(&untrusted, &["jobs", "run", "notify-expiry"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(sink.messages().len(), 1);
    // Implicit TLS (port 465 style) against the same CA.
    let smtps = SmtpSink::start_with(db.path(), Some((&cert, &key)), true);
    add_key(
        &mut conn,
        owner,
        "sk_live_v2_tls3",
        "active",
        ts(TimeDelta::days(3) + TimeDelta::hours(2)),
    );
    let implicit = db.write_config(
        "implicit.toml",
        &format!(
            "[notifications]\ntransport = \"smtp\"\n[notifications.smtp]\nhost = \"localhost\"\nport = {}\nsecurity = \"tls\"\nca_file = \"{}\"\ntimeout = \"5s\"\n",
            smtps.port,
            ca.display()
        ),
    );
    ok(keywarden(&implicit, &["jobs", "run", "notify-expiry"]));
    let msgs = smtps.messages();
    assert_eq!(msgs.len(), 1, "the new notice goes out over implicit TLS");
    assert_eq!(msgs[0].0["tls"], true);
    let raw = String::from_utf8_lossy(&msgs[0].1);
    // The notice refused by the untrusted attempt waits for its retry time.
    assert!(
        raw.contains("sk_live_v2_tls3") && !raw.contains("sk_live_v2_tls2"),
        "{raw}"
    );

    // Plain SMTP to a host that is not loopback is refused by check-config.
    let plain = db.write_config("plain.toml", "[notifications]\ntransport = \"smtp\"\n[notifications.smtp]\nhost = \"mail.example.com\"\nsecurity = \"none\"\n");
    let out = keywarden(&plain, &["check-config"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only allowed for a loopback server"));
}

fn a_job_failing_repeatedly_alerts_the_admins_once(backend: Backend) {
    let db = TestDb::new(backend);
    let mut sink = SmtpSink::start(db.path(), None);
    let mut conn = db.conn();
    let owner = add_user(&mut conn, "o@example.com");
    add_key(&mut conn, owner, "sk_live_v2_alert", "active", ts(TimeDelta::days(2)));
    let cfg = smtp_config(
        &db,
        sink.port,
        "admin_emails = [\"ops@example.com\"]\nretry_max = \"1s\"",
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("retry_max = \"2s\"\n", "");
    std::fs::write(&cfg, text).unwrap();
    sink.stop();
    for _ in 0..4 {
        let out = keywarden(&cfg, &["jobs", "run", "notify-expiry"]);
        assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(std::time::Duration::from_millis(1400));
    }
    let alerts: Vec<(String, String)> = notifications::table
        .filter(notifications::subject_kind.eq("job_failure"))
        .select((notifications::recipient, notifications::status))
        .load(&mut conn)
        .unwrap();
    assert_eq!(alerts.len(), 1, "one alert per streak of failures: {alerts:?}");
    assert_eq!(alerts[0].0, "ops@example.com");

    sink.resume();
    ok(keywarden(&cfg, &["jobs", "run", "notify-expiry"]));
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 2, "the owner's notice and the admins' alert");
    let admin = msgs
        .iter()
        .find(|(m, _)| m["rcpt_tos"][0] == "ops@example.com")
        .expect("admin message");
    let parsed = MessageParser::default().parse(&admin.1).unwrap();
    assert_eq!(
        parsed.subject(),
        Some("keywarden: Job notify-expiry has failed 3 times in a row")
    );
    assert!(parsed
        .body_html(0)
        .unwrap()
        .contains("journalctl -u keywarden JOB=notify-expiry"));
    assert!(parsed.body_text(0).unwrap().contains("Last error:"));
}

/// During an SMTP outage the runs that find every notice waiting in backoff
/// still fail: mail that should have gone out has not. The streak reaches
/// the admins although only the first run tried to send.
fn waiting_in_backoff_keeps_the_failure_streak(backend: Backend) {
    let db = TestDb::new(backend);
    let mut sink = SmtpSink::start(db.path(), None);
    let mut conn = db.conn();
    let owner = add_user(&mut conn, "b@example.com");
    add_key(&mut conn, owner, "sk_live_v2_backoff", "active", ts(TimeDelta::days(2)));
    let cfg = smtp_config(&db, sink.port, "admin_emails = [\"ops@example.com\"]");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("retry_base = \"1s\"", "retry_base = \"1h\"")
        .replace("retry_max = \"2s\"", "retry_max = \"2h\"");
    std::fs::write(&cfg, text).unwrap();
    sink.stop();
    for run in 0..3 {
        let out = keywarden(&cfg, &["jobs", "run", "notify-expiry"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "run {run}: {stderr}");
        if run > 0 {
            assert!(stderr.contains("wait to be retried"), "run {run}: {stderr}");
        }
    }
    let attempts: i32 = notifications::table
        .filter(notifications::subject_kind.eq("api_key"))
        .filter(notifications::status.eq("pending"))
        .select(notifications::attempts)
        .first(&mut conn)
        .unwrap();
    assert_eq!(attempts, 1, "only the first run tried: the others found it in backoff");
    let alerts: i64 = notifications::table
        .filter(notifications::subject_kind.eq("job_failure"))
        .count()
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(alerts, 1, "three failed runs in a row alert the admins");

    // Back up and due: both go out, and the job succeeds again.
    sink.resume();
    diesel::update(notifications::table)
        .set(notifications::next_attempt_at.eq(keywarden::db::now()))
        .execute(&mut conn)
        .unwrap();
    ok(keywarden(&cfg, &["jobs", "run", "notify-expiry"]));
    assert_eq!(sink.messages().len(), 2);
}

/// A 5xx answer to one recipient fails that notice at once with the
/// server's words; a 4xx is retried; the others go out; the refused one can
/// be queued again by hand.
fn a_permanent_refusal_fails_at_once_and_a_temporary_one_is_retried(backend: Backend) {
    let db = TestDb::new(backend);
    let sink = SmtpSink::start_rejecting(
        db.path(),
        "bounce@example.com=550 5.1.1 <bounce@example.com>: Recipient address rejected: User unknown;\
         later@example.com=451 4.3.0 Try again later",
    );
    let mut conn = db.conn();
    for who in ["ok", "bounce", "later"] {
        let owner = add_user(&mut conn, &format!("{who}@example.com"));
        add_key(
            &mut conn,
            owner,
            &format!("sk_live_v2_{who}"),
            "active",
            ts(TimeDelta::days(3)),
        );
    }
    let cfg = smtp_config(&db, sink.port, "");
    let out = keywarden(&cfg, &["jobs", "run", "notify-expiry"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let row = |conn: &mut keywarden::db::DbConnection, who: &str| -> (i64, String, i32, Option<String>) {
        notifications::table
            .filter(notifications::recipient.eq(format!("{who}@example.com")))
            .filter(notifications::status.ne("skipped"))
            .select((
                notifications::id,
                notifications::status,
                notifications::attempts,
                notifications::last_error,
            ))
            .first(conn)
            .unwrap()
    };
    assert_eq!(row(&mut conn, "ok").1, "sent");
    let (bounced, status, attempts, error) = row(&mut conn, "bounce");
    assert_eq!((status.as_str(), attempts), ("failed", 1), "a 5xx is not retried");
    assert!(
        error.unwrap_or_default().contains("User unknown"),
        "the server's words are kept"
    );
    let (_, status, attempts, _) = row(&mut conn, "later");
    assert_eq!((status.as_str(), attempts), ("pending", 1), "a 4xx is retried");
    let rcpts: Vec<String> = sink
        .messages()
        .iter()
        .map(|(m, _)| m["rcpt_tos"][0].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(rcpts, vec!["ok@example.com".to_string()]);
    // The admin fixed the address: the refused notice can go again.
    let out = keywarden(&cfg, &["notifications", "retry", &bounced.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(row(&mut conn, "bounce").1, "pending");
}

/// EHLO and the Message-ID carry the configured fully qualified name, not
/// the short host name; check-config warns when only a short one is known.
fn servers_are_greeted_with_a_fully_qualified_name(backend: Backend) {
    let db = TestDb::new(backend);
    let sink = SmtpSink::start(db.path(), None);
    let mut conn = db.conn();
    let owner = add_user(&mut conn, "fqdn@example.com");
    add_key(&mut conn, owner, "sk_live_v2_fqdn", "active", ts(TimeDelta::days(3)));
    let cfg = smtp_config(&db, sink.port, "hello_name = \"mail.example.org\"");
    ok(keywarden(&cfg, &["jobs", "run", "notify-expiry"]));
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].0["helo"], "mail.example.org");
    let parsed = MessageParser::default().parse(&msgs[0].1).unwrap();
    assert!(
        parsed.message_id().unwrap_or_default().ends_with("@mail.example.org"),
        "{:?}",
        parsed.message_id()
    );
    let short = smtp_config(&db, sink.port, "hello_name = \"vm\"");
    let out = keywarden(&short, &["check-config"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only the short host name \"vm\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn a_failed_notification_can_be_retried_by_hand(backend: Backend) {
    let db = TestDb::new(backend);
    let mut sink = SmtpSink::start(db.path(), None);
    let mut conn = db.conn();
    let owner = add_user(&mut conn, "f@example.com");
    add_key(&mut conn, owner, "sk_live_v2_fail", "active", ts(TimeDelta::days(2)));
    let cfg = db.write_config(
        "one.toml",
        &format!(
            "[notifications]\ntransport = \"smtp\"\nmax_attempts = 1\n[notifications.smtp]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\ntimeout = \"5s\"\n",
            sink.port
        ),
    );
    sink.stop();
    let out = keywarden(&cfg, &["jobs", "run", "notify-expiry"]);
    assert_eq!(out.status.code(), Some(1));
    let failed = ok(keywarden(
        &cfg,
        &["notifications", "list", "--status", "failed", "--json"],
    ));
    let rows: serde_json::Value = serde_json::from_str(&failed).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{failed}");
    assert!(rows[0]["last_error"].as_str().is_some_and(|e| !e.is_empty()));
    let id = rows[0]["id"].as_i64().unwrap().to_string();

    sink.resume();
    // Failed rows stay failed until someone says otherwise.
    ok(keywarden(&cfg, &["jobs", "run", "notify-expiry"]));
    assert!(sink.messages().is_empty());
    let out = ok(keywarden(&cfg, &["notifications", "retry", &id]));
    assert!(out.contains("pending again"), "{out}");
    ok(keywarden(&cfg, &["jobs", "run", "notify-expiry"]));
    assert_eq!(sink.messages().len(), 1);
    // A sent row cannot be retried, an unknown one neither.
    let out = keywarden(&cfg, &["notifications", "retry", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is sent"));
    let out = keywarden(&cfg, &["notifications", "retry", "999999"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no notification with id 999999"));
}

/// Debian's Postfix, as a mail server is usually set up: STARTTLS required
/// (the tests' CA), `reject_non_fqdn_helo_hostname` on, local delivery into
/// a Maildir. A short greeting is refused and the notice waits to be
/// retried; a fully qualified one gets the message delivered.
fn postfix_accepts_a_fully_qualified_greeting_over_starttls(backend: Backend) {
    let db = TestDb::new(backend);
    let (ca, cert, key) = make_test_pki(db.path());
    let postfix = support::postfix::Postfix::start(db.path(), &cert, &key, &["owner@example.test"]);
    let mut conn = db.conn();
    let owner = add_user(&mut conn, "owner@example.test");
    add_key(&mut conn, owner, "sk_live_v2_postfix", "active", ts(TimeDelta::days(3)));
    let config = |name: &str, hello: &str| {
        db.write_config(
            name,
            &format!(
                "[notifications]\ntransport = \"smtp\"\nfrom = \"keywarden <keywarden@keywarden.example.test>\"\nhello_name = \"{hello}\"\n[notifications.smtp]\nhost = \"localhost\"\nport = {}\nsecurity = \"starttls\"\nca_file = \"{}\"\ntimeout = \"10s\"\n",
                postfix.port,
                ca.display()
            ),
        )
    };
    let short = config("short.toml", "vm");
    let out = keywarden(&short, &["jobs", "run", "notify-expiry"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let (status, error): (String, Option<String>) = notifications::table
        .filter(notifications::notice_window.eq("7d"))
        .select((notifications::status, notifications::last_error))
        .first(&mut conn)
        .unwrap();
    assert_eq!(
        status, "pending",
        "a refused greeting is a configuration problem: retried"
    );
    let error = error.unwrap_or_default();
    assert!(error.contains("Helo command rejected"), "{error}");
    assert!(postfix.maildir("owner").is_empty());

    diesel::update(notifications::table.filter(notifications::notice_window.eq("7d")))
        .set(notifications::next_attempt_at.eq(ts(-TimeDelta::seconds(1))))
        .execute(&mut conn)
        .unwrap();
    let qualified = config("fqdn.toml", "keywarden.example.test");
    ok(keywarden(&qualified, &["jobs", "run", "notify-expiry"]));
    if !wait_until(std::time::Duration::from_secs(30), || {
        !postfix.maildir("owner").is_empty()
    }) {
        panic!("nothing reached the Maildir; Postfix log:\n{}", postfix.log());
    }
    let delivered = postfix.maildir("owner");
    assert_eq!(delivered.len(), 1);
    let raw = &delivered[0];
    let parsed = MessageParser::default().parse(raw).expect("parse");
    assert!(
        parsed
            .message_id()
            .unwrap_or_default()
            .ends_with("@keywarden.example.test"),
        "{:?}",
        parsed.message_id()
    );
    let received = parsed.header_raw("Received").unwrap_or_default().to_string();
    assert!(received.contains("from keywarden.example.test"), "{received}");
    assert!(received.contains("ESMTPS"), "sent over TLS: {received}");
    let text = parsed.body_text(0).unwrap_or_default().into_owned();
    assert!(text.contains("sk_live_v2_postfix"), "{text}");
    let sent: String = notifications::table
        .filter(notifications::notice_window.eq("7d"))
        .select(notifications::status)
        .first(&mut conn)
        .unwrap();
    assert_eq!(sent, "sent");
}
