//! The verification service (`[verify]`): the real daemon answering over
//! its Unix socket, on both backends: the library's outcomes, clear 4xx
//! answers, exact usage and audit rows for cached answers, revocation,
//! rotation and owner disabling reaching a second replica's cache at once,
//! and a database cut away (PostgreSQL) never answered "valid" from memory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use keywarden::db::schema::{api_key_events, api_keys};
use serde_json::{json, Value};
use support::*;

both_backends!(
    answers_like_the_library_and_records_every_use,
    bad_requests_get_clear_answers,
    a_change_on_one_replica_reaches_the_others_cache_at_once,
    the_express_and_python_examples_guard_an_api,
);

mod postgres_only {
    #[test]
    fn a_database_cut_away_is_never_answered_from_memory() {
        super::a_database_cut_away_is_never_answered_from_memory();
    }
}

/// event, reason, ip, actor, endpoint, user agent.
type EventRow = (
    String,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
);

/// One HTTP/1.1 exchange on the socket; the status and the JSON answer.
fn exchange(socket: &Path, request: &[u8]) -> (u16, Value) {
    let mut s = UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    let value = serde_json::from_str(body.trim()).unwrap_or(Value::Null);
    (status, value)
}

fn post_raw(socket: &Path, content_type: &str, body: &[u8]) -> (u16, Value) {
    let mut req = format!(
        "POST /v1/verify HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    exchange(socket, &req)
}

fn ask(socket: &Path, body: &Value) -> Value {
    let (status, answer) = post_raw(socket, "application/json", body.to_string().as_bytes());
    assert_eq!(status, 200, "{answer}");
    answer
}

fn service_config(db: &TestDb, name: &str, socket: &Path) -> PathBuf {
    db.write_config(
        name,
        &format!(
            "[verify]\nsocket = \"{}\"\ncache_ttl = \"60s\"\nactor = \"verify-test\"\n",
            socket.display()
        ),
    )
}

fn create_key(cfg: &Path, owner: &str, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["keys", "create", "--owner", owner, "--name", name];
    args.extend_from_slice(extra);
    let out = keywarden(cfg, &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn add_owner(cfg: &Path, email: &str) {
    let out = keywarden(cfg, &["users", "add", email]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn start(cfg: &Path, socket: &Path) -> Daemon {
    let d = Daemon::start(cfg, None, &[]);
    d.wait_for_log("verify: serving on unix:", Duration::from_secs(60));
    eventually(Duration::from_secs(30), "the cache to be live", || {
        exchange(
            socket,
            b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .1["cache"]
            == "live"
    });
    d
}

fn stop(mut d: Daemon) -> String {
    d.signal("TERM");
    assert!(d.wait_exit(Duration::from_secs(60)).success(), "{}", d.log());
    d.log()
}

fn prefix_of(key: &str) -> String {
    key.split('.').next().unwrap().to_string()
}

fn answers_like_the_library_and_records_every_use(backend: Backend) {
    let db = TestDb::new(backend);
    let mut conn = db.conn();
    let socket = db.path().join("verify.sock");
    let cfg = service_config(&db, "v.toml", &socket);
    add_owner(&cfg, "app@example.com");
    let key = create_key(
        &cfg,
        "app@example.com",
        "orders",
        &["--scopes", "read,write", "--allow-ip", "10.0.0.0/8"],
    );
    let prefix = prefix_of(&key);
    let daemon = start(&cfg, &socket);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660, "socket mode {mode:o}");
    }

    let q = |scopes: Value, ip: &str| json!({"key": key, "ip": ip, "scopes": scopes, "endpoint": "GET /orders", "user_agent": "test/1"});
    let first = ask(&socket, &q(json!(["read"]), "10.1.2.3"));
    assert_eq!(first["outcome"], "valid", "{first}");
    assert_eq!(first["cached"], false, "{first}");
    assert_eq!(first["prefix"], prefix.as_str());
    assert_eq!(first["scopes"], json!(["read", "write"]));
    assert!(first["expires_at"].as_str().unwrap().ends_with('Z'), "{first}");
    let mut valid = 1;
    for _ in 0..20 {
        let again = ask(&socket, &q(json!(["read", "write"]), "10.9.9.9"));
        assert_eq!(
            (again["outcome"].as_str(), again["cached"].as_bool()),
            (Some("valid"), Some(true)),
            "{again}"
        );
        valid += 1;
    }
    let scope = ask(&socket, &q(json!(["admin"]), "10.1.2.3"));
    assert_eq!(
        (scope["reason"].as_str(), scope["detail"].as_str()),
        (Some("missing_scope"), Some("admin")),
        "{scope}"
    );
    let ip = ask(&socket, &q(json!([]), "192.0.2.1"));
    assert_eq!(ip["reason"], "ip_not_allowed", "{ip}");
    let no_ip = ask(&socket, &json!({"key": key}));
    assert_eq!(
        no_ip["reason"], "ip_not_allowed",
        "an allow-list without a caller address refuses: {no_ip}"
    );
    let (head, _) = key.split_once('.').unwrap();
    let wrong = ask(
        &socket,
        &json!({"key": format!("{head}.{}", "A".repeat(43)), "ip": "10.1.2.3"}),
    );
    assert_eq!(wrong["reason"], "wrong_secret", "{wrong}");
    let unknown = ask(
        &socket,
        &json!({"key": format!("{}x.{}", &head[..head.len() - 1], "B".repeat(43)), "ip": "10.1.2.3"}),
    );
    assert!(
        ["unknown_key", "malformed"].contains(&unknown["reason"].as_str().unwrap()),
        "{unknown}"
    );
    let malformed = ask(&socket, &json!({"key": "not a key"}));
    assert_eq!(malformed["reason"], "malformed", "{malformed}");

    let log = stop(daemon);
    let secret = key.split_once('.').unwrap().1;
    assert!(!log.contains(secret), "the daemon logged the secret");

    let (uses, last_used): (i64, Option<chrono::NaiveDateTime>) = api_keys::table
        .filter(api_keys::prefix.eq(&prefix))
        .select((api_keys::usage_count, api_keys::last_used_at))
        .first(&mut conn)
        .unwrap();
    assert_eq!(uses, valid, "every valid answer is counted once");
    assert!(last_used.is_some());
    let events: Vec<EventRow> = api_key_events::table
        .filter(api_key_events::prefix.eq(&prefix))
        .filter(api_key_events::event.ne("created"))
        .select((
            api_key_events::event,
            api_key_events::reason,
            api_key_events::ip,
            api_key_events::actor,
            api_key_events::endpoint,
            api_key_events::user_agent,
        ))
        .load(&mut conn)
        .unwrap();
    let used = events.iter().filter(|e| e.0 == "used").count() as i64;
    assert_eq!(used, valid, "{events:#?}");
    assert!(events.iter().all(|e| e.3 == "verify-test"), "{events:#?}");
    assert!(
        events.iter().any(|e| e.0 == "used"
            && e.2.as_deref() == Some("10.9.9.9")
            && e.4.as_deref() == Some("GET /orders")
            && e.5.as_deref() == Some("test/1")),
        "{events:#?}"
    );
    let failed: Vec<&Option<String>> = events.iter().filter(|e| e.0 == "verify_failed").map(|e| &e.1).collect();
    // missing scope, address, no address, wrong secret (the unknown and
    // malformed keys have no row of this prefix).
    assert_eq!(failed.len(), 4, "{events:#?}");
    assert!(failed.contains(&&Some("missing scope admin".to_string())), "{failed:?}");
    // Nothing anywhere holds the secret.
    let rows: Vec<Option<String>> = api_key_events::table
        .select(api_key_events::reason)
        .load(&mut conn)
        .unwrap();
    assert!(rows.iter().flatten().all(|r| !r.contains(secret)));
}

fn bad_requests_get_clear_answers(backend: Backend) {
    let db = TestDb::new(backend);
    let _conn = db.conn();
    let socket = db.path().join("verify.sock");
    let port = free_port();
    let cfg = db.write_config(
        "v.toml",
        &format!(
            "[verify]\nsocket = \"{}\"\nlisten = \"127.0.0.1:{port}\"\nmax_body = 4096\n",
            socket.display()
        ),
    );
    let daemon = start(&cfg, &socket);
    // The loopback address answers the same API.
    let (status, _, health) = http_tcp(port, "GET", "/v1/health", &[], "");
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")), "{health}");
    let (status, _, answer) = http_tcp(port, "POST", "/v1/verify", &[], r#"{"key": "nope"}"#);
    assert_eq!(
        (status, answer["reason"].as_str()),
        (200, Some("malformed")),
        "{answer}"
    );
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("application/json", b"{not json".to_vec(), 400),
        (
            "application/json",
            br#"{"key": "sk_live_v2_x.y", "scope": ["read"]}"#.to_vec(),
            400,
        ),
        ("application/json", br#"{"ip": "10.0.0.1"}"#.to_vec(), 400),
        ("application/json", br#"{"key": "k", "ip": "10.0.0.300"}"#.to_vec(), 400),
        ("application/json", br#"{"key": "k", "scopes": "read"}"#.to_vec(), 400),
        ("application/json", br#"{"key": "k", "scopes": [""]}"#.to_vec(), 400),
        ("text/plain", br#"{"key": "k"}"#.to_vec(), 415),
        (
            "application/json",
            format!(r#"{{"key": "{}"}}"#, "a".repeat(20_000)).into_bytes(),
            413,
        ),
    ];
    for (ct, body, want) in cases {
        let (status, answer) = post_raw(&socket, ct, &body);
        assert_eq!(
            status,
            want,
            "{}: {answer}",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        );
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{answer}");
    }
    let (status, _) = exchange(
        &socket,
        b"GET /v1/verify HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 405);
    let (status, _) = exchange(
        &socket,
        b"GET /elsewhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 404);
    let (status, _) = exchange(&socket, b"NONSENSE\r\n\r\n");
    assert_eq!(status, 400);
    // A client that sends nothing is closed after the request timeout,
    // and does not keep others out.
    let mut idle = UnixStream::connect(&socket).unwrap();
    idle.write_all(b"POST /v1/verify HTTP/1.1\r\n").unwrap();
    let health = exchange(
        &socket,
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(health.0, 200);
    // Several requests on one kept-alive connection.
    let mut kept = UnixStream::connect(&socket).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    for _ in 0..3 {
        let body = br#"{"key": "nope"}"#;
        let req = format!(
            "POST /v1/verify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
            body.len(),
            String::from_utf8_lossy(body)
        );
        kept.write_all(req.as_bytes()).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = kept.read(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("\"malformed\""), "{text}");
    }
    drop(idle);
    let wide = db.write_config("wide.toml", "[verify]\nlisten = \"0.0.0.0:8731\"\n");
    let checked = keywarden(&wide, &["check-config"]);
    let text = String::from_utf8_lossy(&checked.stderr);
    assert_eq!(checked.status.code(), Some(78), "{text}");
    assert!(
        text.contains("verify.listen must be a loopback address") && text.contains("wide.toml:"),
        "{text}"
    );
    let log = stop(daemon);
    assert!(!log.contains(&"a".repeat(100)), "a request body reached the log");
}

/// Polls `socket` until the key is refused for `reason`; the time it took.
fn until_refused(socket: &Path, key: &str, reason: &str) -> Duration {
    let started = Instant::now();
    loop {
        let a = ask(socket, &json!({"key": key}));
        if a["outcome"] == "refused" {
            assert_eq!(a["reason"], reason, "{a}");
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "still {a} after 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn a_change_on_one_replica_reaches_the_others_cache_at_once(backend: Backend) {
    let db = TestDb::new(backend);
    let mut conn = db.conn();
    let (sock_a, sock_b) = (db.path().join("a.sock"), db.path().join("b.sock"));
    let cfg_a = service_config(&db, "a.toml", &sock_a);
    let cfg_b = service_config(&db, "b.toml", &sock_b);
    add_owner(&cfg_a, "owner@example.com");
    add_owner(&cfg_a, "other@example.com");
    let revoked = create_key(&cfg_a, "owner@example.com", "one", &[]);
    let rotated = create_key(&cfg_a, "owner@example.com", "two", &[]);
    let disabled = create_key(&cfg_a, "other@example.com", "three", &[]);
    let a = start(&cfg_a, &sock_a);
    let b = start(&cfg_b, &sock_b);
    for key in [&revoked, &rotated, &disabled] {
        for sock in [&sock_a, &sock_b] {
            ask(sock, &json!({"key": key}));
            let warm = ask(sock, &json!({"key": key}));
            assert_eq!(
                (warm["outcome"].as_str(), warm["cached"].as_bool()),
                (Some("valid"), Some(true)),
                "{warm}"
            );
        }
    }

    // A revocation by the command line.
    let out = keywarden(
        &cfg_a,
        &["keys", "revoke", &prefix_of(&revoked), "--reason", "compromised"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for sock in [&sock_a, &sock_b] {
        let took = until_refused(sock, &revoked, "revoked");
        assert!(took < Duration::from_secs(2), "refused after {took:?}");
    }

    // A rotation: the old key goes on working, now with its grace end.
    let out = keywarden(&cfg_a, &["keys", "rotate", &prefix_of(&rotated), "--grace", "1h"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for sock in [&sock_a, &sock_b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let a = ask(sock, &json!({"key": rotated}));
            assert_eq!(a["outcome"], "valid", "{a}");
            if a["grace_ends_at"].is_string() {
                break;
            }
            assert!(Instant::now() < deadline, "no grace end after 10 s: {a}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // The owner disabled, by SQL another application could write.
    diesel::sql_query("UPDATE users SET status = 'disabled' WHERE email = 'other@example.com'")
        .execute(&mut conn)
        .unwrap();
    for sock in [&sock_a, &sock_b] {
        until_refused(sock, &disabled, "owner_disabled");
    }
    // And the revocation by another application's SQL too.
    diesel::sql_query("UPDATE users SET status = 'active' WHERE email = 'other@example.com'")
        .execute(&mut conn)
        .unwrap();
    for sock in [&sock_a, &sock_b] {
        let back = ask(sock, &json!({"key": disabled}));
        assert_eq!(back["outcome"], "valid", "{back}");
    }
    let p = prefix_of(&disabled);
    diesel::update(api_keys::table.filter(api_keys::prefix.eq(&p)))
        .set((
            api_keys::status.eq("revoked"),
            api_keys::revoked_at.eq(Some(keywarden::db::now())),
        ))
        .execute(&mut conn)
        .unwrap();
    for sock in [&sock_a, &sock_b] {
        until_refused(sock, &disabled, "revoked");
    }
    stop(a);
    stop(b);
}

fn a_database_cut_away_is_never_answered_from_memory() {
    let db = TestDb::new(Backend::Postgres);
    let mut conn = db.conn();
    let target: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let proxy = proxy::TcpProxy::start(target);
    let mut url = url::Url::parse(&db.url).unwrap();
    url.set_port(Some(proxy.port)).unwrap();
    let socket = db.path().join("verify.sock");
    let direct = service_config(&db, "direct.toml", &socket);
    add_owner(&direct, "owner@example.com");
    let key = create_key(&direct, "owner@example.com", "k", &[]);
    let text = std::fs::read_to_string(&direct).unwrap().replace(&db.url, url.as_str());
    let cfg = db.path().join("proxied.toml");
    std::fs::write(&cfg, text).unwrap();
    let daemon = start(&cfg, &socket);
    ask(&socket, &json!({"key": key}));
    assert_eq!(ask(&socket, &json!({"key": key}))["cached"], true);

    proxy.cut();
    // Revoked while this replica cannot hear of it.
    diesel::update(api_keys::table.filter(api_keys::prefix.eq(prefix_of(&key))))
        .set((
            api_keys::status.eq("revoked"),
            api_keys::revoked_at.eq(Some(keywarden::db::now())),
        ))
        .execute(&mut conn)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, answer) = post_raw(&socket, "application/json", json!({"key": key}).to_string().as_bytes());
        assert_ne!(
            answer["outcome"], "valid",
            "answered valid from memory after the cut and the revocation: {answer}"
        );
        if status == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "still {status} {answer}");
        std::thread::sleep(Duration::from_millis(50));
    }
    proxy.restore();
    until_refused(&socket, &key, "revoked");
    stop(daemon);
}

/// One HTTP/1.1 request over TCP; the status, the headers and the body.
fn http_tcp(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, Value) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        status,
        head.to_string(),
        serde_json::from_str(body.trim()).unwrap_or(Value::Null),
    )
}

/// Starts an example server (its command prints "listening on" when up).
fn example(mut cmd: std::process::Command, what: &str) -> std::process::Child {
    use std::io::BufRead;
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what} is needed for this test: {e}"));
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{what} did not start"));
    assert!(line.starts_with("listening on"), "{what}: {line}");
    child
}

/// The examples as an application uses them: the Express middleware
/// (Node's http over the socket) and the WSGI one (Python's standard
/// library) let through what keywarden finds valid, refuse the rest with
/// 401/403, and answer 503 when the service is away.
fn the_express_and_python_examples_guard_an_api(backend: Backend) {
    let db = TestDb::new(backend);
    let mut conn = db.conn();
    let socket = db.path().join("verify.sock");
    let cfg = service_config(&db, "v.toml", &socket);
    add_owner(&cfg, "shop@example.com");
    let reader = create_key(&cfg, "shop@example.com", "reader", &["--scopes", "read:products"]);
    let writer = create_key(
        &cfg,
        "shop@example.com",
        "writer",
        &["--scopes", "read:products,write:products"],
    );
    let other = create_key(&cfg, "shop@example.com", "other", &["--scopes", "read:orders"]);
    let daemon = start(&cfg, &socket);

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    assert!(
        root.join("node-express/node_modules/express").is_dir(),
        "the Express example's packages are needed: npm ci --prefix examples/node-express"
    );
    let node_port = free_port();
    let mut node_cmd = std::process::Command::new("node");
    node_cmd
        .arg(root.join("node-express/server.mjs"))
        .env("KEYWARDEN_VERIFY_SOCKET", &socket)
        .env("PORT", node_port.to_string());
    let mut node = example(node_cmd, "node (Node.js)");
    let py_port = free_port();
    let mut py_cmd = std::process::Command::new("python3");
    py_cmd
        .arg(root.join("python-wsgi/demo.py"))
        .current_dir(root.join("python-wsgi"))
        .env("KEYWARDEN_VERIFY_SOCKET", &socket)
        .env("PORT", py_port.to_string());
    let mut python = example(py_cmd, "python3");

    let bearer = |k: &str| format!("Bearer {k}");
    let get = |port: u16, key: Option<&str>| {
        let auth = key.map(bearer);
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        http_tcp(port, "GET", "/api/products", &headers, "")
    };
    let mut reader_uses = 0;
    for port in [node_port, py_port] {
        assert_eq!(get(port, None).0, 401);
        let (status, _, body) = get(port, Some(&reader));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["key"], prefix_of(&reader).as_str(), "{body}");
        reader_uses += 1;
        let (status, _, body) = get(port, Some(&other));
        assert_eq!(
            (status, body["reason"].as_str()),
            (403, Some("missing_scope")),
            "{body}"
        );
        let (head, _) = reader.split_once('.').unwrap();
        let wrong = format!("{head}.{}", "Z".repeat(43));
        let (status, _, body) = get(port, Some(&wrong));
        assert_eq!((status, body["reason"].as_str()), (401, Some("wrong_secret")), "{body}");
    }
    let post = |key: &str| {
        let auth = bearer(key);
        http_tcp(
            node_port,
            "POST",
            "/api/products",
            &[("Authorization", &auth)],
            r#"{"name": "lamp"}"#,
        )
    };
    let (status, _, body) = post(&reader);
    assert_eq!(status, 403, "{body}");
    reader_uses += 1;
    let (status, _, body) = post(&writer);
    assert_eq!((status, body["created"].as_str()), (201, Some("lamp")), "{body}");

    // Rotated: still let through, with the guide's grace headers.
    let out = keywarden(&cfg, &["keys", "rotate", &prefix_of(&writer), "--grace", "1h"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually(Duration::from_secs(10), "the grace headers", || {
        let auth = bearer(&writer);
        let (status, head, _) = http_tcp(node_port, "GET", "/api/products", &[("Authorization", &auth)], "");
        status == 200 && head.to_ascii_lowercase().contains("x-api-key-status: grace-period")
    });

    let out = keywarden(&cfg, &["keys", "revoke", &prefix_of(&reader), "--reason", "test"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for port in [node_port, py_port] {
        let (status, _, body) = get(port, Some(&reader));
        assert_eq!((status, body["reason"].as_str()), (401, Some("revoked")), "{body}");
    }
    stop(daemon);
    let uses: i64 = api_keys::table
        .filter(api_keys::prefix.eq(prefix_of(&reader)))
        .select(api_keys::usage_count)
        .first(&mut conn)
        .unwrap();
    assert_eq!(uses, reader_uses, "each request let through was counted once");
    for port in [node_port, py_port] {
        let (status, _, body) = get(port, Some(&writer));
        assert_eq!(status, 503, "with the service away the request must be refused: {body}");
    }
    let _ = node.kill();
    let _ = python.kill();
    let _ = node.wait();
    let _ = python.wait();
}
