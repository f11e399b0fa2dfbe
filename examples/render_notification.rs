//! Renders a sample expiry digest, so the email can be looked at as its
//! readers see it:
//!
//!     cargo run --example render_notification -- /tmp/sample.html
//!     chromium --headless --no-sandbox --disable-gpu --screenshot=/tmp/sample.png \
//!         --window-size=800,900 file:///tmp/sample.html
//!     chromium --headless --no-sandbox --disable-gpu --screenshot=/tmp/narrow.png \
//!         --window-size=375,1100 file:///tmp/sample.html
//!
//! The text part is written beside it (`/tmp/sample.txt`). Pass a
//! configuration as the second argument to render with its templates
//! (`notifications.templates_dir`), `action_url`, `instructions`,
//! `instance_name` and `contact`.

use std::path::PathBuf;

use chrono::TimeDelta;
use keywarden::config::NotificationsConfig;
use keywarden::notify::detect::KeyNoticePayload;
use keywarden::notify::render::{OwnerNotes, Templates};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().unwrap_or_else(|| "sample.html".into()));
    let mut cfg = match args.next() {
        Some(path) => keywarden::jobs::load_config(std::path::Path::new(&path))?.notifications,
        None => NotificationsConfig::default(),
    };
    if cfg.action_url.is_none() {
        cfg.action_url = Some("https://portal.example.com/keys".into());
    }
    if cfg.contact.is_none() {
        cfg.contact = Some("platform-team@example.com".into());
    }
    if cfg.instance_name.is_none() {
        cfg.instance_name = Some("Example Corp API gateway".into());
    }
    if cfg.instructions.is_none() {
        cfg.instructions = Some(
            "Open the developer portal, choose the key and press Rotate. Deploy the new key, then delete the old one."
                .into(),
        );
    }
    let now = keywarden::db::now();
    let keys = vec![
        KeyNoticePayload {
            name: "billing export".into(),
            prefix: "sk_live_v2_3f9a0c1b7d2e4a65".into(),
            expires_at: now + TimeDelta::days(6),
            expired: false,
        },
        KeyNoticePayload {
            name: "<script>alert('x')</script> & \"quotes\"".into(),
            prefix: "sk_live_v2_91b51cf27a7294ce".into(),
            expires_at: now + TimeDelta::hours(20),
            expired: false,
        },
        KeyNoticePayload {
            name: "nightly reports".into(),
            prefix: "sk_live_v2_e9487c2af47e8a59".into(),
            expires_at: now - TimeDelta::days(2),
            expired: true,
        },
    ];
    let rendered = Templates::load(&cfg)?.render_key_digest(
        "Alice Example",
        &keys,
        &OwnerNotes::from_config(&cfg, "keywarden.example.com"),
        now,
    )?;
    std::fs::write(&out, &rendered.html)?;
    std::fs::write(out.with_extension("txt"), &rendered.text)?;
    println!("Subject: {}", rendered.subject);
    println!("wrote {} and {}", out.display(), out.with_extension("txt").display());
    Ok(())
}
