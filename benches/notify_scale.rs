//! The cost of `notify-expiry` on a large key table, beside a psql anti-join
//! that answers the same question, in one run.
//!
//! PostgreSQL holds 1,000,000 keys of 100,000 owners; 100,000 of the keys
//! (one per owner) expire within the 30-day window. Measured, each
//! whole-process under `/usr/bin/time -f "%e %M"`:
//! - the first run, which enqueues 100,000 warnings and writes 100,000
//!   emails with the file transport;
//! - an idle run (everything already sent), median of the rounds;
//! - `psql -c` counting the keys in the window without a notice for their
//!   generation and window (the anti-join), median of the rounds.
//!
//! Run: `cargo bench --bench notify_scale` (PostgreSQL from
//! KEYWARDEN_TEST_DATABASE_URL or postgres://postgres@127.0.0.1:5432/postgres;
//! KEYWARDEN_BENCH_ROUNDS, default 5; KEYWARDEN_BENCH_KEYS and
//! KEYWARDEN_BENCH_DUE scale it down).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

use std::io::Write;
use std::process::Command;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;

const DB: &str = "kw_bench_notify_scale";

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
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

/// Runs a command under `/usr/bin/time`: (seconds, peak RSS in KiB).
fn timed(cmd: &mut Command) -> (f64, u64) {
    let out = cmd.output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default().to_string();
    let mut parts = last.split_whitespace();
    let secs = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let rss = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (secs, rss)
}

fn keywarden(config: &std::path::Path) -> (f64, u64) {
    timed(
        Command::new("/usr/bin/time")
            .args(["-f", "%e %M"])
            .arg(env!("CARGO_BIN_EXE_keywarden"))
            .arg("--config")
            .arg(config)
            .args(["jobs", "run", "notify-expiry"])
            .env("KEYWARDEN_LOG", "warn"),
    )
}

/// The anti-join, as an operator would write it in psql.
const ANTI_JOIN: &str = "SELECT count(*) FROM api_keys k JOIN users u ON u.id = k.owner_id \
     WHERE k.status = 'active' AND u.status = 'active' \
       AND k.expires_at > now() AT TIME ZONE 'UTC' AND k.expires_at <= now() AT TIME ZONE 'UTC' + interval '30 days' \
       AND NOT EXISTS (SELECT 1 FROM notifications n WHERE n.subject_kind = 'api_key' \
             AND n.subject_id = k.id::text \
             AND n.generation = to_char(k.expires_at, 'YYYY-MM-DD\"T\"HH24:MI:SS.US') \
             AND n.notice_window = CASE WHEN k.expires_at <= now() AT TIME ZONE 'UTC' + interval '1 day' THEN '1d' \
                   WHEN k.expires_at <= now() AT TIME ZONE 'UTC' + interval '7 days' THEN '7d' ELSE '30d' END)";

fn psql() -> (f64, u64) {
    timed(
        Command::new("/usr/bin/time")
            .args(["-f", "%e %M", "psql", "-X", "-q", "-A", "-t"])
            .arg(db_url())
            .args(["-c", ANTI_JOIN]),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("notify_scale: run with `cargo bench --bench notify_scale`");
        return;
    }
    let rounds = env_number("KEYWARDEN_BENCH_ROUNDS", 5);
    let keys = env_number("KEYWARDEN_BENCH_KEYS", 1_000_000);
    let due = env_number("KEYWARDEN_BENCH_DUE", 100_000);
    let per_owner = (keys / due).max(1);
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox");
    let config = dir.path().join("scale.toml");
    std::fs::File::create(&config)
        .unwrap()
        .write_all(
            format!(
                "[daemon]\nlog_level = \"warn\"\nlog_target = \"stderr\"\n[database]\nurl = \"{}\"\n[notifications]\ntransport = \"file\"\nfile_dir = \"{}\"\nhello_name = \"bench.example.org\"\n",
                db_url(),
                outbox.display()
            )
            .as_bytes(),
        )
        .unwrap();

    let mut admin = PgConnection::establish(&admin_url()).expect("PostgreSQL is needed for this benchmark");
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        .unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {DB}")).unwrap();
    let cfg = keywarden::jobs::load_config(&config).unwrap();
    let db = keywarden::db::Database::new(&cfg.database, &cfg.load_secrets().unwrap());
    let mut conn = db.connect().unwrap();
    keywarden::db::migrate::run_pending(&mut conn).unwrap();
    drop(conn);
    let mut pg = PgConnection::establish(&db_url()).unwrap();
    eprintln!("seeding {keys} keys of {due} owners ({due} due within 30 days)");
    pg.batch_execute(&format!(
        "INSERT INTO users (email, name, status, created_at, updated_at)
         SELECT 'owner' || g || '@example.com', 'Owner ' || g, 'active', now(), now() FROM generate_series(1, {due}) g;
         INSERT INTO api_keys (prefix, key_hash, name, status, owner_id, scopes, allowed_ips, expires_at, created_at, updated_at)
         SELECT 'sk_live_v2_' || lpad(to_hex(g), 16, '0'), '$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA',
                'service key ' || g, 'active', 1 + (g - 1) % {due}, '[]', '[]',
                CASE WHEN g <= {due}
                     THEN now() AT TIME ZONE 'UTC' + interval '1 hour' + (g::float / {due}) * interval '29 days'
                     ELSE now() AT TIME ZONE 'UTC' + interval '60 days' + (g % 300) * interval '1 day' END,
                now(), now()
         FROM generate_series(1, {total}) g;",
        total = due * per_owner
    ))
    .unwrap();
    pg.batch_execute("VACUUM ANALYZE").unwrap();

    let (first, first_rss) = keywarden(&config);
    let written = std::fs::read_dir(&outbox).unwrap().count();
    let statements: i64 = {
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        diesel::sql_query("SELECT count(*) AS n FROM notifications WHERE status = 'skipped'")
            .get_result::<N>(&mut pg)
            .map(|r| r.n)
            .unwrap_or(0)
    };
    eprintln!(
        "first run: {first:.2} s, peak RSS {} MiB, {written} emails, {statements} wider windows skipped",
        first_rss / 1024
    );
    pg.batch_execute("VACUUM ANALYZE notifications").unwrap();

    let mut idle = Vec::new();
    let mut idle_rss = 0;
    let mut reference = Vec::new();
    for round in 1..=rounds {
        let (p, _) = psql();
        let (k, rss) = keywarden(&config);
        eprintln!(
            "round {round}: idle keywarden run {k:.2} s ({} MiB), psql anti-join {p:.2} s",
            rss / 1024
        );
        idle.push(k);
        reference.push(p);
        idle_rss = idle_rss.max(rss);
    }
    println!("notify-expiry on {keys} keys, {due} within the window ({rounds} idle rounds, medians)");
    println!(
        "  first run (enqueue and write {written} emails, file transport): {first:.2} s, peak RSS {} MiB",
        first_rss / 1024
    );
    println!(
        "  idle run:          {:.2} s, peak RSS {} MiB",
        median(idle.clone()),
        idle_rss / 1024
    );
    println!("  psql anti-join:    {:.2} s", median(reference.clone()));
    println!("  ratio idle / psql: {:.2}", median(idle) / median(reference));
    if std::env::var_os("KEYWARDEN_BENCH_KEEP").is_none() {
        drop(pg);
        let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"));
    }
}
