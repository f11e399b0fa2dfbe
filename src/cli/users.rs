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
