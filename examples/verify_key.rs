//! How a Rust service sharing keywarden's database verifies API keys.
//!
//!     echo "$KEY" | cargo run --example verify_key -- examples/quickstart.toml 192.0.2.10 read:users
//!
//! The service links the `keywarden` library, reads the same configuration
//! (or builds a `KeysConfig` of its own), and calls `KeyService::verify` for
//! each request. The outcome is typed: a valid key carries its owner and
//! scopes, and says when it is in a rotation grace period; a refusal says
//! why. Usage counting and the audit trail are handled by the library.

use std::io::Read;
use std::path::PathBuf;

use keywarden::db::Database;
use keywarden::keys::{KeyService, VerifyOutcome, VerifyRequest};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let config_path = PathBuf::from(args.next().unwrap_or_else(|| "examples/quickstart.toml".into()));
    let ip = args.next().map(|a| a.parse()).transpose()?;
    let scopes: Vec<String> = args.collect();

    let config = keywarden::jobs::load_config(&config_path)?;
    let database = Database::new(&config.database, &config.load_secrets()?);
    let mut conn = database.connect()?;
    let keys = KeyService::new(&config.keys)?;

    // Keys come from the request (a header), here from stdin; never log them.
    let mut presented = String::new();
    std::io::stdin().take(4096).read_to_string(&mut presented)?;

    let scope_refs: Vec<&str> = scopes.iter().map(String::as_str).collect();
    let request = VerifyRequest {
        ip,
        required_scopes: &scope_refs,
        user_agent: Some("verify_key example"),
        endpoint: Some("/example"),
        actor: "example-service",
        // Rows written before the answer returns.
        defer: None,
    };
    match keys.verify(&mut conn, presented.trim(), &request)? {
        VerifyOutcome::Valid(key) => {
            println!(
                "accepted: key {} of owner {} with scopes {:?}",
                key.prefix, key.owner_id, key.scopes
            );
            if let Some(until) = key.grace_ends_at {
                println!("warning: this key was rotated and stops working at {until} UTC");
            }
        }
        VerifyOutcome::Refused(why) => println!("refused: {}", why.as_reason()),
    }
    Ok(())
}
