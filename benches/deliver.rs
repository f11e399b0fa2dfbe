//! Delivering 10,000 pending notifications to a local SMTP sink (Debian's
//! aiosmtpd, counting only), beside Python's smtplib sending the same
//! messages over one connection to the same sink, alternating, in one run.
//!
//! Run: `cargo bench --bench deliver` (PostgreSQL from
//! KEYWARDEN_TEST_DATABASE_URL or postgres://postgres@127.0.0.1:5432/postgres;
//! KEYWARDEN_BENCH_ROUNDS, default 3). Each round runs smtplib, keywarden
//! with one connection, smtplib again, keywarden with a pool of four, then
//! four smtplib processes at once (a quarter of the messages each: what the
//! sink itself can take). The
//! keywarden side is the real binary, `keywarden jobs run notify-expiry`
//! (claim, render, send, record each message), timed whole-process under
//! `/usr/bin/time -f %M` for its peak memory; smtplib is timed from connect
//! to QUIT, with its messages read beforehand.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use keywarden::config::Config;
use keywarden::db::Database;
use keywarden::notify::detect::{enqueue_key_notices, KeyNoticePayload};
use keywarden::notify::render::{build_message, OwnerNotes, Templates};

const DB: &str = "kw_bench_deliver";

/// Notifications delivered per round (KEYWARDEN_BENCH_MESSAGES, default 10,000).
fn messages() -> usize {
    std::env::var("KEYWARDEN_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn admin_url() -> String {
    std::env::var("KEYWARDEN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn db_url() -> String {
    let mut u = url::Url::parse(&admin_url()).expect("admin url");
    u.set_path(&format!("/{DB}"));
    u.to_string()
}

struct Sink {
    child: Child,
    port: u16,
}

impl Sink {
    fn start() -> Sink {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/smtp_sink.py");
        let mut child = Command::new("/usr/bin/python3")
            .args([script, &port.to_string(), "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3-aiosmtpd is needed for this benchmark");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        Sink { child, port }
    }

    /// Stops the sink and returns how many messages it accepted.
    fn finish(mut self) -> usize {
        drop(self.child.stdin.take());
        let mut out = String::new();
        BufReader::new(self.child.stdout.take().unwrap())
            .read_line(&mut out)
            .unwrap();
        let _ = self.child.wait();
        out.trim().parse().unwrap()
    }
}

fn seed(config: &Config) {
    let mut a = PgConnection::establish(&admin_url()).expect("PostgreSQL is needed for this benchmark");
    a.batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        .unwrap();
    a.batch_execute(&format!("CREATE DATABASE {DB}")).unwrap();
    let db = Database::new(&config.database, &config.load_secrets().unwrap());
    let mut conn = db.connect().unwrap();
    keywarden::db::migrate::run_pending(&mut conn).unwrap();
    let keywarden::db::DbConnection::Postgres(pg) = &mut conn else {
        unreachable!()
    };
    pg.batch_execute(&format!(
        "INSERT INTO users (email, name, status, created_at, updated_at)
         SELECT 'owner' || g || '@example.com', 'Owner ' || g, 'active', now(), now() FROM generate_series(1, {n}) g;
         INSERT INTO api_keys (prefix, key_hash, name, status, owner_id, scopes, allowed_ips, expires_at, created_at, updated_at)
         SELECT 'sk_live_v2_' || lpad(to_hex(id), 16, '0'), '$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA',
                'service key ' || id, 'active', id, '[]', '[]', now() + interval '3 days', now(), now()
         FROM users;",
        n = messages()
    ))
    .unwrap();
    let n = enqueue_key_notices(&mut conn, &config.notifications, keywarden::db::now()).unwrap();
    assert_eq!(n, messages());
}

fn reset_outbox() {
    let mut pg = PgConnection::establish(&db_url()).unwrap();
    pg.batch_execute(
        "UPDATE notifications SET status = 'pending', attempts = 0, sent_at = NULL, message_id = NULL,
             claimed_at = NULL, next_attempt_at = now() - interval '1 minute' WHERE status <> 'skipped';
         DELETE FROM job_runs;",
    )
    .unwrap();
    pg.batch_execute("VACUUM ANALYZE notifications").unwrap();
}

/// The keywarden binary delivering the outbox: (elapsed, peak RSS in KiB).
fn keywarden_run(config_path: &std::path::Path) -> (Duration, u64) {
    reset_outbox();
    let t = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(env!("CARGO_BIN_EXE_keywarden"))
        .arg("--config")
        .arg(config_path)
        .args(["jobs", "run", "notify-expiry"])
        .env("KEYWARDEN_LOG", "warn")
        .output()
        .unwrap();
    let elapsed = t.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let rss = stderr.lines().last().and_then(|l| l.trim().parse().ok()).unwrap_or(0);
    (elapsed, rss)
}

/// The same messages from Python's smtplib over one connection: (elapsed,
/// peak RSS in KiB).
fn smtplib_run(port: u16, messages: &std::path::Path) -> (Duration, u64) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/smtplib_send.py");
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M", "/usr/bin/python3", script, &port.to_string()])
        .arg(messages)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let secs: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let rss = stderr.lines().last().and_then(|l| l.trim().parse().ok()).unwrap_or(0);
    (Duration::from_secs_f64(secs), rss)
}

/// The same messages split over four smtplib processes sending at once, one
/// connection each: what the sink itself can take. Returns the rate.
fn smtplib_parallel(port: u16, parts: &[std::path::PathBuf]) -> f64 {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/smtplib_send.py");
    let children: Vec<_> = parts
        .iter()
        .map(|p| {
            Command::new("/usr/bin/python3")
                .args([script, &port.to_string()])
                .arg(p)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let slowest = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse::<f64>().unwrap()
        })
        .fold(0.0, f64::max);
    messages() as f64 / slowest
}

/// Writes the messages smtplib sends: one JSON line each.
fn write_messages(path: &std::path::Path, messages: &[lettre::Message]) {
    use base64ct::Encoding;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for m in messages {
        let env = m.envelope();
        let line = serde_json::json!({
            "from": env.from().map(|a| a.to_string()).unwrap_or_default(),
            "to": env.to()[0].to_string(),
            "raw": base64ct::Base64::encode_string(&m.formatted()),
        });
        writeln!(f, "{line}").unwrap();
    }
}

fn config_file(dir: &std::path::Path, port: u16, pool: u32) -> std::path::PathBuf {
    let config_text = format!(
        "[daemon]\nlog_level = \"warn\"\nlog_target = \"stderr\"\n[database]\nurl = \"{}\"\n[notifications]\ntransport = \"smtp\"\nhello_name = \"bench.example.org\"\n[notifications.smtp]\nhost = \"127.0.0.1\"\nport = {port}\nsecurity = \"none\"\npool_size = {pool}\n",
        db_url(),
    );
    let path = dir.join(format!("bench-pool{pool}.toml"));
    std::fs::File::create(&path)
        .unwrap()
        .write_all(config_text.as_bytes())
        .unwrap();
    path
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("deliver: run with `cargo bench --bench deliver`");
        return;
    }
    let rounds: usize = std::env::var("KEYWARDEN_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let mut rows: Vec<Round> = Vec::new();
    for round in 1..=rounds {
        let sink = Sink::start();
        let one = config_file(dir.path(), sink.port, 1);
        let four = config_file(dir.path(), sink.port, 4);
        let config = keywarden::jobs::load_config(&one).unwrap();
        if round == 1 {
            seed(&config);
        }
        // smtplib's messages: the same digests, rendered beforehand.
        let templates = Templates::load(&config.notifications).unwrap();
        let from = config.notifications.from.parse().unwrap();
        let now = keywarden::db::now();
        let notes = OwnerNotes::from_config(&config.notifications, "bench.example.org");
        let prepared: Vec<lettre::Message> = (1..=messages())
            .map(|i| {
                let payload = KeyNoticePayload {
                    name: format!("service key {i}"),
                    prefix: format!("sk_live_v2_{i:016x}"),
                    expires_at: now + chrono::TimeDelta::days(3),
                    expired: false,
                };
                let r = templates
                    .render_key_digest(&format!("Owner {i}"), &[payload], &notes, now)
                    .unwrap();
                build_message(
                    &from,
                    &format!("owner{i}@example.com"),
                    Some(&format!("Owner {i}")),
                    &r,
                    "bench.example.org",
                )
                .unwrap()
            })
            .collect();
        let jsonl = dir.path().join("messages.jsonl");
        write_messages(&jsonl, &prepared);
        let quarter = prepared.len().div_ceil(4);
        let parts: Vec<std::path::PathBuf> = prepared
            .chunks(quarter)
            .enumerate()
            .map(|(n, chunk)| {
                let p = dir.path().join(format!("part{n}.jsonl"));
                write_messages(&p, chunk);
                p
            })
            .collect();
        drop(prepared);
        let (py1, py1_rss) = smtplib_run(sink.port, &jsonl);
        let (kw1, kw1_rss) = keywarden_run(&one);
        let (py2, py2_rss) = smtplib_run(sink.port, &jsonl);
        let (kw4, kw4_rss) = keywarden_run(&four);
        let sink_ceiling = smtplib_parallel(sink.port, &parts);
        let received = sink.finish();
        assert_eq!(received, 5 * messages(), "each run delivered every message once");
        let rate = |d: Duration| messages() as f64 / d.as_secs_f64();
        let r = Round {
            smtplib: (rate(py1) + rate(py2)) / 2.0,
            one: rate(kw1),
            four: rate(kw4),
            rss: kw1_rss.max(kw4_rss),
            py_rss: py1_rss.max(py2_rss),
            ceiling: sink_ceiling,
        };
        eprintln!(
            "round {round}: smtplib {:.0} and {:.0} msg/s; keywarden one connection {:.0} msg/s ({:.2}x), pool of 4 {:.0} msg/s ({:.2}x); four smtplib processes at once {:.0} msg/s; peak RSS keywarden {} MiB, smtplib {} MiB",
            rate(py1),
            rate(py2),
            r.one,
            r.one / r.smtplib,
            r.four,
            r.four / r.smtplib,
            r.ceiling,
            r.rss / 1024,
            r.py_rss / 1024,
        );
        rows.push(r);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "delivery of {} notifications to a local SMTP sink, {rounds} round(s), medians",
        messages()
    );
    println!(
        "  smtplib, one connection:     {:.0} msg/s",
        median(rows.iter().map(|r| r.smtplib).collect())
    );
    println!(
        "  keywarden, one connection:   {:.0} msg/s (ratio {:.2})",
        median(rows.iter().map(|r| r.one).collect()),
        median(rows.iter().map(|r| r.one / r.smtplib).collect())
    );
    println!(
        "  keywarden, pool of 4:        {:.0} msg/s (ratio {:.2})",
        median(rows.iter().map(|r| r.four).collect()),
        median(rows.iter().map(|r| r.four / r.smtplib).collect())
    );
    println!(
        "  four smtplib processes at once (the sink's ceiling): {:.0} msg/s",
        median(rows.iter().map(|r| r.ceiling).collect())
    );
    println!(
        "  peak RSS: keywarden {} MiB, smtplib {} MiB",
        rows.iter().map(|r| r.rss).max().unwrap_or(0) / 1024,
        rows.iter().map(|r| r.py_rss).max().unwrap_or(0) / 1024
    );
    if std::env::var_os("KEYWARDEN_BENCH_KEEP").is_none() {
        let mut a = PgConnection::establish(&admin_url()).unwrap();
        let _ = a.batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"));
    }
}

struct Round {
    smtplib: f64,
    one: f64,
    four: f64,
    rss: u64,
    py_rss: u64,
    ceiling: f64,
}
