//! Delivering 10,000 pending notifications to a local SMTP sink (Debian's
//! aiosmtpd, counting only), beside a plain SMTP client (lettre over one
//! connection) sending the same messages to the same sink, in one run.
//!
//! Run: `cargo bench --bench deliver` (PostgreSQL from
//! KEYWARDEN_TEST_DATABASE_URL or postgres://postgres@127.0.0.1:5432/postgres;
//! KEYWARDEN_BENCH_ROUNDS, default 3). The keywarden side is the real binary,
//! `keywarden jobs run notify-expiry`, under `/usr/bin/time -f %M` for its
//! peak memory.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use keywarden::config::Config;
use keywarden::db::Database;
use keywarden::notify::detect::{enqueue_key_notices, KeyNoticePayload};
use keywarden::notify::render::{build_message, Templates};
use lettre::transport::smtp::client::Tls;
use lettre::transport::smtp::PoolConfig;
use lettre::{SmtpTransport, Transport};

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
    let n = enqueue_key_notices(&mut conn, &config.notifications, keywarden::db::now())
        .unwrap()
        .len();
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

/// The same messages from a plain client over one connection.
fn plain_client(port: u16, messages: &[lettre::Message]) -> Duration {
    let client = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(port)
        .tls(Tls::None)
        .pool_config(PoolConfig::new().max_size(1))
        .build();
    let t = Instant::now();
    for m in messages {
        client.send(m).unwrap();
    }
    t.elapsed()
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
    let mut results = Vec::new();
    for round in 1..=rounds {
        let sink = Sink::start();
        let config_text = format!(
            "[daemon]\nlog_level = \"warn\"\nlog_target = \"stderr\"\n[database]\nurl = \"{}\"\n[notifications]\ntransport = \"smtp\"\n[notifications.smtp]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\n",
            db_url(),
            sink.port
        );
        let config_path = dir.path().join("bench.toml");
        std::fs::File::create(&config_path)
            .unwrap()
            .write_all(config_text.as_bytes())
            .unwrap();
        let config = Config::load(&config_path).unwrap();
        if round == 1 {
            seed(&config);
        }
        // The plain client's messages: the same digests, rendered beforehand.
        let templates = Templates::load(&config.notifications).unwrap();
        let from = config.notifications.from.parse().unwrap();
        let now = keywarden::db::now();
        let prepared: Vec<lettre::Message> = (1..=messages())
            .map(|i| {
                let payload = KeyNoticePayload {
                    name: format!("service key {i}"),
                    prefix: format!("sk_live_v2_{i:016x}"),
                    expires_at: now + chrono::TimeDelta::days(3),
                    expired: false,
                };
                let r = templates
                    .render_key_digest(&format!("Owner {i}"), &[payload], None, now)
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
        let (kw, rss) = keywarden_run(&config_path);
        let plain = plain_client(sink.port, &prepared);
        let received = sink.finish();
        assert_eq!(received, 2 * messages(), "each side delivered every message once");
        let kw_rate = messages() as f64 / kw.as_secs_f64();
        let plain_rate = messages() as f64 / plain.as_secs_f64();
        eprintln!(
            "round {round}: keywarden {kw_rate:.0} msg/s ({kw:.2?}, peak RSS {} MiB), plain client {plain_rate:.0} msg/s ({plain:.2?}), ratio {:.2}",
            rss / 1024,
            kw_rate / plain_rate
        );
        results.push((kw_rate, plain_rate, kw_rate / plain_rate, rss));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "delivery of {} notifications to a local SMTP sink, {rounds} round(s)",
        messages()
    );
    println!(
        "  keywarden (median):    {:.0} msg/s",
        median(results.iter().map(|r| r.0).collect())
    );
    println!(
        "  plain client (median): {:.0} msg/s",
        median(results.iter().map(|r| r.1).collect())
    );
    println!(
        "  ratio (median):        {:.2}",
        median(results.iter().map(|r| r.2).collect())
    );
    println!(
        "  keywarden peak RSS:    {} MiB",
        results.iter().map(|r| r.3).max().unwrap_or(0) / 1024
    );
    if std::env::var_os("KEYWARDEN_BENCH_KEEP").is_none() {
        let mut a = PgConnection::establish(&admin_url()).unwrap();
        let _ = a.batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"));
    }
}
