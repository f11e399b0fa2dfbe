//! `keywarden keys …`: create, list, show, rotate, revoke, usage, verify.
//! A key is printed once, on stdout, at creation or rotation; keys are read
//! from stdin, never from arguments.

use crate::telemetry::printable;
use std::io::{IsTerminal, Read, Write};
use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use super::actor::actor;
use super::{connect_current, load_config, open_database, EXIT_FAILURE, EXIT_USAGE};
use crate::config::duration::parse_duration;
use crate::keys::format::MAX_KEY_LEN;
use crate::keys::model::ApiKey;
use crate::keys::service::{list_each, usage, CreateKey, KeyService, ListError, ListFilter, SortColumn, UsageReport};
use crate::keys::{VerifyOutcome, VerifyRequest};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Issue a key; it is printed once and never shown again
    Create {
        /// The owner's email (see `users add`)
        #[arg(long)]
        owner: String,
        #[arg(long)]
        name: String,
        /// Scopes, comma-separated or repeated (read:users,write:products)
        #[arg(long = "scopes", value_name = "SCOPES")]
        scopes: Vec<String>,
        /// Lifetime such as 30d (default and maximum: keys.default_lifetime, keys.max_lifetime)
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
        /// Allowed client addresses or CIDR ranges, comma-separated or repeated
        #[arg(long = "allow-ip", value_name = "ADDR")]
        allow_ip: Vec<String>,
    },
    /// List keys
    List {
        #[arg(long, value_name = "EMAIL")]
        owner: Option<String>,
        #[arg(long, value_parser = ["active", "rotating", "revoked", "expired"])]
        status: Option<String>,
        /// created_at, expires_at, last_used_at, name, prefix, status, usage_count or owner
        #[arg(long, value_name = "COLUMN")]
        sort: Option<String>,
        #[arg(long)]
        desc: bool,
        /// At most this many keys
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(1..))]
        limit: Option<i64>,
        /// Only keys whose prefix sorts after PREFIX, in prefix order: with
        /// --limit, the next page after the last prefix of the previous one
        #[arg(long, value_name = "PREFIX", conflicts_with = "sort")]
        after: Option<String>,
        /// Print a JSON array (streamed: any number of keys in constant memory)
        #[arg(long, conflicts_with = "json_lines")]
        json: bool,
        /// Print one JSON object per line
        #[arg(long)]
        json_lines: bool,
    },
    /// Show one key
    Show {
        prefix: String,
        #[arg(long)]
        json: bool,
    },
    /// Replace a key with a new one; the old one works until its grace ends
    Rotate {
        prefix: String,
        /// How long the old key keeps working (default keys.grace_default)
        #[arg(long, value_name = "DURATION")]
        grace: Option<String>,
    },
    /// Revoke a key at once
    Revoke {
        prefix: String,
        #[arg(long)]
        reason: String,
    },
    /// Uses, last use, success rate and recent events of a key
    Usage {
        prefix: String,
        /// How many recent events to show
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..=1000))]
        recent: i64,
        #[arg(long)]
        json: bool,
    },
    /// Verify a key read from stdin (never from an argument)
    Verify {
        /// The client address to check against the key's allow-list
        #[arg(long)]
        ip: Option<IpAddr>,
        /// A scope the key must have (repeatable)
        #[arg(long = "scope")]
        scopes: Vec<String>,
        #[arg(long)]
        json: bool,
    },
}

fn duration_arg(flag: &str, value: Option<&str>) -> Result<Option<Duration>, ExitCode> {
    match value {
        None => Ok(None),
        Some(v) => parse_duration(v).map(Some).map_err(|e| {
            eprintln!("error: --{flag}: {e}");
            ExitCode::from(EXIT_USAGE)
        }),
    }
}

/// A result printed as JSON (`--json`) or as text, or its error (exit 1).
fn report<T: serde::Serialize, E: std::fmt::Display>(
    result: Result<T, E>,
    json: bool,
    text: impl FnOnce(&T),
) -> ExitCode {
    match result {
        Ok(value) if json => {
            println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(value) => {
            text(&value);
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(EXIT_FAILURE)
}

fn ts(t: chrono::NaiveDateTime) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// What `keys` commands take from their arguments and stdin.
struct Parsed {
    expires_in: Option<Duration>,
    grace: Option<Duration>,
    sort: Option<SortColumn>,
    presented: Option<crate::config::Secret>,
}

fn parse_before_connecting(cmd: &KeysCommand) -> Result<Parsed, ExitCode> {
    let (expires_in, grace) = match &cmd {
        KeysCommand::Create { expires_in, .. } => match duration_arg("expires-in", expires_in.as_deref()) {
            Ok(d) => (d, None),
            Err(code) => return Err(code),
        },
        KeysCommand::Rotate { grace, .. } => match duration_arg("grace", grace.as_deref()) {
            Ok(d) => (None, d),
            Err(code) => return Err(code),
        },
        _ => (None, None),
    };
    let sort = match &cmd {
        KeysCommand::List { sort: Some(s), .. } => match s.parse::<SortColumn>() {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("error: --sort: {e}");
                return Err(ExitCode::from(EXIT_USAGE));
            }
        },
        _ => None,
    };
    let presented = match &cmd {
        KeysCommand::Verify { .. } => match read_key_from_stdin() {
            Ok(k) => Some(k),
            Err(e) => {
                eprintln!("error: {e}");
                return Err(ExitCode::from(EXIT_FAILURE));
            }
        },
        _ => None,
    };
    Ok(Parsed {
        expires_in,
        grace,
        sort,
        presented,
    })
}

pub fn run(path: &Path, cmd: KeysCommand) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Arguments are parsed before the database is touched.
    let Parsed {
        expires_in,
        grace,
        sort,
        presented,
    } = match parse_before_connecting(&cmd) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut conn = match open_database(&config).and_then(|db| connect_current(&db)) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let service = match KeyService::new(&config.keys).map(|s| s.on_retire(crate::notify::outbox::cancel_for_key)) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    match cmd {
        KeysCommand::Create {
            owner,
            name,
            scopes,
            allow_ip,
            ..
        } => {
            let req = CreateKey {
                owner_email: owner,
                name,
                scopes,
                allowed_ips: allow_ip,
                lifetime: expires_in,
            };
            match service.create(&mut conn, &req, &actor("keys create")) {
                Ok(issued) => {
                    print_new_key(&issued.key, issued.full_key.expose());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        KeysCommand::List {
            owner,
            status,
            desc,
            limit,
            after,
            json,
            json_lines,
            ..
        } => {
            let filter = ListFilter {
                owner_email: owner,
                status,
                sort,
                descending: desc,
                limit,
                after_prefix: after,
            };
            print_list(&mut conn, &filter, ListFormat::of(json, json_lines))
        }
        KeysCommand::Show { prefix, json } => report(KeyService::find(&mut conn, &prefix), json, show),
        KeysCommand::Rotate { prefix, .. } => match service.rotate(&mut conn, &prefix, grace, &actor("keys rotate")) {
            Ok(r) => {
                print_new_key(&r.new.key, r.new.full_key.expose());
                eprintln!(
                    "The old key {} keeps working until {} (grace period), then it is revoked.",
                    r.old.prefix,
                    r.old.grace_period_ends_at.map(ts).unwrap_or_default()
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        KeysCommand::Revoke { prefix, reason } => {
            match service.revoke(&mut conn, &prefix, &reason, &actor("keys revoke")) {
                Ok(k) => {
                    println!(
                        "revoked {} ({})",
                        k.prefix,
                        printable(&k.revoked_reason.unwrap_or_default())
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        KeysCommand::Usage { prefix, recent, json } => report(usage(&mut conn, &prefix, recent), json, print_usage),
        KeysCommand::Verify { ip, scopes, json } => {
            let presented = presented.unwrap_or_else(|| crate::config::Secret::new(String::new()));
            verify(&service, &mut conn, &presented, ip, &scopes, json)
        }
    }
}

/// `keys list` as a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListFormat {
    Table,
    JsonArray,
    JsonLines,
}

impl ListFormat {
    fn of(json: bool, json_lines: bool) -> Self {
        match (json, json_lines) {
            (true, _) => ListFormat::JsonArray,
            (_, true) => ListFormat::JsonLines,
            _ => ListFormat::Table,
        }
    }
}

/// `keys list`: each key written as it arrives from the database, through
/// one buffered writer, so the listing's memory does not grow with it.
fn print_list(conn: &mut crate::db::DbConnection, filter: &ListFilter, format: ListFormat) -> ExitCode {
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let mut first = true;
    let started = match format {
        ListFormat::Table => writeln!(
            out,
            "{:<30}  {:<9}  {:<24}  {:<28}  {:<20}  {:>6}  LAST USED",
            "PREFIX", "STATUS", "NAME", "OWNER", "EXPIRES", "USES"
        ),
        ListFormat::JsonArray => out.write_all(b"["),
        ListFormat::JsonLines => Ok(()),
    };
    let listed = started.map_err(ListError::from).and_then(|()| {
        list_each(conn, filter, |k| match format {
            ListFormat::Table => writeln!(
                out,
                "{:<30}  {:<9}  {:<24}  {:<28}  {:<20}  {:>6}  {}",
                k.key.prefix,
                k.key.status,
                printable(&k.key.name.chars().take(24).collect::<String>()),
                printable(&k.owner_email.chars().take(28).collect::<String>()),
                ts(k.key.expires_at),
                k.key.usage_count,
                k.key.last_used_at.map(ts).unwrap_or_else(|| "-".into())
            ),
            ListFormat::JsonArray => {
                out.write_all(if first { b"\n  " } else { b",\n  " })?;
                first = false;
                serde_json::to_writer(&mut out, &k).map_err(std::io::Error::other)
            }
            ListFormat::JsonLines => {
                serde_json::to_writer(&mut out, &k).map_err(std::io::Error::other)?;
                out.write_all(b"\n")
            }
        })
    });
    let ended = listed.and_then(|()| {
        if format == ListFormat::JsonArray {
            out.write_all(if first { b"]\n" } else { b"\n]\n" })?;
        }
        out.flush().map_err(ListError::from)
    });
    match ended {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// `keys usage` as text.
fn print_usage(u: &UsageReport) {
    println!("Key:          {} ({})", u.prefix, u.status);
    println!("Total uses:   {}", u.total_uses);
    println!(
        "Last used:    {}",
        u.last_used_at.map(ts).unwrap_or_else(|| "never".into())
    );
    match u.success_rate {
        Some(rate) => println!(
            "Success rate: {rate:.1}% ({} ok, {} failed verifications)",
            u.successful_verifications, u.failed_verifications
        ),
        None => println!("Success rate: no verifications recorded"),
    }
    println!("Recent events:");
    for e in &u.recent_events {
        println!(
            "  {}  {:<13}  {}{}{}",
            ts(e.created_at),
            e.event,
            printable(&e.actor),
            e.reason
                .as_ref()
                .map(|r| format!("  reason: {}", printable(r)))
                .unwrap_or_default(),
            e.ip.as_ref().map(|ip| format!("  ip: {ip}")).unwrap_or_default()
        );
    }
}

/// `keys verify`: exit 0 for a valid key, 1 for a refusal.
fn verify(
    service: &KeyService,
    conn: &mut crate::db::DbConnection,
    presented: &crate::config::Secret,
    ip: Option<IpAddr>,
    scopes: &[String],
    json: bool,
) -> ExitCode {
    let scope_refs: Vec<&str> = scopes.iter().map(String::as_str).collect();
    let actor = actor("keys verify");
    let req = VerifyRequest {
        ip,
        required_scopes: &scope_refs,
        user_agent: None,
        endpoint: None,
        actor: &actor,
        defer: None,
    };
    let outcome = match service.verify(conn, presented.expose(), &req) {
        Ok(outcome) => outcome,
        Err(e) => return fail(e),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&outcome).unwrap_or_default());
    }
    match outcome {
        VerifyOutcome::Valid(v) => {
            if !json {
                let grace = v
                    .grace_ends_at
                    .map(|g| format!("; rotating: works until {}", ts(g)))
                    .unwrap_or_default();
                println!(
                    "valid: {} (owner id {}, scopes [{}]){grace}",
                    v.prefix,
                    v.owner_id,
                    v.scopes.join(", ")
                );
            }
            ExitCode::SUCCESS
        }
        VerifyOutcome::Refused(r) => {
            if !json {
                println!("refused: {}", r.as_reason());
            }
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn print_new_key(key: &ApiKey, full: &str) {
    println!("{full}");
    let _ = std::io::stdout().flush();
    eprintln!(
        "Created key {} \"{}\" (version {}), expires {}.\nThis is the only time the key is shown: store it now. keywarden keeps only its hash.",
        key.prefix,
        key.name,
        key.version,
        ts(key.expires_at)
    );
}

fn show(k: &ApiKey) {
    println!("Prefix:      {}", k.prefix);
    println!("Name:        {}", printable(&k.name));
    println!("Status:      {}", k.status);
    println!("Version:     {}", k.version);
    println!("Owner id:    {}", k.owner_id);
    println!("Scopes:      {}", k.scope_list().join(", "));
    let ips = k.allowed_ip_list();
    println!(
        "Allowed IPs: {}",
        if ips.is_empty() { "any".into() } else { ips.join(", ") }
    );
    println!("Created:     {}", ts(k.created_at));
    println!("Expires:     {}", ts(k.expires_at));
    if let Some(t) = k.rotated_at {
        println!("Rotated:     {}", ts(t));
    }
    if let Some(t) = k.grace_period_ends_at {
        println!("Grace ends:  {}", ts(t));
    }
    if let Some(t) = k.revoked_at {
        println!(
            "Revoked:     {} ({})",
            ts(t),
            printable(&k.revoked_reason.clone().unwrap_or_default())
        );
    }
    println!("Uses:        {}", k.usage_count);
    println!(
        "Last used:   {}",
        k.last_used_at.map(ts).unwrap_or_else(|| "never".into())
    );
}

/// Reads one key from stdin: at most one line, bounded, UTF-8.
fn read_key_from_stdin() -> Result<crate::config::Secret, String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("key: ");
        let _ = std::io::stderr().flush();
    }
    let mut buf = Vec::with_capacity(MAX_KEY_LEN + 4);
    stdin
        .lock()
        .take((MAX_KEY_LEN + 3) as u64)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read the key from stdin: {e}"))?;
    if buf.len() > MAX_KEY_LEN + 2 {
        zeroize::Zeroize::zeroize(&mut buf);
        return Err(format!("the key on stdin is longer than {MAX_KEY_LEN} bytes"));
    }
    let text = String::from_utf8(buf).map_err(|e| {
        let mut bytes = e.into_bytes();
        zeroize::Zeroize::zeroize(&mut bytes);
        "the key on stdin is not valid UTF-8".to_string()
    })?;
    let key = crate::config::Secret::new(text.lines().next().unwrap_or("").to_string());
    let mut text = text;
    zeroize::Zeroize::zeroize(&mut text);
    Ok(key)
}
