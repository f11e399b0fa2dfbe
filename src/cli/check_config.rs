//! `keywarden check-config`: validates without reading secrets, so it works
//! from `ExecReload=` and `ExecStartPre=`.

use std::path::Path;
use std::process::ExitCode;

pub fn run(path: &Path) -> ExitCode {
    match super::load_config(path) {
        Ok(config) => {
            let problems = config.check_local();
            if !problems.is_empty() {
                for p in problems {
                    eprintln!("{p}");
                }
                return ExitCode::from(super::EXIT_CONFIG);
            }
            if config.notifications.transport == crate::config::MailTransport::Smtp {
                let (name, qualified) = config.mail_host_name();
                if !qualified {
                    eprintln!(
                        "{}: warning: only the short host name {name:?} is known; mail servers may refuse it \
                         in EHLO (set notifications.hello_name to this host's fully qualified name)",
                        config.source.display()
                    );
                }
            }
            let n = &config.notifications;
            let mails = n.transport == crate::config::MailTransport::Smtp;
            if mails && n.action_url.is_none() && n.instructions.is_none() && n.contact.is_none() {
                eprintln!(
                    "{}: warning: owners' expiry emails can only tell them to ask for a new key; set \
                     notifications.action_url, notifications.instructions or notifications.contact",
                    config.source.display()
                );
            }
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}
