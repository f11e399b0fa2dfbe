//! A small web service that issues and verifies API keys through the
//! keywarden library, sharing keywarden's database: the way an application
//! uses keys while the daemon expires, retires and warns about them.
//!
//!     KEY_SERVICE_ADMIN_TOKEN=$(head -c 24 /dev/urandom | base64) \
//!       cargo run --example key_service -- examples/quickstart.toml 127.0.0.1:8080
//!
//!     # issue a key (admin only; the key is in the answer, once)
//!     curl -s -X POST -H "Authorization: Bearer $KEY_SERVICE_ADMIN_TOKEN" \
//!          -d '{"owner":"you@example.com","name":"ci","scopes":["read:users"]}' 127.0.0.1:8080/keys
//!     # use it
//!     curl -s -H "Authorization: Bearer sk_live_v2_…" 127.0.0.1:8080/whoami
//!
//! Plain HTTP/1.1 on std's listener keeps the example free of a web
//! framework; put it behind a TLS-terminating proxy. Clients are told only
//! "invalid key": the precise reason (expired, revoked, wrong address…) is
//! in the audit trail (`keywarden keys usage PREFIX`) and in this log.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;

use keywarden::db::Database;
use keywarden::keys::{users, CreateKey, KeyService, VerifyOutcome, VerifyRequest};

struct App {
    database: Database,
    keys: KeyService,
    admin_token: String,
}

struct Request {
    method: String,
    path: String,
    bearer: Option<String>,
    body: Vec<u8>,
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let config_path = PathBuf::from(args.next().unwrap_or_else(|| "examples/quickstart.toml".into()));
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());
    let admin_token = std::env::var("KEY_SERVICE_ADMIN_TOKEN").unwrap_or_default();
    anyhow::ensure!(
        admin_token.len() >= 16,
        "set KEY_SERVICE_ADMIN_TOKEN to a random token of at least 16 characters"
    );
    let config = keywarden::jobs::load_config(&config_path)?;
    let database = Database::new(&config.database, &config.load_secrets()?);
    let mut conn = database.connect()?;
    keywarden::db::migrate::run_pending(&mut conn)?;
    let app = Arc::new(App {
        keys: KeyService::new(&config.keys)?.on_retire(keywarden::notify::outbox::cancel_for_key),
        database,
        admin_token,
    });
    let listener = TcpListener::bind(&listen)?;
    eprintln!("key service on http://{listen}");
    for stream in listener.incoming().flatten() {
        let app = app.clone();
        std::thread::spawn(move || {
            if let Err(e) = serve(&app, stream) {
                eprintln!("connection error: {e}");
            }
        });
    }
    Ok(())
}

fn serve(app: &App, mut stream: TcpStream) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let peer = stream.peer_addr()?.ip();
    let (status, body) = match read_request(&stream) {
        Ok(req) => route(app, &req, peer),
        Err(e) => (400, serde_json::json!({ "error": e.to_string() })),
    };
    let text = body.to_string();
    let reason = match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Internal Server Error",
    };
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    )?;
    Ok(())
}

fn read_request(stream: &TcpStream) -> anyhow::Result<Request> {
    let mut reader = BufReader::new(stream.take(64 * 1024));
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let (mut bearer, mut length) = (None, 0usize);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "authorization" => bearer = value.trim().strip_prefix("Bearer ").map(|t| t.trim().to_string()),
            "content-length" => length = value.trim().parse()?,
            _ => {}
        }
    }
    anyhow::ensure!(length <= 16 * 1024, "body too large");
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(Request {
        method,
        path,
        bearer,
        body,
    })
}

/// Compares without stopping at the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn route(app: &App, req: &Request, peer: IpAddr) -> (u16, serde_json::Value) {
    let mut conn = match app.database.connect() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("database: {e}");
            return (500, serde_json::json!({ "error": "database unavailable" }));
        }
    };
    match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/keys") => {
            if !req.bearer.as_deref().is_some_and(|t| same(t, &app.admin_token)) {
                return (401, serde_json::json!({ "error": "admin token required" }));
            }
            #[derive(serde::Deserialize)]
            struct NewKey {
                owner: String,
                name: String,
                #[serde(default)]
                scopes: Vec<String>,
            }
            let Ok(new) = serde_json::from_slice::<NewKey>(&req.body) else {
                return (
                    400,
                    serde_json::json!({ "error": "expected {\"owner\", \"name\", \"scopes\"}" }),
                );
            };
            // The owner is created on first use; an existing one is kept.
            let _ = users::add(&mut conn, &new.owner, None);
            let created = app.keys.create(
                &mut conn,
                &CreateKey {
                    owner_email: new.owner,
                    name: new.name,
                    scopes: new.scopes,
                    allowed_ips: Vec::new(),
                    lifetime: None,
                },
                "example:key_service",
            );
            match created {
                Ok(issued) => (
                    201,
                    serde_json::json!({
                        "key": issued.full_key.expose(),
                        "prefix": issued.key.prefix,
                        "expires_at": issued.key.expires_at.to_string(),
                    }),
                ),
                Err(e) => (400, serde_json::json!({ "error": e.to_string() })),
            }
        }
        ("GET", "/whoami") => {
            let Some(presented) = req.bearer.as_deref() else {
                return (401, serde_json::json!({ "error": "invalid key" }));
            };
            let request = VerifyRequest {
                ip: Some(peer),
                required_scopes: &[],
                user_agent: None,
                endpoint: Some("/whoami"),
                actor: "example:key_service",
                defer: None,
            };
            match app.keys.verify(&mut conn, presented, &request) {
                Ok(VerifyOutcome::Valid(key)) => (
                    200,
                    serde_json::json!({
                        "prefix": key.prefix,
                        "owner_id": key.owner_id,
                        "scopes": key.scopes,
                        "grace_ends_at": key.grace_ends_at.map(|t| t.to_string()),
                    }),
                ),
                Ok(VerifyOutcome::Refused(why)) => {
                    eprintln!("refused a key from {peer}: {}", why.as_reason());
                    (401, serde_json::json!({ "error": "invalid key" }))
                }
                Err(e) => {
                    eprintln!("verify: {e}");
                    (500, serde_json::json!({ "error": "internal error" }))
                }
            }
        }
        _ => (404, serde_json::json!({ "error": "not found" })),
    }
}
