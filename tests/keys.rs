//! The API-key lifecycle on both backends: through the command line as an
//! admin uses it, through the library as a service uses it, and against an
//! independent Argon2 implementation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use chrono::TimeDelta;
use diesel::prelude::*;
use keywarden::config::KeysConfig;
use keywarden::db::schema::{api_key_events, api_keys, job_runs};
use keywarden::keys::{CreateKey, KeyService, Refusal, VerifyOutcome, VerifyRequest};
use support::*;

both_backends!(
    lifecycle_through_the_command_line,
    verify_outcomes_through_the_library,
    usage_count_is_exact_under_concurrent_verifies,
    limits_and_bad_input_get_clear_errors,
    keys_interoperate_with_argon2_cffi,
    purge_audit_keeps_what_is_inside_the_retention,
    the_example_web_service_issues_and_verifies_keys,
    an_unreadable_allow_list_or_scope_list_refuses_the_key,
    a_disabled_owners_keys_do_not_verify,
    a_cost_raise_reaches_each_key_at_its_next_successful_verification,
    listing_any_number_of_keys_takes_constant_memory_and_pages_by_prefix,
);

fn stored_hash(conn: &mut keywarden::db::DbConnection, prefix: &str) -> String {
    api_keys::table
        .filter(api_keys::prefix.eq(prefix))
        .select(api_keys::key_hash)
        .first(conn)
        .unwrap()
}

fn a_cost_raise_reaches_each_key_at_its_next_successful_verification(backend: Backend) {
    let db = TestDb::new(backend);
    let mut conn = db.conn();
    add_user(&mut conn, "cost@example.com");
    let mut old_cost = KeysConfig::default();
    old_cost.argon2.memory_kib = 7168;
    old_cost.argon2.iterations = 5;
    let before = service(&old_cost);
    let (key, prefix) = issue(&before, &mut conn, "cost@example.com", &[]);
    assert!(stored_hash(&mut conn, &prefix).starts_with("$argon2id$v=19$m=7168,t=5,p=1$"));
    let after = service(&KeysConfig::default());
    let req = VerifyRequest {
        actor: "svc",
        ..VerifyRequest::default()
    };
    // A wrong secret changes nothing.
    let wrong = format!("{prefix}.{}", "B".repeat(43));
    assert_eq!(refusal(verify(&after, &mut conn, &wrong, &req)), Refusal::WrongSecret);
    assert!(stored_hash(&mut conn, &prefix).contains("m=7168,t=5"));
    // The right one re-hashes at the configured cost, and still verifies.
    assert!(matches!(verify(&after, &mut conn, &key, &req), VerifyOutcome::Valid(_)));
    let rehashed = stored_hash(&mut conn, &prefix);
    assert!(rehashed.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{rehashed}");
    assert!(matches!(verify(&after, &mut conn, &key, &req), VerifyOutcome::Valid(_)));
    assert_eq!(stored_hash(&mut conn, &prefix), rehashed, "re-hashed once");
}

fn issue(svc: &KeyService, conn: &mut keywarden::db::DbConnection, owner: &str, ips: &[&str]) -> (String, String) {
    let issued = svc
        .create(
            conn,
            &CreateKey {
                owner_email: owner.into(),
                name: "api".into(),
                scopes: vec!["read:users".into()],
                allowed_ips: ips.iter().map(|s| s.to_string()).collect(),
                lifetime: None,
            },
            "test",
        )
        .unwrap();
    (issued.full_key.expose().to_string(), issued.key.prefix.clone())
}

/// What node-postgres stores for a JavaScript array in a TEXT column, and
/// other things that are not JSON arrays: refused by the schema, and a key
/// that carries one anyway (written before the constraint existed) is
/// refused at verification instead of reading as "no restriction".
fn an_unreadable_allow_list_or_scope_list_refuses_the_key(backend: Backend) {
    let db = TestDb::new(backend);
    let mut conn = db.conn();
    add_user(&mut conn, "fc@example.com");
    let svc = service(&KeysConfig::default());
    let (key, prefix) = issue(&svc, &mut conn, "fc@example.com", &["10.9.9.9"]);
    for bad in ["{\"10.9.9.9\"}", "10.9.9.9", "", "{\"a\": 1}"] {
        let written = diesel::update(api_keys::table.filter(api_keys::prefix.eq(&prefix)))
            .set(api_keys::allowed_ips.eq(bad))
            .execute(&mut conn);
        assert!(written.is_err(), "the schema refuses allowed_ips = {bad:?}");
        let written = diesel::update(api_keys::table.filter(api_keys::prefix.eq(&prefix)))
            .set(api_keys::scopes.eq(bad))
            .execute(&mut conn);
        assert!(written.is_err(), "the schema refuses scopes = {bad:?}");
    }
    // A row from before the constraint: lift it in this test's own database.
    let lift = match backend {
        Backend::Sqlite => "DROP TRIGGER api_keys_json_lists_update",
        Backend::Postgres => "ALTER TABLE api_keys DROP CONSTRAINT api_keys_allowed_ips_json_array, DROP CONSTRAINT api_keys_scopes_json_array",
    };
    diesel::sql_query(lift).execute(&mut conn).unwrap();
    let elsewhere = VerifyRequest {
        ip: "203.0.113.7".parse().ok(),
        required_scopes: &[],
        user_agent: None,
        endpoint: None,
        actor: "svc",
        defer: None,
    };
    let inside = VerifyRequest {
        ip: "10.9.9.9".parse().ok(),
        ..elsewhere.clone()
    };
    assert_eq!(
        refusal(verify(&svc, &mut conn, &key, &elsewhere)),
        Refusal::IpNotAllowed
    );
    assert!(matches!(
        verify(&svc, &mut conn, &key, &inside),
        VerifyOutcome::Valid(_)
    ));
    for bad in ["{\"10.9.9.9\"}", "10.9.9.9", "[\"not an address\"]", "[1]"] {
        diesel::update(api_keys::table.filter(api_keys::prefix.eq(&prefix)))
            .set(api_keys::allowed_ips.eq(bad))
            .execute(&mut conn)
            .unwrap();
        for req in [&elsewhere, &inside] {
            assert_eq!(
                refusal(verify(&svc, &mut conn, &key, req)),
                Refusal::UnreadableRestriction("allowed_ips".into()),
                "allowed_ips = {bad:?}"
            );
        }
    }
    diesel::update(api_keys::table.filter(api_keys::prefix.eq(&prefix)))
        .set((api_keys::allowed_ips.eq("[]"), api_keys::scopes.eq("{read:users}")))
        .execute(&mut conn)
        .unwrap();
    assert_eq!(
        refusal(verify(&svc, &mut conn, &key, &elsewhere)),
        Refusal::UnreadableRestriction("scopes".into())
    );
}

fn a_disabled_owners_keys_do_not_verify(backend: Backend) {
    let db = TestDb::new(backend);
    let mut conn = db.conn();
    let cfg = db.write_config("k.toml", "");
    let owner = add_user(&mut conn, "gone@example.com");
    let svc = service(&KeysConfig::default());
    let (key, _) = issue(&svc, &mut conn, "gone@example.com", &[]);
    // A warning waiting to go out, about a key of the owner.
    add_key(&mut conn, owner, "sk_live_v2_soon", "active", ts(TimeDelta::days(3)));
    keywarden::notify::detect::enqueue_key_notices(
        &mut conn,
        &keywarden::config::NotificationsConfig::default(),
        keywarden::db::now(),
    )
    .unwrap();
    let req = VerifyRequest {
        actor: "svc",
        ..VerifyRequest::default()
    };
    assert!(matches!(verify(&svc, &mut conn, &key, &req), VerifyOutcome::Valid(_)));

    let out = keywarden(&cfg, &["users", "disable", "gone@example.com"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("1 pending warning(s) cancelled"), "{stdout}");
    assert_eq!(refusal(verify(&svc, &mut conn, &key, &req)), Refusal::OwnerDisabled);
    let pending: i64 = keywarden::db::schema::notifications::table
        .filter(keywarden::db::schema::notifications::status.eq("pending"))
        .count()
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(pending, 0);

    let out = keywarden(&cfg, &["users", "enable", "gone@example.com"]);
    assert!(out.status.success());
    assert!(matches!(verify(&svc, &mut conn, &key, &req), VerifyOutcome::Valid(_)));
    let events: Vec<(String, String)> = keywarden::db::schema::user_events::table
        .order(keywarden::db::schema::user_events::id)
        .select((
            keywarden::db::schema::user_events::event,
            keywarden::db::schema::user_events::actor,
        ))
        .load(&mut conn)
        .unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].0, "disabled");
    assert_eq!(events[1].0, "enabled");
    assert!(events[0].1.contains("users disable"), "{events:?}");
    // Asking again changes nothing and records nothing.
    let out = keywarden(&cfg, &["users", "enable", "gone@example.com"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("already enabled"));
}

/// One HTTP/1.1 exchange with the example service; returns (status, body).
fn http(port: u16, request: &str) -> (u16, serde_json::Value) {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("null");
    (status, serde_json::from_str(body).unwrap())
}

fn the_example_web_service_issues_and_verifies_keys(backend: Backend) {
    let db = TestDb::new(backend);
    let mut conn = db.conn();
    let cfg = db.write_config("k.toml", "");
    // Examples are built by `cargo test` next to the binaries.
    let example = std::path::Path::new(BIN).parent().unwrap().join("examples/key_service");
    let port = free_port();
    let token = "an-admin-token-for-the-test";
    let mut child = Command::new(&example)
        .arg(&cfg)
        .arg(format!("127.0.0.1:{port}"))
        .env("KEY_SERVICE_ADMIN_TOKEN", token)
        .stderr(Stdio::null())
        .spawn()
        .expect("the key_service example");
    eventually(std::time::Duration::from_secs(30), "the service listens", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let body = r#"{"owner":"app@example.com","name":"ci","scopes":["read:users"]}"#;
    let post = |auth: &str| {
        http(
            port,
            &format!(
                "POST /keys HTTP/1.1\r\nauthorization: Bearer {auth}\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    assert_eq!(post("wrong-token-wrong-token").0, 401);
    let (status, issued) = post(token);
    assert_eq!(status, 201, "{issued}");
    let key = issued["key"].as_str().unwrap().to_string();
    let whoami = |k: &str| {
        http(
            port,
            &format!("GET /whoami HTTP/1.1\r\nauthorization: Bearer {k}\r\n\r\n"),
        )
    };
    let (status, me) = whoami(&key);
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["scopes"][0], "read:users");
    let (status, refused) = whoami(&format!("{key}x"));
    assert_eq!((status, refused["error"].as_str()), (401, Some("invalid key")));
    let _ = child.kill();
    let _ = child.wait();
    // The service wrote to the shared database: usage counted, audit kept.
    let (prefix, uses): (String, i64) = api_keys::table
        .select((api_keys::prefix, api_keys::usage_count))
        .first(&mut conn)
        .unwrap();
    assert_eq!(prefix, issued["prefix"].as_str().unwrap());
    assert_eq!(uses, 1);
    let failed: i64 = api_key_events::table
        .filter(api_key_events::event.eq("verify_failed"))
        .count()
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(failed, 1);
}

/// Runs the binary with `input` on stdin.
fn with_stdin(config: &std::path::Path, args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The binary stops reading at its limit; a broken pipe is expected then.
    let _ = child.stdin.take().unwrap().write_all(input);
    child.wait_with_output().unwrap()
}

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(out: std::process::Output) -> String {
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status.code()
    );
    stdout
}

fn lifecycle_through_the_command_line(backend: Backend) {
    let db = TestDb::new(backend);
    let mut conn = db.conn();
    let cfg = db.write_config("k.toml", "");
    ok(keywarden(
        &cfg,
        &["users", "add", "Owner@Example.com", "--name", "Olive Owner"],
    ));

    let out = keywarden(
        &cfg,
        &[
            "keys",
            "create",
            "--owner",
            "owner@example.com",
            "--name",
            "billing",
            "--scopes",
            "read:users,write:products",
        ],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("only time the key is shown"), "{stderr}");
    let key1 = stdout.trim().to_string();
    assert!(key1.starts_with("sk_live_v2_") && key1.contains('.'), "{key1}");
    let prefix1 = key1.split('.').next().unwrap().to_string();
    assert!(
        !stderr.contains(key1.split('.').nth(1).unwrap()),
        "the secret goes to stdout only"
    );

    let v = ok(with_stdin(
        &cfg,
        &["keys", "verify", "--scope", "read:users"],
        format!("{key1}\n").as_bytes(),
    ));
    assert!(v.starts_with(&format!("valid: {prefix1}")), "{v}");

    // Rotation: both keys work during the grace, the old one says so.
    let out = keywarden(&cfg, &["keys", "rotate", &prefix1, "--grace", "2h"]);
    let key2 = ok(out).trim().to_string();
    let prefix2 = key2.split('.').next().unwrap().to_string();
    let v = ok(with_stdin(&cfg, &["keys", "verify"], key1.as_bytes()));
    assert!(v.contains("rotating: works until"), "{v}");
    let v = ok(with_stdin(&cfg, &["keys", "verify"], key2.as_bytes()));
    assert!(
        v.starts_with(&format!("valid: {prefix2}")) && !v.contains("rotating"),
        "{v}"
    );
    let (name, version, scopes): (String, i32, String) = api_keys::table
        .filter(api_keys::prefix.eq(&prefix2))
        .select((api_keys::name, api_keys::version, api_keys::scopes))
        .first(&mut conn)
        .unwrap();
    assert_eq!((name.as_str(), version), ("billing", 2));
    assert_eq!(scopes, r#"["read:users","write:products"]"#);

    // The grace ends (moved into the past here); the job retires the old key.
    diesel::update(api_keys::table.filter(api_keys::prefix.eq(&prefix1)))
        .set(api_keys::grace_period_ends_at.eq(Some(ts(-TimeDelta::seconds(1)))))
        .execute(&mut conn)
        .unwrap();
    let out = ok(keywarden(&cfg, &["jobs", "run", "revoke-grace"]));
    assert!(out.contains("revoke-grace: ok, 1 row(s)"), "{out}");
    let out = with_stdin(&cfg, &["keys", "verify"], key1.as_bytes());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).0.contains("refused: key revoked"), "{:?}", text(&out));
    let out = ok(keywarden(&cfg, &["jobs", "run", "revoke-grace"]));
    assert!(out.contains("ok, 0 row(s)"), "idempotent: {out}");

    // A lapsed key is expired by the job and refused afterwards.
    let out = keywarden(
        &cfg,
        &[
            "keys",
            "create",
            "--owner",
            "owner@example.com",
            "--name",
            "short",
            "--expires-in",
            "1s",
        ],
    );
    let key3 = ok(out).trim().to_string();
    std::thread::sleep(std::time::Duration::from_millis(1200));
    assert!(ok(keywarden(&cfg, &["jobs", "run", "expire-keys"])).contains("ok, 1 row(s)"));
    let out = with_stdin(&cfg, &["keys", "verify"], key3.as_bytes());
    assert!(text(&out).0.contains("refused: key expired"));

    // Revocation is immediate, and final.
    ok(keywarden(
        &cfg,
        &["keys", "revoke", &prefix2, "--reason", "laptop stolen"],
    ));
    let out = with_stdin(&cfg, &["keys", "verify"], key2.as_bytes());
    assert!(text(&out).0.contains("refused: key revoked"));
    let out = keywarden(&cfg, &["keys", "rotate", &prefix2]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("is revoked; it cannot be rotated"),
        "{:?}",
        text(&out)
    );

    // Every step can be read back.
    let usage = ok(keywarden(&cfg, &["keys", "usage", &prefix1]));
    for needle in [
        "Total uses:   2",
        "created",
        "used",
        "rotated",
        "grace_ended",
        "verify_failed",
        "success rate",
        "66.7%",
    ] {
        assert!(
            usage.to_lowercase().contains(&needle.to_lowercase()),
            "{needle} missing in:\n{usage}"
        );
    }
    let events: Vec<String> = api_key_events::table
        .select(api_key_events::event)
        .load(&mut conn)
        .unwrap();
    for kind in [
        "created",
        "used",
        "rotated",
        "grace_ended",
        "expired",
        "revoked",
        "verify_failed",
    ] {
        assert!(events.iter().any(|e| e == kind), "no {kind} event in {events:?}");
    }
    let list = ok(keywarden(
        &cfg,
        &["keys", "list", "--sort", "expires_at", "--desc", "--json"],
    ));
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter().all(|r| r.get("key_hash").is_none()),
        "hashes are never listed"
    );
    let expiries: Vec<&str> = rows.iter().map(|r| r["expires_at"].as_str().unwrap()).collect();
    let mut sorted = expiries.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(expiries, sorted);
    let status = ok(keywarden(&cfg, &["status"]));
    assert!(
        status.contains("active 0, rotating 0, revoked 2, expired 1"),
        "{status}"
    );
}

fn service(backend_cfg: &KeysConfig) -> KeyService {
    KeyService::new(backend_cfg).unwrap()
}

fn verify(
    svc: &KeyService,
    conn: &mut keywarden::db::DbConnection,
    key: &str,
    req: &VerifyRequest<'_>,
) -> VerifyOutcome {
    svc.verify(conn, key, req).unwrap()
}

fn refusal(outcome: VerifyOutcome) -> Refusal {
    match outcome {
        VerifyOutcome::Refused(r) => r,
        VerifyOutcome::Valid(v) => panic!("expected a refusal, got valid {v:?}"),
    }
}

fn verify_outcomes_through_the_library(backend: Backend) {
    let db = TestDb::new(backend);
    let mut conn = db.conn();
    add_user(&mut conn, "svc@example.com");
    let svc = service(&KeysConfig::default());
    let issued = svc
        .create(
            &mut conn,
            &CreateKey {
                owner_email: "svc@example.com".into(),
                name: "api".into(),
                scopes: vec!["read:users".into()],
                allowed_ips: vec!["192.0.2.0/24".into()],
                lifetime: None,
            },
            "test",
        )
        .unwrap();
    let key = issued.full_key.expose().to_string();
    let prefix = issued.key.prefix.clone();
    let inside = "192.0.2.10".parse().ok();
    let req = VerifyRequest {
        ip: inside,
        required_scopes: &["read:users"],
        user_agent: Some("curl/8"),
        endpoint: Some("/v1/users"),
        actor: "svc",
        defer: None,
    };

    match verify(&svc, &mut conn, &key, &req) {
        VerifyOutcome::Valid(v) => {
            assert_eq!(v.prefix, prefix);
            assert!(v.grace_ends_at.is_none());
        }
        other => panic!("{other:?}"),
    }
    let wrong_secret = format!("{prefix}.{}", "A".repeat(43));
    assert_eq!(
        refusal(verify(&svc, &mut conn, &wrong_secret, &req)),
        Refusal::WrongSecret
    );
    let unknown = format!("sk_live_v2_0000000000000000.{}", "B".repeat(43));
    assert_eq!(refusal(verify(&svc, &mut conn, &unknown, &req)), Refusal::UnknownKey);
    assert!(matches!(
        refusal(verify(&svc, &mut conn, "not a key", &req)),
        Refusal::Malformed(_)
    ));
    let outside = VerifyRequest {
        ip: "198.51.100.1".parse().ok(),
        ..req.clone()
    };
    assert_eq!(refusal(verify(&svc, &mut conn, &key, &outside)), Refusal::IpNotAllowed);
    let more_scope = VerifyRequest {
        required_scopes: &["write:users"],
        ..req.clone()
    };
    assert_eq!(
        refusal(verify(&svc, &mut conn, &key, &more_scope)),
        Refusal::MissingScope("write:users".into())
    );

    // Audit rows carry what the service passed, and failures their reason.
    let (ua, endpoint, ip): (Option<String>, Option<String>, Option<String>) = api_key_events::table
        .filter(api_key_events::event.eq("used"))
        .select((api_key_events::user_agent, api_key_events::endpoint, api_key_events::ip))
        .first(&mut conn)
        .unwrap();
    assert_eq!(
        (ua.as_deref(), endpoint.as_deref(), ip.as_deref()),
        (Some("curl/8"), Some("/v1/users"), Some("192.0.2.10"))
    );
    let unknown_rows: i64 = api_key_events::table
        .filter(api_key_events::key_id.is_null())
        .filter(api_key_events::reason.eq("unknown prefix"))
        .count()
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(unknown_rows, 1);

    // A key found past its expiry is refused and marked expired at once.
    diesel::update(api_keys::table.filter(api_keys::prefix.eq(&prefix)))
        .set(api_keys::expires_at.eq(ts(-TimeDelta::seconds(1))))
        .execute(&mut conn)
        .unwrap();
    assert_eq!(refusal(verify(&svc, &mut conn, &key, &req)), Refusal::Expired);
    assert_eq!(key_status(&mut conn, &prefix), "expired");
    // Expired keys cannot be rotated.
    assert!(svc.rotate(&mut conn, &prefix, None, "test").is_err());

    // A rotating key past its grace is refused and revoked at once.
    let issued = svc
        .create(
            &mut conn,
            &CreateKey {
                owner_email: "svc@example.com".into(),
                name: "api2".into(),
                ..Default::default()
            },
            "t",
        )
        .unwrap();
    let open = VerifyRequest {
        ip: None,
        required_scopes: &[],
        user_agent: None,
        endpoint: None,
        actor: "svc",
        defer: None,
    };
    let rotation = svc.rotate(&mut conn, &issued.key.prefix, None, "t").unwrap();
    match verify(&svc, &mut conn, issued.full_key.expose(), &open) {
        VerifyOutcome::Valid(v) => assert_eq!(v.grace_ends_at, rotation.old.grace_period_ends_at),
        other => panic!("{other:?}"),
    }
    diesel::update(api_keys::table.filter(api_keys::prefix.eq(&issued.key.prefix)))
        .set(api_keys::grace_period_ends_at.eq(Some(ts(-TimeDelta::seconds(1)))))
        .execute(&mut conn)
        .unwrap();
    assert_eq!(
        refusal(verify(&svc, &mut conn, issued.full_key.expose(), &open)),
        Refusal::GraceEnded
    );
    assert_eq!(key_status(&mut conn, &issued.key.prefix), "revoked");
    assert!(matches!(
        verify(&svc, &mut conn, rotation.new.full_key.expose(), &open),
        VerifyOutcome::Valid(_)
    ));
}

fn usage_count_is_exact_under_concurrent_verifies(backend: Backend) {
    let db = TestDb::new(backend);
    let mut conn = db.conn();
    add_user(&mut conn, "c@example.com");
    let svc = service(&KeysConfig::default());
    let issued = svc
        .create(
            &mut conn,
            &CreateKey {
                owner_email: "c@example.com".into(),
                name: "hot".into(),
                ..Default::default()
            },
            "t",
        )
        .unwrap();
    let key = issued.full_key.expose().to_string();
    let (threads, per_thread) = (4, 5);
    std::thread::scope(|s| {
        for _ in 0..threads {
            let svc = &svc;
            let key = &key;
            let database = db.database();
            s.spawn(move || {
                let mut c = database.connect().unwrap();
                let req = VerifyRequest {
                    ip: None,
                    required_scopes: &[],
                    user_agent: None,
                    endpoint: None,
                    actor: "load",
                    defer: None,
                };
                for _ in 0..per_thread {
                    assert!(matches!(
                        svc.verify(&mut c, key, &req).unwrap(),
                        VerifyOutcome::Valid(_)
                    ));
                }
            });
        }
    });
    let count: i64 = api_keys::table
        .filter(api_keys::prefix.eq(&issued.key.prefix))
        .select(api_keys::usage_count)
        .first(&mut conn)
        .unwrap();
    assert_eq!(count, threads * per_thread);
}

fn limits_and_bad_input_get_clear_errors(backend: Backend) {
    let db = TestDb::new(backend);
    let _conn = db.conn();
    let cfg = db.write_config(
        "k.toml",
        "[keys]\nmax_keys_per_owner = 2\nmax_lifetime = \"30d\"\ndefault_lifetime = \"30d\"\n",
    );
    ok(keywarden(&cfg, &["users", "add", "lim@example.com"]));
    let fails = |args: &[&str], code: i32, needle: &str| {
        let out = keywarden(&cfg, args);
        let (stdout, stderr) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}\nstdout: {stdout}\nstderr: {stderr}"
        );
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        for leak in ["api_keys", "users_email", "constraint", "SELECT", "INSERT"] {
            assert!(!stderr.contains(leak), "{args:?} leaks schema details: {stderr}");
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
    };
    fails(&["users", "add", "LIM@example.com"], 1, "already exists");
    fails(&["users", "add", "not-an-email"], 1, "is not an email address");
    fails(
        &["keys", "create", "--owner", "ghost@example.com", "--name", "x"],
        1,
        "no owner with email ghost@example.com",
    );
    fails(
        &[
            "keys",
            "create",
            "--owner",
            "lim@example.com",
            "--name",
            "x",
            "--expires-in",
            "31d",
        ],
        1,
        "at most 30d",
    );
    fails(
        &[
            "keys",
            "create",
            "--owner",
            "lim@example.com",
            "--name",
            "x",
            "--expires-in",
            "soon",
        ],
        2,
        "--expires-in",
    );
    fails(
        &[
            "keys",
            "create",
            "--owner",
            "lim@example.com",
            "--name",
            "x",
            "--scopes",
            "drop table",
        ],
        1,
        "is not a scope",
    );
    fails(
        &[
            "keys",
            "create",
            "--owner",
            "lim@example.com",
            "--name",
            "x",
            "--allow-ip",
            "10.0.0.999",
        ],
        1,
        "is not an IP",
    );
    fails(
        &["keys", "create", "--owner", "lim@example.com", "--name", ""],
        1,
        "key name",
    );
    let k1 = ok(keywarden(
        &cfg,
        &["keys", "create", "--owner", "lim@example.com", "--name", "one"],
    ));
    ok(keywarden(
        &cfg,
        &["keys", "create", "--owner", "lim@example.com", "--name", "two"],
    ));
    fails(
        &["keys", "create", "--owner", "lim@example.com", "--name", "three"],
        1,
        "already has 2 active or rotating keys",
    );
    let p1 = k1.trim().split('.').next().unwrap().to_string();
    fails(
        &["keys", "rotate", &p1, "--grace", "1m"],
        1,
        "grace period must be between 1h and 7d",
    );
    fails(
        &["keys", "rotate", &p1, "--grace", "30d"],
        1,
        "grace period must be between 1h and 7d",
    );
    fails(&["keys", "revoke", &p1, "--reason", "  "], 1, "needs a reason");
    fails(
        &["keys", "show", "sk_live_v2_ffffffffffffffff"],
        1,
        "no key with prefix",
    );
    fails(&["keys", "show", "'; DROP TABLE api_keys; --"], 1, "prefix must be");
    fails(
        &["keys", "list", "--sort", "key_hash"],
        2,
        "valid columns: created_at, expires_at",
    );
    fails(&["keys", "list", "--sort", "id; DROP TABLE users"], 2, "valid columns");
    ok(keywarden(&cfg, &["keys", "revoke", &p1, "--reason", "done"]));
    fails(
        &["keys", "revoke", &p1, "--reason", "again"],
        1,
        "cannot be revoked again",
    );

    // Keys come from stdin only, and bad stdin is refused cleanly.
    let verify_fails = |input: &[u8], code: i32, needle: &str| {
        let out = with_stdin(&cfg, &["keys", "verify"], input);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(code), "{stdout} {stderr}");
        assert!(
            stdout.contains(needle) || stderr.contains(needle),
            "{needle}: {stdout} {stderr}"
        );
        assert!(!stderr.contains("panicked"));
    };
    verify_fails(b"", 1, "refused: malformed: the key is empty");
    verify_fails(b"sk_live_v2_abc\n", 1, "exactly one dot");
    verify_fails(&[0xff, 0xfe, b'.', 0x80], 1, "not valid UTF-8");
    verify_fails(&vec![b'a'; 100_000], 1, "longer than 256 bytes");
    verify_fails(
        format!("sk_live_v2_0123456789abcdef.{}", "x".repeat(43)).as_bytes(),
        1,
        "refused: unknown prefix",
    );
    let out = keywarden(&cfg, &["keys", "verify", "sk_live_v2_0123456789abcdef.secret"]);
    assert_eq!(out.status.code(), Some(2), "a key is never accepted as an argument");
}

fn keys_interoperate_with_argon2_cffi(backend: Backend) {
    let db = TestDb::new(backend);
    let has_argon2 = Command::new("python3")
        .args(["-c", "import argon2"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_argon2,
        "python3 with argon2-cffi is required (pip install argon2-cffi)"
    );
    let mut conn = db.conn();
    let owner = add_user(&mut conn, "py@example.com");
    let cfg = db.write_config("k.toml", "");

    // A key made the guide's way by another implementation verifies here.
    let script = r#"
import base64, os, time, argon2
ph = argon2.PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1, hash_len=32, salt_len=16, type=argon2.Type.ID)
secret = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
ts36 = ""
n = int(time.time() * 1000)
while n:
    n, r = divmod(n, 36)
    ts36 = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + ts36
prefix = "sk_live_v2_" + ts36 + os.urandom(4).hex()
print(prefix); print(secret); print(ph.hash(secret))
"#;
    let out = Command::new("python3").args(["-c", script]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    let (prefix, secret, hash) = (lines[0], lines[1], lines[2]);
    assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
    let now = keywarden::db::now();
    diesel::insert_into(api_keys::table)
        .values((
            api_keys::prefix.eq(prefix),
            api_keys::key_hash.eq(hash),
            api_keys::name.eq("from python"),
            api_keys::status.eq("active"),
            api_keys::owner_id.eq(owner),
            api_keys::expires_at.eq(now + TimeDelta::days(1)),
            api_keys::created_at.eq(now),
            api_keys::updated_at.eq(now),
        ))
        .execute(&mut conn)
        .unwrap();
    let v = ok(with_stdin(
        &cfg,
        &["keys", "verify"],
        format!("{prefix}.{secret}").as_bytes(),
    ));
    assert!(v.starts_with(&format!("valid: {prefix}")), "{v}");
    let wrong = with_stdin(
        &cfg,
        &["keys", "verify"],
        format!("{prefix}.{}x", &secret[..42]).as_bytes(),
    );
    assert!(text(&wrong).0.contains("wrong secret"));

    // And a key made here verifies with argon2-cffi from the stored hash.
    let key = ok(keywarden(
        &cfg,
        &["keys", "create", "--owner", "py@example.com", "--name", "for python"],
    ));
    let (kp, ks) = key.trim().split_once('.').unwrap();
    let stored: String = api_keys::table
        .filter(api_keys::prefix.eq(kp))
        .select(api_keys::key_hash)
        .first(&mut conn)
        .unwrap();
    let check =
        "import sys, argon2\nh, s = sys.stdin.read().split('\\n')[:2]\nprint(argon2.PasswordHasher().verify(h, s))";
    let mut child = Command::new("python3")
        .args(["-c", check])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{stored}\n{ks}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "True");
}

fn purge_audit_keeps_what_is_inside_the_retention(backend: Backend) {
    let db = TestDb::new(backend);
    let mut conn = db.conn();
    let owner = add_user(&mut conn, "p@example.com");
    let key = add_key(&mut conn, owner, "sk_live_v2_purge", "active", ts(TimeDelta::days(10)));
    for (age_days, n) in [(400, 7), (100, 3), (1, 2)] {
        for _ in 0..n {
            diesel::insert_into(api_key_events::table)
                .values((
                    api_key_events::key_id.eq(Some(key)),
                    api_key_events::prefix.eq("sk_live_v2_purge"),
                    api_key_events::event.eq("used"),
                    api_key_events::actor.eq("t"),
                    api_key_events::created_at.eq(ts(-TimeDelta::days(age_days))),
                ))
                .execute(&mut conn)
                .unwrap();
        }
    }
    keywarden::jobs::history::record_start(
        &mut conn,
        "old-run",
        "expire-keys",
        "h",
        keywarden::jobs::Trigger::Schedule,
        ts(-TimeDelta::days(500)),
    )
    .unwrap();
    keywarden::jobs::history::record_finish(&mut conn, "old-run", "ok", 0, None, ts(-TimeDelta::days(500))).unwrap();
    // Retention 90 days, in batches of 2.
    let cfg = db.write_config(
        "k.toml",
        "[keys]\naudit_retention = \"90d\"\n[jobs.purge-audit]\nbatch_size = 2\n",
    );
    let out = ok(keywarden(&cfg, &["jobs", "run", "purge-audit"]));
    assert!(out.contains("purge-audit: ok, 11 row(s)"), "{out}");
    let left: i64 = api_key_events::table.count().get_result(&mut conn).unwrap();
    assert_eq!(left, 2);
    let old_run: i64 = job_runs::table
        .filter(job_runs::run_id.eq("old-run"))
        .count()
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(old_run, 0);
    // The retention can never be set below 90 days.
    let err = keywarden::jobs::config_from_toml(std::path::Path::new("x.toml"), "[keys]\naudit_retention = \"30d\"\n")
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("x.toml:2:19: keys.audit_retention must be at least 90d"),
        "{err}"
    );
}

/// 200,000 keys listed (table, JSON array, JSON lines) in the memory of a
/// few: rows stream from the database to a buffered stdout. The previous
/// listing loaded every row first (1.2 GiB at a million keys). Then paging
/// with --limit and the --after keyset cursor visits every key once.
fn listing_any_number_of_keys_takes_constant_memory_and_pages_by_prefix(backend: Backend) {
    const KEYS: usize = 200_000;
    let db = TestDb::new(backend);
    let cfg = db.write_config("k.toml", "");
    let mut conn = db.conn();
    let owner = add_user(&mut conn, "many@example.com");
    let numbers = match backend {
        Backend::Postgres => format!("SELECT g AS n FROM generate_series(1, {KEYS}) AS g"),
        Backend::Sqlite => {
            format!("WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {KEYS}) SELECT n FROM s")
        }
    };
    let hex = match backend {
        Backend::Postgres => "lpad(to_hex(n), 16, '0')",
        Backend::Sqlite => "printf('%016x', n)",
    };
    let now = match backend {
        Backend::Postgres => "now()::timestamp",
        Backend::Sqlite => "datetime('now')",
    };
    diesel::sql_query(format!(
        "INSERT INTO api_keys (prefix, key_hash, name, status, owner_id, scopes, allowed_ips, expires_at, created_at, updated_at) \
         SELECT 'sk_live_v2_' || {hex}, '$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA', 'key ' || n, 'active', {owner}, '[]', '[]', \
                {now}, {now}, {now} FROM ({numbers}) AS numbers"
    ))
    .execute(&mut conn)
    .unwrap();
    let config = cfg.display().to_string();
    for format in [&[][..], &["--json"][..], &["--json-lines"][..]] {
        let out = std::process::Command::new("/usr/bin/time")
            .args([
                "-f", "%M", BIN, "--config", &config, "keys", "list", "--status", "active",
            ])
            .args(format)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let peak_kib: u64 = stderr.lines().last().unwrap().trim().parse().unwrap();
        assert!(peak_kib < 50 * 1024, "keys list {format:?} peaked at {peak_kib} KiB");
        let text = String::from_utf8(out.stdout).unwrap();
        match format.first().copied() {
            None => assert_eq!(text.lines().count(), KEYS + 1),
            Some("--json") => {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v.as_array().unwrap().len(), KEYS);
            }
            _ => {
                assert_eq!(text.lines().count(), KEYS);
                let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
                assert_eq!(last["owner_email"], "many@example.com");
            }
        }
    }
    // Paging: three pages of 1,000 after a cursor, in prefix order, no gap.
    let mut after = "sk_live_v2_0000000000000fff".to_string();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let page = ok(keywarden(
            &cfg,
            &["keys", "list", "--limit", "1000", "--after", &after, "--json-lines"],
        ));
        let prefixes: Vec<String> = page
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["prefix"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(prefixes.len(), 1000);
        after = prefixes.last().unwrap().clone();
        seen.extend(prefixes);
    }
    let expected: Vec<String> = (0x1000..0x1000 + 3000)
        .map(|n| format!("sk_live_v2_{n:016x}"))
        .collect();
    assert_eq!(seen, expected);
    // A cursor with --sort is refused: the cursor is a prefix.
    let out = keywarden(&cfg, &["keys", "list", "--after", "x", "--sort", "name"]);
    assert_eq!(out.status.code(), Some(2));
}
