//! Real faults against the real daemon, and the invariants afterwards:
//! nothing lost, nothing doubled beyond what was in flight.
//!
//! - SIGKILL at a random moment of a delivery and of an expiry run, then a
//!   restart (both backends);
//! - PostgreSQL cut away mid-delivery by a TCP proxy of the test's own for
//!   longer than a job period, then restored;
//! - SQLite with every job ticking every second, with real work, for a
//!   minute: no run fails with "database is locked";
//! - two replicas on one PostgreSQL, one of them killed again and again.
//!
//! The number of trials is bounded for CI; `KEYWARDEN_FAULT_TRIALS`,
//! `KEYWARDEN_FAULT_OUTAGE_SECS` and `KEYWARDEN_FAULT_STORM_SECS` make a
//! longer run. Each test prints its figures (duplicates per kill, per
//! outage) on stderr: `cargo test --test faults -- --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod support;

use std::collections::{HashMap, HashSet};
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::TimeDelta;
use diesel::dsl::count_star;
use diesel::prelude::*;
use keywarden::db::schema::{api_key_events, api_keys, job_runs, notifications, users};
use keywarden::db::DbConnection;
use support::proxy::TcpProxy;
use support::*;

/// SMTP connections of the daemon: the most messages ever in flight.
const POOL: usize = 4;
const SECOND: Duration = Duration::from_secs(1);

both_backends!(
    sigkill_during_delivery_doubles_at_most_the_messages_in_flight,
    sigkill_during_file_delivery_doubles_at_most_two_batches,
    sigkill_during_expiry_never_expires_a_key_twice,
);

mod postgres_only {
    #[test]
    fn database_outage_during_delivery() {
        super::database_outage_during_delivery();
    }
    #[test]
    fn two_replicas_one_killed_again_and_again() {
        super::two_replicas_one_killed_again_and_again();
    }
}

mod sqlite_only {
    #[test]
    fn every_job_every_second_never_finds_the_database_locked() {
        super::every_job_every_second_never_finds_the_database_locked();
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn trials() -> u64 {
    env_number("KEYWARDEN_FAULT_TRIALS", 2).max(1)
}

fn random_below(n: u64) -> u64 {
    (uuid::Uuid::new_v4().as_u128() % u128::from(n.max(1))) as u64
}

/// A configuration with the daemon's `[daemon]` extras, the database URL
/// given (the proxy's, for an outage) and `rest` appended.
fn write_config(db: &TestDb, name: &str, daemon_extra: &str, url: &str, rest: &str) -> PathBuf {
    let path = db.path().join(name);
    let text = format!(
        "[daemon]\nlog_target = \"stderr\"\nshutdown_timeout = \"30s\"\n{daemon_extra}\n\n[database]\nurl = \"{url}\"\nbusy_timeout = \"60s\"\n\n{rest}"
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// SMTP to the test's sink over `POOL` connections, retries a second apart.
fn smtp_section(port: u16) -> String {
    format!(
        "[notifications]\nfrom = \"keywarden <keywarden@example.com>\"\ntransport = \"smtp\"\nretry_base = \"1s\"\nretry_max = \"2s\"\nmax_attempts = 50\n\n[notifications.smtp]\nhost = \"127.0.0.1\"\nport = {port}\nsecurity = \"none\"\ntimeout = \"5s\"\npool_size = {POOL}\n\n"
    )
}

/// `n` owners `{tag}-{i}@example.com`, each with one key expiring in three
/// days: one notice, so one email, per owner. Returns the addresses.
fn add_owners_with_keys(conn: &mut DbConnection, tag: &str, n: usize) -> Vec<String> {
    let now = keywarden::db::now();
    let emails: Vec<String> = (0..n).map(|i| format!("{tag}-{i}@example.com")).collect();
    for chunk in emails.chunks(400) {
        let rows: Vec<OwnerRow> = chunk
            .iter()
            .map(|e| OwnerRow {
                email: e.clone(),
                status: "active",
                created_at: now,
                updated_at: now,
            })
            .collect();
        // A batch insert goes through the backend's own connection.
        let insert = diesel::insert_into(users::table).values(rows).returning(users::id);
        let ids: Vec<i64> = match conn {
            DbConnection::Postgres(pg) => insert.get_results(pg),
            DbConnection::Sqlite(lite) => insert.get_results(lite),
        }
        .expect("insert owners");
        let keys: Vec<_> = ids
            .iter()
            .map(|id| {
                key_row(
                    &format!("sk_live_v2_{tag}{id}"),
                    *id,
                    "active",
                    now + TimeDelta::days(3),
                    None,
                )
            })
            .collect();
        insert_keys(conn, keys);
    }
    emails
}

/// A key row for batch inserts.
#[derive(Clone, Insertable)]
#[diesel(table_name = api_keys, treat_none_as_default_value = false)]
struct KeyRow {
    prefix: String,
    key_hash: &'static str,
    name: String,
    status: &'static str,
    owner_id: i64,
    expires_at: chrono::NaiveDateTime,
    rotated_at: Option<chrono::NaiveDateTime>,
    grace_period_ends_at: Option<chrono::NaiveDateTime>,
    created_at: chrono::NaiveDateTime,
    updated_at: chrono::NaiveDateTime,
}

#[derive(Clone, Insertable)]
#[diesel(table_name = users, treat_none_as_default_value = false)]
struct OwnerRow {
    email: String,
    status: &'static str,
    created_at: chrono::NaiveDateTime,
    updated_at: chrono::NaiveDateTime,
}

fn key_row(
    prefix: &str,
    owner: i64,
    status: &'static str,
    expires_at: chrono::NaiveDateTime,
    grace_ends: Option<chrono::NaiveDateTime>,
) -> KeyRow {
    let now = keywarden::db::now();
    KeyRow {
        prefix: prefix.to_string(),
        key_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        name: format!("key {prefix}"),
        status,
        owner_id: owner,
        expires_at,
        rotated_at: grace_ends.map(|_| now),
        grace_period_ends_at: grace_ends,
        created_at: now,
        updated_at: now,
    }
}

fn insert_keys(conn: &mut DbConnection, rows: Vec<KeyRow>) {
    for chunk in rows.chunks(1000) {
        let insert = diesel::insert_into(api_keys::table).values(chunk.to_vec());
        match conn {
            DbConnection::Postgres(pg) => insert.execute(pg),
            DbConnection::Sqlite(lite) => insert.execute(lite),
        }
        .expect("insert keys");
    }
}

/// `n` keys of one owner expiring from `first` on, `spacing` apart; returns
/// their prefixes.
fn add_due_keys(conn: &mut DbConnection, tag: &str, n: usize, first: TimeDelta, spacing: TimeDelta) -> Vec<String> {
    let owner = add_user(conn, &format!("{tag}-owner@example.com"));
    let now = keywarden::db::now();
    let prefixes: Vec<String> = (0..n).map(|i| format!("sk_live_v2_{tag}{i}")).collect();
    let rows = prefixes
        .iter()
        .enumerate()
        .map(|(i, p)| key_row(p, owner, "active", now + first + spacing * i as i32, None))
        .collect();
    insert_keys(conn, rows);
    prefixes
}

/// Messages the sink received, per recipient.
fn received_per_recipient(sink: &SmtpSink) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for (meta, _) in sink.messages() {
        if let Some(rcpts) = meta["rcpt_tos"].as_array() {
            for r in rcpts {
                *out.entry(r.as_str().unwrap_or_default().to_string()).or_insert(0) += 1;
            }
        }
    }
    out
}

fn bare_message_id(id: &str) -> String {
    id.trim().trim_start_matches('<').trim_end_matches('>').to_string()
}

/// Every Message-ID the sink received.
fn received_message_ids(sink: &SmtpSink) -> HashSet<String> {
    sink.messages()
        .iter()
        .filter_map(|(_, raw)| {
            mail_parser::MessageParser::default()
                .parse(raw)
                .and_then(|m| m.message_id().map(bare_message_id))
        })
        .collect()
}

/// How many of `recipients` got a message, and how many messages beyond
/// the first each.
fn delivered_and_duplicates(sink: &SmtpSink, recipients: &[String]) -> (usize, usize) {
    let per = received_per_recipient(sink);
    let mut delivered = 0;
    let mut duplicates = 0;
    for r in recipients {
        let n = per.get(r).copied().unwrap_or(0);
        if n > 0 {
            delivered += 1;
            duplicates += n - 1;
        }
    }
    (delivered, duplicates)
}

/// The outbox rows are all sent, none left claimed, and every row marked
/// sent names a message the server really received.
fn check_outbox(conn: &mut DbConnection, sink: &SmtpSink, recipients: &[String]) {
    // Wider windows than the one sent are `skipped` by design.
    let rows: Vec<(String, String, Option<String>)> = notifications::table
        .filter(notifications::recipient.eq_any(recipients))
        .filter(notifications::status.ne("skipped"))
        .select((
            notifications::recipient,
            notifications::status,
            notifications::message_id,
        ))
        .load(conn)
        .expect("outbox");
    let received = received_message_ids(sink);
    let mut sent_to = HashSet::new();
    for (recipient, status, message_id) in &rows {
        assert_eq!(status, "sent", "every notice ends sent: {recipient} is {status}");
        let id = bare_message_id(message_id.as_deref().unwrap_or_default());
        assert!(
            received.contains(&id),
            "{recipient}'s row is marked sent as {id}, which the server never received"
        );
        sent_to.insert(recipient.clone());
    }
    assert_eq!(sent_to.len(), recipients.len(), "one sent notice per owner");
}

/// Keys expired (or revoked at grace end) more than once, by their events.
fn transitioned_twice(conn: &mut DbConnection, event: &str) -> Vec<Option<i64>> {
    api_key_events::table
        .filter(api_key_events::event.eq(event))
        .group_by(api_key_events::key_id)
        .having(count_star().gt(1))
        .select(api_key_events::key_id)
        .load(conn)
        .expect("events")
}

fn count_with_status(conn: &mut DbConnection, prefixes: &[String], status: &str) -> usize {
    let mut n = 0;
    for chunk in prefixes.chunks(5000) {
        let c: i64 = api_keys::table
            .filter(api_keys::prefix.eq_any(chunk))
            .filter(api_keys::status.eq(status))
            .count()
            .get_result(conn)
            .expect("count");
        n += c as usize;
    }
    n
}

fn stop(mut daemon: Daemon) {
    daemon.signal("TERM");
    let status = daemon.wait_exit(60 * SECOND);
    assert!(status.success(), "clean stop: {status:?}\n{}", daemon.log());
}

fn kill(mut daemon: Daemon) {
    daemon.signal("KILL");
    let _ = daemon.child.wait();
}

fn sigkill_during_delivery_doubles_at_most_the_messages_in_flight(backend: Backend) {
    let db = TestDb::new(backend);
    let sink = SmtpSink::start(db.path(), None);
    let mut conn = db.conn();
    let jobs = "[jobs.notify-expiry]\nschedule = \"* * * * * *\"\n";
    let cfg = write_config(
        &db,
        "k.toml",
        "",
        &db.url,
        &format!("{}{jobs}", smtp_section(sink.port)),
    );
    let mut figures = Vec::new();
    for trial in 0..trials() {
        let owners = add_owners_with_keys(&mut conn, &format!("kill{trial}"), 150);
        let daemon = Daemon::start(&cfg, None, &[]);
        eventually(60 * SECOND, "delivery starts", || {
            delivered_and_duplicates(&sink, &owners).0 > 0
        });
        std::thread::sleep(Duration::from_millis(random_below(1500)));
        kill(daemon);
        let at_kill = delivered_and_duplicates(&sink, &owners).0;

        // After a restart the dead process's claims are taken at once: the
        // rest goes out well before any claim timeout.
        let daemon = Daemon::start(&cfg, None, &[]);
        eventually(90 * SECOND, "every owner is mailed after the restart", || {
            delivered_and_duplicates(&sink, &owners).0 == owners.len()
        });
        std::thread::sleep(2 * SECOND);
        stop(daemon);
        let (delivered, duplicates) = delivered_and_duplicates(&sink, &owners);
        eprintln!(
            "{backend:?} trial {trial}: killed after {at_kill} of {} delivered; {duplicates} duplicate(s)",
            owners.len()
        );
        assert_eq!(delivered, owners.len());
        assert!(
            duplicates <= POOL,
            "a kill doubles at most the {POOL} messages in flight, got {duplicates}"
        );
        check_outbox(&mut conn, &sink, &owners);
        figures.push(duplicates);
    }
    eprintln!("{backend:?}: duplicates per kill during delivery: {figures:?}");
}

/// The file transport's messages by recipient (`To:`) and their Message-IDs.
fn eml_files(dir: &Path) -> (HashMap<String, usize>, HashSet<String>) {
    let mut per = HashMap::new();
    let mut ids = HashSet::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|x| x != "eml") {
            continue;
        }
        let raw = std::fs::read(&path).expect("read eml");
        let Some(m) = mail_parser::MessageParser::default().parse(&raw) else {
            panic!("{} is not a whole message", path.display());
        };
        if let Some(to) = m.to().and_then(|a| a.first()).and_then(|a| a.address()) {
            *per.entry(to.to_string()).or_insert(0) += 1;
        }
        if let Some(id) = m.message_id() {
            ids.insert(bare_message_id(id));
        }
    }
    (per, ids)
}

/// A kill -9 of a one-shot `jobs run notify-expiry` with the file
/// transport, at a random point of its delivery: the next run sends the
/// rest, and no recipient gets more than one message but for at most the
/// two batches the file writer may hold written and unrecorded.
fn sigkill_during_file_delivery_doubles_at_most_two_batches(backend: Backend) {
    const OWNERS: usize = 1500;
    const IN_FLIGHT: usize = 2 * keywarden::notify::transport::FILE_BATCH;
    let db = TestDb::new(backend);
    let mut conn = db.conn();
    let outbox = db.path().join("outbox");
    let cfg = write_config(
        &db,
        "k.toml",
        "",
        &db.url,
        &format!(
            "[notifications]\ntransport = \"file\"\nfile_dir = \"{}\"\n",
            outbox.display()
        ),
    );
    let owners = add_owners_with_keys(&mut conn, "file", OWNERS);
    let mut child = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .args(["jobs", "run", "notify-expiry"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("keywarden");
    eventually(60 * SECOND, "delivery starts", || !eml_files(&outbox).0.is_empty());
    std::thread::sleep(Duration::from_millis(random_below(300)));
    let _ = child.kill();
    let _ = child.wait();
    let at_kill: usize = eml_files(&outbox).0.len();

    let out = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .args(["jobs", "run", "notify-expiry"])
        .output()
        .expect("keywarden");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (per, ids) = eml_files(&outbox);
    let duplicates: usize = per.values().map(|n| n - 1).sum();
    eprintln!("{backend:?}: killed after {at_kill} of {OWNERS} written; {duplicates} duplicate(s)");
    assert_eq!(per.len(), OWNERS, "every owner is mailed");
    assert!(
        duplicates <= IN_FLIGHT,
        "a kill doubles at most the {IN_FLIGHT} messages in flight, got {duplicates}"
    );
    let rows: Vec<(String, Option<String>)> = notifications::table
        .filter(notifications::recipient.eq_any(&owners))
        .filter(notifications::status.ne("skipped"))
        .select((notifications::status, notifications::message_id))
        .load(&mut conn)
        .expect("outbox");
    assert_eq!(rows.len(), OWNERS);
    for (status, id) in rows {
        assert_eq!(status, "sent");
        let id = bare_message_id(id.as_deref().unwrap_or_default());
        assert!(ids.contains(&id), "a row is marked sent as {id}, which no file holds");
    }
    let stray: Vec<_> = std::fs::read_dir(&outbox)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    // A kill can leave the temporary files of the batch being written; they
    // are hidden and never counted as mail.
    assert!(stray.len() <= IN_FLIGHT, "{} temporary files", stray.len());
}

fn sigkill_during_expiry_never_expires_a_key_twice(backend: Backend) {
    let db = TestDb::new(backend);
    let mut conn = db.conn();
    let rest = "[jobs.expire-keys]\nschedule = \"* * * * * *\"\nbatch_size = 50\n\n[jobs.notify-expiry]\nenabled = false\n\n[jobs.revoke-grace]\nenabled = false\n";
    let cfg = write_config(&db, "k.toml", "", &db.url, rest);
    let mut all = Vec::new();
    for trial in 0..trials() {
        let prefixes = add_due_keys(
            &mut conn,
            &format!("exp{trial}x"),
            20_000,
            -TimeDelta::hours(1),
            TimeDelta::zero(),
        );
        let daemon = Daemon::start(&cfg, None, &[]);
        eventually(60 * SECOND, "expiry starts", || {
            count_with_status(&mut conn, &prefixes, "expired") > 0
        });
        std::thread::sleep(Duration::from_millis(random_below(300)));
        kill(daemon);
        let at_kill = count_with_status(&mut conn, &prefixes, "expired");
        // On SQLite the dead holder's lease is taken over at once, not
        // after its ten minutes.
        let daemon = Daemon::start(&cfg, None, &[]);
        eventually(90 * SECOND, "every due key expires after the restart", || {
            count_with_status(&mut conn, &prefixes, "expired") == prefixes.len()
        });
        stop(daemon);
        eprintln!(
            "{backend:?} trial {trial}: killed after {at_kill} of {} expired",
            prefixes.len()
        );
        all.extend(prefixes);
    }
    assert!(
        transitioned_twice(&mut conn, "expired").is_empty(),
        "no key expired twice"
    );
    let events: i64 = api_key_events::table
        .filter(api_key_events::event.eq("expired"))
        .count()
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(events as usize, all.len(), "one expiry event per key");
    let running: i64 = job_runs::table
        .filter(job_runs::outcome.eq("running"))
        .count()
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(running, 0, "the killed runs are closed");
}

/// The PostgreSQL server the test database lives on.
fn postgres_addr(url: &str) -> std::net::SocketAddr {
    let u = url::Url::parse(url).expect("url");
    let host = u.host_str().unwrap_or("127.0.0.1").to_string();
    let port = u.port().unwrap_or(5432);
    (host.as_str(), port)
        .to_socket_addrs()
        .expect("resolve")
        .next()
        .expect("address")
}

fn through_proxy(url: &str, port: u16) -> String {
    let mut u = url::Url::parse(url).expect("url");
    u.set_host(Some("127.0.0.1")).expect("host");
    u.set_port(Some(port)).expect("port");
    u.to_string()
}

fn database_outage_during_delivery() {
    let db = TestDb::new(Backend::Postgres);
    let sink = SmtpSink::start(db.path(), None);
    let mut conn = db.conn();
    let owners = add_owners_with_keys(&mut conn, "outage", 300);
    // Keys falling due before, during and after the outage.
    let due = add_due_keys(
        &mut conn,
        "outdue",
        300,
        TimeDelta::seconds(-5),
        TimeDelta::milliseconds(60),
    );
    let proxy = TcpProxy::start(postgres_addr(&db.url));
    let jobs = "[jobs.notify-expiry]\nschedule = \"* * * * * *\"\n\n[jobs.expire-keys]\nschedule = \"* * * * * *\"\nbatch_size = 20\n";
    let cfg = write_config(
        &db,
        "k.toml",
        "",
        &through_proxy(&db.url, proxy.port),
        &format!("{}{jobs}", smtp_section(sink.port)),
    );
    let notify = NotifySocket::bind(db.path());
    let mut daemon = Daemon::start(&cfg, Some(&notify), &[]);
    notify.wait_for("READY=1", 60 * SECOND);
    eventually(60 * SECOND, "delivery is under way", || {
        delivered_and_duplicates(&sink, &owners).0 >= 30
    });
    proxy.cut();
    let at_cut = delivered_and_duplicates(&sink, &owners).0;
    let outage = Duration::from_secs(env_number("KEYWARDEN_FAULT_OUTAGE_SECS", 6));
    let cut_at = Instant::now();
    std::thread::sleep(outage);
    let during = delivered_and_duplicates(&sink, &owners).0;
    assert!(
        daemon.is_running(),
        "the daemon lives through the outage:\n{}",
        daemon.log()
    );
    let status_during = wait_status(&notify, 30 * SECOND, |s| !s.contains("last error: none"));
    proxy.restore();
    eprintln!("outage of {:?} after {at_cut} messages", cut_at.elapsed());

    if !wait_until(120 * SECOND, || {
        delivered_and_duplicates(&sink, &owners).0 == owners.len()
    }) {
        panic!(
            "not every owner was mailed after the outage ({} of {}); log:\n{}",
            delivered_and_duplicates(&sink, &owners).0,
            owners.len(),
            daemon.log()
        );
    }
    if !wait_until(60 * SECOND, || {
        count_with_status(&mut conn, &due, "expired") == due.len()
    }) {
        panic!("not every due key expired; log:\n{}", daemon.log());
    }
    // The status line forgets the outage once the database answers.
    wait_status(&notify, 30 * SECOND, |s| s.contains("last error: none"));
    std::thread::sleep(2 * SECOND);
    let log = daemon.log();
    stop(daemon);

    let (_, duplicates) = delivered_and_duplicates(&sink, &owners);
    eprintln!("database outage: {at_cut} delivered at the cut, {during} by its end, {duplicates} duplicate(s) in all");
    // During the outage the status line says what failed and when.
    let error_part = status_during.split("last error: ").nth(1).unwrap_or_default();
    assert!(
        error_part.contains(" at ") && error_part.contains('Z'),
        "{status_during}"
    );
    assert!(
        duplicates <= POOL,
        "an outage doubles at most the {POOL} messages in flight, got {duplicates}"
    );
    check_outbox(&mut conn, &sink, &owners);
    assert!(
        transitioned_twice(&mut conn, "expired").is_empty(),
        "no key expired twice"
    );
    // The runs the outage kept from the database are on record now.
    let errors: Vec<Option<String>> = job_runs::table
        .filter(job_runs::outcome.eq("failed"))
        .select(job_runs::error)
        .load(&mut conn)
        .unwrap();
    let errors: Vec<String> = errors.into_iter().flatten().collect();
    assert!(
        errors.iter().any(|e| e.contains("could not start between")),
        "the missed runs are summarised: {errors:#?}"
    );
    assert!(errors.iter().all(|e| !e.contains('\n')), "{errors:#?}");
    let running: i64 = job_runs::table
        .filter(job_runs::outcome.eq("running"))
        .count()
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(running, 0);
    // One log line per record: no line continues a library's multi-line
    // message (libpq's continuation lines start with a tab).
    let continued: Vec<&str> = log.lines().filter(|l| l.starts_with(char::is_whitespace)).collect();
    assert!(continued.is_empty(), "{continued:#?}");
    assert!(
        log.contains("server closed the connection") || log.contains("cannot connect"),
        "the outage was seen:\n{log}"
    );
}

/// Reads `STATUS=` datagrams until one satisfies `pred`.
fn wait_status(notify: &NotifySocket, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no matching STATUS= within {timeout:?}");
        let msg = notify.wait_for("STATUS=", left);
        if pred(&msg) {
            return msg;
        }
    }
}

fn two_replicas_one_killed_again_and_again() {
    let db = TestDb::new(Backend::Postgres);
    let sink = SmtpSink::start(db.path(), None);
    let mut conn = db.conn();
    let owners = add_owners_with_keys(&mut conn, "rep", 300);
    let due = add_due_keys(
        &mut conn,
        "repdue",
        3000,
        TimeDelta::seconds(-5),
        TimeDelta::milliseconds(5),
    );
    // A tree for watch-perms, locked per host: each replica scans its own.
    let root = db.path().join("tree");
    for d in 0..20 {
        let dir = root.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            std::fs::write(dir.join(format!("f{f}.txt")), "x").unwrap();
        }
    }
    let rest = format!(
        "{}[jobs.notify-expiry]\nschedule = \"* * * * * *\"\n\n[jobs.expire-keys]\nschedule = \"* * * * * *\"\nbatch_size = 50\n\n[jobs.watch-perms]\nschedule = \"* * * * * *\"\n\n[permissions]\nroots = [\"{}\"]\n\n[[permissions.rules]]\nname = \"data\"\npaths = [\"**/*.txt\"]\ntype = \"file\"\nmode = \"at most 0644\"\n",
        smtp_section(sink.port),
        root.display()
    );
    let cfg_a = write_config(&db, "a.toml", "host_name = \"replica-a\"", &db.url, &rest);
    let cfg_b = write_config(&db, "b.toml", "host_name = \"replica-b\"", &db.url, &rest);
    let b = Daemon::start(&cfg_b, None, &[]);
    let kills = trials() + 1;
    for _ in 0..kills {
        let a = Daemon::start(&cfg_a, None, &[]);
        std::thread::sleep(Duration::from_millis(1000 + random_below(2000)));
        kill(a);
    }
    // A comes back for good: it takes back what its dead runs held.
    let a = Daemon::start(&cfg_a, None, &[]);
    eventually(120 * SECOND, "every owner is mailed", || {
        delivered_and_duplicates(&sink, &owners).0 == owners.len()
    });
    eventually(60 * SECOND, "every due key expires", || {
        count_with_status(&mut conn, &due, "expired") == due.len()
    });
    std::thread::sleep(2 * SECOND);
    stop(a);
    stop(b);

    let (_, duplicates) = delivered_and_duplicates(&sink, &owners);
    eprintln!("two replicas, {kills} kill(s) of one: {duplicates} duplicate(s)");
    assert!(
        duplicates <= POOL * kills as usize,
        "each kill doubles at most the {POOL} messages in flight: {duplicates} after {kills} kills"
    );
    check_outbox(&mut conn, &sink, &owners);
    assert!(
        transitioned_twice(&mut conn, "expired").is_empty(),
        "no key expired twice"
    );
    let b_interrupted: i64 = job_runs::table
        .filter(job_runs::host.eq("replica-b"))
        .filter(job_runs::outcome.eq("interrupted"))
        .count()
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(
        b_interrupted, 0,
        "the surviving replica's runs are never marked interrupted"
    );
    let b_perms: i64 = job_runs::table
        .filter(job_runs::host.eq("replica-b"))
        .filter(job_runs::job.eq("watch-perms"))
        .filter(job_runs::outcome.eq("ok"))
        .count()
        .get_result(&mut conn)
        .unwrap();
    assert!(b_perms > 0, "replica-b's own watch-perms runs happened");
}

fn every_job_every_second_never_finds_the_database_locked() {
    let db = TestDb::new(Backend::Sqlite);
    let mut conn = db.conn();
    let secs = env_number("KEYWARDEN_FAULT_STORM_SECS", 60);
    let span = TimeDelta::seconds(secs as i64);
    // Work falling due all through the storm: keys expiring, rotated keys
    // whose grace ends, owners to warn, files to watch.
    let expiring = add_due_keys(&mut conn, "storm", 3000, TimeDelta::seconds(1), span / 3000);
    add_owners_with_keys(&mut conn, "stormowner", 300);
    let owner = add_user(&mut conn, "grace-owner@example.com");
    let now = keywarden::db::now();
    let rotating = (0..1000)
        .map(|i| {
            key_row(
                &format!("sk_live_v2_grace{i}"),
                owner,
                "rotating",
                now + TimeDelta::days(30),
                Some(now + span / 1000 * i),
            )
        })
        .collect();
    insert_keys(&mut conn, rotating);
    let root = db.path().join("tree");
    std::fs::create_dir_all(&root).unwrap();
    for f in 0..300 {
        std::fs::write(root.join(format!("f{f}.txt")), "x").unwrap();
    }
    let every_second: String = [
        "expire-keys",
        "revoke-grace",
        "notify-expiry",
        "purge-audit",
        "renew-certs",
        "watch-perms",
    ]
    .iter()
    .map(|j| format!("[jobs.{j}]\nschedule = \"* * * * * *\"\n\n"))
    .collect();
    // The shipped busy_timeout, not the tests' longer one.
    let text = format!(
        "[daemon]\nlog_target = \"stderr\"\nshutdown_timeout = \"30s\"\n\n[database]\nurl = \"{}\"\n\n[notifications]\nfile_dir = \"{}\"\n\n{every_second}[permissions]\nroots = [\"{}\"]\n\n[[permissions.rules]]\nname = \"data\"\npaths = [\"*.txt\"]\ntype = \"file\"\nmode = \"at most 0644\"\n",
        db.url,
        db.path().join("outbox").display(),
        root.display()
    );
    let cfg = db.path().join("storm.toml");
    std::fs::write(&cfg, text).unwrap();
    let daemon = Daemon::start(&cfg, None, &[]);
    // The watcher writes drift while the jobs run: files change mode all
    // through the storm.
    let end = Instant::now() + Duration::from_secs(secs);
    let mut i = 0u32;
    while Instant::now() < end {
        let f = root.join(format!("f{}.txt", i % 300));
        let mode = if i % 2 == 0 { 0o666 } else { 0o644 };
        let _ = std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(mode));
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = daemon.log();
    stop(daemon);

    let locked: Vec<(String, Option<String>)> = job_runs::table
        .filter(job_runs::error.like("%locked%"))
        .select((job_runs::job, job_runs::error))
        .load(&mut conn)
        .unwrap();
    assert!(locked.is_empty(), "runs failed on a locked database: {locked:#?}");
    let locked_lines: Vec<&str> = log.lines().filter(|l| l.contains("database is locked")).collect();
    assert!(locked_lines.is_empty(), "{locked_lines:#?}");
    let ok_runs: Vec<(String, i64)> = job_runs::table
        .filter(job_runs::outcome.eq("ok"))
        .group_by(job_runs::job)
        .select((job_runs::job, count_star()))
        .load(&mut conn)
        .unwrap();
    eprintln!("SQLite storm of {secs} s: ok runs per job {ok_runs:?}; {i} mode changes");
    for job in ["expire-keys", "revoke-grace", "notify-expiry", "watch-perms"] {
        let n = ok_runs.iter().find(|(j, _)| j == job).map(|(_, n)| *n).unwrap_or(0);
        assert!(n as u64 >= secs / 4, "{job} ran {n} time(s) in {secs} s: {ok_runs:?}");
    }
    let failed: Vec<(String, Option<String>)> = job_runs::table
        .filter(job_runs::outcome.eq("failed"))
        .select((job_runs::job, job_runs::error))
        .load(&mut conn)
        .unwrap();
    assert!(failed.is_empty(), "no run failed: {failed:#?}");
    assert!(count_with_status(&mut conn, &expiring, "expired") > 0);
}
