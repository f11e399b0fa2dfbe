//! `keywarden users add|list`.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use super::EXIT_FAILURE;
use crate::keys::users;

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Add an owner of keys
    Add {
        email: String,
        /// Display name, used in emails
        #[arg(long)]
        name: Option<String>,
    },
    /// List owners
    List {
        #[arg(long)]
        json: bool,
    },
    /// Disable an owner: their keys stop verifying and their pending
    /// warnings are cancelled (recorded in `user_events`)
    Disable { email: String },
    /// Enable a disabled owner again (recorded in `user_events`)
    Enable { email: String },
}

pub fn run(path: &Path, cmd: UsersCommand) -> ExitCode {
    let mut conn = match super::connect_with_config(path) {
        Ok((_, c)) => c,
        Err(code) => return code,
    };
    match cmd {
        UsersCommand::Add { email, name } => match users::add(&mut conn, &email, name.as_deref()) {
            Ok(user) => {
                println!("added owner {} (id {})", user.email, user.id);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_FAILURE)
            }
        },
        UsersCommand::Disable { email } => set_active(&mut conn, &email, false),
        UsersCommand::Enable { email } => set_active(&mut conn, &email, true),
        UsersCommand::List { json } => match users::list(&mut conn) {
            Ok(list) if json => {
                println!("{}", serde_json::to_string_pretty(&list).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Ok(list) => {
                println!("{:<6}  {:<40}  {:<8}  NAME", "ID", "EMAIL", "STATUS");
                for u in list {
                    println!(
                        "{:<6}  {:<40}  {:<8}  {}",
                        u.id,
                        u.email,
                        u.status,
                        u.name.unwrap_or_default()
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_FAILURE)
            }
        },
    }
}

fn set_active(conn: &mut crate::db::DbConnection, email: &str, active: bool) -> ExitCode {
    let actor = super::actor::actor(if active { "users enable" } else { "users disable" });
    match users::set_active(conn, email, active, &actor) {
        Ok((user, changed)) => {
            let word = if active { "enabled" } else { "disabled" };
            if !changed {
                println!("owner {} is already {word}", user.email);
                return ExitCode::SUCCESS;
            }
            let mut cancelled = 0;
            if !active {
                match crate::notify::outbox::cancel_for_owner(conn, user.id, crate::db::now()) {
                    Ok(n) => cancelled = n,
                    Err(e) => {
                        eprintln!(
                            "warning: the owner is disabled, but their pending warnings could not be cancelled ({}); \
                             delivery drops them",
                            crate::db::describe_error(&e)
                        );
                    }
                }
            }
            tracing::info!(user = %user.email, "owner {} {word} by {actor}", user.email);
            if active {
                println!("owner {} enabled", user.email);
            } else {
                println!(
                    "owner {} disabled; {cancelled} pending warning(s) cancelled",
                    user.email
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
