//! `keywarden notifications list|retry`.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use super::EXIT_FAILURE;
use crate::notify::outbox;

#[derive(Debug, Subcommand)]
pub enum NotificationsCommand {
    /// The outbox, newest first
    List {
        #[arg(long, value_parser = ["pending", "sending", "sent", "failed", "cancelled", "skipped"])]
        status: Option<String>,
        /// How many rows to show
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=10000))]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Queue a failed or cancelled notification again, due now
    Retry { id: i64 },
}

pub fn run(path: &Path, cmd: NotificationsCommand) -> ExitCode {
    let mut conn = match super::connect_with_config(path) {
        Ok((_, c)) => c,
        Err(code) => return code,
    };
    match cmd {
        NotificationsCommand::List { status, limit, json } => match outbox::list(&mut conn, status.as_deref(), limit) {
            Ok(rows) if json => {
                println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Ok(rows) => {
                println!(
                    "{:<7}  {:<9}  {:<8}  {:<30}  {:<8}  {:<20}  {:>8}  LAST ERROR",
                    "ID", "STATUS", "KIND", "RECIPIENT", "WINDOW", "CREATED", "ATTEMPTS"
                );
                for n in rows {
                    println!(
                        "{:<7}  {:<9}  {:<8}  {:<30}  {:<8}  {:<20}  {:>8}  {}",
                        n.id,
                        n.status,
                        n.subject_kind,
                        n.recipient.chars().take(30).collect::<String>(),
                        n.notice_window,
                        n.created_at.format("%Y-%m-%d %H:%M:%SZ"),
                        n.attempts,
                        n.last_error.unwrap_or_default().chars().take(80).collect::<String>()
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: database error: {}", crate::db::describe_error(&e));
                ExitCode::from(EXIT_FAILURE)
            }
        },
        NotificationsCommand::Retry { id } => match outbox::retry(&mut conn, id, crate::db::now()) {
            Ok(Some(n)) => {
                println!(
                    "notification {} to {} is pending again; the next notify-expiry run sends it",
                    n.id, n.recipient
                );
                ExitCode::SUCCESS
            }
            Ok(None) => {
                let known = outbox::find(&mut conn, id).ok().flatten();
                match known {
                    Some(n) => eprintln!(
                        "error: notification {id} is {}; only failed or cancelled ones can be retried",
                        n.status
                    ),
                    None => eprintln!("error: no notification with id {id}"),
                }
                ExitCode::from(EXIT_FAILURE)
            }
            Err(e) => {
                eprintln!("error: database error: {}", crate::db::describe_error(&e));
                ExitCode::from(EXIT_FAILURE)
            }
        },
    }
}
