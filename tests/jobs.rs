//! Jobs on real databases: the runner's bookkeeping and locking, and the
//! first real job, `expire-keys`, on both backends.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod support;

use std::path::Path;

use chrono::TimeDelta;
use diesel::prelude::*;
use keywarden::db::schema::{api_key_events, api_keys, job_leases, job_runs};
use keywarden::db::DbConnection;
use keywarden::jobs::{self, JobContext, JobError, JobReport, JobSpec, RunOutcome, Trigger};
use support::*;
use tokio_util::sync::CancellationToken;

both_backends!(
    expire_keys_expires_due_keys_once_with_audit_rows,
    expire_keys_at_scale_expires_every_due_key_once,
    jobs_run_skips_while_another_process_holds_the_lock,
    a_panicking_job_is_recorded_as_failed,
    a_crashed_run_is_closed_as_interrupted_by_the_next,
    a_per_host_job_closes_only_its_own_hosts_abandoned_runs,
    migrate_is_idempotent_and_status_reports,
    certs_renew_skips_while_a_renewal_holds_the_lock,
);

/// Enough keys, and enough of them due, that PostgreSQL's run walks the
/// table in physical order (over 1,024 pages, a due key every few pages):
/// every due active key expires once with one event, nothing else changes.
fn expire_keys_at_scale_expires_every_due_key_once(backend: Backend) {
    const KEYS: i64 = 60_000;
    let db = TestDb::new(backend);
    let mut conn = db.conn();
    let owner = add_user(&mut conn, "owner@example.com");
    // Every third key is past expiry; every 21st of all is past expiry but revoked.
    let seed = diesel::sql_query(
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < $1) \
         INSERT INTO api_keys (prefix, key_hash, name, status, owner_id, scopes, allowed_ips, \
             expires_at, revoked_at, created_at, updated_at) \
         SELECT 'sk_live_v2_' || n, '$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA', \
             'scale key ' || n, CASE WHEN n % 21 = 0 THEN 'revoked' ELSE 'active' END, $2, '[]', '[]', \
             CASE WHEN n % 3 = 0 THEN $3 ELSE $4 END, CASE WHEN n % 21 = 0 THEN $3 END, $5, $5 FROM g",
    )
    .bind::<diesel::sql_types::BigInt, _>(KEYS)
    .bind::<diesel::sql_types::BigInt, _>(owner)
    .bind::<diesel::sql_types::Timestamp, _>(ts(-TimeDelta::hours(1)))
    .bind::<diesel::sql_types::Timestamp, _>(ts(TimeDelta::days(30)))
    .bind::<diesel::sql_types::Timestamp, _>(ts(-TimeDelta::days(60)));
    let seeded = keywarden::on_backend!(&mut conn, c => seed.execute(c)).unwrap();
    assert_eq!(seeded as i64, KEYS);
    if backend == Backend::Postgres {
        let DbConnection::Postgres(pg) = &mut conn else {
            unreachable!()
        };
        diesel::connection::SimpleConnection::batch_execute(pg, "ANALYZE api_keys").unwrap();
    }
    let due = (1..=KEYS).filter(|n| n % 3 == 0 && n % 21 != 0).count() as i64;
    let config = db.write_config("k.toml", "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen("[daemon]\n", "[daemon]\nlog_level = \"debug\"\n", 1),
    )
    .unwrap();

    let out = keywarden(&config, &["jobs", "run", "expire-keys"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains(&format!("expire-keys: ok, {due} row(s) affected")),
        "{stdout}"
    );
    if backend == Backend::Postgres {
        assert!(stderr.contains("expiring them in table order"), "{stderr}");
    }

    let by_status: Vec<(String, i64)> = api_keys::table
        .group_by(api_keys::status)
        .select((api_keys::status, diesel::dsl::count_star()))
        .order(api_keys::status)
        .load(&mut conn)
        .unwrap();
    let revoked = KEYS / 21;
    assert_eq!(
        by_status,
        vec![
            ("active".to_string(), KEYS - due - revoked),
            ("expired".to_string(), due),
            ("revoked".to_string(), revoked)
        ]
    );
    let events: i64 = api_key_events::table
        .filter(api_key_events::event.eq("expired"))
        .count()
        .get_result(&mut conn)
        .unwrap();
    let distinct: i64 = api_key_events::table
        .filter(api_key_events::event.eq("expired"))
        .select(diesel::dsl::count(api_key_events::key_id).aggregate_distinct())
        .first(&mut conn)
        .unwrap();
    assert_eq!((events, distinct), (due, due), "one event per expired key");
    let out = keywarden(&config, &["jobs", "run", "expire-keys"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok, 0 row(s)"));
}

/// PostgreSQL only: a snapshot held by one connection pins the vacuum
/// horizon of the whole server (SQLite has no such thing across processes).
mod postgres_horizon {
    #[test]
    fn a_long_job_holds_no_snapshot_between_its_batches() {
        super::a_long_job_holds_no_snapshot_between_its_batches();
    }
}

#[derive(diesel::QueryableByName, Debug)]
struct Activity {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    state: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    xmin: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    xact_start: Option<String>,
}

/// While expire-keys works through 150,000 due keys in batches of 500, no
/// keywarden connection is ever idle inside a transaction (the job lock's
/// connection was, for the whole job, holding back VACUUM), and no snapshot
/// outlives a batch.
fn a_long_job_holds_no_snapshot_between_its_batches() {
    let db = TestDb::new(Backend::Postgres);
    let mut conn = db.conn();
    diesel::sql_query(
        "INSERT INTO users (email, status, created_at, updated_at) VALUES ('horizon@example.com', 'active', now(), now())",
    )
    .execute(&mut conn)
    .unwrap();
    diesel::sql_query(
        "INSERT INTO api_keys (prefix, key_hash, name, status, owner_id, scopes, allowed_ips, expires_at, created_at, updated_at) \
         SELECT 'sk_live_v2_' || lpad(to_hex(g), 16, '0'), '$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA', 'k' || g, \
                'active', (SELECT id FROM users LIMIT 1), '[]', '[]', now() - interval '1 hour', now(), now() \
         FROM generate_series(1, 150000) AS g",
    )
    .execute(&mut conn)
    .unwrap();
    let config = db.write_config("k.toml", "[jobs.expire-keys]\nbatch_size = 500\n");
    // Its log goes to a file: a pipe nobody reads would fill and stop it.
    let log = db.path().join("job.log");
    let mut job = std::process::Command::new(BIN)
        .args(["--config", &config.display().to_string(), "jobs", "run", "expire-keys"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut watcher = diesel::PgConnection::establish(&db.url).unwrap();
    let mut samples = 0;
    let mut most_connections = 0;
    // (pid, transaction start) of each snapshot seen, and when first seen.
    let mut snapshots: std::collections::HashMap<(i32, String), std::time::Instant> = Default::default();
    let status = loop {
        if let Some(status) = job.try_wait().unwrap() {
            break status;
        }
        let seen: Vec<Activity> = diesel::sql_query(
            "SELECT pid, state, backend_xmin::text AS xmin, xact_start::text AS xact_start FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
        )
        .load(&mut watcher)
        .unwrap();
        samples += 1;
        most_connections = most_connections.max(seen.len());
        for a in &seen {
            assert!(
                !a.state
                    .as_deref()
                    .unwrap_or_default()
                    .starts_with("idle in transaction"),
                "a keywarden connection sits idle in a transaction during the job: {a:?}"
            );
            if let (Some(_), Some(start)) = (&a.xmin, &a.xact_start) {
                let first = *snapshots
                    .entry((a.pid, start.clone()))
                    .or_insert_with(std::time::Instant::now);
                assert!(
                    first.elapsed() < std::time::Duration::from_secs(2),
                    "a snapshot outlived its batch by seconds: {a:?}"
                );
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let left: i64 = diesel::sql_query("SELECT count(*) AS n FROM api_keys WHERE status = 'active'")
        .get_result::<Count>(&mut conn)
        .unwrap()
        .n;
    assert_eq!(left, 0);
    // The job ran long enough to be watched, on its two connections.
    assert!(samples >= 10, "{samples} samples");
    assert!(most_connections >= 2, "saw at most {most_connections} connection(s)");
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// The lease exists on SQLite only (PostgreSQL's advisory lock goes with the
/// holder's connection).
mod sqlite_lease {
    #[test]
    fn a_dead_holders_lease_on_this_host_is_taken_over_at_once() {
        super::a_dead_holders_lease_on_this_host_is_taken_over_at_once();
    }
}

fn a_dead_holders_lease_on_this_host_is_taken_over_at_once() {
    let db = TestDb::new(Backend::Sqlite);
    let mut conn = db.conn();
    let config = db.write_config("k.toml", "");
    let config_text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        config_text.replace("[daemon]\n", "[daemon]\nhost_name = \"lease-host\"\n"),
    )
    .unwrap();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    // A process that has exited: its PID names nobody (or someone else).
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let lease = |holder: &str| {
        let now = keywarden::db::now();
        diesel::delete(job_leases::table).execute(&mut db.conn()).unwrap();
        diesel::insert_into(job_leases::table)
            .values((
                job_leases::job.eq("expire-keys"),
                job_leases::holder.eq(holder),
                job_leases::acquired_at.eq(now),
                job_leases::expires_at.eq(now + TimeDelta::minutes(10)),
            ))
            .execute(&mut db.conn())
            .unwrap();
    };
    let run = || {
        let out = keywarden(&config, &["jobs", "run", "expire-keys"]);
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // Held from another host: that holder cannot be judged from here.
    lease(&format!(
        "host=elsewhere boot={} pid={dead_pid} start=1 run=r",
        boot.trim()
    ));
    assert_eq!(run().0, Some(75));
    // Held on this host by a process that is gone: taken over at once.
    lease(&format!(
        "host=lease-host boot={} pid={dead_pid} start=1 run=r",
        boot.trim()
    ));
    let (code, stderr) = run();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("took over the lease"), "{stderr}");
    // Held on this host in an earlier boot: gone too.
    lease("host=lease-host boot=0000 pid=1 start=1 run=r");
    assert_eq!(run().0, Some(0));
    // Held on this host by a live process (PID 1, with its real start time
    // unknown to us: any other start time means another process).
    let init_start = std::fs::read_to_string("/proc/1/stat").unwrap();
    let init_start = init_start[init_start.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .to_string();
    lease(&format!(
        "host=lease-host boot={} pid=1 start={init_start} run=r",
        boot.trim()
    ));
    assert_eq!(run().0, Some(75), "a live holder keeps its lease");
    let leases: i64 = job_leases::table.count().get_result(&mut conn).unwrap();
    assert_eq!(leases, 1);
}

fn a_per_host_job_closes_only_its_own_hosts_abandoned_runs(backend: Backend) {
    let db = TestDb::new(backend);
    let mut conn = db.conn();
    for (run_id, host) in [("a-dead", "replica-a"), ("b-live", "replica-b")] {
        keywarden::jobs::history::record_start(
            &mut conn,
            run_id,
            "watch-perms",
            host,
            Trigger::Schedule,
            ts(-TimeDelta::minutes(1)),
        )
        .unwrap();
    }
    let root = db.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("a.txt"), "x").unwrap();
    let config = db.write_config(
        "k.toml",
        &format!(
            "[permissions]\nroots = [\"{}\"]\n\n[[permissions.rules]]\nname = \"data\"\npaths = [\"*.txt\"]\ntype = \"file\"\nmode = \"at most 0644\"\n",
            root.display()
        ),
    );
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("[daemon]\n", "[daemon]\nhost_name = \"replica-a\"\n"),
    )
    .unwrap();
    let out = keywarden(&config, &["jobs", "run", "watch-perms"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let outcome = |run_id: &str| -> String {
        job_runs::table
            .filter(job_runs::run_id.eq(run_id))
            .select(job_runs::outcome)
            .first(&mut db.conn())
            .unwrap()
    };
    assert_eq!(outcome("a-dead"), "interrupted");
    assert_eq!(outcome("b-live"), "running", "another host's run may be live");
}

fn expire_keys_expires_due_keys_once_with_audit_rows(backend: Backend) {
    let db = TestDb::new(backend);
    let mut conn = db.conn();
    let owner = add_user(&mut conn, "owner@example.com");
    for p in ["sk_live_v2_past1", "sk_live_v2_past2", "sk_live_v2_past3"] {
        add_key(&mut conn, owner, p, "active", ts(-TimeDelta::hours(1)));
    }
    add_key(&mut conn, owner, "sk_live_v2_future", "active", ts(TimeDelta::days(3)));
    add_key(
        &mut conn,
        owner,
        "sk_live_v2_revoked",
        "revoked",
        ts(-TimeDelta::days(2)),
    );
    // batch_size 2 makes the three due keys take two batches.
    let config = db.write_config("k.toml", "[jobs.expire-keys]\nbatch_size = 2\n");

    let out = keywarden(&config, &["jobs", "run", "expire-keys"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("expire-keys: ok, 3 row(s) affected"), "{stdout}");

    for p in ["sk_live_v2_past1", "sk_live_v2_past2", "sk_live_v2_past3"] {
        assert_eq!(key_status(&mut conn, p), "expired");
    }
    assert_eq!(key_status(&mut conn, "sk_live_v2_future"), "active");
    assert_eq!(
        key_status(&mut conn, "sk_live_v2_revoked"),
        "revoked",
        "a revoked key never comes back"
    );

    let events: Vec<(String, String, String)> = api_key_events::table
        .select((api_key_events::prefix, api_key_events::event, api_key_events::actor))
        .order(api_key_events::prefix)
        .load(&mut conn)
        .unwrap();
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(
        events.iter().all(|(_, e, a)| e == "expired" && a == "job:expire-keys"),
        "{events:?}"
    );

    // Idempotent: a second run changes nothing and writes no event.
    let out = keywarden(&config, &["jobs", "run", "expire-keys"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok, 0 row(s)"));
    let n: i64 = api_key_events::table.count().get_result(&mut conn).unwrap();
    assert_eq!(n, 3);

    let runs: Vec<(String, String, i64, Option<String>)> = job_runs::table
        .select((
            job_runs::job,
            job_runs::outcome,
            job_runs::rows_affected,
            job_runs::trigger,
        ))
        .order(job_runs::id)
        .load::<(String, String, i64, String)>(&mut conn)
        .unwrap()
        .into_iter()
        .map(|(j, o, r, t)| (j, o, r, Some(t)))
        .collect();
    assert_eq!(
        runs,
        vec![
            ("expire-keys".into(), "ok".into(), 3, Some("manual".into())),
            ("expire-keys".into(), "ok".into(), 0, Some("manual".into()))
        ]
    );
    // The audit trail is append-only, enforced by the database.
    let tampered = diesel::update(api_key_events::table)
        .set(api_key_events::actor.eq("someone"))
        .execute(&mut conn);
    assert!(tampered.is_err(), "updating an audit row must fail");
}

fn jobs_run_skips_while_another_process_holds_the_lock(backend: Backend) {
    let db = TestDb::new(backend);
    let mut conn = db.conn();
    let config = db.write_config("k.toml", "");
    while_another_process_holds(&db, &mut conn, backend, "expire-keys", || {
        let out = keywarden(&config, &["jobs", "run", "expire-keys"]);
        assert_eq!(
            out.status.code(),
            Some(75),
            "stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("skipped"));
    });
    if backend == Backend::Sqlite {
        // A lease whose holder died runs out, and the job runs again.
        diesel::update(job_leases::table)
            .set(job_leases::expires_at.eq(keywarden::db::now() - TimeDelta::seconds(1)))
            .execute(&mut conn)
            .unwrap();
    }
    // Lock free: the job runs, and its own lock is released afterwards.
    for _ in 0..2 {
        let out = keywarden(&config, &["jobs", "run", "expire-keys"]);
        assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    }
    let skipped: i64 = job_runs::table.count().get_result(&mut conn).unwrap();
    assert_eq!(skipped, 2, "skipped runs are logged, not recorded as runs");
}

fn panicking_job(_ctx: &mut JobContext<'_>) -> Result<JobReport, JobError> {
    panic!("deliberate panic in a test job")
}

fn a_panicking_job_is_recorded_as_failed(backend: Backend) {
    let db = TestDb::new(backend);
    let mut conn = db.conn();
    let config =
        keywarden::jobs::config_from_toml(Path::new("t.toml"), &format!("[database]\nurl = \"{}\"\n", db.url)).unwrap();
    // Borrow expire-keys' settings: the runner looks settings up by name.
    let spec = JobSpec {
        name: "expire-keys",
        description: "panics",
        default_schedule: "* * * * *",
        batched: true,
        default_batch_size: 1,
        per_host: false,
        retry_due: None,
        service: None,
        dry_run: None,
        run: panicking_job,
    };
    let outcome = jobs::execute(
        &db.database(),
        &config,
        &spec,
        Trigger::Manual,
        &CancellationToken::new(),
    );
    match outcome {
        RunOutcome::Failed { error, .. } => assert!(error.contains("deliberate panic"), "{error}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    let (outcome, error): (String, Option<String>) = job_runs::table
        .select((job_runs::outcome, job_runs::error))
        .first(&mut conn)
        .unwrap();
    assert_eq!(outcome, "failed");
    assert!(error.unwrap_or_default().contains("panicked"));
    // The lock was released despite the panic.
    let again = jobs::execute(
        &db.database(),
        &config,
        keywarden::jobs::registry::find("expire-keys").unwrap(),
        Trigger::Manual,
        &CancellationToken::new(),
    );
    assert!(matches!(again, RunOutcome::Completed { .. }), "{again:?}");
}

fn a_crashed_run_is_closed_as_interrupted_by_the_next(backend: Backend) {
    let db = TestDb::new(backend);
    let mut conn = db.conn();
    keywarden::jobs::history::record_start(
        &mut conn,
        "deadbeef",
        "expire-keys",
        "otherhost",
        Trigger::Schedule,
        ts(-TimeDelta::hours(2)),
    )
    .unwrap();
    let config = db.write_config("k.toml", "");
    let out = keywarden(&config, &["jobs", "run", "expire-keys"]);
    assert!(out.status.success());
    let outcome: String = job_runs::table
        .filter(job_runs::run_id.eq("deadbeef"))
        .select(job_runs::outcome)
        .first(&mut conn)
        .unwrap();
    assert_eq!(outcome, "interrupted");
    let list = keywarden(&config, &["jobs", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("expire-keys") && text.contains("ok"), "{text}");
}

fn migrate_is_idempotent_and_status_reports(backend: Backend) {
    let db = TestDb::new(backend);
    let config = db.write_config("k.toml", "[jobs.expire-keys]\nenabled = false\n");
    // Before migrating, commands other than migrate refuse with a hint.
    let out = keywarden(&config, &["jobs", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("keywarden migrate"));

    let out = keywarden(&config, &["migrate"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("applied"));
    let out = keywarden(&config, &["migrate"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "schema is up to date");

    let out = keywarden(&config, &["status", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["database"]["pending_migrations"].as_array().unwrap().len(), 0);
    assert_eq!(v["jobs"][0]["job"], "expire-keys");
    assert_eq!(v["jobs"][0]["enabled"], false);
    assert!(v["jobs"][0]["next_run_at"].is_null());
    let url = v["database"]["url"].as_str().unwrap();
    assert!(url.starts_with(if backend == Backend::Sqlite {
        "sqlite://"
    } else {
        "postgres://"
    }));
}

/// `keywarden certs renew` takes the renew-certs lock like the job's runs:
/// while another process (here, this test's connection or lease) holds it,
/// the command renews nothing and says it skipped, exit 75.
fn certs_renew_skips_while_a_renewal_holds_the_lock(backend: Backend) {
    let db = TestDb::new(backend);
    let mut conn = db.conn();
    let webroot = db.path().join("www");
    std::fs::create_dir_all(&webroot).unwrap();
    let config = db.write_config(
        "k.toml",
        &format!(
            "[acme]\ndirectory = \"https://acme.invalid/directory\"\nterms_agreed = true\n\n\
             [[certificates]]\nname = \"site\"\ndomains = [\"site.example.org\"]\n\
             challenge = {{ type = \"http-01\", webroot = \"{}\" }}\n\
             cert_file = \"{}\"\nkey_file = \"{}\"\n",
            webroot.display(),
            db.path().join("tls/site.pem").display(),
            db.path().join("tls/site.key").display(),
        ),
    );
    let check = keywarden(&config, &["check-config"]);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let renew = || {
        let out = keywarden(&config, &["certs", "renew", "site"]);
        assert_eq!(
            out.status.code(),
            Some(75),
            "stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("skipped"));
    };
    while_another_process_holds(&db, &mut conn, backend, "renew-certs", renew);
    assert!(!db.path().join("tls/site.pem").exists(), "nothing was installed");
}

/// Runs `f` while this test plays another process holding `job`'s lock: on
/// PostgreSQL its own connection holds the session-level advisory lock; on
/// SQLite a lease row names a holder on another host.
fn while_another_process_holds(
    db: &TestDb,
    conn: &mut keywarden::db::DbConnection,
    backend: Backend,
    job: &str,
    f: impl FnOnce(),
) {
    match backend {
        Backend::Postgres => {
            let mut other = db.database().connect().unwrap();
            let keywarden::db::DbConnection::Postgres(pg) = &mut other else {
                unreachable!()
            };
            let got: bool = diesel::select(keywarden::db::lock::pg_try_advisory_lock(
                keywarden::db::lock::lock_key(job),
            ))
            .get_result(pg)
            .unwrap();
            assert!(got);
            f();
            // Dropping the connection releases the session lock.
        }
        Backend::Sqlite => {
            let now = keywarden::db::now();
            diesel::insert_into(job_leases::table)
                .values((
                    job_leases::job.eq(job),
                    job_leases::holder.eq("otherhost:4242:run"),
                    job_leases::acquired_at.eq(now),
                    job_leases::expires_at.eq(now + TimeDelta::minutes(5)),
                ))
                .execute(conn)
                .unwrap();
            f();
        }
    }
}
