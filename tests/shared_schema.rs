//! The schema other applications share: what it refuses, and that its
//! timestamps are instants (README, "Sharing the database").

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod support;

use chrono::{NaiveDate, TimeDelta};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use keywarden::db::schema::api_keys;
use keywarden::db::DbConnection;
use support::*;

both_backends!(lists_that_are_not_json_arrays_of_strings_are_refused);

mod postgres_only {
    #[test]
    fn a_time_written_with_an_offset_is_stored_at_its_instant() {
        super::a_time_written_with_an_offset_is_stored_at_its_instant();
    }
    #[test]
    fn the_timestamptz_migration_keeps_every_instant() {
        super::the_timestamptz_migration_keeps_every_instant();
    }
    #[test]
    fn a_node_app_written_from_the_readme_shares_the_keys() {
        super::a_node_app_written_from_the_readme_shares_the_keys();
    }
}

/// Writes `scopes` and `allowed_ips` as another application would (plain
/// SQL, bound values).
fn write_lists(conn: &mut DbConnection, id: i64, scopes: &str, allowed_ips: &str) -> QueryResult<usize> {
    let update = diesel::update(api_keys::table.filter(api_keys::id.eq(id)))
        .set((api_keys::scopes.eq(scopes), api_keys::allowed_ips.eq(allowed_ips)));
    keywarden::on_backend!(conn, c => update.execute(c))
}

fn lists_that_are_not_json_arrays_of_strings_are_refused(backend: Backend) {
    let db = TestDb::new(backend);
    let mut conn = db.conn();
    let owner = add_user(&mut conn, "owner@example.com");
    let id = add_key(&mut conn, owner, "sk_live_v2_lists", "active", ts(TimeDelta::days(3)));

    assert_eq!(
        write_lists(&mut conn, id, r#"["read:users"]"#, r#"["10.0.0.0/8"]"#).unwrap(),
        1
    );
    assert_eq!(write_lists(&mut conn, id, "[]", "[]").unwrap(), 1);
    for (scopes, ips) in [
        ("read:users", "[]"),
        (r#"{"read": true}"#, "[]"),
        ("[1, 2]", "[]"),
        (r#"["read"#, "[]"),
        ("[]", "10.0.0.1"),
        ("[]", r#"[["10.0.0.1"]]"#),
        ("[]", "null"),
    ] {
        let refused = write_lists(&mut conn, id, scopes, ips);
        assert!(refused.is_err(), "{scopes} / {ips} was accepted");
        let message = refused.unwrap_err().to_string();
        assert!(message.to_lowercase().contains("check"), "{message}");
    }
    // Nothing refused reached the row.
    let (scopes, ips): (String, String) = api_keys::table
        .filter(api_keys::id.eq(id))
        .select((api_keys::scopes, api_keys::allowed_ips))
        .first(&mut conn)
        .unwrap();
    assert_eq!((scopes.as_str(), ips.as_str()), ("[]", "[]"));

    // A new row is checked too.
    let insert = diesel::insert_into(api_keys::table).values((
        api_keys::prefix.eq("sk_live_v2_badrow"),
        api_keys::key_hash.eq("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"),
        api_keys::name.eq("bad"),
        api_keys::status.eq("active"),
        api_keys::owner_id.eq(owner),
        api_keys::scopes.eq("read"),
        api_keys::expires_at.eq(ts(TimeDelta::days(1))),
        api_keys::created_at.eq(ts(TimeDelta::zero())),
        api_keys::updated_at.eq(ts(TimeDelta::zero())),
    ));
    assert!(keywarden::on_backend!(&mut conn, c => insert.execute(c)).is_err());
}

fn pg(conn: &mut DbConnection) -> &mut diesel::PgConnection {
    match conn {
        DbConnection::Postgres(pg) => pg,
        DbConnection::Sqlite(_) => unreachable!("PostgreSQL only"),
    }
}

fn expiry_of(conn: &mut DbConnection, id: i64) -> chrono::NaiveDateTime {
    api_keys::table
        .filter(api_keys::id.eq(id))
        .select(api_keys::expires_at)
        .first(conn)
        .unwrap()
}

/// node-postgres sends a `Date` as local time with its offset; a session in
/// Tokyo writing 09:00+09 means 00:00 UTC, and keywarden reads 00:00.
fn a_time_written_with_an_offset_is_stored_at_its_instant() {
    let db = TestDb::new(Backend::Postgres);
    let mut conn = db.conn();
    let owner = add_user(&mut conn, "owner@example.com");
    let id = add_key(&mut conn, owner, "sk_live_v2_tokyo", "active", ts(TimeDelta::days(3)));
    let mut app = diesel::PgConnection::establish(&db.url).unwrap();
    app.batch_execute("SET TIME ZONE 'Asia/Tokyo'").unwrap();
    diesel::sql_query("UPDATE api_keys SET expires_at = '2030-01-01T09:00:00.000+09:00' WHERE id = $1")
        .bind::<diesel::sql_types::BigInt, _>(id)
        .execute(&mut app)
        .unwrap();
    let midnight = NaiveDate::from_ymd_opt(2030, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    assert_eq!(expiry_of(&mut conn, id), midnight);
    // And a row inserted without created_at gets the time of the insert.
    diesel::sql_query(
        "INSERT INTO api_keys (prefix, key_hash, name, status, owner_id, expires_at) \
         VALUES ('sk_live_v2_nodates', '$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA', \
                 'no dates', 'active', $1, now() + interval '1 day')",
    )
    .bind::<diesel::sql_types::BigInt, _>(owner)
    .execute(&mut app)
    .unwrap();
    let created: chrono::NaiveDateTime = api_keys::table
        .filter(api_keys::prefix.eq("sk_live_v2_nodates"))
        .select(api_keys::created_at)
        .first(&mut conn)
        .unwrap();
    let lag = keywarden::db::now() - created;
    assert!(
        lag >= TimeDelta::zero() && lag < TimeDelta::minutes(5),
        "created_at {created}"
    );
}

/// Values stored before the migration (UTC wall times in `timestamp`
/// columns) are the same instants after it, whatever the session's zone.
fn the_timestamptz_migration_keeps_every_instant() {
    let db = TestDb::new(Backend::Postgres);
    let mut conn = db.conn();
    // Back to the schema before the migration, by its own down script
    // (after the later migration's, whose triggers name the columns).
    pg(&mut conn)
        .batch_execute(include_str!(
            "../migrations/postgres/2026-12-02-000010_verify_notify/down.sql"
        ))
        .unwrap();
    pg(&mut conn)
        .batch_execute("DELETE FROM __diesel_schema_migrations WHERE version = '20261202000010'")
        .unwrap();
    pg(&mut conn)
        .batch_execute(include_str!(
            "../migrations/postgres/2026-12-01-000009_shared_schema/down.sql"
        ))
        .unwrap();
    pg(&mut conn)
        .batch_execute("DELETE FROM __diesel_schema_migrations WHERE version = '20261201000009'")
        .unwrap();
    let owner = add_user(&mut conn, "owner@example.com");
    let stored = NaiveDate::from_ymd_opt(2031, 6, 15)
        .unwrap()
        .and_hms_micro_opt(12, 34, 56, 789_012)
        .unwrap();
    let id = add_key(&mut conn, owner, "sk_live_v2_before", "active", stored);
    let applied = keywarden::db::migrate::run_pending(&mut conn).unwrap();
    assert_eq!(applied.len(), 2, "{applied:?}");
    assert_eq!(expiry_of(&mut conn, id), stored);
    let mut other_zone = diesel::PgConnection::establish(&db.url).unwrap();
    other_zone.batch_execute("SET TIME ZONE 'America/Los_Angeles'").unwrap();
    #[derive(QueryableByName)]
    struct Utc {
        #[diesel(sql_type = diesel::sql_types::Text)]
        utc: String,
    }
    let row: Utc = diesel::sql_query(
        "SELECT to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') AS utc FROM api_keys WHERE id = $1",
    )
    .bind::<diesel::sql_types::BigInt, _>(id)
    .get_result(&mut other_zone)
    .unwrap();
    assert_eq!(row.utc, "2031-06-15 12:34:56.789012");
    let kind: Utc = diesel::sql_query(
        "SELECT data_type AS utc FROM information_schema.columns WHERE table_name = 'api_keys' AND column_name = 'expires_at'",
    )
    .get_result(&mut other_zone)
    .unwrap();
    assert_eq!(kind.utc, "timestamp with time zone");
}

/// `examples/node-shared-db/shared-db.mjs` (node-postgres and node-argon2,
/// `npm ci` by .ci/run) under TZ=Asia/Tokyo, against a real database.
fn node_app(db: &TestDb, args: &[&str], stdin: &str) -> serde_json::Value {
    use std::io::Write;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/node-shared-db");
    assert!(
        dir.join("node_modules/pg").is_dir() && dir.join("node_modules/argon2").is_dir(),
        "the Node example's packages are needed: npm ci --prefix examples/node-shared-db"
    );
    let mut child = std::process::Command::new("node")
        .arg(dir.join("shared-db.mjs"))
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("TZ", "Asia/Tokyo")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node (Node.js) is needed for this test");
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn keywarden_with_stdin(config: &std::path::Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A Node application issues a key the README's way in a Tokyo time zone:
/// keywarden verifies it and holds its expiry at the right instant. A key
/// keywarden issues verifies in the Node application, which counts the use
/// as keywarden does, and refuses it once keywarden revoked it.
fn a_node_app_written_from_the_readme_shares_the_keys() {
    let db = TestDb::new(Backend::Postgres);
    let mut conn = db.conn();
    let cfg = db.write_config("k.toml", "");

    let issued = node_app(&db, &["issue", "node-owner@example.com", "billing", "read:users"], "");
    let key = issued["key"].as_str().unwrap().to_string();
    let prefix = issued["prefix"].as_str().unwrap().to_string();
    let (ok, stdout, stderr) = keywarden_with_stdin(&cfg, &["keys", "verify", "--scope", "read:users"], &key);
    assert!(
        ok && stdout.starts_with(&format!("valid: {prefix}")),
        "{stdout}{stderr}"
    );
    let expected = chrono::DateTime::parse_from_rfc3339(issued["expires_at"].as_str().unwrap())
        .unwrap()
        .naive_utc();
    let stored: chrono::NaiveDateTime = api_keys::table
        .filter(api_keys::prefix.eq(&prefix))
        .select(api_keys::expires_at)
        .first(&mut conn)
        .unwrap();
    assert!(
        (stored - expected).num_milliseconds().abs() <= 1,
        "issued from Tokyo to expire at {expected} UTC, stored {stored}"
    );

    let created = keywarden(
        &cfg,
        &[
            "keys",
            "create",
            "--owner",
            "node-owner@example.com",
            "--name",
            "reports",
            "--scopes",
            "read:reports",
        ],
    );
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let ours = String::from_utf8_lossy(&created.stdout).trim().to_string();
    let our_prefix = ours.split('.').next().unwrap().to_string();
    let verified = node_app(&db, &["verify", "10.1.2.3", "read:reports"], &ours);
    assert_eq!(verified["valid"], true, "{verified}");
    let refused = node_app(&db, &["verify", "10.1.2.3", "write:reports"], &ours);
    assert_eq!(refused["valid"], false, "{refused}");
    let (uses, last_used): (i64, Option<chrono::NaiveDateTime>) = api_keys::table
        .filter(api_keys::prefix.eq(&our_prefix))
        .select((api_keys::usage_count, api_keys::last_used_at))
        .first(&mut conn)
        .unwrap();
    assert_eq!(uses, 1);
    let lag = keywarden::db::now() - last_used.unwrap();
    assert!(
        lag >= TimeDelta::zero() && lag < TimeDelta::minutes(5),
        "last used {last_used:?}"
    );
    let revoked = keywarden(&cfg, &["keys", "revoke", &our_prefix, "--reason", "test"]);
    assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    let after = node_app(&db, &["verify", "10.1.2.3", "read:reports"], &ours);
    assert_eq!(
        (after["valid"].clone(), after["reason"].clone()),
        (false.into(), "revoked".into())
    );

    // keywarden reads the Node application's events like its own.
    let shown = keywarden(&cfg, &["keys", "usage", &our_prefix, "--json"]);
    assert!(shown.status.success(), "{}", String::from_utf8_lossy(&shown.stderr));
    let usage: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(usage["successful_verifications"], 1, "{usage}");
}
