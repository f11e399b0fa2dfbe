//! Turning notices into email: a subject that says what and when, a plain
//! text and an HTML part from templates (built in, or overridden from
//! `notifications.templates_dir`), and the headers a well-behaved automated
//! sender sets (`Message-ID`, `Date`, `Auto-Submitted: auto-generated`).
//!
//! Everything that came from users (key names, owner names) is escaped in
//! HTML by the template engine (templates ending `.html` escape by default)
//! and cannot break headers: control characters are removed and lettre
//! encodes the rest.

use chrono::{Datelike, NaiveDateTime};
use lettre::message::header::{Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::Message;
use serde::Serialize;

use super::detect::KeyNoticePayload;
use crate::config::NotificationsConfig;

const KEY_TEXT: &str = include_str!("templates/key_expiry.txt");
const KEY_HTML: &str = include_str!("templates/key_expiry.html");
const ADMIN_TEXT: &str = include_str!("templates/admin_alert.txt");
const ADMIN_HTML: &str = include_str!("templates/admin_alert.html");

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template {name}: {message}")]
    Template { name: String, message: String },
    #[error("cannot read template override {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot build the message: {0}")]
    Message(String),
}

/// A rendered message, before addressing.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// The templates in force.
pub struct Templates {
    env: minijinja::Environment<'static>,
}

impl Templates {
    /// Built-in templates, each replaced by a file of the same name in
    /// `templates_dir` when one exists there.
    pub fn load(cfg: &NotificationsConfig) -> Result<Self, RenderError> {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        for (name, builtin) in [
            ("key_expiry.txt", KEY_TEXT),
            ("key_expiry.html", KEY_HTML),
            ("admin_alert.txt", ADMIN_TEXT),
            ("admin_alert.html", ADMIN_HTML),
        ] {
            let source = match &cfg.templates_dir {
                Some(dir) if dir.join(name).is_file() => {
                    std::fs::read_to_string(dir.join(name)).map_err(|source| RenderError::Read {
                        path: dir.join(name).display().to_string(),
                        source,
                    })?
                }
                _ => builtin.to_string(),
            };
            env.add_template_owned(name.to_string(), source)
                .map_err(|e| RenderError::Template {
                    name: name.into(),
                    message: e.to_string(),
                })?;
        }
        Ok(Self { env })
    }

    fn render(&self, name: &str, ctx: &impl Serialize) -> Result<String, RenderError> {
        let tmpl = self.env.get_template(name).map_err(|e| RenderError::Template {
            name: name.into(),
            message: e.to_string(),
        })?;
        tmpl.render(ctx).map_err(|e| RenderError::Template {
            name: name.into(),
            message: e.to_string(),
        })
    }

    /// One digest for one owner, listing every key due.
    pub fn render_key_digest(
        &self,
        recipient_name: &str,
        keys: &[KeyNoticePayload],
        notes: &OwnerNotes,
        now: NaiveDateTime,
    ) -> Result<Rendered, RenderError> {
        let subject = key_subject(keys, now);
        let lines: Vec<KeyLine> = keys.iter().map(|k| KeyLine::new(k, now)).collect();
        let ctx = KeyContext {
            subject: subject.clone(),
            recipient_name: clean(recipient_name, 100),
            expired_count: keys.iter().filter(|k| k.expired).count(),
            warning_count: keys.iter().filter(|k| !k.expired).count(),
            keys: lines,
            action_url: notes.action_url.clone(),
            instructions: notes.instructions.as_deref().map(|t| clean_lines(t, 1000)),
            instance_name: clean(&notes.instance_name, 100),
            contact: notes.contact.as_deref().map(|c| clean(c, 254)),
        };
        Ok(Rendered {
            subject,
            text: self.render("key_expiry.txt", &ctx)?,
            html: self.render("key_expiry.html", &ctx)?,
        })
    }
}

impl Templates {
    /// One digest of admin alerts (certificates, permission drift, failing
    /// jobs) for one admin.
    pub fn render_admin_digest(&self, alerts: &[AdminAlert]) -> Result<Rendered, RenderError> {
        let subject = match alerts {
            [one] => format!("keywarden: {}", clean(&one.title, 150)),
            many => format!("keywarden: {} alerts need attention", many.len()),
        };
        let alerts: Vec<AdminAlert> = alerts
            .iter()
            .map(|a| AdminAlert {
                title: clean(&a.title, 200),
                lines: a.lines.iter().map(|l| clean(l, 500)).collect(),
                action: a.action.as_deref().map(|x| clean(x, 500)),
            })
            .collect();
        let intro = if alerts.len() == 1 {
            "keywarden needs your attention:".to_string()
        } else {
            format!("keywarden needs your attention on {} matters:", alerts.len())
        };
        let ctx = AdminContext {
            subject: subject.clone(),
            intro,
            alerts,
        };
        Ok(Rendered {
            subject,
            text: self.render("admin_alert.txt", &ctx)?,
            html: self.render("admin_alert.html", &ctx)?,
        })
    }
}

/// An alert for admins, as stored in an outbox row's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AdminAlert {
    pub title: String,
    #[serde(default)]
    pub lines: Vec<String>,
    #[serde(default)]
    pub action: Option<String>,
}

#[derive(Serialize)]
struct AdminContext {
    subject: String,
    intro: String,
    alerts: Vec<AdminAlert>,
}

#[derive(Serialize)]
struct KeyContext {
    subject: String,
    recipient_name: String,
    expired_count: usize,
    warning_count: usize,
    keys: Vec<KeyLine>,
    action_url: Option<String>,
    instructions: Option<String>,
    instance_name: String,
    contact: Option<String>,
}

/// What an owner's email says besides the keys: where to act, what to do,
/// who sent it and whom to ask. From `[notifications]`.
#[derive(Debug, Clone, Default)]
pub struct OwnerNotes {
    pub action_url: Option<String>,
    pub instructions: Option<String>,
    pub instance_name: String,
    pub contact: Option<String>,
}

impl OwnerNotes {
    /// `instance` names the installation when `instance_name` is not set.
    pub fn from_config(cfg: &crate::config::NotificationsConfig, instance: &str) -> OwnerNotes {
        OwnerNotes {
            action_url: cfg.action_url.clone(),
            instructions: cfg.instructions.clone(),
            instance_name: cfg.instance_name.clone().unwrap_or_else(|| instance.to_string()),
            contact: cfg.contact.clone(),
        }
    }
}

#[derive(Serialize)]
struct KeyLine {
    name: String,
    prefix: String,
    expires_at: String,
    /// Shorter form for the HTML table, whose column says UTC.
    expires_on: String,
    relative: String,
    expired: bool,
}

impl KeyLine {
    fn new(k: &KeyNoticePayload, now: NaiveDateTime) -> Self {
        let name = clean(&k.name, 200);
        Self {
            name,
            prefix: k.prefix.clone(),
            expires_at: k.expires_at.format("%a %-d %b %Y, %H:%M UTC").to_string(),
            expires_on: k.expires_at.format("%-d %b %Y, %H:%M").to_string(),
            relative: relative(k.expires_at, now),
            expired: k.expired,
        }
    }
}

/// Like [`clean`], keeping line breaks (for multi-line text from the config).
fn clean_lines(s: &str, max: usize) -> String {
    s.lines()
        .map(|l| clean(l, max))
        .collect::<Vec<_>>()
        .join("\n")
        .chars()
        .take(max)
        .collect()
}

/// Removes control characters (no header or layout tricks) and bounds length.
pub fn clean(s: &str, max: usize) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).take(max).collect();
    if s.chars().filter(|c| !c.is_control()).count() > max {
        out.push('…');
    }
    out
}

/// "in 6 days", "in 5 hours", "3 days ago".
pub fn relative(at: NaiveDateTime, now: NaiveDateTime) -> String {
    let delta = at - now;
    let secs = delta.num_seconds().abs();
    // Rounded to the nearest unit: a key due in 4 days 23 hours is "in 5 days".
    let amount = if secs >= 2 * 86_400 - 43_200 {
        format!("{} days", (secs + 43_200) / 86_400)
    } else if secs >= 2 * 3_600 - 1_800 {
        format!("{} hours", (secs + 1_800) / 3_600)
    } else if secs >= 120 {
        format!("{} minutes", (secs + 30) / 60)
    } else {
        return if delta.num_seconds() >= 0 {
            "in a minute".into()
        } else {
            "just now".into()
        };
    };
    if delta.num_seconds() >= 0 {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

fn day(at: NaiveDateTime, now: NaiveDateTime) -> String {
    if at.year() == now.year() {
        at.format("%-d %b").to_string()
    } else {
        at.format("%-d %b %Y").to_string()
    }
}

/// What and when, in a few words: "2 API keys expire on 3 Dec".
pub fn key_subject(keys: &[KeyNoticePayload], now: NaiveDateTime) -> String {
    let n = keys.len();
    let expired = keys.iter().filter(|k| k.expired).count();
    let first = keys.iter().map(|k| k.expires_at).min().unwrap_or(now);
    let last = keys.iter().map(|k| k.expires_at).max().unwrap_or(now);
    let same_day = first.date() == last.date();
    let one_name = || format!("API key \"{}\"", clean(&keys[0].name, 60));
    if n == 1 {
        if expired == 1 {
            format!("{} expired on {}", one_name(), day(first, now))
        } else {
            format!("{} expires on {}", one_name(), day(first, now))
        }
    } else if expired == n {
        format!("{n} API keys have expired")
    } else if expired > 0 {
        format!("{n} API keys have expired or expire soon")
    } else if same_day {
        format!("{n} API keys expire on {}", day(first, now))
    } else {
        format!("{n} API keys expire between {} and {}", day(first, now), day(last, now))
    }
}

/// `Auto-Submitted: auto-generated` (RFC 3834): tells auto-responders not
/// to answer.
#[derive(Debug, Clone, Copy)]
pub struct AutoSubmitted;

impl Header for AutoSubmitted {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Auto-Submitted")
    }
    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(AutoSubmitted)
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "auto-generated".to_string())
    }
}

/// Addresses a rendered message. The recipient's display name is encoded by
/// lettre; the subject is cleaned of control characters first.
/// `domain` is the fully qualified name after the `@` of the Message-ID.
pub fn build_message(
    from: &Mailbox,
    to_email: &str,
    to_name: Option<&str>,
    rendered: &Rendered,
    domain: &str,
) -> Result<Message, RenderError> {
    let address = to_email
        .parse::<lettre::Address>()
        .map_err(|e| RenderError::Message(format!("recipient {to_email:?}: {e}")))?;
    let to = Mailbox::new(to_name.map(|n| clean(n, 100)).filter(|n| !n.is_empty()), address);
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(clean(&rendered.subject, 200))
        .message_id(Some(format!("<{}@{domain}>", uuid::Uuid::new_v4().simple())))
        .date_now()
        .header(AutoSubmitted)
        .multipart(MultiPart::alternative_plain_html(
            rendered.text.clone(),
            rendered.html.clone(),
        ))
        .map_err(|e| RenderError::Message(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn at(d: u32, h: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(2026, 12, d)
            .unwrap()
            .and_hms_opt(h, 0, 0)
            .unwrap()
    }

    fn key(name: &str, expires_at: NaiveDateTime, expired: bool) -> KeyNoticePayload {
        KeyNoticePayload {
            name: name.into(),
            prefix: "sk_live_v2_0011223344556677".into(),
            expires_at,
            expired,
        }
    }

    #[test]
    fn subjects_say_what_and_when() {
        let now = at(1, 9);
        assert_eq!(
            key_subject(&[key("billing", at(3, 10), false)], now),
            "API key \"billing\" expires on 3 Dec"
        );
        assert_eq!(
            key_subject(&[key("a", at(3, 10), false), key("b", at(3, 20), false)], now),
            "2 API keys expire on 3 Dec"
        );
        assert_eq!(
            key_subject(&[key("a", at(3, 10), false), key("b", at(9, 1), false)], now),
            "2 API keys expire between 3 Dec and 9 Dec"
        );
        assert_eq!(
            key_subject(&[key("a", at(1, 1), true)], now),
            "API key \"a\" expired on 1 Dec"
        );
    }

    #[test]
    fn relative_times() {
        assert_eq!(relative(at(7, 9), at(1, 9)), "in 6 days");
        assert_eq!(relative(at(1, 14), at(1, 9)), "in 5 hours");
        assert_eq!(relative(at(1, 9), at(4, 9)), "3 days ago");
    }

    #[test]
    fn html_escapes_and_headers_stay_intact() {
        let t = Templates::load(&NotificationsConfig::default()).unwrap();
        let evil = "<script>alert(1)</script>\r\nBcc: victim@example.com";
        let r = t
            .render_key_digest(
                "Eve <b>",
                &[key(evil, at(3, 10), false)],
                &OwnerNotes::default(),
                at(1, 9),
            )
            .unwrap();
        assert!(!r.html.contains("<script>"), "{}", r.html);
        assert!(r.html.contains("&lt;script&gt;"));
        assert!(!r.subject.contains('\r') && !r.subject.contains('\n'));
        let from: Mailbox = "keywarden <kw@example.com>".parse().unwrap();
        let msg = build_message(
            &from,
            "owner@example.com",
            Some("Eve\r\nBcc: x@y"),
            &r,
            "mail.example.org",
        )
        .unwrap();
        let raw = String::from_utf8(msg.formatted()).unwrap();
        // The headers end at the first empty line; a body line may start
        // with anything (quoted-printable wraps where it must).
        let headers = raw.split("\r\n\r\n").next().unwrap_or_default();
        assert!(!headers.lines().any(|l| l.starts_with("Bcc:")), "{raw}");
        assert!(raw.contains("Auto-Submitted: auto-generated"));
        assert!(raw.contains("Message-ID: <"));
        assert!(raw.contains("multipart/alternative"));
    }
}
