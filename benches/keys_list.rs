//! `keywarden keys list --status active` beside psql's COPY of the same
//! columns in the same order, on PostgreSQL with 1,000,000 keys (900,000
//! active), alternating in one run; each whole process under
//! `/usr/bin/time -f "%e %M"` for wall time and peak memory, median of the
//! rounds. Output goes to /dev/null.
//!
//! Run: `cargo bench --bench keys_list` (uses KEYWARDEN_TEST_DATABASE_URL
//! or postgres://postgres@127.0.0.1:5432/postgres; KEYWARDEN_BENCH_ROUNDS,
//! default 5).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

use std::process::{Command, Stdio};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;

const BIN: &str = env!("CARGO_BIN_EXE_keywarden");
const DB: &str = "kw_bench_keys_list";
const TOTAL: i64 = 1_000_000;

fn admin_url() -> String {
    std::env::var("KEYWARDEN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn db_url() -> String {
    let mut u = url::Url::parse(&admin_url()).expect("admin url");
    u.set_path(&format!("/{DB}"));
    u.to_string()
}

fn rounds() -> usize {
    std::env::var("KEYWARDEN_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

/// Wall seconds and peak RSS (KiB) of one whole process.
fn timed(program: &str, args: &[&str]) -> (f64, u64) {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%e %M", program])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{program}: {stderr}");
    let last = stderr.lines().last().unwrap();
    let mut parts = last.split_whitespace();
    (
        parts.next().unwrap().parse().unwrap(),
        parts.next().unwrap().parse().unwrap(),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mut admin = PgConnection::establish(&admin_url()).expect("PostgreSQL is needed for this benchmark");
    // One statement each: a multi-statement string runs as one transaction.
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        .unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {DB}")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("k.toml");
    std::fs::write(&config, format!("[database]\nurl = \"{}\"\n", db_url())).unwrap();
    let config = config.display().to_string();
    let migrated = Command::new(BIN)
        .args(["--config", &config, "migrate"])
        .output()
        .unwrap();
    assert!(migrated.status.success());
    let mut pg = PgConnection::establish(&db_url()).unwrap();
    pg.batch_execute(&format!(
        "INSERT INTO users (email, status, created_at, updated_at) VALUES ('bench@example.com', 'active', now(), now());
         INSERT INTO api_keys (prefix, key_hash, name, status, owner_id, scopes, allowed_ips, expires_at, created_at, updated_at)
         SELECT 'sk_live_v2_' || lpad(to_hex(g), 16, '0'), '$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA',
                'bench key ' || g, CASE WHEN g % 10 = 0 THEN 'expired' ELSE 'active' END, 1, '[]', '[]',
                now() + interval '1 hour' * (g % 5000), now() - interval '1 second' * g, now()
         FROM generate_series(1, {TOTAL}) AS g;"
    ))
    .unwrap();
    pg.batch_execute("VACUUM ANALYZE api_keys").unwrap();
    // The columns the table shows, in the listing's order.
    let copy = "\\copy (SELECT k.prefix, k.status, k.name, u.email, k.expires_at, k.usage_count, k.last_used_at \
                FROM api_keys k JOIN users u ON u.id = k.owner_id WHERE k.status = 'active' \
                ORDER BY k.created_at, k.id) TO STDOUT";
    let url = db_url();
    let (mut kw, mut kw_json, mut psql) = (Vec::new(), Vec::new(), Vec::new());
    let (mut kw_rss, mut json_rss, mut psql_rss) = (0, 0, 0);
    for round in 0..=rounds() {
        let a = timed(BIN, &["--config", &config, "keys", "list", "--status", "active"]);
        let b = timed(
            BIN,
            &[
                "--config",
                &config,
                "keys",
                "list",
                "--status",
                "active",
                "--json-lines",
            ],
        );
        let c = timed("psql", &[&url, "-q", "-c", copy]);
        if round == 0 {
            continue; // warm-up: the table into the cache
        }
        kw.push(a.0);
        kw_json.push(b.0);
        psql.push(c.0);
        kw_rss = kw_rss.max(a.1);
        json_rss = json_rss.max(b.1);
        psql_rss = psql_rss.max(c.1);
    }
    let (kw, kw_json, psql) = (median(kw), median(kw_json), median(psql));
    println!(
        "900,000 active keys of 1,000,000 listed, median of {} rounds:",
        rounds()
    );
    println!(
        "  psql \\copy (same columns, order)    {psql:>6.2} s   peak RSS {:>7} KiB",
        psql_rss
    );
    println!(
        "  keywarden keys list (table)         {kw:>6.2} s   peak RSS {:>7} KiB   {:.2}x psql",
        kw_rss,
        kw / psql
    );
    println!(
        "  keywarden keys list --json-lines    {kw_json:>6.2} s   peak RSS {:>7} KiB   {:.2}x psql",
        json_rss,
        kw_json / psql
    );
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        .unwrap();
}
