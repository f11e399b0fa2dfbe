//! expire-keys against the hand-written UPDATE, on PostgreSQL.
//!
//! 1,000,000 keys, 100,000 of them past expiry. Each round copies a seeded
//! template database twice and runs, side by side:
//! - A: one `UPDATE api_keys SET status = 'expired' … WHERE status = 'active'
//!   AND expires_at <= now()` (no audit rows);
//! - B: the `expire-keys` job as the daemon runs it (job lock, `job_runs`
//!   bookkeeping, batches of 1000, each one transaction with its audit rows);
//! - C: the same batches driven directly, timing each transaction, to report
//!   the longest time any transaction held its row locks.
//!
//! Run: `cargo bench --bench expire_keys` (uses KEYWARDEN_TEST_DATABASE_URL
//! or postgres://postgres@127.0.0.1:5432/postgres; KEYWARDEN_BENCH_ROUNDS,
//! default 3).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

use std::path::Path;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use keywarden::config::{Config, Secrets};
use keywarden::db::Database;
use keywarden::jobs::{self, registry, RunOutcome, Trigger};
use tokio_util::sync::CancellationToken;

/// Keys seeded, and how many of them are past expiry:
/// KEYWARDEN_BENCH_KEYS and KEYWARDEN_BENCH_DUE, by default 1,000,000 and
/// 100,000 (the scale goal is 10,000,000 with 1,000,000 due).
fn sizes() -> (i64, i64) {
    let get = |name: &str, default: i64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    (
        get("KEYWARDEN_BENCH_KEYS", 1_000_000),
        get("KEYWARDEN_BENCH_DUE", 100_000),
    )
}

/// Rows per transaction: the job's default unless KEYWARDEN_BENCH_BATCH says otherwise.
fn batch() -> u32 {
    std::env::var("KEYWARDEN_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

fn admin_url() -> String {
    std::env::var("KEYWARDEN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn db_url(name: &str) -> String {
    let mut u = url::Url::parse(&admin_url()).expect("admin url");
    u.set_path(&format!("/{name}"));
    u.to_string()
}

fn admin() -> PgConnection {
    PgConnection::establish(&admin_url()).expect("PostgreSQL is needed for this benchmark")
}

/// Constant names built here, never from input.
fn recreate(name: &str, template: Option<&str>) {
    let mut a = admin();
    a.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .unwrap();
    match template {
        Some(t) => a
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {t}"))
            .unwrap(),
        None => a.batch_execute(&format!("CREATE DATABASE {name}")).unwrap(),
    }
}

fn config_for(name: &str) -> Config {
    keywarden::jobs::config_from_toml(
        Path::new("bench.toml"),
        &format!(
            "[database]\nurl = \"{}\"\n[jobs.expire-keys]\nbatch_size = {}\n",
            db_url(name),
            batch()
        ),
    )
    .expect("bench config")
}

fn seed_template() {
    let (total, due) = sizes();
    recreate("kw_bench_template", None);
    let cfg = config_for("kw_bench_template");
    let db = Database::new(&cfg.database, &Secrets::default());
    let mut conn = db.connect().unwrap();
    keywarden::db::migrate::run_pending(&mut conn).unwrap();
    let keywarden::db::DbConnection::Postgres(pg) = &mut conn else {
        unreachable!()
    };
    let t = Instant::now();
    pg.batch_execute(&format!(
        "INSERT INTO users (email, status, created_at, updated_at) VALUES ('bench@example.com', 'active', now(), now());
         INSERT INTO api_keys (prefix, key_hash, name, status, owner_id, scopes, allowed_ips, expires_at, created_at, updated_at)
         SELECT 'sk_live_v2_' || lpad(to_hex(g), 16, '0'),
                '$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA',
                'bench ' || g, 'active', 1, '[]', '[]',
                CASE WHEN g % {step} = 0 THEN now() - interval '1 hour' * (1 + g % 500)
                     ELSE now() + interval '1 hour' * (1 + g % 2000) END,
                now(), now()
         FROM generate_series(1, {total}) AS g;",
        step = total / due
    ))
    .unwrap();
    pg.batch_execute("VACUUM ANALYZE api_keys").unwrap();
    let found: i64 = diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "SELECT count(*) FROM api_keys WHERE status = 'active' AND expires_at <= now()",
    )
    .get_result(pg)
    .unwrap();
    assert_eq!(found, due);
    eprintln!("seeded {total} keys ({due} past expiry) in {:.1?}", t.elapsed());
}

fn hand_update(name: &str) -> Duration {
    let (_, due) = sizes();
    let mut pg = PgConnection::establish(&db_url(name)).unwrap();
    let t = Instant::now();
    let n = diesel::sql_query(
        "UPDATE api_keys SET status = 'expired', updated_at = now() WHERE status = 'active' AND expires_at <= now()",
    )
    .execute(&mut pg)
    .unwrap();
    let d = t.elapsed();
    assert_eq!(n as i64, due);
    d
}

fn job_run(name: &str) -> Duration {
    let (_, due) = sizes();
    let cfg = config_for(name);
    let db = Database::new(&cfg.database, &Secrets::default());
    let spec = registry::find("expire-keys").unwrap();
    let t = Instant::now();
    let outcome = jobs::execute(&db, &cfg, spec, Trigger::Manual, &CancellationToken::new());
    let d = t.elapsed();
    match outcome {
        RunOutcome::Completed { report, .. } => assert_eq!(report.rows_affected as i64, due),
        other => panic!("{other:?}"),
    }
    d
}

fn longest_transaction(name: &str) -> (Duration, usize) {
    let cfg = config_for(name);
    let db = Database::new(&cfg.database, &Secrets::default());
    let mut conn = db.connect().unwrap();
    let mut expirer = keywarden::keys::expire::Expirer::new(keywarden::db::now(), batch(), "job:bench");
    // As the job does: commits do not wait for the disk, and the decision
    // (a size read and a bounded count) is not a transaction.
    conn.relax_commit();
    expirer.prepare(&mut conn).unwrap();
    let mut longest = Duration::ZERO;
    let mut batches = 0;
    loop {
        let t = Instant::now();
        let Some(_) = expirer.next_batch(&mut conn).unwrap() else {
            return (longest, batches);
        };
        // Planning reads happen outside the transactions; count only batches.
        longest = longest.max(t.elapsed());
        batches += 1;
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let (total, due) = sizes();
    // `cargo test --benches` passes --bench-less flags; only run under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("expire_keys: run with `cargo bench --bench expire_keys`");
        return;
    }
    let rounds: usize = std::env::var("KEYWARDEN_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    seed_template();
    let (mut a, mut b, mut ratios, mut longest) = (Vec::new(), Vec::new(), Vec::new(), Duration::ZERO);
    let mut batches = 0;
    for round in 1..=rounds {
        recreate("kw_bench_a", Some("kw_bench_template"));
        let ta = hand_update("kw_bench_a");
        recreate("kw_bench_b", Some("kw_bench_template"));
        let tb = job_run("kw_bench_b");
        recreate("kw_bench_c", Some("kw_bench_template"));
        let (l, n) = longest_transaction("kw_bench_c");
        longest = longest.max(l);
        batches = n;
        let ratio = tb.as_secs_f64() / ta.as_secs_f64();
        eprintln!(
            "round {round}: hand UPDATE {ta:.2?}, expire-keys {tb:.2?}, ratio {ratio:.2}, longest transaction {l:.1?}"
        );
        a.push(ta);
        b.push(tb);
        ratios.push(ratio);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "expire-keys on PostgreSQL: {total} keys, {due} past expiry, batch {}, {rounds} round(s)",
        batch()
    );
    println!("  hand-written UPDATE (median): {:.2?}", median(a));
    println!(
        "  expire-keys job (median):     {:.2?}  ({batches} transactions, with audit rows)",
        median(b)
    );
    println!("  ratio job/UPDATE (median):    {:.2}", ratios[ratios.len() / 2]);
    println!("  longest transaction:          {longest:.1?}");
    if std::env::var_os("KEYWARDEN_BENCH_KEEP").is_some() {
        return;
    }
    let mut a = admin();
    for n in ["kw_bench_a", "kw_bench_b", "kw_bench_c", "kw_bench_template"] {
        let _ = a.batch_execute(&format!("DROP DATABASE IF EXISTS {n} WITH (FORCE)"));
    }
}
